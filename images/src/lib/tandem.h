/*
 * tandem.h - what every long64 test guest shares: the boot parameter page,
 * port I/O, the UART, the debug-exit port and a few printing helpers.
 *
 * The guests are freestanding: no libc, no SSE (they are built with
 * -mgeneral-regs-only), nothing that KVM's instruction emulator cannot run.
 */
#ifndef TANDEM_H
#define TANDEM_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

/* "TANDEMP1" read as a little-endian u64. */
#define PARAM_MAGIC 0x31504d45444e4154UL

/* The boot parameter page the VMM writes at 0x7000 (RDI at entry). */
struct boot_params {
	u64 magic;      /* 0x00: PARAM_MAGIC */
	u32 version;    /* 0x08: 1 */
	u32 vcpus;      /* 0x0C: number of vCPUs */
	u64 mem_bytes;  /* 0x10: guest RAM size */
	u64 tsc_khz;    /* 0x18: TSC frequency, 0 if unknown */
	u64 status_gpa; /* 0x20: status page, 64 bytes per vCPU */
	u64 image_end;  /* 0x28: first page-aligned address after the image */
	u64 reserved[2];/* 0x30 */
	u64 args[24];   /* 0x40: guest-specific arguments */
};

#define STATUS_SLOT_BYTES 64

/* vCPU i's boot stack: STACK_BYTES below STACK_TOP - i * STACK_BYTES. */
#define STACK_TOP 0x80000UL
#define STACK_BYTES 0x2000UL
#define PAGE_SIZE 4096UL

/* Keeps the compiler from moving memory accesses across this point. */
#define barrier() __asm__ __volatile__("" ::: "memory")

static inline void outb(u16 port, u8 v)
{
	__asm__ __volatile__("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outl(u16 port, u32 v)
{
	__asm__ __volatile__("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ __volatile__("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

static inline void cpu_relax(void)
{
	__asm__ __volatile__("pause" ::: "memory");
}

/* COM1, an 8250/16550 UART. */
#define UART_BASE 0x3F8
#define UART_RBR (UART_BASE + 0) /* receive buffer (read) */
#define UART_THR (UART_BASE + 0) /* transmit holding register (write) */
#define UART_IER (UART_BASE + 1) /* interrupt enable */
#define UART_MCR (UART_BASE + 4) /* modem control */
#define UART_LSR (UART_BASE + 5) /* line status */
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20

/* Writing any value here stops the VM; the VMM reports the value. */
#define DEBUG_EXIT_PORT 0xF4

/* lib/runtime.c */
void uart_putc(char c);
void uart_puts(const char *s);
void uart_put_dec(u64 v);
void uart_put_hex(u64 v);
void exit_vm(u32 code) __attribute__((noreturn));
void halt_forever(void) __attribute__((noreturn));
void check_params(const struct boot_params *bp, u64 cpu, const char *guest);

/* The VMM's 64-bit code segment, and the selector the IDT gates use. */
#define KERNEL_CS 0x08

/*
 * lib/traps.S and lib/idt.c, for the guests that take exceptions: the
 * stubs for vectors 0-31 call guest_exception with the frame indexed by
 * TRAP_*, and idt_* build and load an IDT that points at them.
 */
#define EXCEPTION_VECTORS 32
#define TRAP_VECTOR 0
#define TRAP_ERROR 1
#define TRAP_RIP 2
#define TRAP_CS 3
#define TRAP_RFLAGS 4
#define TRAP_RSP 5
#define TRAP_SS 6

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

extern const u64 exception_vectors[EXCEPTION_VECTORS];
void idt_set(struct idt_gate *idt, int vector, u64 handler);
void idt_set_exceptions(struct idt_gate *idt);
void idt_load(const struct idt_gate *idt, int vectors);
void guest_exception(u64 *frame) __attribute__((noreturn));

/* Each guest defines this; lib/entry.S calls it on every vCPU. */
void guest_main(const struct boot_params *bp, u64 cpu);

#endif
