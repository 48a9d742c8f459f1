package bench

import (
	"slices"
)

// PaperRow is one configuration of seed 003 Table III: kernel compile
// time (s) and average VM downtime (ms) per checkpoint, at 100 ms epochs,
// on 10 Gbit/s RoCE links, 512 MiB guest. These figures are the paper's;
// they appear in the report only in columns marked as seed 003's.
type PaperRow struct {
	Time     float64 `json:"time_s"`
	Downtime float64 `json:"downtime_ms"`
}

// paperTableIII holds seed 003 Table III by write-latency factor: DRAM
// (1) and emulated ST-MRAM (2). "none" is native qemu, "async" qemu-mc.
// The paper has no native run for ST-MRAM (its emulation only slowed the
// replication's writes), so the DRAM native time is the base of both.
var paperTableIII = map[float64]map[string]PaperRow{
	1: {
		"none":  {Time: 338},
		"async": {Time: 531, Downtime: 38},
		"fast2": {Time: 731, Downtime: 37},
		"fast4": {Time: 483, Downtime: 23},
		"ft4":   {Time: 1211, Downtime: 69},
	},
	2: {
		"none":  {Time: 338},
		"async": {Time: 782, Downtime: 60},
		"fast2": {Time: 927, Downtime: 52},
		"fast4": {Time: 614, Downtime: 33},
		"ft4":   {Time: 2009, Downtime: 146},
	},
}

func paperRows(f float64) (map[string]PaperRow, bool) {
	r, ok := paperTableIII[f]
	return r, ok
}

// CompareRow sets one configuration of seed 003 Table III beside the
// bench's measurement of it. Paper* fields are the paper's; Meas* fields
// are measured here and never filled from the paper.
type CompareRow struct {
	Tech   string  `json:"tech"`
	Factor float64 `json:"factor"`
	Setup  string  `json:"setup"`
	Epoch  float64 `json:"epoch_ms"`
	// Time relative to no replication, and to fast(4), in percent; the
	// paper's is compile time, the bench's the inverse progress ratio.
	PaperTimePct     float64 `json:"paper_time_pct"`
	PaperTimeVsFast4 float64 `json:"paper_time_vs_fast4_pct"`
	PaperDowntime    float64 `json:"paper_downtime_ms,omitempty"`
	PaperDownVsFast4 float64 `json:"paper_downtime_vs_fast4_pct,omitempty"`
	PaperRank        int     `json:"paper_rank,omitempty"` // by time among replicated setups, 1 = fastest
	MeasTimePct      float64 `json:"measured_time_pct,omitempty"`
	MeasTimeVsFast4  float64 `json:"measured_time_vs_fast4_pct,omitempty"`
	MeasPause        float64 `json:"measured_pause_ms,omitempty"`
	MeasPauseVsFast4 float64 `json:"measured_pause_vs_fast4_pct,omitempty"`
	MeasRank         int     `json:"measured_rank,omitempty"`
	Measured         bool    `json:"measured"`
}

// compareTableIII builds the side-by-side rows for every factor the paper
// has, at the paper's epoch (or the closest the matrix has), for the first
// memory size and pattern.
func compareTableIII(runs []RunResult, cfg Config) []CompareRow {
	if len(cfg.Mems) == 0 || len(cfg.Patterns) == 0 || len(cfg.Epochs) == 0 {
		return nil
	}
	e := headlineEpoch(cfg)
	mem, pat := cfg.Mems[0], cfg.Patterns[0]
	var out []CompareRow
	for _, f := range []float64{1, 2} {
		paper := paperTableIII[f]
		base := paper["none"].Time
		var rows []CompareRow
		for _, s := range Setups {
			p, ok := paper[s.ID]
			if !ok {
				continue // a setup seed 003 did not run
			}
			row := CompareRow{
				Tech: TechName(f), Factor: f, Setup: s.Name, Epoch: ms(e),
				PaperTimePct:     100 * p.Time / base,
				PaperTimeVsFast4: 100 * p.Time / paper["fast4"].Time,
				PaperDowntime:    p.Downtime,
			}
			if p.Downtime > 0 {
				row.PaperDownVsFast4 = 100 * p.Downtime / paper["fast4"].Downtime
			}
			if r := findRun(runs, s.ID, pat, mem, e, f); r != nil && r.TimeRatio > 0 {
				row.Measured = true
				row.MeasTimePct = 100 * r.TimeRatio
				if s.ID == "none" {
					row.MeasTimePct = 100 // the baseline, by definition
				} else {
					row.MeasPause = r.Pause.Total.Mean
				}
			}
			rows = append(rows, row)
		}
		// Relative to fast(4), and ranks among the replicated setups.
		var f4 *CompareRow
		for i := range rows {
			if rows[i].Setup == "fast(4)" && rows[i].Measured {
				f4 = &rows[i]
			}
		}
		if f4 != nil {
			for i := range rows {
				if rows[i].Measured {
					rows[i].MeasTimeVsFast4 = 100 * rows[i].MeasTimePct / f4.MeasTimePct
					if rows[i].MeasPause > 0 && f4.MeasPause > 0 {
						rows[i].MeasPauseVsFast4 = 100 * rows[i].MeasPause / f4.MeasPause
					}
				}
			}
		}
		rank(rows, func(r CompareRow) (float64, bool) { return r.PaperTimePct, r.Setup != "none" }, func(r *CompareRow, k int) { r.PaperRank = k })
		rank(rows, func(r CompareRow) (float64, bool) { return r.MeasTimePct, r.Setup != "none" && r.Measured }, func(r *CompareRow, k int) { r.MeasRank = k })
		out = append(out, rows...)
	}
	return out
}

// rank numbers the rows that key admits by ascending key, from 1.
func rank(rows []CompareRow, key func(CompareRow) (float64, bool), set func(*CompareRow, int)) {
	var idx []int
	for i, r := range rows {
		if _, ok := key(r); ok {
			idx = append(idx, i)
		}
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		ka, _ := key(rows[a])
		kb, _ := key(rows[b])
		switch {
		case ka < kb:
			return -1
		case ka > kb:
			return 1
		}
		return 0
	})
	for k, i := range idx {
		set(&rows[i], k+1)
	}
}
