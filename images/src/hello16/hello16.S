/*
 * hello16 - a real-mode test guest, like a boot sector.
 *
 * The VMM loads this image at 0x10000 and enters it with
 * CS = DS = ES = SS = 0x1000, IP = 0, SP = 0xFFF0 and interrupts off,
 * so offsets in this file are offsets from the start of the image.
 * It prints one line on COM1 and stops the VM with exit status 0.
 *
 * Every vCPU starts here. Only the one whose initial APIC ID (CPUID leaf 1,
 * EBX bits 31-24) is 0 prints; the others halt. (If the VMM does not set
 * per-vCPU APIC IDs in CPUID, every vCPU prints: run it with one vCPU.)
 */
	.code16
	.section .text
	.globl _start
_start:
	cld
	movl	$1, %eax
	cpuid
	shrl	$24, %ebx	/* initial APIC ID */
	jnz	halt		/* not the boot processor */
	movw	$message, %si
next_char:
	lodsb			/* AL = [DS:SI], SI++ */
	testb	%al, %al
	jz	done
	movb	%al, %bl
	movw	$0x3FD, %dx	/* line status register */
wait_thr:
	inb	%dx, %al
	testb	$0x20, %al	/* transmit holding register empty? */
	jz	wait_thr
	movb	%bl, %al
	movw	$0x3F8, %dx	/* transmit holding register */
	outb	%al, %dx
	jmp	next_char
done:
	xorb	%al, %al	/* exit status 0 */
	outb	%al, $0xF4	/* debug-exit port: the VM stops here */
halt:
	cli
	hlt
	jmp	halt

message:
	.asciz	"hello16: real mode\n"
