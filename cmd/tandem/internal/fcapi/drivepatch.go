package fcapi

import (
	"encoding/json"
	"net/http"
	"slices"
)

// PartialDrive is Firecracker's PartialDrive: what PATCH /drives/{id}
// changes of a started microVM's drive.
type PartialDrive struct {
	DriveID string `json:"drive_id"`
	// PathOnHost, when given, is the drive's new backing file: the
	// running guest's disk becomes its content, at its size.
	PathOnHost  *string         `json:"path_on_host,omitempty"`
	RateLimiter json.RawMessage `json:"rate_limiter,omitempty"`
}

// DriveUpdater is a Machine whose running microVM's drives take a new
// backing file: PATCH /drives/{id} with a path_on_host is refused for a
// Machine that is not one.
type DriveUpdater interface {
	// UpdateDrive gives the microVM's drive index, counted in the order
	// DriveOrder says, the file at path, read-only if the drive is; the
	// guest is told its new size. An error leaves the drive as it was.
	UpdateDrive(index int, path string) error
}

// DriveOrder is the drives in the order a Machine gives them to the
// microVM: the root device first (the guest's /dev/vda), then the others
// in the order they were configured.
func (c Config) DriveOrder() []Drive {
	order := make([]Drive, 0, len(c.Drives))
	for _, root := range []bool{true, false} {
		for _, d := range c.Drives {
			if d.IsRootDevice == root {
				order = append(order, d)
			}
		}
	}
	return order
}

// patchDrive serves PATCH /drives/{id}: after InstanceStart only, for a
// configured drive, a new path_on_host swaps the drive's backing file on
// the running microVM (DriveUpdater), which GET /vm/config shows once it
// succeeded. Rate limiters may only be absent or null. Leaving
// path_on_host out changes nothing; giving the file it has already
// reopens it, for a guest to see the size the file has grown to.
func (s *Server) patchDrive(r *http.Request, id string) (int, any, error) {
	var p PartialDrive
	if err := decode(r, &p); err != nil {
		return 0, nil, err
	}
	switch {
	case p.DriveID != id:
		return 0, nil, badRequest("drive_id %q differs from the path's %q", p.DriveID, id)
	case p.PathOnHost != nil && *p.PathOnHost == "":
		return 0, nil, badRequest("path_on_host is empty: give the drive's new backing file, or leave path_on_host out")
	}
	limited, err := rateLimited(p.RateLimiter)
	if err != nil {
		return 0, nil, err
	}
	if limited {
		return 0, nil, badRequest("Tandem does not support rate limiters on drives")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == NotStarted {
		return 0, nil, badRequest("the microVM has not started: PATCH /drives/%s is for after InstanceStart (before it, PUT the drive)", id)
	}
	index := slices.IndexFunc(s.cfg.DriveOrder(), func(d Drive) bool { return d.DriveID == id })
	if index < 0 {
		return 0, nil, badRequest("no drive %q", id)
	}
	if p.PathOnHost == nil {
		return http.StatusNoContent, nil, nil
	}
	du, ok := s.Machine.(DriveUpdater)
	if !ok {
		return 0, nil, badRequest("this microVM's drives cannot be updated")
	}
	if err := du.UpdateDrive(index, *p.PathOnHost); err != nil {
		return 0, nil, badRequest("updating drive %q: %v", id, err)
	}
	drives := slices.Clone(s.cfg.Drives)
	drives[slices.IndexFunc(drives, func(d Drive) bool { return d.DriveID == id })].PathOnHost = *p.PathOnHost
	s.cfg.Drives = drives
	return http.StatusNoContent, nil, nil
}
