package vmm

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestControlAnswersBeforeStopping: the control socket of a run is closed
// when the run ends, as tandem run does; a snapshot with Stop (and a stop)
// must still get its answer, and the snapshot must be written before the
// VM stops. Each case runs a few times: losing the answer was a race.
func TestControlAnswersBeforeStopping(t *testing.T) {
	for _, op := range []string{"snapshot", "stop"} {
		for i := 0; i < 5; i++ {
			tv := newTestVM(t, Config{}, "counter", nil)
			ctx, cancel := context.WithCancel(context.Background())
			dir := t.TempDir()
			sock := filepath.Join(dir, "ctl")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			c := &Controller{VM: tv.VM}
			served := make(chan error, 1)
			go func() { served <- c.Serve(ctx, ln) }()
			done := make(chan struct{})
			go func() {
				defer close(done)
				tv.Run(ctx)
				cancel() // the run is over: so is its control socket
			}()
			req := ControlRequest{Op: op}
			if op == "snapshot" {
				req.Path, req.Stop = filepath.Join(dir, "snap"), true
			}
			cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err = ControlCall(cctx, "unix:"+sock, req)
			ccancel()
			if err != nil {
				t.Fatalf("%s (try %d): %v", op, i, err)
			}
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("%s: the VM did not stop", op)
			}
			<-served
			if op == "snapshot" {
				s, err := OpenSnapshot(req.Path)
				if err != nil {
					t.Fatalf("the snapshot answered for: %v", err)
				}
				s.Close()
			}
		}
	}
}

// TestControlAddReplica: add-replica reaches the replication's hook with
// the address, and is refused with why when the VM is not replicated or
// no address is given; the hook's refusal is the answer.
func TestControlAddReplica(t *testing.T) {
	tv := newTestVM(t, Config{}, "counter", nil)
	var got []string
	c := &Controller{VM: tv.VM}
	for _, tc := range []struct {
		hook    func(string) error
		replica string
		want    string // "" for success
	}{
		{nil, "10.0.0.5:7000", "not replicated"},
		{func(a string) error { got = append(got, a); return nil }, "", "needs a replica address"},
		{func(a string) error { got = append(got, a); return nil }, "10.0.0.5:7000", ""},
		{func(a string) error { return errors.New("already a link") }, "10.0.0.5:7000", "already a link"},
	} {
		c.AddReplica = tc.hook
		_, _, err := c.Handle(ControlRequest{Op: "add-replica", Replica: tc.replica})
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("add-replica %q: %v", tc.replica, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("add-replica %q: %v, want an error naming %q", tc.replica, err, tc.want)
		}
	}
	if len(got) != 1 || got[0] != "10.0.0.5:7000" {
		t.Errorf("the hook got %v, want the one address", got)
	}
}

// TestControlUpdateDrive: update-drive reaches the hook with the drive's
// index and path, and is refused with why when the VM's drives cannot be
// updated or the index or path is missing; the hook's refusal is the
// answer.
func TestControlUpdateDrive(t *testing.T) {
	tv := newTestVM(t, Config{}, "counter", nil)
	type call struct {
		index int
		path  string
	}
	var got []call
	record := func(i int, p string) error { got = append(got, call{i, p}); return nil }
	c := &Controller{VM: tv.VM}
	one, minus := 1, -1
	for _, tc := range []struct {
		hook  func(int, string) error
		drive *int
		path  string
		want  string // "" for success
	}{
		{nil, &one, "/new.img", "cannot be updated"},
		{record, nil, "/new.img", "needs a drive index"},
		{record, &minus, "/new.img", "needs a drive index"},
		{record, &one, "", "needs the drive's new path"},
		{record, &one, "/new.img", ""},
		{func(int, string) error { return errors.New("refused under --ha") }, &one, "/new.img", "refused under --ha"},
	} {
		c.UpdateDrive = tc.hook
		_, _, err := c.Handle(ControlRequest{Op: "update-drive", Drive: tc.drive, Path: tc.path})
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("update-drive %v %q: %v", tc.drive, tc.path, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("update-drive %v %q: %v, want an error naming %q", tc.drive, tc.path, err, tc.want)
		}
	}
	if len(got) != 1 || got[0] != (call{1, "/new.img"}) {
		t.Errorf("the hook got %v, want the one call", got)
	}
}
