package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/tandemvm/tandem/replicate"
)

// pipelineSetups are the data-path microbenchmarks: the policies and link
// counts of the matrix, in sync mode.
var pipelineSetups = []struct {
	name   string
	policy replicate.Policy
	links  int
}{
	{"fast(1)", replicate.PolicyFast, 1},
	{"fast(2)", replicate.PolicyFast, 2},
	{"fast(4)", replicate.PolicyFast, 4},
	{"ft(4)", replicate.PolicyFT, 4},
}

// runPipeline sends a synthetic scattered dirty set, epoch after epoch with
// no pause between them, through grouping, assignment, TCP over loopback to
// replicas in this process and their apply, and records the primary's
// trace. No guest runs: the figure is the data path's own throughput.
func (b *bencher) runPipeline(ctx context.Context, name string, policy replicate.Policy, links int) RawPipeline {
	c := b.cfg
	raw := RawPipeline{Name: name, Policy: policy.String(), Links: links, MemBytes: c.PipelineMem, Dirty: c.PipelineDirty, Pattern: "scattered"}
	err := func() error {
		dirty, err := synthDirty("scattered", c.PipelineDirty, c.PipelineMem/pageSize, 1)
		if err != nil {
			return err
		}
		src, err := newSynthSource(c.PipelineMem, dirty)
		if err != nil {
			return err
		}
		defer src.Close()
		rs, err := b.startReplicas(ctx, nil, links, nil)
		if err != nil {
			return err
		}
		defer rs.stop()
		raw.Trace = filepath.Join(tracesDir, "pipeline-"+fmt.Sprintf("%s%d", policy, links)+".jsonl")
		f, err := os.Create(filepath.Join(c.Out, raw.Trace))
		if err != nil {
			return err
		}
		defer f.Close()
		pcfg := replicate.PrimaryConfig{
			Auth:  b.auth,
			Links: rs.addrs, Leader: rs.leadAddr, VMID: newVMID(), Guest: "synthetic", VCPUs: 1,
			Epoch:  time.Microsecond, // back to back
			Policy: policy, Mode: replicate.ModeSync, SGMax: c.SGMax, Reduce: &seedPages, Log: b.log,
			Trace: replicate.NewTraceWriter(f), AckTimeout: 30 * time.Second,
		}
		gate := replicate.NewOutputGate(io.Discard, 1<<20)
		defer gate.Close()
		p, err := replicate.NewPrimary(pcfg, src, gate)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = p.Connect(cctx)
		cancel()
		if err != nil {
			return err
		}
		rctx, stop := context.WithTimeout(ctx, c.PipelineTime+time.Minute)
		defer stop()
		done := make(chan error, 1)
		go func() { done <- p.Run(rctx) }()
		// Measure from the end of the initial copy.
		for p.Committed() < 1 {
			select {
			case err := <-done:
				return fmt.Errorf("replication stopped: %v", err)
			case <-time.After(time.Millisecond):
			}
		}
		start := time.Now()
		select {
		case err := <-done:
			return fmt.Errorf("replication stopped: %v", err)
		case <-time.After(c.PipelineTime):
		}
		stop()
		raw.Elapsed = time.Since(start)
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return nil
	}()
	if err != nil {
		raw.Error = err.Error()
	}
	return raw
}
