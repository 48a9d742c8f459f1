package metrics

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	gsync "gvisor.dev/gvisor/pkg/sync"

	"github.com/tandemvm/tandem/kvm"
	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/vmm"
)

// Sources is where a VM's metrics come from at a scrape.
type Sources struct {
	// Exits returns the vCPUs' exit counts (vmm.VM.Exits).
	Exits func() []vmm.ExitCount
	// Replication, when set, returns the replication's status
	// (replicate.Primary.Status); nil for a VM without --ha.
	Replication func() replicate.Status
	MemBytes    uint64
	VCPUs       int
}

// pauseSteps are the steps of a pause, as replicate.Durations has them,
// in the label "step".
var pauseSteps = []string{"harvest", "group", "transfer", "ack", "total"}

func stepDurations(d replicate.Durations) [5]time.Duration {
	return [5]time.Duration{d.Harvest, d.Group, d.Transfer, d.Ack, d.Total}
}

// VM is the metrics of one running VM, a prometheus.Collector. Observe is
// called by the replication loop, the rest by scrapes.
type VM struct {
	src Sources

	epochs     *prometheus.CounterVec   // by result
	pause      *prometheus.HistogramVec // by step
	commit     prometheus.Histogram
	dirtyPages prometheus.Counter
	sentPages  prometheus.Counter
	stateBytes prometheus.Counter
	diskBytes  prometheus.Counter
	linkBytes  *prometheus.CounterVec // by link (index) and addr
	// Resolved children, touched only by Observe: the run loop then
	// updates atomics and takes none of the vectors' locks.
	committed, failed prometheus.Counter
	steps             [5]prometheus.Observer
	links             []prometheus.Counter

	last lastEpoch

	exits, vcpus, memBytes                      *prometheus.Desc
	lastEpochD, lastPause, lastCommit, lastHeld *prometheus.Desc
	lastDirty                                   *prometheus.Desc
	generation, committedEpoch, protected       *prometheus.Desc
	degraded, leaderConnected                   *prometheus.Desc
	linkAlive, linkAcked, linkLag, linkRate     *prometheus.Desc
}

// pauseBuckets span 50 µs to about 1.6 s.
var pauseBuckets = prometheus.ExponentialBuckets(50e-6, 2, 16)

