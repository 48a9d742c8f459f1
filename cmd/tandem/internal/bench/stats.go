package bench

import (
	"math"
	"slices"
)

// Stat summarises a sample: mean, nearest-rank percentiles, extremes.
type Stat struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	Min  float64 `json:"min"`
	Max  float64 `json:"max"`
}

// Summarize computes a Stat of xs (the zero Stat for none).
func Summarize(xs []float64) Stat {
	if len(xs) == 0 {
		return Stat{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	var sum float64
	for _, x := range s {
		sum += x
	}
	return Stat{
		N:    len(s),
		Mean: sum / float64(len(s)),
		P50:  Percentile(s, 50),
		P99:  Percentile(s, 99),
		Min:  s[0],
		Max:  s[len(s)-1],
	}
}

// Percentile returns the nearest-rank p-th percentile of sorted (ascending):
// the smallest value with at least p% of the sample at or below it, the
// definition replicate.Summary uses. It returns NaN for an empty sample.
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Imbalance returns how much the busiest of the byte counts exceeds their
// mean, in percent: 0 when perfectly balanced.
func Imbalance(counts []uint64) float64 {
	if len(counts) == 0 {
		return 0
	}
	var sum, top uint64
	for _, c := range counts {
		sum += c
		top = max(top, c)
	}
	if sum == 0 {
		return 0
	}
	mean := float64(sum) / float64(len(counts))
	return (float64(top)/mean - 1) * 100
}

// ratio returns a/b, or 0 when b is 0.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
