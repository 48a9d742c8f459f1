package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tandemvm/tandem/replicate"
)

// runRecovery measures the leader's recovery of a VM of memBytes, every
// page of it written, from n replicas fed by the fast policy (each holds
// 1/n of the pages) over the shaped links: the leader, in the root
// namespace, reads the image back through the replicas' shaped egress, as
// seed 003's Leader read it from the replication servers. The source is
// synthetic, so the bytes recovered can be checked against it.
func (b *bencher) runRecovery(ctx context.Context, memBytes uint64, n, reps int) []RawRecovery {
	fail := func(err error) []RawRecovery {
		return []RawRecovery{{MemBytes: memBytes, Replicas: n, Error: err.Error()}}
	}
	src, err := newSynthSource(memBytes, []uint64{0, 1, 2, 3})
	if err != nil {
		return fail(err)
	}
	defer src.Close()
	rs, err := b.startReplicas(ctx, b.lab, n, nil)
	if err != nil {
		return fail(err)
	}
	defer rs.stop()
	pcfg := replicate.PrimaryConfig{
		Auth:  b.auth,
		Links: rs.addrs, Leader: rs.leadAddr, VMID: newVMID(), Guest: "synthetic", VCPUs: 1,
		Epoch: 20 * time.Millisecond, Policy: replicate.PolicyFast, Mode: replicate.ModeSync,
		SGMax: b.cfg.SGMax, Reduce: &seedPages, Log: b.log, AckTimeout: 30 * time.Second,
	}
	gate := replicate.NewOutputGate(io.Discard, 1<<20)
	defer gate.Close()
	p, err := replicate.NewPrimary(pcfg, src, gate)
	if err != nil {
		return fail(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = p.Connect(cctx)
	cancel()
	if err != nil {
		return fail(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	var synced time.Duration
	go func() { done <- p.Run(rctx) }()
	// The initial copy is epoch 1; wait for two more epochs so that the
	// leader holds committed state.
	deadline := time.Now().Add(5*time.Minute + time.Duration(float64(memBytes)*8/float64(b.cfg.LinkRate)*float64(time.Second)))
	for p.Committed() < 3 {
		if p.Committed() >= 1 && synced == 0 {
			synced = time.Since(start)
		}
		select {
		case err := <-done:
			stop()
			return fail(fmt.Errorf("replication stopped: %v", err))
		case <-ctx.Done():
			stop()
			<-done
			return fail(ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			<-done
			return fail(errors.New("the initial copy did not finish in time"))
		}
	}
	stop()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		return fail(fmt.Errorf("replication: %v", err))
	}
	var out []RawRecovery
	for rep := range reps {
		r := RawRecovery{MemBytes: memBytes, Replicas: n, Rep: rep, SyncTook: synced}
		rec, err := rs.leader.Recover(ctx, rs.addrs)
		if err != nil {
			r.Error = err.Error()
		} else {
			r.Took, r.Epoch = rec.Took, rec.Epoch
			r.Verified = bytes.Equal(rec.Memory, src.Memory())
			if !r.Verified {
				r.Error = "the recovered image differs from the source's memory"
			}
		}
		out = append(out, r)
		if ctx.Err() != nil {
			break
		}
	}
	return out
}
