package fcapi

import "testing"

// TestPatchNetworkInterface: PATCH /network-interfaces/{id} is for a
// started microVM's interface, and accepts rate limiters that limit
// nothing only.
func TestPatchNetworkInterface(t *testing.T) {
	s := NewServer("vm0", "1", &fakeMachine{})
	run(t, s, []step{
		{"PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "rx_rate_limiter": {}}`, 204, ""},
		{"PATCH", "/network-interfaces/eth0", `{"iface_id": "eth0"}`, 400, "has not started"},
		{"PUT", "/boot-source", `{"kernel_image_path": "/k"}`, 204, ""},
		{"PUT", "/actions", `{"action_type": "InstanceStart"}`, 204, ""},
	})
	for _, c := range []step{
		{"PATCH", "/network-interfaces/eth0", `{"iface_id": "eth0"}`, 204, ""},
		{"PATCH", "/network-interfaces/eth0", `{"iface_id": "eth0", "rx_rate_limiter": null, "tx_rate_limiter": null}`, 204, ""},
		{"PATCH", "/network-interfaces/eth0", `{"iface_id": "eth0", "rx_rate_limiter": {}, "tx_rate_limiter": {"bandwidth": null, "ops": null}}`, 204, ""},
		{"PATCH", "/network-interfaces/eth0", `{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}`, 400, "does not support rate limiters"},
		{"PATCH", "/network-interfaces/eth0", `{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}`, 400, "does not support rate limiters"},
		{"PATCH", "/network-interfaces/eth0", `{"iface_id": "eth0", "tx_rate_limiter": {"bandwith": null}}`, 400, "unknown field"},
		{"PATCH", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap1"}`, 400, "unknown field"},
		{"PATCH", "/network-interfaces/eth0", `{"iface_id": "eth1"}`, 400, "differs"},
		{"PATCH", "/network-interfaces/eth1", `{"iface_id": "eth1"}`, 400, "no network interface"},
		{"PATCH", "/network-interfaces/eth0", `{`, 400, "malformed"},
		{"GET", "/vm/config", "", 200, `"network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0","rx_rate_limiter":{}}]`},
	} {
		run(t, s, []step{c})
	}
}
