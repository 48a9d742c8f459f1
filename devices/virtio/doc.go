// Package virtio implements Tandem's virtio devices for Linux guests:
// the virtio-mmio transport (virtio 1.x, "modern", version 2 registers),
// split virtqueues and descriptor chains, and four devices:
//
//   - [Block], virtio-blk over a [BlockBackend] (a file or block device,
//     read-only or writable, with flush). The backend interface is where
//     replication sees disk writes: [TrackedBackend] records the blocks
//     each epoch wrote (see [BlockBackend]);
//   - [Net], virtio-net over a [NetBackend] (a TAP device, [OpenTAP]);
//   - [Console], virtio-console with one port: a byte stream between the
//     guest's /dev/hvc0 and a host stream such as a devices.Console;
//   - [RNG], virtio-rng fed from the host's crypto/rand.
//
// The package owns the guest-visible behaviour of these devices and
// nothing of KVM: the VMM (package vmm) places each [MMIO] transport in the
// guest-physical hole below 4 GiB, registers it on the device bus, wires its
// [Interrupt] to an irqfd and its queue notifications to ioeventfds (which
// call [MMIO.Notify]), and announces it on the kernel command line with
// virtio_mmio.device=<size>@<addr>:<irq>.
//
// Guest memory is reached only through devices.GuestMemory, whose WriteAt
// the VMM implements by recording the pages as dirty: every byte a device
// writes into the guest (used rings, received frames, disk reads, entropy)
// is therefore seen by dirty tracking and replication.
//
// Descriptor chains come from the guest and are untrusted. [Queue.Pop]
// checks every index, length and flag: a malformed chain (a loop, an index
// out of range, a nested or misplaced indirect table, a readable buffer
// after a writable one, a buffer outside guest RAM) is returned to the
// driver unprocessed with a used length of 0, and the device carries on; a
// broken ring (an available index that runs ahead by more than the ring
// size, a head out of range) makes the device stop using the queue and set
// DEVICE_NEEDS_RESET. Nothing the guest writes makes the VMM panic, and
// every allocation a request causes is bounded.
package virtio
