package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tandemvm/tandem/images"
	"github.com/tandemvm/tandem/vmm"
)

// harvestRingBytes is the dirty ring size of the harvest experiment: the
// largest KVM offers here (65536 entries), since PVM's emulator pushes an
// entry per store (see the README).
const harvestRingBytes = 1 << 20

// harvestInterval is the time between harvests for a working set of k
// pages: long enough that the guest (about 100k pages/s sequentially in
// the emulator) writes the whole set between two harvests.
func harvestInterval(k uint64) time.Duration {
	return 100*time.Millisecond + time.Duration(k)*time.Second/80000
}

// runHarvest measures the harvest of a paused VM's dirty pages, exactly as
// the primary harvests them (vmm.ReplicationSource.HarvestDirty, including
// the walk that lists the pages), with the dirty guest writing a working
// set of k pages over and over, so that each harvest finds about k dirty
// pages (plus its status and stack pages).
func (b *bencher) runHarvest(ctx context.Context, tracking vmm.DirtyTracking, memBytes, k uint64, epochs int) []RawHarvest {
	fail := func(err error) []RawHarvest {
		return []RawHarvest{{Tracking: tracking.String(), MemBytes: memBytes, Target: k, Error: err.Error()}}
	}
	params := images.DefaultDirtyParams(memBytes)
	params.Pattern, params.Pages, params.Ring = images.PatternSequential, k, b.cfg.Ring
	if err := params.Validate(memBytes, guestVCPUs); err != nil {
		return fail(err)
	}
	vm, err := vmm.New(vmm.Config{
		Memory: vmm.MemoryConfig{Bytes: memBytes}, VCPUs: guestVCPUs, Dirty: tracking,
		DirtyRingBytes: harvestRingBytes, Logger: b.log,
	})
	if err != nil {
		return fail(err)
	}
	defer vm.Close()
	guest, _ := images.Lookup("dirty")
	if err := vm.LoadFlat(guest.Image, guest.Mode, params.Args()); err != nil {
		return fail(err)
	}
	src, err := vmm.NewReplicationSource(vm)
	if err != nil {
		return fail(err)
	}
	vctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := vm.Run(vctx); done <- err }()
	defer func() {
		stop()
		vm.Stop()
		<-done
	}()
	mem := vm.Memory().Bytes()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := pagesWritten(mem); ok {
			break
		}
		if time.Now().After(deadline) {
			return fail(errors.New("the guest did not start in 10s"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	var out []RawHarvest
	var pages []uint64
	for i := -1; i < epochs; i++ { // the first harvest clears the start-up
		select {
		case <-ctx.Done():
			return append(out, RawHarvest{Tracking: tracking.String(), MemBytes: memBytes, Target: k, Error: ctx.Err().Error()})
		case err := <-done:
			done <- err
			return append(out, RawHarvest{Tracking: tracking.String(), MemBytes: memBytes, Target: k, Error: fmt.Sprintf("the VM stopped: %v", err)})
		case <-time.After(harvestInterval(k)):
		}
		if err := vm.Pause(); err != nil {
			return append(out, RawHarvest{Tracking: tracking.String(), MemBytes: memBytes, Target: k, Error: err.Error()})
		}
		t := time.Now()
		pages, err = src.HarvestDirty(pages[:0])
		took := time.Since(t)
		vm.Resume()
		if err != nil {
			return append(out, RawHarvest{Tracking: tracking.String(), MemBytes: memBytes, Target: k, Error: err.Error()})
		}
		if i >= 0 {
			out = append(out, RawHarvest{Tracking: tracking.String(), MemBytes: memBytes, Target: k, Dirty: len(pages), Took: took})
		}
	}
	return out
}
