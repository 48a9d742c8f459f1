// Package boot turns a guest image into the initial contents of guest memory
// and the initial state of every vCPU. It never touches KVM: loaders write
// into a byte slice that holds guest RAM from guest-physical address 0 and
// return register values, which the vmm package hands to KVM.
//
// # Flat test guests
//
// Tandem's purpose-built test guests (package images) are flat binaries, not
// ELF files, entered in one of two CPU modes.
//
// A long64 image is loaded at [FlatLoadAddr] (1 MiB) and every vCPU starts at
// its first byte in 64-bit long mode, ring 0, paging on, interrupts off:
//
//	0x00500  GDT: 0x08 64-bit code, 0x10 data, 0x18 64-bit TSS (all accessed bits
//	         preset, so loading a selector never writes the table)
//	0x00600  TSS (104 bytes)
//	0x07000  boot parameter page, written by the VMM (layout below)
//	0x08000  status page: the guest writes its progress here, 64 bytes per vCPU
//	0x09000  PML4, then one PDPT, then one page directory per GiB mapped:
//	         the first max(4 GiB, RAM) up to 32 GiB are identity-mapped with
//	         2 MiB pages whose Accessed and Dirty bits are preset, so the
//	         guest's page walker writes nothing and the dirty log shows only
//	         the guest's own stores
//	0x80000  top of vCPU 0's stack; vCPU i's stack top is 0x80000 - i*0x2000
//	0x100000 the image, entered at its first byte
//
// Registers: RDI = [ParamPageGPA], RSI = the vCPU index, RSP = its stack top,
// RFLAGS = 0x2. There is no IDT: a guest that takes interrupts loads its own.
// All vCPUs start at once; the VMM makes the application processors runnable
// directly instead of going through INIT/SIPI.
//
// The boot parameter page (little endian):
//
//	0x00 u64 magic "TANDEMP1"       0x18 u64 TSC frequency in kHz (0 if unknown)
//	0x08 u32 version (1)            0x20 u64 status page address
//	0x0C u32 number of vCPUs        0x28 u64 first page-aligned address after the image
//	0x10 u64 guest RAM in bytes     0x40 u64 args[24], guest-specific
//
// A real16 image is loaded at [Real16LoadAddr] (64 KiB) and entered with
// CS=DS=ES=SS=0x1000, IP=0, SP=0xFFF0: one 64 KiB segment, like a .COM file.
//
// # Linux kernels
//
// [LoadLinux] boots a bzImage or an ELF vmlinux through the Linux boot
// protocol or the PVH entry, with a zero page, e820 map, initrd, MP table
// and CPUID ([LinuxCPUID]); its documentation gives the memory layout.
package boot
