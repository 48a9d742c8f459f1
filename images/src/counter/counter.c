/*
 * counter - a line-oriented service on COM1, for tests that talk to a guest.
 *
 * At boot vCPU 0 prints "counter: ready". Then, one command per line
 * (ended by "\n" or "\r\n"; empty lines are ignored):
 *   INC <id>   add one to the counter, reply "OK <id> <new value>"
 *              (<id>: 1-32 printable characters other than space)
 *   GET        reply "VALUE <value>"
 * Anything else gets "ERR unknown command", a line longer than 64
 * characters "ERR line too long". The counter is a u64 in .bss; args[0],
 * if non-zero, is its initial value.
 *
 * The guest is interrupt driven so that an idle guest costs the host
 * nothing: it halts until COM1 raises IRQ 4 through the 8259 PIC.
 * A CPU exception prints "counter: exception <n> rip 0x<hex>" and stops the
 * VM with exit status 0xE0 + n. The other vCPUs just halt.
 */
#include "tandem.h"

#define MAX_LINE 64 /* longest accepted line, without its line ending */
#define MAX_ID 32   /* longest accepted id */

static u64 counter;

/* ---- interrupts ---------------------------------------------------- */

#define IDT_VECTORS 48 /* 32 exceptions + 16 PIC interrupts */
#define IRQ_VECTORS (IDT_VECTORS - EXCEPTION_VECTORS)

static struct idt_gate idt[IDT_VECTORS];
extern const u64 irq_vectors[IRQ_VECTORS]; /* vectors.S */

static void load_idt(void)
{
	idt_set_exceptions(idt);
	for (int i = 0; i < IRQ_VECTORS; i++)
		idt_set(idt, EXCEPTION_VECTORS + i, irq_vectors[i]);
	idt_load(idt, IDT_VECTORS);
}

/* Called from lib/traps.S for vectors 0-31. */
void guest_exception(u64 *frame)
{
	uart_puts("counter: exception ");
	uart_put_dec(frame[TRAP_VECTOR]);
	uart_puts(" rip ");
	uart_put_hex(frame[TRAP_RIP]);
	uart_putc('\n');
	exit_vm(0xE0 + (u32)frame[TRAP_VECTOR]);
}

/*
 * Remap the two 8259 PICs to vectors 0x20-0x2F (away from the CPU
 * exceptions) and unmask only IRQ 4 (COM1) and IRQ 2 (the cascade).
 */
static void init_pics(void)
{
	outb(0x20, 0x11); /* ICW1: initialise, edge triggered, ICW4 follows */
	outb(0xA0, 0x11);
	outb(0x21, 0x20); /* ICW2: master vectors 0x20-0x27 */
	outb(0xA1, 0x28); /*       slave vectors 0x28-0x2F */
	outb(0x21, 0x04); /* ICW3: master has the slave on IRQ 2 */
	outb(0xA1, 0x02); /*       slave's cascade identity is 2 */
	outb(0x21, 0x01); /* ICW4: 8086 mode, normal EOI */
	outb(0xA1, 0x01);
	outb(0x21, (u8)~((1 << 4) | (1 << 2))); /* OCW1: masks */
	outb(0xA1, 0xFF);
}

/*
 * Sleep until an interrupt arrives. STI enables interrupts only after the
 * next instruction, so an interrupt that became pending before this point
 * wakes HLT instead of being taken between STI and HLT and then sleeping
 * forever. Interrupts are off again when this returns.
 */
static void wait_for_interrupt(void)
{
	__asm__ __volatile__("sti; hlt; cli" ::: "memory");
}

/* ---- commands ------------------------------------------------------ */

static int starts_with(const char *s, u64 len, const char *prefix)
{
	u64 i;

	for (i = 0; prefix[i]; i++)
		if (i >= len || s[i] != prefix[i])
			return 0;
	return 1;
}

static int valid_id(const char *id, u64 len)
{
	if (len < 1 || len > MAX_ID)
		return 0;
	for (u64 i = 0; i < len; i++)
		if (id[i] <= ' ' || id[i] > '~')
			return 0;
	return 1;
}

static void run_command(const char *line, u64 len)
{
	if (len == 3 && starts_with(line, len, "GET")) {
		uart_puts("VALUE ");
		uart_put_dec(counter);
		uart_putc('\n');
		return;
	}
	if (starts_with(line, len, "INC ") && valid_id(line + 4, len - 4)) {
		counter++;
		uart_puts("OK ");
		for (u64 i = 4; i < len; i++)
			uart_putc(line[i]);
		uart_putc(' ');
		uart_put_dec(counter);
		uart_putc('\n');
		return;
	}
	uart_puts("ERR unknown command\n");
}

/*
 * The line being received. It holds one byte more than MAX_LINE so that a
 * line of exactly MAX_LINE characters still fits with its "\r".
 */
static char line[MAX_LINE + 1];
static u64 line_len;
static int line_too_long; /* discarding until the next "\n" */

static void receive_byte(char c)
{
	if (c != '\n') {
		if (line_len < sizeof(line))
			line[line_len++] = c;
		else
			line_too_long = 1;
		return;
	}
	if (line_len > 0 && line[line_len - 1] == '\r')
		line_len--; /* "\r\n" ends a line like "\n" */
	if (line_too_long || line_len > MAX_LINE)
		uart_puts("ERR line too long\n");
	else if (line_len > 0)
		run_command(line, line_len);
	line_len = 0;
	line_too_long = 0;
}

void guest_main(const struct boot_params *bp, u64 cpu)
{
	check_params(bp, cpu, "counter");
	if (cpu != 0)
		halt_forever();
	counter = bp->args[0];

	load_idt();
	init_pics();
	outb(UART_IER, 0x01); /* interrupt when received data is available */
	outb(UART_MCR, 0x0B); /* DTR, RTS, and OUT2, which gates the IRQ */
	uart_puts("counter: ready\n");

	for (;;) {
		/* Read LSR before every RBR read: RBR is only valid if DR is set. */
		while (inb(UART_LSR) & LSR_DATA_READY)
			receive_byte((char)inb(UART_RBR));
		wait_for_interrupt();
	}
}
