package coord

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string // nil: an error wrapping ErrBadURL
	}{
		{"etcd://127.0.0.1:2379", []string{"127.0.0.1:2379"}},
		{"etcd://a:1,b:2,c.example:65535", []string{"a:1", "b:2", "c.example:65535"}},
		{"ETCD://host:2379", []string{"host:2379"}},
		{"etcd://[::1]:2379", []string{"[::1]:2379"}},
		{"etcd://[fe80::1]:2379,10.0.0.1:2379", []string{"[fe80::1]:2379", "10.0.0.1:2379"}},
		{"", nil},
		{"127.0.0.1:2379", nil},         // no scheme
		{"http://127.0.0.1:2379", nil},  // other scheme
		{"https://127.0.0.1:2379", nil}, // other scheme
		{"etcd://", nil},                // no endpoint
		{"etcd://:2379", nil},           // empty host
		{"etcd://host", nil},            // missing port
		{"etcd://host:", nil},           // empty port
		{"etcd://host:port", nil},       // port not a number
		{"etcd://host:0", nil},          // port 0
		{"etcd://host:65536", nil},      // port too large
		{"etcd://a:1,,b:2", nil},        // empty endpoint
		{"etcd://a:1,", nil},            // trailing comma
		{"etcd://host:2379/path", nil},  // path
		{"etcd://user@host:2379", nil},  // user info
		{"etcd://host:2379?x=1", nil},   // query
		{"etcd://::1:2379", nil},        // IPv6 without brackets
		{"etcd://[::1]]:2379", nil},     // bad brackets
		{"etcd://host:2379:2380", nil},  // two ports
	} {
		got, err := ParseURL(tc.in)
		if tc.want == nil {
			if !errors.Is(err, ErrBadURL) {
				t.Errorf("ParseURL(%q) = %q, %v; want an error wrapping ErrBadURL", tc.in, got, err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestParseURLErrorsSayWhy(t *testing.T) {
	for _, tc := range []struct{ in, says string }{
		{"http://h:1", `scheme "http" is not etcd`},
		{"etcd://:1", "empty host"},
		{"etcd://h", "missing port"},
		{"etcd://h:", "empty port"},
	} {
		_, err := ParseURL(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), tc.in) {
			t.Errorf("ParseURL(%q): %v; want it to name the URL and say %q", tc.in, err, tc.says)
		}
	}
}
