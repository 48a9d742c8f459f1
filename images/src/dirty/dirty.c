/*
 * dirty - dirties guest pages in known patterns, for replication tests and
 * benchmarks. Tests compare KVM's dirty log with the pages this guest is
 * known to write (images.DirtyParams.PassPages is the reference model in Go).
 *
 * Arguments (boot parameter page args[]):
 *   [0] pattern: 0 sequential, 1 random, 2 scattered
 *   [1] first page of the region (page number = GPA / 4096)
 *   [2] number of pages in the region
 *   [3] rate in pages per second for the whole guest (0 = as fast as
 *       possible; ignored if the VMM does not know the TSC frequency)
 *   [4] passes (0 = forever)
 *   [5] seed for random and scattered
 *   [6] random only: pages written per pass (0 = the region size)
 *   [7] ring the dirty loop runs in: 0 or 3 (below)
 *   [8] bytes written into each dirtied page from its start: a multiple
 *       of 8 up to 4096 (0 = 8)
 *
 * With N vCPUs the region is cut into N contiguous parts; vCPU i works on
 * pages [first + i*pages/N, first + (i+1)*pages/N) with seed + i. For the
 * random pattern the per-pass count is split the same way. Every pass
 * starts from the same PRNG state, so every pass dirties the same pages.
 *
 * Dirtying a page means writing the pass number (starting at 1) into each
 * u64 of its first args[8] bytes. In ring 0 the dirty loop writes nothing
 * but its pattern pages, its status slot (below 1 MiB) and its stack
 * (below 1 MiB): the guest writes no .data or .bss at all.
 *
 * Ring 3. Where guest ring 0 runs in an instruction emulator and ring 3 at
 * hardware speed (PVM hosts), ring 0 dirties pages at the emulator's pace.
 * With args[7] = 3 each vCPU first sets up what user mode needs and then
 * runs the same loop in ring 3:
 *   - vCPU 0 builds an identity map of guest RAM with 2 MiB user pages in
 *     the pages from image_end (a PML4, a PDPT, and a page directory per
 *     GiB), with the accessed and dirty bits preset so the CPU's page
 *     walk never writes them; the region must start above those pages;
 *   - a GDT (kernel and user code and data, a TSS per vCPU), the TSSs and
 *     an IDT for the 32 exceptions, in .bss;
 *   - the vCPU's 8 KiB boot stack is split: the upper half is the kernel
 *     stack (TSS RSP0), the lower half the user stack.
 * Then iretq enters the loop in ring 3 with interrupts off. When the
 * passes are done, the loop executes ud2 at user_exit (user.S); the #UD
 * brings the vCPU back to ring 0, where it finishes as in ring 0. So in
 * ring 3 the guest also writes, once, before its loop starts, the pages
 * between the start of the image and the end of its page tables.
 *
 * Status slot of vCPU i, at status_gpa + 64*i, as u64s:
 *   [0] pages written so far (every write counts, repeats included)
 *   [1] passes completed
 *   [2] state: 1 running, 2 done
 *   [3] "DIRTYST1" as a little-endian u64
 *
 * When the passes are done, vCPU 0 waits for every vCPU to be done, prints
 * "dirty: done <total pages written> pages" and stops the VM with exit
 * status 0. Bad arguments: "dirty: bad args: <reason>", exit status 2. A
 * CPU exception other than the one that ends ring 3: "dirty: exception
 * <vector> rip 0x<hex>", exit status 0xE0 + vector.
 */
#include "tandem.h"

#define PATTERN_SEQUENTIAL 0
#define PATTERN_RANDOM 1
#define PATTERN_SCATTERED 2

#define STATE_RUNNING 1
#define STATE_DONE 2
#define STATUS_MAGIC 0x3154535954524944UL /* "DIRTYST1" */
#define DEFAULT_SEED 0x9E3779B97F4A7C15UL

/* One vCPU's status slot. volatile: other vCPUs and the VMM read it. */
struct status {
	volatile u64 pages_written;
	volatile u64 passes_done;
	volatile u64 state;
	volatile u64 magic;
};

/* Everything the dirty loop needs, on the vCPU's own stack. */
struct worker {
	u64 pattern;
	u64 first;          /* this vCPU's part: [first, first + len) */
	u64 len;
	u64 count;          /* random: draws per pass */
	u64 seed;           /* initial PRNG state */
	u64 pass;           /* current pass number, from 1 */
	/*
	 * Pacing: a page every ticks_per_page + ticks_rem/rate_div TSC ticks
	 * (both 0: no pacing). rem_acc collects the fractions; next_tsc is
	 * when the next page is due.
	 */
	u64 ticks_per_page;
	u64 ticks_rem;
	u64 rate_div;
	u64 rem_acc;
	u64 next_tsc;
	u64 written;        /* pages written so far, mirrored in the status slot */
	u64 words;          /* u64s written into each dirtied page */
	u64 passes;         /* passes to run, 0 = forever */
	struct status *status;
	const struct boot_params *bp;
	u64 cpu;
};

