package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tandemvm/tandem/cmd/tandem/internal/fcapi"
	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/vmm"
)

// haArgs are the `tandem run` flags of PUT /ha's replication (none for
// nil): what `tandem run --ha` would be given by hand.
func haArgs(h *fcapi.HAConfig) []string {
	if h == nil {
		return nil
	}
	args := []string{"--ha", "--replicas", strings.Join(h.Replicas, ","), "--leader", h.Leader,
		"--policy", h.Policy, "--mode", h.Mode, "--epoch", strconv.Itoa(*h.EpochMs) + "ms", "--auth-key", h.AuthKeyPath}
	if h.InsecurePlaintext {
		args = append(args, "--insecure-plaintext")
	}
	if h.Coordinator != "" {
		args = append(args, "--coordinator", h.Coordinator)
	}
	return args
}

// UpdateDrive implements fcapi.DriveUpdater through the run's control
// socket (update-drive), which refuses for a replicated run.
func (m *apiMachine) UpdateDrive(index int, path string) error {
	ctx, cancel := context.WithTimeout(m.ctx, 30*time.Second)
	defer cancel()
	_, err := vmm.ControlCall(ctx, m.control, vmm.ControlRequest{Op: "update-drive", Drive: &index, Path: path})
	return err
}

// HAStatus implements fcapi.HAReporter from the run's control status.
func (m *apiMachine) HAStatus() (fcapi.HAReplication, error) {
	ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
	defer cancel()
	st, err := vmm.ControlCall(ctx, m.control, vmm.ControlRequest{Op: "status"})
	if err != nil {
		return fcapi.HAReplication{}, err
	}
	if len(st.Replication) == 0 {
		return fcapi.HAReplication{}, fmt.Errorf("the run reports none: %w", fcapi.ErrNotReplicating)
	}
	var rs replicate.Status
	if err := json.Unmarshal(st.Replication, &rs); err != nil {
		return fcapi.HAReplication{}, fmt.Errorf("the run's replication status: %w", err)
	}
	return haReplication(rs), nil
}

// haReplication is GET /ha's view of a primary's status. A link's lag is
// counted from the newest epoch the primary has: the last pause's, or the
// committed one if newer.
func haReplication(rs replicate.Status) fcapi.HAReplication {
	out := fcapi.HAReplication{
		Generation: rs.Generation, CommittedEpoch: rs.Committed, Leader: rs.Leader, LeaderConnected: rs.LeaderConnected,
		Policy: rs.Policy.String(), Protected: rs.Protected, Degraded: rs.Degraded, Links: []fcapi.HALink{},
	}
	newest := rs.Committed
	if last := rs.LastEpoch; last != nil {
		newest = max(newest, last.Epoch)
		us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
		out.LastPause = &fcapi.HAPause{Epoch: last.Epoch, DirtyPages: last.DirtyPages, HarvestUs: us(last.Pause.Harvest),
			GroupUs: us(last.Pause.Group), TransferUs: us(last.Pause.Transfer), AckUs: us(last.Pause.Ack), TotalUs: us(last.Pause.Total)}
	}
	for i, l := range rs.Links {
		link := fcapi.HALink{Addr: l.Addr, Alive: l.Alive, Joining: l.Joining, AckedEpoch: l.Acked,
			LagEpochs: newest - min(l.Acked, newest), RateBytesPerS: l.Rate}
		if rs.LastEpoch != nil && i < len(rs.LastEpoch.LinkBytes) {
			link.BytesLastEpoch = rs.LastEpoch.LinkBytes[i]
		}
		out.Links = append(out.Links, link)
	}
	return out
}
