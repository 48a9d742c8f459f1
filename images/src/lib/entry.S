/*
 * entry.S - the first bytes of every long64 test guest.
 *
 * The VMM enters the image at its first byte, on every vCPU at once, in
 * 64-bit long mode with paging on and interrupts off:
 *   RDI = address of the boot parameter page (0x7000)
 *   RSI = this vCPU's index
 *   RSP = this vCPU's stack top (16-byte aligned)
 * The linker script puts .text.entry first, so _start is at 0x100000.
 */
	.section .text.entry, "ax"
	.globl _start
_start:
	cld			/* the C ABI wants the direction flag clear */
	xorl	%ebp, %ebp	/* end of the frame-pointer chain */
	call	guest_main	/* guest_main(params, cpu): RDI and RSI as given */
	jmp	halt_forever	/* guest_main should not return; park if it does */