// NewVM returns the metrics of a VM whose figures come from src.
func NewVM(src Sources) *VM {
	v := &VM{src: src,
		epochs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_replication_epochs_total",
			Help: "Replication epochs ended, by result: committed, or failed (its pages are sent again with the next)."}, []string{"result"}),
		pause: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tandem_replication_pause_seconds",
			Help:    "Time the VM was paused per epoch, by step: harvest (stop the vCPUs, collect dirty pages, capture state), group, transfer, ack, and the total (async: until the VM resumed).",
			Buckets: pauseBuckets}, []string{"step"}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tandem_replication_commit_seconds",
			Help:    "Time from an epoch's pause to its commit, when its output is released.",
			Buckets: pauseBuckets}),
		dirtyPages: prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_replication_dirty_pages_total", Help: "Guest pages found dirty at the epochs' harvests."}),
		sentPages: prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_replication_sent_pages_total",
			Help: "Guest pages the epochs' regions covered after grouping, each counted once (ft sends each on every link)."}),
		stateBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_replication_state_bytes_total", Help: "Bytes of vCPU, device and disk-write state sent to the state holders."}),
		diskBytes:  prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_replication_disk_bytes_total", Help: "The part of the state bytes that was the guest's disk writes."}),
		linkBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_replication_link_bytes_total",
			Help: "Page bytes sent on each replica link (on the wire, after traffic reduction)."}, []string{"link", "addr"}),

		exits:    prometheus.NewDesc("tandem_vm_exits_total", "Returns from KVM_RUN of the VM's vCPUs, by exit reason.", []string{"reason"}, nil),
		vcpus:    prometheus.NewDesc("tandem_vm_vcpus", "vCPUs of the VM.", nil, nil),
		memBytes: prometheus.NewDesc("tandem_vm_memory_bytes", "Guest RAM of the VM.", nil, nil),

		lastEpochD: prometheus.NewDesc("tandem_replication_last_epoch", "The newest epoch that ended (committed or not).", nil, nil),
		lastPause:  prometheus.NewDesc("tandem_replication_last_pause_seconds", "The newest epoch's pause, by step (as tandem_replication_pause_seconds).", []string{"step"}, nil),
		lastCommit: prometheus.NewDesc("tandem_replication_last_commit_seconds", "The newest epoch's commit latency (0 if it did not commit).", nil, nil),
		lastHeld:   prometheus.NewDesc("tandem_replication_output_held_bytes", "Guest output (serial, console, network frames) held for commit when the newest epoch was sealed.", nil, nil),
		lastDirty:  prometheus.NewDesc("tandem_replication_last_dirty_pages", "Pages dirty in the newest epoch.", nil, nil),

		generation:      prometheus.NewDesc("tandem_replication_generation", "The primary's generation (its term).", nil, nil),
		committedEpoch:  prometheus.NewDesc("tandem_replication_committed_epoch", "The newest committed epoch.", nil, nil),
		protected:       prometheus.NewDesc("tandem_replication_protected", "1 while epochs can commit (a state holder and a link in service), else 0: output is held.", nil, nil),
		degraded:        prometheus.NewDesc("tandem_replication_degraded", "1 while fewer links or state holders than configured are in service.", nil, nil),
		leaderConnected: prometheus.NewDesc("tandem_replication_leader_connected", "1 while a state holder is in service.", nil, nil),
		linkAlive:       prometheus.NewDesc("tandem_replication_link_alive", "1 while the link is in service (0: failed, being redialled).", []string{"link", "addr"}, nil),
		linkAcked:       prometheus.NewDesc("tandem_replication_link_acked_epoch", "The newest epoch the link acknowledged.", []string{"link", "addr"}, nil),
		linkLag:         prometheus.NewDesc("tandem_replication_link_lag_epochs", "Epochs ended that the link has not acknowledged.", []string{"link", "addr"}, nil),
		linkRate:        prometheus.NewDesc("tandem_replication_link_rate_bytes_per_second", "The link's measured rate (0: not measured yet).", []string{"link", "addr"}, nil),
	}
	v.committed, v.failed = v.epochs.WithLabelValues("committed"), v.epochs.WithLabelValues("failed")
	for i, s := range pauseSteps {
		v.steps[i] = v.pause.WithLabelValues(s)
	}
	return v
}

// Observe records one epoch (replicate.PrimaryConfig.Observe): on the
// replication loop's goroutine, atomics only, but for a link seen for the
// first time.
func (v *VM) Observe(rec *replicate.EpochTrace) {
	if rec.Failed != "" {
		v.failed.Inc()
	} else {
		v.committed.Inc()
		v.commit.Observe(rec.Commit.Seconds())
	}
	for i, d := range stepDurations(rec.Pause) {
		v.steps[i].Observe(d.Seconds())
	}
	v.dirtyPages.Add(float64(rec.DirtyPages))
	v.sentPages.Add(float64(rec.TransferredPages))
	v.stateBytes.Add(float64(rec.StateBytes))
	v.diskBytes.Add(float64(rec.DiskBytes))
	for i, n := range rec.LinkBytes {
		for len(v.links) <= i {
			v.links = append(v.links, v.linkBytes.WithLabelValues(strconv.Itoa(len(v.links)), v.linkAddr(len(v.links))))
		}
		v.links[i].Add(float64(n))
	}
	v.last.store(rec)
}

// linkAddr is the address of link i, as the replication's status has it.
func (v *VM) linkAddr(i int) string {
	if v.src.Replication == nil {
		return ""
	}
	if ls := v.src.Replication().Links; i < len(ls) {
		return ls[i].Addr
	}
	return ""
}

// Describe implements prometheus.Collector.
func (v *VM) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range v.collectors() {
		c.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{v.exits, v.vcpus, v.memBytes, v.lastEpochD, v.lastPause, v.lastCommit, v.lastHeld, v.lastDirty,
		v.generation, v.committedEpoch, v.protected, v.degraded, v.leaderConnected, v.linkAlive, v.linkAcked, v.linkLag, v.linkRate} {
		ch <- d
	}
}

func (v *VM) collectors() []prometheus.Collector {
	return []prometheus.Collector{v.epochs, v.pause, v.commit, v.dirtyPages, v.sentPages, v.stateBytes, v.diskBytes, v.linkBytes}
}