static u64 xorshift64(u64 *state)
{
	u64 x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

/*
 * Wait until this page is due. With N vCPUs and a guest-wide rate, each
 * vCPU writes a page every N * tsc_hz / rate ticks; the fraction of a tick
 * is carried in rem_acc so rounding does not drift. The first page is due
 * at once. If the vCPU fell behind (it was paused, or cannot keep up) it
 * does not catch up with a burst: the next page is due one interval later.
 */
static inline __attribute__((always_inline)) void pace(struct worker *w)
{
	u64 now;

	if (!w->ticks_per_page && !w->ticks_rem)
		return;
	while ((now = rdtsc()) < w->next_tsc)
		cpu_relax();
	if (now - w->next_tsc > w->ticks_per_page)
		w->next_tsc = now;
	w->next_tsc += w->ticks_per_page;
	w->rem_acc += w->ticks_rem;
	if (w->rem_acc >= w->rate_div) {
		w->rem_acc -= w->rate_div;
		w->next_tsc++;
	}
}

/* The hot path: inlined so the loop stays a handful of instructions. */
static inline __attribute__((always_inline)) void dirty_page(struct worker *w, u64 page)
{
	volatile u64 *p = (volatile u64 *)(page * PAGE_SIZE);

	pace(w);
	for (u64 i = 0; i < w->words; i++)
		p[i] = w->pass;
	w->status->pages_written = ++w->written;
}

static void run_pass(struct worker *w)
{
	u64 end = w->first + w->len;
	u64 state = w->seed;
	u64 page, i;

	switch (w->pattern) {
	case PATTERN_SEQUENTIAL:
		for (page = w->first; page < end; page++)
			dirty_page(w, page);
		break;
	case PATTERN_RANDOM:
		if (w->len == 0)
			break;
		for (i = 0; i < w->count; i++)
			dirty_page(w, w->first + xorshift64(&state) % w->len);
		break;
	case PATTERN_SCATTERED:
		page = w->first;
		while (page < end) {
			u64 x = xorshift64(&state);
			u64 run = 1 + (x & 1);
			u64 gap = 1 + ((x >> 1) & 1);

			for (i = 0; i < run && page < end; i++, page++)
				dirty_page(w, page);
			page += gap;
		}
		break;
	}
}

/* Runs the passes and marks this vCPU done; in ring 0 or ring 3. */
static void run_passes(struct worker *w)
{
	for (w->pass = 1; w->passes == 0 || w->pass <= w->passes; w->pass++) {
		run_pass(w);
		w->status->passes_done = w->pass;
	}
	barrier();
	w->status->state = STATE_DONE;
}

/*
 * user.S enters here in ring 3 and executes ud2 when this returns. The
 * loop works on a copy on the user stack, below 1 MiB, so that the only
 * pages it writes are those of ring 0's loop.
 */
void user_main(const struct worker *setup);
void user_main(const struct worker *setup)
{
	struct worker w = *setup;

	run_passes(&w);
}

/*
 * What vCPU 0 does once its passes are done: wait for the others, report,
 * stop the VM. The other vCPUs halt.
 */
static void __attribute__((noreturn)) finish(const struct worker *w)
{
	const struct boot_params *bp = w->bp;
	u64 total = 0, i;

	if (w->cpu != 0)
		halt_forever();
	for (i = 0; i < bp->vcpus; i++) {
		struct status *s = (struct status *)(bp->status_gpa + STATUS_SLOT_BYTES * i);

		while (s->state != STATE_DONE)
			cpu_relax();
		total += s->pages_written;
	}
	uart_puts("dirty: done ");
	uart_put_dec(total);
	uart_puts(" pages\n");
	exit_vm(0);
}

/* ---- ring 3 ---------------------------------------------------------- */

#define MAX_VCPUS 32          /* the boot ABI's stacks */
#define KERNEL_DS 0x10
#define USER_DS (0x18 | 3)    /* GDT entry 3, RPL 3 */
#define USER_CS (0x20 | 3)    /* GDT entry 4, RPL 3 */
#define TSS_SELECTOR(cpu) (0x28 + 16 * (cpu))
#define GDT_ENTRIES (5 + 2 * MAX_VCPUS)
#define VECTOR_UD 6

/* Page-table entry bits: present, writable, user, accessed, dirty, 2 MiB. */
#define PTE_TABLE 0x27UL
#define PTE_LEAF 0xE7UL
#define GIB (1UL << 30)

/* A 64-bit TSS (104 bytes). */
struct tss {
	u32 reserved0;
	u64 rsp0, rsp1, rsp2;
	u64 reserved1;
	u64 ist[7];
	u64 reserved2;
	u16 reserved3;
	u16 iomap_base;
} __attribute__((packed));

static u64 gdt[GDT_ENTRIES];
static struct tss tss[MAX_VCPUS];
static struct idt_gate idt[EXCEPTION_VECTORS];
static struct worker workers[MAX_VCPUS];
static volatile u64 user_tables_ready;

extern const char user_entry[], user_exit[]; /* user.S */

/* Pages of the ring-3 identity map for mem_bytes of RAM. */
static u64 user_table_pages(u64 mem_bytes)
{
	return 2 + (mem_bytes + GIB - 1) / GIB;
}

/* vCPU 0 only: the identity map at image_end and the GDT. */
static void build_user_tables(const struct boot_params *bp)
{
	u64 *pml4 = (u64 *)bp->image_end;
	u64 *pdpt = pml4 + 512;
	u64 *pd = pdpt + 512;
	u64 gib = (bp->mem_bytes + GIB - 1) / GIB, g, i;

	for (i = 0; i < 1024; i++)
		pml4[i] = 0; /* and the PDPT after it */
	pml4[0] = (u64)pdpt | PTE_TABLE;
	for (g = 0; g < gib; g++) {
		pdpt[g] = (u64)(pd + 512 * g) | PTE_TABLE;
		for (i = 0; i < 512; i++)
			pd[512 * g + i] = (g * GIB + (i << 21)) | PTE_LEAF;
	}

	/* Accessed bits preset, as in the VMM's GDT: the CPU never writes them. */
	gdt[0] = 0;
	gdt[1] = 0x00AF9B000000FFFFUL; /* 0x08: 64-bit code, DPL 0 */
	gdt[2] = 0x00CF93000000FFFFUL; /* 0x10: data, DPL 0 */
	gdt[3] = 0x00CFF3000000FFFFUL; /* 0x18: data, DPL 3 */
	gdt[4] = 0x00AFFB000000FFFFUL; /* 0x20: 64-bit code, DPL 3 */
	for (i = 0; i < MAX_VCPUS; i++) {
		u64 base = (u64)&tss[i], limit = sizeof(struct tss) - 1;

		/* 64-bit TSS, available (0x89); ltr marks it busy. */
		gdt[5 + 2 * i] = limit | (base & 0xFFFFFF) << 16 | 0x89UL << 40 | ((base >> 24) & 0xFF) << 56;
		gdt[6 + 2 * i] = base >> 32;
	}
	idt_set_exceptions(idt);
	barrier();
	user_tables_ready = 1;
}

/*
 * Switches this vCPU to the guest's own GDT, TSS, IDT and page tables and
 * enters run_passes in ring 3 through user.S. The kernel stack (RSP0)
 * starts afresh at the top of the boot stack, so nothing on the current
 * one is needed again: the #UD at user_exit goes on in finish(), with the
 * copy of the worker in workers[].
 */
static void __attribute__((noreturn)) enter_ring3(const struct boot_params *bp, u64 cpu, struct worker *w)
{
	u64 stack_top = STACK_TOP - cpu * STACK_BYTES;
	u64 user_rsp = stack_top - STACK_BYTES / 2;
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) gdtr = {sizeof(gdt) - 1, (u64)gdt};

	if (cpu == 0)
		build_user_tables(bp);
	while (!user_tables_ready)
		cpu_relax();

	workers[cpu] = *w;
	tss[cpu].rsp0 = stack_top;
	tss[cpu].iomap_base = sizeof(struct tss); /* no I/O permission bitmap */

	__asm__ __volatile__(
		"lgdt %[gdtr]\n\t"
		"pushq %[kcs]\n\t"
		"leaq 1f(%%rip), %%rax\n\t"
		"pushq %%rax\n\t"
		"lretq\n"
		"1:\tmovl %[kds], %%eax\n\t"
		"movl %%eax, %%ds\n\t"
		"movl %%eax, %%es\n\t"
		"movl %%eax, %%ss\n\t"
		"ltr %w[tr]\n\t"
		"movq %[cr3], %%cr3"
		:
		: [gdtr] "m"(gdtr), [kcs] "i"(KERNEL_CS), [kds] "i"(KERNEL_DS),
		  [tr] "r"(TSS_SELECTOR(cpu)), [cr3] "r"(bp->image_end)
		: "rax", "memory");
	idt_load(idt, EXCEPTION_VECTORS);

	__asm__ __volatile__(
		"pushq %[ss]\n\t"
		"pushq %[rsp]\n\t"
		"pushq $2\n\t" /* RFLAGS: interrupts off, IOPL 0 */
		"pushq %[cs]\n\t"
		"pushq %[rip]\n\t"
		"iretq"
		:
		: [ss] "i"(USER_DS), [rsp] "r"(user_rsp), [cs] "i"(USER_CS),
		  [rip] "r"((u64)user_entry), "D"(&workers[cpu])
		: "memory");
	__builtin_unreachable();
}

