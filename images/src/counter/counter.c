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

/* A 64-bit IDT gate. */
struct idt_gate {
	u16 offset_low;
	u16 selector;
	u8 ist;
	u8 type_attr;
	u16 offset_mid;
	u32 offset_high;
	u32 reserved;
};

#define IDT_VECTORS 48       /* 32 exceptions + 16 PIC interrupts */
#define KERNEL_CS 0x08       /* the VMM's 64-bit code segment */
#define GATE_INTERRUPT 0x8E  /* present, DPL 0, 64-bit interrupt gate */

static struct idt_gate idt[IDT_VECTORS];
extern const u64 vector_table[IDT_VECTORS]; /* vectors.S */

static void load_idt(void)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) idtr;

	for (int v = 0; v < IDT_VECTORS; v++) {
		u64 handler = vector_table[v];

		idt[v].offset_low = (u16)handler;
		idt[v].selector = KERNEL_CS;
		idt[v].ist = 0;
		idt[v].type_attr = GATE_INTERRUPT;
		idt[v].offset_mid = (u16)(handler >> 16);
		idt[v].offset_high = (u32)(handler >> 32);
		idt[v].reserved = 0;
	}
	idtr.limit = sizeof(idt) - 1;
	idtr.base = (u64)idt;
	__asm__ __volatile__("lidt %0" : : "m"(idtr) : "memory");
}

/* Called from vectors.S for vectors 0-31. */
void counter_exception(u64 vector, u64 rip) __attribute__((noreturn));
void counter_exception(u64 vector, u64 rip)
{
	uart_puts("counter: exception ");
	uart_put_dec(vector);
	uart_puts(" rip ");
	uart_put_hex(rip);
	uart_putc('\n');
	exit_vm(0xE0 + (u32)vector);
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
