package metrics

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tandemvm/tandem/kvm"
	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/vmm"
)

func testSources() Sources {
	return Sources{
		Exits: func() []vmm.ExitCount {
			return []vmm.ExitCount{{Reason: kvm.ExitIO, Count: 7}, {Reason: kvm.ExitMMIO, Count: 3}, {Reason: kvm.ExitMemoryFault + 5, Count: 1}}
		},
		Replication: func() replicate.Status {
			return replicate.Status{Generation: 2, Committed: 9, Protected: true, LeaderConnected: true,
				Links: []replicate.LinkStatus{{Addr: "10.0.0.2:7000", Alive: true, Acked: 9, Rate: 1e9}, {Addr: "10.0.0.3:7000", Acked: 4}}}
		},
		MemBytes: 64 << 20, VCPUs: 2,
	}
}

func epochRecord(e uint64) *replicate.EpochTrace {
	us := time.Duration(e) * time.Microsecond
	return &replicate.EpochTrace{Epoch: e, DirtyPages: int(2 * e), TransferredPages: 3 * e, StateBytes: 100, LinkBytes: []uint64{4096 * e, 0},
		Pause: replicate.Durations{Harvest: us, Group: us, Transfer: us, Ack: us, Total: 4 * us}, Commit: 3 * us, HeldBytes: int(5 * e)}
}

// TestVMExposition: after two epochs the exposition holds their sums, the
// newest epoch's figures, the replication's status by link and the
// vCPU exits by reason, under the documented names.
func TestVMExposition(t *testing.T) {
	v := NewVM(testSources())
	v.Observe(epochRecord(9))
	failed := epochRecord(10)
	failed.Failed, failed.Commit = "not every link completed the epoch", 0
	v.Observe(failed)
	reg := prometheus.NewRegistry()
	reg.MustRegister(v)
	want := `
# HELP tandem_replication_epochs_total Replication epochs ended, by result: committed, or failed (its pages are sent again with the next).
# TYPE tandem_replication_epochs_total counter
tandem_replication_epochs_total{result="committed"} 1
tandem_replication_epochs_total{result="failed"} 1
# HELP tandem_replication_dirty_pages_total Guest pages found dirty at the epochs' harvests.
# TYPE tandem_replication_dirty_pages_total counter
tandem_replication_dirty_pages_total 38
# HELP tandem_replication_link_bytes_total Page bytes sent on each replica link (on the wire, after traffic reduction).
# TYPE tandem_replication_link_bytes_total counter
tandem_replication_link_bytes_total{addr="10.0.0.2:7000",link="0"} 77824
tandem_replication_link_bytes_total{addr="10.0.0.3:7000",link="1"} 0
# HELP tandem_replication_last_epoch The newest epoch that ended (committed or not).
# TYPE tandem_replication_last_epoch gauge
tandem_replication_last_epoch 10
# HELP tandem_replication_output_held_bytes Guest output (serial, console, network frames) held for commit when the newest epoch was sealed.
# TYPE tandem_replication_output_held_bytes gauge
tandem_replication_output_held_bytes 50
# HELP tandem_replication_link_lag_epochs Epochs ended that the link has not acknowledged.
# TYPE tandem_replication_link_lag_epochs gauge
tandem_replication_link_lag_epochs{addr="10.0.0.2:7000",link="0"} 1
tandem_replication_link_lag_epochs{addr="10.0.0.3:7000",link="1"} 6
# HELP tandem_vm_exits_total Returns from KVM_RUN of the VM's vCPUs, by exit reason.
# TYPE tandem_vm_exits_total counter
tandem_vm_exits_total{reason="io"} 7
tandem_vm_exits_total{reason="mmio"} 3
tandem_vm_exits_total{reason="other"} 1
`
	names := []string{"tandem_replication_epochs_total", "tandem_replication_dirty_pages_total", "tandem_replication_link_bytes_total",
		"tandem_replication_last_epoch", "tandem_replication_output_held_bytes", "tandem_replication_link_lag_epochs", "tandem_vm_exits_total"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	// One commit observed (the failed epoch has none), of 27 µs.
	if n := testutil.CollectAndCount(v, "tandem_replication_commit_seconds"); n != 1 {
		t.Errorf("%d commit histograms, want 1", n)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestVMWithoutReplication: a VM without --ha exports its vCPUs, memory
// and exits only.
func TestVMWithoutReplication(t *testing.T) {
	src := testSources()
	src.Replication = nil
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewVM(src))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, mf := range mfs {
		got = append(got, mf.GetName())
	}
	if want := "tandem_vm_exits_total tandem_vm_memory_bytes tandem_vm_vcpus"; strings.Join(got, " ") != want {
		t.Errorf("families %v, want %s", got, want)
	}
}

// TestLastEpochIsConsistent: scrapes that race with the replication loop
// recording epochs always see the figures of one epoch, never a mix (the
// sequence count), and the loop never waits for them.
func TestLastEpochIsConsistent(t *testing.T) {
	v := NewVM(testSources())
	const epochs = 20000
	var wg sync.WaitGroup
	wg.Go(func() {
		for e := uint64(1); e <= epochs; e++ {
			v.Observe(epochRecord(e))
		}
	})
	for range 2 {
		wg.Go(func() {
			for {
				f := v.last.load()
				us := int64(time.Microsecond)
				if f.dirty != 2*f.epoch || f.held != 5*f.epoch || f.commit != 3*int64(f.epoch)*us || f.steps[4] != 4*int64(f.epoch)*us {
					t.Errorf("a mix of epochs: %+v", f)
					return
				}
				if f.epoch == epochs {
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestRegisterReplaces: the process exports one VM, the newest
// registered, whose metrics stay after it stops.
func TestRegisterReplaces(t *testing.T) {
	a, b := NewVM(testSources()), NewVM(testSources())
	a.Observe(epochRecord(1))
	b.Observe(epochRecord(1))
	b.Observe(epochRecord(2))
	for _, v := range []*VM{a, b} {
		if err := Register(v); err != nil {
			t.Fatal(err)
		}
	}
	// b's two epochs, not a's one, and not three.
	if got := testutil.ToFloat64(b.committed); got != 2 {
		t.Fatalf("b counted %v epochs", got)
	}
	mfs, err := Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "tandem_replication_epochs_total" {
			if n := mf.GetMetric()[0].GetCounter().GetValue(); n != 2 {
				t.Errorf("exported %v committed epochs, want the newest VM's 2", n)
			}
			return
		}
	}
	t.Error("no tandem_replication_epochs_total exported")
}

// TestFailover counts takeovers and their recovery times.
func TestFailover(t *testing.T) {
	before := testutil.ToFloat64(failovers)
	Failover(0.25)
	if got := testutil.ToFloat64(failovers); got != before+1 {
		t.Errorf("tandem_failovers_total %v, want %v", got, before+1)
	}
}