/* Called from lib/traps.S for vectors 0-31. */
void guest_exception(u64 *frame)
{
	if (frame[TRAP_VECTOR] == VECTOR_UD && frame[TRAP_RIP] == (u64)user_exit &&
	    (frame[TRAP_CS] & 3) == 3) {
		/* From ring 3 the frame ends at RSP0, the top of the boot stack. */
		u64 rsp0 = (u64)&frame[TRAP_SS + 1];

		finish(&workers[(STACK_TOP - rsp0) / STACK_BYTES]);
	}
	uart_puts("dirty: exception ");
	uart_put_dec(frame[TRAP_VECTOR]);
	uart_puts(" rip ");
	uart_put_hex(frame[TRAP_RIP]);
	uart_putc('\n');
	exit_vm(0xE0 + (u32)frame[TRAP_VECTOR]);
}

/* ---- start ----------------------------------------------------------- */

/* Checks the arguments; returns the reason they are bad, or 0. */
static const char *check_args(const struct boot_params *bp)
{
	u64 first = bp->args[1], pages = bp->args[2];
	u64 lo = bp->image_end / PAGE_SIZE, hi = bp->mem_bytes / PAGE_SIZE;
	u64 ring = bp->args[7], bytes = bp->args[8];

	if (bp->args[0] > PATTERN_SCATTERED)
		return "unknown pattern";
	if (ring != 0 && ring != 3)
		return "ring must be 0 or 3";
	if (bytes % 8 != 0 || bytes > PAGE_SIZE)
		return "bytes must be a multiple of 8 up to 4096";
	if (pages == 0)
		return "empty region";
	if (ring == 3)
		lo += user_table_pages(bp->mem_bytes);
	if (first < lo)
		return ring == 3 ? "region starts below the ring-3 page tables" : "region starts below image_end";
	if (first > hi || pages > hi - first)
		return "region ends beyond RAM";
	if (bp->vcpus == 0)
		return "no vCPUs";
	if (ring == 3 && bp->vcpus > MAX_VCPUS)
		return "too many vCPUs";
	return 0;
}

