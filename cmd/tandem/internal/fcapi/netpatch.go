package fcapi

import (
	"encoding/json"
	"net/http"
	"slices"
)

// PartialNetworkInterface is Firecracker's PartialNetworkInterface: the
// rate limiters of a network interface, to change after InstanceStart.
type PartialNetworkInterface struct {
	IfaceID       string          `json:"iface_id"`
	RxRateLimiter json.RawMessage `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter json.RawMessage `json:"tx_rate_limiter,omitempty"`
}

// rateLimited says whether a RateLimiter sets a limit. Absent, null, {}
// and one whose buckets are null set none; anything else is a limit, or
// a malformed body.
func rateLimited(raw json.RawMessage) (bool, error) {
	if isNull(raw) {
		return false, nil
	}
	var rl struct {
		Bandwidth json.RawMessage `json:"bandwidth"`
		Ops       json.RawMessage `json:"ops"`
	}
	if err := decodeBytes(raw, &rl); err != nil {
		return false, err
	}
	return !isNull(rl.Bandwidth) || !isNull(rl.Ops), nil
}

// refuseRateLimits is a 400 if one of a network interface's rate
// limiters sets a limit.
func refuseRateLimits(limiters ...json.RawMessage) error {
	for _, rl := range limiters {
		limited, err := rateLimited(rl)
		if err != nil {
			return err
		}
		if limited {
			return badRequest("Tandem does not support rate limiters on network interfaces")
		}
	}
	return nil
}

func isNull(raw json.RawMessage) bool { return len(raw) == 0 || string(raw) == "null" }

// patchNetworkInterface serves PATCH /network-interfaces/{id}, which in
// Firecracker changes the rate limiters of a started microVM's interface.
// Tandem has no rate limiters, so the only change it accepts is none.
func (s *Server) patchNetworkInterface(r *http.Request, id string) (int, any, error) {
	var p PartialNetworkInterface
	if err := decode(r, &p); err != nil {
		return 0, nil, err
	}
	if p.IfaceID != id {
		return 0, nil, badRequest("iface_id %q differs from the path's %q", p.IfaceID, id)
	}
	if err := refuseRateLimits(p.RxRateLimiter, p.TxRateLimiter); err != nil {
		return 0, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.state == NotStarted:
		return 0, nil, badRequest("the microVM has not started: PATCH /network-interfaces/%s is for after InstanceStart (before it, PUT the interface)", id)
	case !slices.ContainsFunc(s.cfg.NetworkInterfaces, func(n NetworkInterface) bool { return n.IfaceID == id }):
		return 0, nil, badRequest("no network interface %q", id)
	}
	return http.StatusNoContent, nil, nil
}
