package replicate

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// TestClusterRoundTrip: what a primary tells its holders of how it
// replicates, traffic reduction and speculation included, reads back as
// it was written, and values no primary sends are refused.
func TestClusterRoundTrip(t *testing.T) {
	good := Cluster{Links: []string{"a:1", "b:2"}, Leader: "c:3", Policy: PolicyFT, Mode: ModeSync, Epoch: 50 * time.Millisecond,
		AckTimeout: time.Second, Heartbeat: 100 * time.Millisecond,
		Reduce: &Reduction{Zero: true, CacheBytes: 1 << 20, Similar: true, Compress: true}, Speculate: 0.5}
	got, err := parseCluster(good.marshal())
	if err != nil || !reflect.DeepEqual(*got, good) {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, good)
	}
	for name, mutate := range map[string]func(c *Cluster){
		"speculate 1":           func(c *Cluster) { c.Speculate = 1 },
		"speculate with fast":   func(c *Cluster) { c.Policy = PolicyFast },
		"negative sg-max":       func(c *Cluster) { c.SGMax = -1 },
		"similar without cache": func(c *Cluster) { c.Reduce = &Reduction{Similar: true} },
		"negative cache":        func(c *Cluster) { c.Reduce = &Reduction{CacheBytes: -1} },
	} {
		c := good
		mutate(&c)
		if _, err := parseCluster(c.marshal()); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v, want a protocol error", name, err)
		}
	}
}
