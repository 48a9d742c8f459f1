package replicate

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// TestClusterRoundTrip: what a primary tells its holders of how it
// replicates, traffic reduction, speculation and active backup included, reads back as
// it was written, and values no primary sends are refused.
func TestClusterRoundTrip(t *testing.T) {
	good := Cluster{Links: []string{"a:1", "b:2"}, Leader: "c:3", Policy: PolicyFT, Mode: ModeSync, Epoch: 50 * time.Millisecond,
		AckTimeout: time.Second, Heartbeat: 100 * time.Millisecond,
		Reduce: &Reduction{Zero: true, CacheBytes: 1 << 20, Similar: true, Compress: true}, Speculate: 0.5}
	active := good
	active.Speculate, active.ActiveBackup = 0, ActiveBackupAuto
	for _, c := range []Cluster{good, active} {
		got, err := parseCluster(c.marshal())
		if err != nil || !reflect.DeepEqual(*got, c) {
			t.Fatalf("round trip: %+v, %v; want %+v", got, err, c)
		}
	}
	for name, mutate := range map[string]func(c *Cluster){
		"speculate 1":            func(c *Cluster) { c.Speculate = 1 },
		"speculate with fast":    func(c *Cluster) { c.Policy = PolicyFast },
		"negative sg-max":        func(c *Cluster) { c.SGMax = -1 },
		"similar without cache":  func(c *Cluster) { c.Reduce = &Reduction{Similar: true} },
		"negative cache":         func(c *Cluster) { c.Reduce = &Reduction{CacheBytes: -1} },
		"active and speculating": func(c *Cluster) { c.ActiveBackup = ActiveBackupOn },
		"active with fast":       func(c *Cluster) { c.Speculate, c.Policy, c.ActiveBackup = 0, PolicyFast, ActiveBackupOn },
		"active async":           func(c *Cluster) { c.Speculate, c.Mode, c.ActiveBackup = 0, ModeAsync, ActiveBackupOn },
		"active backup 7":        func(c *Cluster) { c.Speculate, c.ActiveBackup = 0, 7 },
	} {
		c := good
		mutate(&c)
		if _, err := parseCluster(c.marshal()); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v, want a protocol error", name, err)
		}
	}
}
