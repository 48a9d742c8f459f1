package fcapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
)

// ConfigFile is Firecracker's --config-file: a microVM's whole
// configuration in one JSON object, each part the body of the request
// that configures it (FullVmConfiguration's shape), and Tandem's "ha",
// the body of PUT /ha.
type ConfigFile struct {
	BootSource        *BootSource        `json:"boot-source,omitempty"`
	Drives            []Drive            `json:"drives,omitempty"`
	MachineConfig     *MachineConfig     `json:"machine-config,omitempty"`
	NetworkInterfaces []NetworkInterface `json:"network-interfaces,omitempty"`
	Logger            *LoggerConfig      `json:"logger,omitempty"`
	Metrics           *MetricsConfig     `json:"metrics,omitempty"`
	HA                *HAConfig          `json:"ha,omitempty"`
}

// configParts are the parts of a config file Tandem reads, in the order
// Apply applies them (Firecracker's).
var configParts = []string{"logger", "metrics", "machine-config", "boot-source", "drives", "network-interfaces", "ha"}

// unsupportedConfigParts are the parts of Firecracker's config file
// Tandem does not serve (see unsupported).
var unsupportedConfigParts = []string{"balloon", "cpu-config", "entropy", "memory-hotplug", "mmds-config", "pmem", "serial", "vsock"}

// ParseConfigFile reads a config file. Its errors name the part that is
// wrong, and every part it does not know.
func ParseConfigFile(b []byte) (ConfigFile, error) {
	var cf ConfigFile
	var parts map[string]json.RawMessage
	if err := decodeStrict(b, &parts); err != nil {
		return cf, fmt.Errorf("not a JSON object: %w", err)
	}
	if parts == nil {
		return cf, errors.New("not a JSON object: null")
	}
	var unknown, refused []string
	for name := range parts {
		switch {
		case slices.Contains(configParts, name):
		case slices.Contains(unsupportedConfigParts, name):
			refused = append(refused, fmt.Sprintf("%q", name))
		default:
			unknown = append(unknown, fmt.Sprintf("%q", name))
		}
	}
	sort.Strings(unknown)
	sort.Strings(refused)
	switch {
	case len(unknown) > 0:
		return cf, fmt.Errorf("unknown part %s: want %s", strings.Join(unknown, ", "), strings.Join(configParts, ", "))
	case len(refused) > 0:
		return cf, fmt.Errorf("part %s: Tandem does not support it", strings.Join(refused, ", "))
	}
	one := func(name string, v any) error {
		raw, ok := parts[name]
		if !ok || isNull(raw) {
			return nil
		}
		if err := decodeStrict(raw, v); err != nil {
			return fmt.Errorf("%q: %w", name, err)
		}
		return nil
	}
	each := func(name string, add func(raw json.RawMessage) error) error {
		var list []json.RawMessage
		if err := one(name, &list); err != nil {
			return err
		}
		for i, raw := range list {
			if err := add(raw); err != nil {
				return fmt.Errorf("%q[%d]: %w", name, i, err)
			}
		}
		return nil
	}
	err := errors.Join(
		one("logger", &cf.Logger),
		one("metrics", &cf.Metrics),
		one("machine-config", &cf.MachineConfig),
		one("boot-source", &cf.BootSource),
		each("drives", func(raw json.RawMessage) error {
			var d Drive
			err := decodeStrict(raw, &d)
			cf.Drives = append(cf.Drives, d)
			return err
		}),
		each("network-interfaces", func(raw json.RawMessage) error {
			var n NetworkInterface
			err := decodeStrict(raw, &n)
			cf.NetworkInterfaces = append(cf.NetworkInterfaces, n)
			return err
		}),
		one("ha", &cf.HA),
	)
	return cf, err
}

// Apply configures the microVM as cf says and starts it: each part runs
// as the request that configures it would (PUT /logger, /metrics,
// /machine-config, /boot-source, /drives/{id}, /network-interfaces/{id},
// /ha, in that order), with its validation, then PUT /actions
// InstanceStart.
// It stops at the first part refused, and its error names the part.
func (s *Server) Apply(cf ConfigFile) error {
	if cf.BootSource == nil {
		return errors.New(`"boot-source" is required: the microVM boots from it`)
	}
	type request struct {
		part, path string
		body       any
	}
	var requests []request
	if cf.Logger != nil {
		requests = append(requests, request{`"logger"`, "/logger", cf.Logger})
	}
	if cf.Metrics != nil {
		requests = append(requests, request{`"metrics"`, "/metrics", cf.Metrics})
	}
	if cf.MachineConfig != nil {
		requests = append(requests, request{`"machine-config"`, "/machine-config", cf.MachineConfig})
	}
	requests = append(requests, request{`"boot-source"`, "/boot-source", cf.BootSource})
	for i, d := range cf.Drives {
		requests = append(requests, request{fmt.Sprintf(`"drives"[%d]`, i), "/drives/" + d.DriveID, d})
	}
	for i, n := range cf.NetworkInterfaces {
		requests = append(requests, request{fmt.Sprintf(`"network-interfaces"[%d]`, i), "/network-interfaces/" + n.IfaceID, n})
	}
	if cf.HA != nil {
		requests = append(requests, request{`"ha"`, "/ha", cf.HA})
	}
	requests = append(requests, request{"InstanceStart", "/actions", map[string]string{"action_type": "InstanceStart"}})
	for _, rq := range requests {
		if _, id, ok := strings.Cut(rq.path[1:], "/"); ok && !idPath.MatchString(rq.path) {
			return fmt.Errorf("%s: the id %q is not 1 to 64 of A-Z, a-z, 0-9, _ and -", rq.part, id)
		}
		b, err := json.Marshal(rq.body)
		if err != nil {
			return fmt.Errorf("%s: %w", rq.part, err)
		}
		req, err := http.NewRequest(http.MethodPut, "http://localhost"+rq.path, bytes.NewReader(b))
		if err != nil {
			return fmt.Errorf("%s: %w", rq.part, err)
		}
		if _, _, err := s.route(req); err != nil {
			return fmt.Errorf("%s: %w", rq.part, err)
		}
	}
	return nil
}
