/*
 * vectors.S - the counter guest's interrupt entry points.
 *
 * counter.c builds a 48-entry IDT: vectors 0-31 are the CPU exceptions of
 * lib/traps.S, 0x20-0x2F the remapped 8259 PICs from the table at the end
 * (IRQ 0-7 on the master at 0x20-0x27, IRQ 8-15 on the slave at 0x28-0x2F).
 */
	.text

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
	.globl	irq_vectors
irq_vectors:			/* handler address for vectors 0x20-0x2F */
	.quad	irq_master, irq_master, irq_master, irq_master
	.quad	irq_master, irq_master, irq_master, irq_spurious_master
	.quad	irq_slave, irq_slave, irq_slave, irq_slave
	.quad	irq_slave, irq_slave, irq_slave, irq_spurious_slave
