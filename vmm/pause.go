package vmm

import (
	"errors"
	"sync"
)

// ErrNotRunning is returned by Pause when the VM has stopped.
var ErrNotRunning = errors.New("vmm: VM is not running")

type vcpuRunState int

const (
	vcpuIdle    vcpuRunState = iota // not started: counts as parked
	vcpuRunning                     // in or around KVM_RUN
	vcpuParked                      // waiting at the pause barrier
	vcpuExited                      // its goroutine returned
)

// runControl is the barrier between the vCPU goroutines and whoever pauses,
// resumes or stops them. Pauses nest: the vCPUs run again when the last
// Pause has been matched by a Resume.
type runControl struct {
	mu         sync.Mutex
	cond       sync.Cond
	state      []vcpuRunState
	pauseDepth int
	stopping   bool
}

func (r *runControl) init(n int) {
	r.cond.L = &r.mu
	r.state = make([]vcpuRunState, n)
}

// Pause stops every vCPU between two guest instructions, waits until all
// of them wait at the barrier (or have exited), then holds the devices'
// threads (see pauseDevices). Pauses nest; Resume releases the devices
// and then the vCPUs.
func (v *VM) Pause() error {
	r := &v.ctl
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping {
		return ErrNotRunning
	}
	r.pauseDepth++
	if r.pauseDepth > 1 {
		return nil
	}
	for i, c := range v.vcpus {
		if r.state[i] == vcpuRunning {
			c.kick()
		}
	}
	for !r.allStill() {
		r.cond.Wait()
	}
	v.pauseDevices()
	return nil
}

// pauseDevices holds the device threads once the vCPUs are still: virtio
// queue processing (and with it TAP and console reads reaching the guest)
// and host input to COM1. While paused no device writes guest memory or
// raises an interrupt, so memory, device state and interrupt controllers
// can be captured together.
func (v *VM) pauseDevices() {
	v.uart.Pause()
	for _, d := range v.VirtioDevices() {
		d.Transport.Pause()
	}
}

// resumeDevices undoes pauseDevices, before the vCPUs run again.
func (v *VM) resumeDevices() {
	for _, d := range v.VirtioDevices() {
		d.Transport.Resume()
	}
	v.uart.Resume()
}

// Resume undoes one Pause.
func (v *VM) Resume() {
	r := &v.ctl
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pauseDepth == 0 {
		return
	}
	r.pauseDepth--
	if r.pauseDepth == 0 {
		v.resumeDevices()
		for _, c := range v.vcpus {
			c.k.SetImmediateExit(false)
		}
		r.cond.Broadcast()
	}
}

// Paused reports whether the VM is held by at least one Pause.
func (v *VM) Paused() bool {
	v.ctl.mu.Lock()
	defer v.ctl.mu.Unlock()
	return v.ctl.pauseDepth > 0
}

// Stop makes every vCPU goroutine return; Run then returns. It does not wait.
func (v *VM) Stop() {
	r := &v.ctl
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping {
		return
	}
	r.stopping = true
	for i, c := range v.vcpus {
		if r.state[i] == vcpuRunning {
			c.kick()
		}
	}
	r.cond.Broadcast()
}

func (r *runControl) allStill() bool {
	for _, s := range r.state {
		if s == vcpuRunning {
			return false
		}
	}
	return true
}

// start is called by vCPU i's goroutine before its first KVM_RUN. It
// parks the vCPU if a pause is already held and reports whether to run.
func (r *runControl) start(i int) bool { return r.interrupted(i) }

// interrupted is called by vCPU i after KVM_RUN returned EINTR. It parks the
// vCPU while a pause holds and reports whether the vCPU should keep running.
func (r *runControl) interrupted(i int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pauseDepth > 0 && !r.stopping {
		r.state[i] = vcpuParked
		r.cond.Broadcast()
		for r.pauseDepth > 0 && !r.stopping {
			r.cond.Wait()
		}
	}
	if r.stopping {
		return false
	}
	r.state[i] = vcpuRunning
	return true
}

// exited records that vCPU i's goroutine has returned.
func (r *runControl) exited(i int) {
	r.mu.Lock()
	r.state[i] = vcpuExited
	r.cond.Broadcast()
	r.mu.Unlock()
}

func (r *runControl) waitExited() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		done := true
		for _, s := range r.state {
			if s == vcpuRunning || s == vcpuParked {
				done = false
			}
		}
		if done {
			return
		}
		r.cond.Wait()
	}
}
