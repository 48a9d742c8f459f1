/*
 * vectors.S - the counter guest's interrupt and exception entry points.
 *
 * counter.c builds a 48-entry IDT from the two address tables at the end:
 * vectors 0-31 are CPU exceptions, 0x20-0x2F the remapped 8259 PICs
 * (IRQ 0-7 on the master at 0x20-0x27, IRQ 8-15 on the slave at 0x28-0x2F).
 */
	.text

/*
 * CPU exceptions. Some push an error code, some do not; the stubs even
 * this out so the common code always sees, from the top of the stack:
 * vector, error code, RIP, CS, RFLAGS, RSP, SS.
 */
	.macro	EXC_NOERR n
exc\n:
	pushq	$0		/* no error code from the CPU: push a dummy */
	pushq	$\n
	jmp	exception_common
	.endm

	.macro	EXC_ERR n
exc\n:
	pushq	$\n		/* the CPU already pushed an error code */
	jmp	exception_common
	.endm

	EXC_NOERR 0		/* #DE divide error */
	EXC_NOERR 1		/* #DB debug */
	EXC_NOERR 2		/* NMI */
	EXC_NOERR 3		/* #BP breakpoint */
	EXC_NOERR 4		/* #OF overflow */
	EXC_NOERR 5		/* #BR bound range */
	EXC_NOERR 6		/* #UD invalid opcode */
	EXC_NOERR 7		/* #NM device not available */
	EXC_ERR   8		/* #DF double fault */
	EXC_NOERR 9		/* coprocessor segment overrun */
	EXC_ERR   10		/* #TS invalid TSS */
	EXC_ERR   11		/* #NP segment not present */
	EXC_ERR   12		/* #SS stack fault */
	EXC_ERR   13		/* #GP general protection */
	EXC_ERR   14		/* #PF page fault */
	EXC_NOERR 15		/* reserved */
	EXC_NOERR 16		/* #MF x87 error */
	EXC_ERR   17		/* #AC alignment check */
	EXC_NOERR 18		/* #MC machine check */
	EXC_NOERR 19		/* #XM SIMD error */
	EXC_NOERR 20		/* #VE virtualization exception */
	EXC_ERR   21		/* #CP control protection */
	EXC_NOERR 22
	EXC_NOERR 23
	EXC_NOERR 24
	EXC_NOERR 25
	EXC_NOERR 26
	EXC_NOERR 27
	EXC_NOERR 28
	EXC_ERR   29		/* #VC VMM communication */
	EXC_ERR   30		/* #SX security exception */
	EXC_NOERR 31

exception_common:
	movq	(%rsp), %rdi	/* vector */
	movq	16(%rsp), %rsi	/* RIP of the faulting instruction */
	andq	$-16, %rsp	/* align the stack for the C call */
	call	counter_exception	/* prints and stops the VM; no return */
1:	cli
	hlt
	jmp	1b

/*
 * 8259 interrupts. The guest only unmasks IRQ 4 (COM1); the handler has
 * nothing to do but acknowledge it: the main loop reads the UART itself
 * once HLT returns. The other vectors are covered in case the PIC ever
 * delivers them anyway.
 */
irq_master:			/* 0x20-0x26: IRQ 0-6 */
	pushq	%rax
	movb	$0x20, %al	/* non-specific EOI */
	outb	%al, $0x20	/* to the master PIC */
	popq	%rax
	iretq

irq_spurious_master:		/* 0x27: IRQ 7, also the master's spurious vector */
	iretq			/* a spurious interrupt must not get an EOI */

irq_slave:			/* 0x28-0x2E: IRQ 8-14 */
	pushq	%rax
	movb	$0x20, %al
	outb	%al, $0xA0	/* EOI to the slave ... */
	outb	%al, $0x20	/* ... and to the master (cascade on IRQ 2) */
	popq	%rax
	iretq

irq_spurious_slave:		/* 0x2F: IRQ 15, also the slave's spurious vector */
	pushq	%rax		/* the master did see IRQ 2, so it gets an EOI */
	movb	$0x20, %al
	outb	%al, $0x20
	popq	%rax
	iretq

	.section .rodata
	.balign	8
	.globl	vector_table
vector_table:			/* handler address for vectors 0-47 */
	.quad	exc0, exc1, exc2, exc3, exc4, exc5, exc6, exc7
	.quad	exc8, exc9, exc10, exc11, exc12, exc13, exc14, exc15
	.quad	exc16, exc17, exc18, exc19, exc20, exc21, exc22, exc23
	.quad	exc24, exc25, exc26, exc27, exc28, exc29, exc30, exc31
	.quad	irq_master, irq_master, irq_master, irq_master
	.quad	irq_master, irq_master, irq_master, irq_spurious_master
	.quad	irq_slave, irq_slave, irq_slave, irq_slave
	.quad	irq_slave, irq_slave, irq_slave, irq_spurious_slave
