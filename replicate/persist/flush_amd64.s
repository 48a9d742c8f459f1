#include "textflag.h"

// func cpuidLeaf7() (ebx uint32)
TEXT ·cpuidLeaf7(SB), NOSPLIT, $0-4
	MOVL $7, AX
	MOVL $0, CX
	CPUID
	MOVL BX, ebx+0(FP)
	RET

// func flushCLWB(p, n uintptr)
TEXT ·flushCLWB(SB), NOSPLIT, $0-16
	MOVQ p+0(FP), AX
	MOVQ n+8(FP), CX
	ADDQ AX, CX
	ANDQ $~63, AX
clwb:
	CMPQ AX, CX
	JAE clwbdone
	CLWB (AX)
	ADDQ $64, AX
	JMP clwb
clwbdone:
	SFENCE
	RET

// func flushCLFLUSHOPT(p, n uintptr)
TEXT ·flushCLFLUSHOPT(SB), NOSPLIT, $0-16
	MOVQ p+0(FP), AX
	MOVQ n+8(FP), CX
	ADDQ AX, CX
	ANDQ $~63, AX
opt:
	CMPQ AX, CX
	JAE optdone
	CLFLUSHOPT (AX)
	ADDQ $64, AX
	JMP opt
optdone:
	SFENCE
	RET

// func flushCLFLUSH(p, n uintptr)
TEXT ·flushCLFLUSH(SB), NOSPLIT, $0-16
	MOVQ p+0(FP), AX
	MOVQ n+8(FP), CX
	ADDQ AX, CX
	ANDQ $~63, AX
fl:
	CMPQ AX, CX
	JAE fldone
	CLFLUSH (AX)
	ADDQ $64, AX
	JMP fl
fldone:
	MFENCE
	RET
