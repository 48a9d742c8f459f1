/*
 * runtime.c - the small runtime shared by the long64 test guests: polled
 * UART output, decimal/hex printing, the debug-exit port and halting.
 */
#include "tandem.h"

void uart_putc(char c)
{
	/* Wait until the transmit holding register is empty, then send. */
	while (!(inb(UART_LSR) & LSR_THR_EMPTY))
		cpu_relax();
	outb(UART_THR, (u8)c);
}

void uart_puts(const char *s)
{
	while (*s)
		uart_putc(*s++);
}

void uart_put_dec(u64 v)
{
	char buf[20]; /* 2^64-1 has 20 decimal digits */
	int n = 0;

	do {
		buf[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		uart_putc(buf[--n]);
}

void uart_put_hex(u64 v)
{
	static const char digits[] = "0123456789abcdef";
	int shift = 60;

	/* Skip leading zeros, but print at least one digit. */
	while (shift > 0 && !((v >> shift) & 0xF))
		shift -= 4;
	uart_puts("0x");
	for (; shift >= 0; shift -= 4)
		uart_putc(digits[(v >> shift) & 0xF]);
}

void exit_vm(u32 code)
{
	outl(DEBUG_EXIT_PORT, code);
	/* The VMM stops the VM on that write; if it somehow does not, park. */
	halt_forever();
}

void halt_forever(void)
{
	for (;;)
		__asm__ __volatile__("cli; hlt" ::: "memory");
}

/*
 * check_params returns if the parameter page's magic and version are what
 * the guests were built for. Otherwise vCPU 0 prints why and stops the VM
 * with exit status 1, and the other vCPUs halt.
 */
void check_params(const struct boot_params *bp, u64 cpu, const char *guest)
{
	if (bp->magic == PARAM_MAGIC && bp->version == 1)
		return;
	if (cpu != 0)
		halt_forever();
	uart_puts(guest);
	uart_puts(": bad boot parameter page\n");
	exit_vm(1);
}
