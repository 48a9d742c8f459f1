/*
 * user.S - the dirty guest's way into and out of ring 3.
 *
 * dirty.c's enter_ring3 irets to user_entry with RDI = the vCPU's worker
 * and RSP = its user stack (16-byte aligned). user_main runs the passes;
 * when it returns, the ud2 at user_exit raises #UD, which brings the vCPU
 * back to ring 0 and into guest_exception, which knows this address.
 */
	.text
	.globl	user_entry, user_exit
user_entry:
	call	user_main
user_exit:
	ud2
