/*
 * traps.S - CPU exception entry points, for the guests that take
 * exceptions (linked by counter and dirty, not by every guest).
 *
 * Some exceptions push an error code and some do not; the stubs even this
 * out and call guest_exception(frame) with frame pointing at, as u64s:
 *   [0] vector, [1] error code (0 if none), [2] RIP, [3] CS, [4] RFLAGS,
 *   [5] RSP, [6] SS
 * (the TRAP_* indexes in tandem.h). guest_exception must not return.
 * exception_vectors holds the stubs' addresses for vectors 0-31; idt.c
 * puts them in an IDT.
 */
	.text

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
	movq	%rsp, %rdi	/* the frame described above */
	andq	$-16, %rsp	/* align the stack for the C call */
	call	guest_exception	/* does not return */
1:	cli
	hlt
	jmp	1b

	.section .rodata
	.balign	8
	.globl	exception_vectors
exception_vectors:		/* stub address for vectors 0-31 */
	.quad	exc0, exc1, exc2, exc3, exc4, exc5, exc6, exc7
	.quad	exc8, exc9, exc10, exc11, exc12, exc13, exc14, exc15
	.quad	exc16, exc17, exc18, exc19, exc20, exc21, exc22, exc23
	.quad	exc24, exc25, exc26, exc27, exc28, exc29, exc30, exc31
