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

/* Each guest defines this; lib/entry.S calls it on every vCPU. */
void guest_main(const struct boot_params *bp, u64 cpu);

#endif
