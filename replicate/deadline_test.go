package replicate

import (
	"testing"
	"time"
)

// TestDeadlineArithmetic pins the sizing of link and state deadlines: the
// bytes at a quarter of the measured rate, never slower than the floor,
// on top of the fixed allowance.
func TestDeadlineArithmetic(t *testing.T) {
	const ack = 2 * time.Second
	for _, c := range []struct {
		name        string
		bytes       uint64
		rate, floor float64
		want        time.Duration
	}{
		{"nothing to send", 0, 0, 1e6, ack},
		{"unmeasured link at the floor", 8e6, 0, 1e6, ack + 8*time.Second},
		{"slow measured link (20 Mbit/s) is held to the floor", 8e6, 2.5e6, 1e6, ack + 8*time.Second},
		{"fast measured link, a quarter of its rate", 8e6, 400e6, 1e6, ack + 80*time.Millisecond},
		{"configured floor", 8e6, 0, 4e6, ack + 2*time.Second},
	} {
		if got := allowance(ack, c.bytes, c.rate, c.floor); got != c.want {
			t.Errorf("%s: allowance(%v, %d, %g, %g) = %v, want %v", c.name, ack, c.bytes, c.rate, c.floor, got, c.want)
		}
	}
	// A link measured at 20 Mbit/s gets at least the time its bytes need
	// at that rate (the old fixed 10 MB/s gave it a quarter of it).
	if d := allowance(ack, 64<<20, 2.5e6, 1e6); d < time.Duration(float64(64<<20)/2.5e6*float64(time.Second)) {
		t.Errorf("64 MiB on a 2.5 MB/s link allowed %v: less than it needs", d)
	}

	// Measured rates: small transfers measure round trips and are
	// ignored; the first sample is taken whole, later ones averaged.
	if r := observeRate(0, minRateSample-1, time.Millisecond); r != 0 {
		t.Errorf("a %d-byte sample set the rate to %g", minRateSample-1, r)
	}
	r := observeRate(0, 10e6, time.Second)
	if r != 10e6 {
		t.Errorf("first sample of 10 MB in 1 s: rate %g", r)
	}
	if r = observeRate(r, 20e6, time.Second); r != 13e6 {
		t.Errorf("10 MB/s then 20 MB/s: rate %g, want 13e6", r)
	}
	if r2 := observeRate(r, 10e6, 0); r2 != r {
		t.Errorf("a zero duration changed the rate to %g", r2)
	}

	// The leader reads a state's payload at the floor on top of the
	// heartbeat timeout: 64 MiB at 1 MB/s.
	if d := stateReadTime(time.Second, 64<<20, 1e6); d != time.Second+time.Duration(float64(64<<20)/1e6*float64(time.Second)) {
		t.Errorf("stateReadTime(1s, 64 MiB, 1 MB/s) = %v", d)
	}
}
