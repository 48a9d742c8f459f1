package vmm

import (
	"context"
	"net"
	"path/filepath"
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