void guest_main(const struct boot_params *bp, u64 cpu)
{
	struct status *status;
	const char *bad;
	u64 n;
	struct worker w;

	check_params(bp, cpu, "dirty");
	bad = check_args(bp);
	if (bad) {
		if (cpu == 0) {
			uart_puts("dirty: bad args: ");
			uart_puts(bad);
			uart_putc('\n');
			exit_vm(2);
		}
		halt_forever();
	}

	n = bp->vcpus;
	status = (struct status *)(bp->status_gpa + STATUS_SLOT_BYTES * cpu);

	w.pattern = bp->args[0];
	w.first = bp->args[1] + cpu * bp->args[2] / n;
	w.len = bp->args[1] + (cpu + 1) * bp->args[2] / n - w.first;
	w.count = bp->args[6] ? bp->args[6] : bp->args[2];
	w.count = (cpu + 1) * w.count / n - cpu * w.count / n;
	w.seed = bp->args[5] + cpu;
	if (w.seed == 0)
		w.seed = DEFAULT_SEED;
	w.passes = bp->args[4];
	w.words = bp->args[8] ? bp->args[8] / 8 : 1;
	w.status = status;
	w.bp = bp;
	w.cpu = cpu;
	w.written = 0;
	w.ticks_per_page = w.ticks_rem = w.rem_acc = 0;
	w.rate_div = 1;
	if (bp->args[3] && bp->tsc_khz) {
		/* Each vCPU writes rate/N pages per second: one every N*tsc_hz/rate ticks. */
		u64 ticks = bp->tsc_khz * 1000 * n;

		w.rate_div = bp->args[3];
		w.ticks_per_page = ticks / w.rate_div;
		w.ticks_rem = ticks % w.rate_div;
	}
	w.next_tsc = rdtsc();

	status->pages_written = 0;
	status->passes_done = 0;
	status->magic = STATUS_MAGIC;
	barrier();
	status->state = STATE_RUNNING;

	if (bp->args[7] == 3)
		enter_ring3(bp, cpu, &w);
	run_passes(&w);
	finish(&w);
}
