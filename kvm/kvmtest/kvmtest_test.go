package kvmtest

import (
	"fmt"
	"testing"
)

// recorder is a testing.TB that records Skip and Fatal instead of ending
// the test; like them, it stops the caller (with a panic the test recovers).
type recorder struct {
	testing.TB
	outcome string
}

type stop struct{}

func (r *recorder) Helper() {}
func (r *recorder) Skipf(format string, args ...any) {
	r.outcome = "skip: " + fmt.Sprintf(format, args...)
	panic(stop{})
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.outcome = "fatal: " + fmt.Sprintf(format, args...)
	panic(stop{})
}

func outcome(t *testing.T, path string) string {
	r := &recorder{TB: t}
	func() {
		defer func() {
			if p := recover(); p != nil {
				if _, ok := p.(stop); !ok {
					panic(p)
				}
			}
		}()
		openPath(r, path)
		r.outcome = "opened"
	}()
	return r.outcome
}

func TestOpenPolicy(t *testing.T) {
	tests := []struct {
		name, env, path, want string
	}{
		{"absent, not required", "", "/nonexistent/kvm", "skip"},
		{"absent, required=0", "0", "/nonexistent/kvm", "skip"},
		{"absent, required", "1", "/nonexistent/kvm", "fatal"},
		{"present but unusable, not required", "", "/", "fatal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(EnvRequireKVM, tt.env)
			got := outcome(t, tt.path)
			if len(got) < len(tt.want) || got[:len(tt.want)] != tt.want {
				t.Errorf("outcome %q, want %s", got, tt.want)
			}
			t.Log(got)
		})
	}
}
