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
 *
 * With N vCPUs the region is cut into N contiguous parts; vCPU i works on
 * pages [first + i*pages/N, first + (i+1)*pages/N) with seed + i. For the
 * random pattern the per-pass count is split the same way. Every pass
 * starts from the same PRNG state, so every pass dirties the same pages.
 *
 * Dirtying a page means writing the pass number (starting at 1) as a u64 at
 * offset 0 of the page. The dirty loop writes nothing but its pattern pages,
 * its status slot (below 1 MiB) and its stack (below 1 MiB): this guest has
 * no .data or .bss at all.
 *
 * Status slot of vCPU i, at status_gpa + 64*i, as u64s:
 *   [0] pages written so far (every write counts, repeats included)
 *   [1] passes completed
 *   [2] state: 1 running, 2 done
 *   [3] "DIRTYST1" as a little-endian u64
 *
 * When the passes are done, vCPU 0 waits for every vCPU to be done, prints
 * "dirty: done <total pages written> pages" and stops the VM with exit
 * status 0. Bad arguments: "dirty: bad args: <reason>", exit status 2.
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
	struct status *status;
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
	pace(w);
	*(volatile u64 *)(page * PAGE_SIZE) = w->pass;
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

/* Checks the arguments; returns the reason they are bad, or 0. */
static const char *check_args(const struct boot_params *bp)
{
	u64 first = bp->args[1], pages = bp->args[2];
	u64 lo = bp->image_end / PAGE_SIZE, hi = bp->mem_bytes / PAGE_SIZE;

	if (bp->args[0] > PATTERN_SCATTERED)
		return "unknown pattern";
	if (pages == 0)
		return "empty region";
	if (first < lo)
		return "region starts below image_end";
	if (first > hi || pages > hi - first)
		return "region ends beyond RAM";
	if (bp->vcpus == 0)
		return "no vCPUs";
	return 0;
}

void guest_main(const struct boot_params *bp, u64 cpu)
{
	struct status *status;
	const char *bad;
	u64 n, passes, i;
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
	passes = bp->args[4];
	status = (struct status *)(bp->status_gpa + STATUS_SLOT_BYTES * cpu);

	w.pattern = bp->args[0];
	w.first = bp->args[1] + cpu * bp->args[2] / n;
	w.len = bp->args[1] + (cpu + 1) * bp->args[2] / n - w.first;
	w.count = bp->args[6] ? bp->args[6] : bp->args[2];
	w.count = (cpu + 1) * w.count / n - cpu * w.count / n;
	w.seed = bp->args[5] + cpu;
	if (w.seed == 0)
		w.seed = DEFAULT_SEED;
	w.status = status;
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

	for (w.pass = 1; passes == 0 || w.pass <= passes; w.pass++) {
		run_pass(&w);
		status->passes_done = w.pass;
	}
	barrier();
	status->state = STATE_DONE;

	if (cpu != 0)
		halt_forever();

	/* vCPU 0: wait for the others, then report. */
	u64 total = 0;
	for (i = 0; i < n; i++) {
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
