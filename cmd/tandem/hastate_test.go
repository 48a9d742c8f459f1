package main

import (
	"errors"
	"fmt"
	"testing"

	"github.com/tandemvm/tandem/vmm"
)

func TestLinuxHAStateRoundTrip(t *testing.T) {
	devs := []vmm.VirtioConfig{{Type: "console", Console: "unix:/tmp/ch"}, {Type: "rng"}}
	src, err := newLinuxSource(nil, devs)
	if err != nil {
		t.Fatal(err)
	}
	b := append(append([]byte(nil), src.head...), "vm state"...)
	got, st, linux, err := splitHAState(b)
	if err != nil || !linux || string(st) != "vm state" || fmt.Sprint(got) != fmt.Sprint(devs) {
		t.Fatalf("split = %v, %q, %v, %v", got, st, linux, err)
	}
	// A flat guest's state passes through.
	if _, st, linux, err := splitHAState([]byte("flat")); err != nil || linux || string(st) != "flat" {
		t.Errorf("flat state split = %q, %v, %v", st, linux, err)
	}
	// Malformed heads are refused, never a panic.
	for _, bad := range [][]byte{
		[]byte(linuxStateMagic),
		append([]byte(linuxStateMagic), 0xff, 0xff, 0xff, 0x7f),
		append([]byte(linuxStateMagic), 3, 0, 0, 0, '{', '{', '{'),
	} {
		if _, _, _, err := splitHAState(bad); !errors.Is(err, vmm.ErrSnapshot) {
			t.Errorf("split(%q) = %v, want ErrSnapshot", bad, err)
		}
	}
}

// FuzzSplitHAState: whatever state a leader recovers, splitting it never
// panics, and a Linux state it accepts round-trips.
func FuzzSplitHAState(f *testing.F) {
	src, _ := newLinuxSource(nil, []vmm.VirtioConfig{{Type: "net", TAP: "t0", MAC: "02:54:4e:44:4d:00"}, {Type: "rng"}})
	f.Add(append(append([]byte(nil), src.head...), "state"...))
	f.Add([]byte(linuxStateMagic))
	f.Add([]byte("flat state"))
	f.Fuzz(func(t *testing.T, b []byte) {
		devs, st, linux, err := splitHAState(b)
		if err != nil || !linux {
			return
		}
		again, err := newLinuxSource(nil, devs)
		if err != nil {
			t.Fatal(err)
		}
		devs2, st2, _, err := splitHAState(append(append([]byte(nil), again.head...), st...))
		if err != nil || string(st2) != string(st) || fmt.Sprint(devs2) != fmt.Sprint(devs) {
			t.Fatalf("round trip of %q: %v, %q, %v", b, devs2, st2, err)
		}
	})
}
