// Package vmm owns a virtual machine: guest memory (one host mapping), the
// vCPU threads and their run loop, the device bus, pause and resume of all
// vCPUs, capture and restore of the whole machine state, snapshot files, and
// the sources of dirty pages (KVM's dirty ring or dirty bitmap, plus the pages
// device models write). It loads guests (flat test guests, Linux kernels:
// linux.go) and wires virtio devices to KVM: irqfd, ioeventfd and guest
// memory access through the dirty hook (virtio.go).
//
// vmm joins the kvm package (ioctls, no policy) with the device models and,
// later, replication: the replicate package never issues ioctls itself, it
// sees a paused VM through the small interfaces this package implements.
//
// # Threads
//
// Each vCPU runs KVM_RUN on its own goroutine locked to an OS thread. Pause
// asks every vCPU to stop: it sets kvm_run.immediate_exit and signals the
// thread, so a vCPU inside KVM_RUN (running, or blocked in HLT) returns with
// EINTR, and one about to enter returns at once. A vCPU re-enters KVM_RUN
// with immediate_exit set after handling an I/O exit, which makes KVM finish
// the instruction before returning, so a paused vCPU's registers are always
// between two guest instructions. Paused vCPUs wait at a barrier until
// Resume.
package vmm
