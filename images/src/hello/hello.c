/*
 * hello - the smallest long64 test guest.
 *
 * vCPU 0 prints one line with the vCPU count and RAM size from the boot
 * parameter page and stops the VM with exit status 0. The other vCPUs halt.
 * Exit status 1 means the parameter page was not what the guest expects.
 */
#include "tandem.h"

void guest_main(const struct boot_params *bp, u64 cpu)
{
	check_params(bp, cpu, "hello");
	if (cpu != 0)
		halt_forever();

	uart_puts("hello: Tandem guest up, ");
	uart_put_dec(bp->vcpus);
	uart_puts(" vCPUs, ");
	uart_put_dec(bp->mem_bytes >> 20);
	uart_puts(" MiB\n");
	exit_vm(0);
}