// Collect implements prometheus.Collector.
func (v *VM) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, x float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, x, labels...)
	}
	gauge(v.vcpus, float64(v.src.VCPUs))
	gauge(v.memBytes, float64(v.src.MemBytes))
	if v.src.Exits != nil {
		for _, e := range v.src.Exits() {
			ch <- prometheus.MustNewConstMetric(v.exits, prometheus.CounterValue, float64(e.Count), exitLabel(e.Reason))
		}
	}
	if v.src.Replication == nil {
		return
	}
	for _, c := range v.collectors() {
		c.Collect(ch)
	}
	last := v.last.load()
	gauge(v.lastEpochD, float64(last.epoch))
	for i, s := range pauseSteps {
		gauge(v.lastPause, time.Duration(last.steps[i]).Seconds(), s)
	}
	gauge(v.lastCommit, time.Duration(last.commit).Seconds())
	gauge(v.lastHeld, float64(last.held))
	gauge(v.lastDirty, float64(last.dirty))

	st := v.src.Replication()
	gauge(v.generation, float64(st.Generation))
	gauge(v.committedEpoch, float64(st.Committed))
	gauge(v.protected, flag(st.Protected))
	gauge(v.degraded, flag(st.Degraded))
	gauge(v.leaderConnected, flag(st.LeaderConnected))
	newest := max(last.epoch, st.Committed)
	for i, l := range st.Links {
		link := strconv.Itoa(i)
		gauge(v.linkAlive, flag(l.Alive), link, l.Addr)
		gauge(v.linkAcked, float64(l.Acked), link, l.Addr)
		gauge(v.linkLag, float64(newest-min(newest, l.Acked)), link, l.Addr)
		gauge(v.linkRate, l.Rate, link, l.Addr)
	}
}

// exitLabel names an exit reason as the kernel does, without its
// KVM_EXIT_ prefix, in lower case ("io", "mmio", "hlt"); reasons past
// the ones package kvm knows share "other".
func exitLabel(r kvm.ExitReason) string {
	if r > kvm.ExitMemoryFault {
		return "other"
	}
	return strings.ToLower(strings.TrimPrefix(r.String(), "KVM_EXIT_"))
}

func flag(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// lastEpoch holds the newest epoch's figures under a sequence count: one
// writer (the replication loop), readers that never block it and retry
// when it wrote meanwhile. The fields are atomics so that the race
// detector sees no race in the retried reads.
type lastEpoch struct {
	seq                gsync.SeqCount
	epoch, dirty, held atomic.Uint64
	commit             atomic.Int64
	steps              [5]atomic.Int64
}

// lastEpochFigures is a consistent copy of a lastEpoch.
type lastEpochFigures struct {
	epoch, dirty, held uint64
	commit             int64
	steps              [5]int64
}

func (l *lastEpoch) store(rec *replicate.EpochTrace) {
	l.seq.BeginWrite()
	l.epoch.Store(rec.Epoch)
	l.dirty.Store(uint64(rec.DirtyPages))
	l.held.Store(uint64(rec.HeldBytes))
	l.commit.Store(int64(rec.Commit))
	for i, d := range stepDurations(rec.Pause) {
		l.steps[i].Store(int64(d))
	}
	l.seq.EndWrite()
}

func (l *lastEpoch) load() lastEpochFigures {
	for {
		e := l.seq.BeginRead()
		f := lastEpochFigures{epoch: l.epoch.Load(), dirty: l.dirty.Load(), held: l.held.Load(), commit: l.commit.Load()}
		for i := range l.steps {
			f.steps[i] = l.steps[i].Load()
		}
		if l.seq.ReadOk(e) {
			return f
		}
	}
}

// current is the VM whose metrics the process exports, if any.
var current struct {
	sync.Mutex
	vm *VM
}

// Register makes v the VM whose metrics the process exports, in place of
// the one before it (a process runs one VM at a time). A VM's metrics
// stay exported after it stops, with their final values, so that the
// last metrics line a process writes at exit (PUT /metrics) and the
// last scrape still have them.
func Register(v *VM) error {
	current.Lock()
	defer current.Unlock()
	if current.vm != nil {
		process.Unregister(current.vm)
	}
	current.vm = nil
	if err := process.Register(v); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	current.vm = v
	return nil
}
