package fcapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// haMachine is a fakeMachine that reports a replication status.
type haMachine struct {
	*fakeMachine
	status HAReplication
	fail   error
}

func (m *haMachine) HAStatus() (HAReplication, error) { return m.status, m.fail }

const goodHA = `{"replicas": ["127.0.0.1:7000", "10.0.0.2:7000"], "leader": "127.0.0.1:7001", "auth_key_path": "/keys/ha.key"}`

// TestPutHARefusals: a malformed or invalid PUT /ha is a 400 that says what
// is wrong and leaves the microVM unreplicated.
func TestPutHARefusals(t *testing.T) {
	m := &haMachine{fakeMachine: &fakeMachine{}}
	s := NewServer("vm0", "1", m)
	with := func(field string) string { // goodHA with one field more or replaced
		return `{"replicas": ["127.0.0.1:7000"], "leader": "127.0.0.1:7001", "auth_key_path": "/k", ` + field + `}`
	}
	run(t, s, []step{
		{"PUT", "/ha", `{"replicas": ["127.0.0.1:7000"]`, 400, "malformed"},
		{"PUT", "/ha", `{"replicas": "127.0.0.1:7000", "leader": "127.0.0.1:7001", "auth_key_path": "/k"}`, 400, "malformed"},
		{"PUT", "/ha", with(`"turbo": true`), 400, "unknown field"},
		{"PUT", "/ha", goodHA + ` {}`, 400, "more than one JSON value"},
		{"PUT", "/ha", `{"leader": "127.0.0.1:7001", "auth_key_path": "/k"}`, 400, "replicas is required"},
		{"PUT", "/ha", `{"replicas": [], "leader": "127.0.0.1:7001", "auth_key_path": "/k"}`, 400, "replicas is required"},
		{"PUT", "/ha", `{"replicas": ["127.0.0.1"], "leader": "127.0.0.1:7001", "auth_key_path": "/k"}`, 400, `replicas[0] \"127.0.0.1\": want HOST:PORT`},
		{"PUT", "/ha", `{"replicas": ["127.0.0.1:7000", "a:1,b:2"], "leader": "127.0.0.1:7001", "auth_key_path": "/k"}`, 400, `replicas[1] \"a:1,b:2\": want HOST:PORT, one address`},
		{"PUT", "/ha", `{"replicas": ["127.0.0.1:0"], "leader": "127.0.0.1:7001", "auth_key_path": "/k"}`, 400, "want 1 to 65535"},
		{"PUT", "/ha", `{"replicas": [":7000"], "leader": "127.0.0.1:7001", "auth_key_path": "/k"}`, 400, "no host"},
		{"PUT", "/ha", `{"replicas": ["127.0.0.1:7000"], "auth_key_path": "/k"}`, 400, "leader is required"},
		{"PUT", "/ha", `{"replicas": ["127.0.0.1:7000"], "leader": "rdma://10.0.0.1:7001", "auth_key_path": "/k"}`, 400, "the leader's state connection is TCP"},
		{"PUT", "/ha", `{"replicas": ["127.0.0.1:7000"], "leader": "127.0.0.1:7001"}`, 400, "auth_key_path is required"},
		{"PUT", "/ha", `{"replicas": ["127.0.0.1:7000"], "leader": "127.0.0.1:7001", "insecure_plaintext": true}`, 400, "auth_key_path is required"},
		{"PUT", "/ha", with(`"policy": "mirror"`), 400, `policy \"mirror\": want fast or ft`},
		{"PUT", "/ha", with(`"mode": "lazy"`), 400, `mode \"lazy\": want sync or async`},
		{"PUT", "/ha", with(`"epoch_ms": 0`), 400, "epoch_ms 0: want 1 to 60000"},
		{"PUT", "/ha", with(`"epoch_ms": 600000`), 400, "epoch_ms 600000"},
		{"PUT", "/ha", with(`"epoch_ms": 2.5`), 400, "malformed"},
		{"PUT", "/ha", with(`"coordinator": "http://etcd:2379"`), 400, "want etcd://"},
		{"POST", "/ha", goodHA, 400, "no such endpoint"},
		{"GET", "/ha", "", 200, `{"enabled":false}`},
	})
	if s.cfg.HA != nil || s.configured || len(m.calls) != 0 {
		t.Errorf("refused PUTs changed the server: HA %+v, configured %v, calls %v", s.cfg.HA, s.configured, m.calls)
	}
}

// TestHA: PUT /ha before InstanceStart is what GET /ha shows, with the
// defaults, and what the Machine starts with; after InstanceStart PUT is
// refused and GET adds the Machine's replication status.
func TestHA(t *testing.T) {
	m := &haMachine{fakeMachine: &fakeMachine{}}
	s := NewServer("vm0", "1", m)
	run(t, s, []step{
		{"GET", "/ha", "", 200, `{"enabled":false}`},
		{"PUT", "/ha", `{"replicas": ["10.0.0.9:7000"], "leader": "10.0.0.9:7001", "auth_key_path": "/old.key", "policy": "ft"}`, 204, ""},
		{"PUT", "/ha", goodHA, 204, ""}, // replaces the first whole
		{"GET", "/ha", "", 200, `{"enabled":true,"config":{"replicas":["127.0.0.1:7000","10.0.0.2:7000"],"leader":"127.0.0.1:7001","policy":"fast","mode":"sync","epoch_ms":50,"auth_key_path":"/keys/ha.key"}}`},
		{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m"}`, 400, "configured already"},
		{"PUT", "/boot-source", `{"kernel_image_path": "/k"}`, 204, ""},
		{"GET", "/vm/config", "", 200, `"machine-config"`},
	})
	if body := call2(t, s, "GET", "/vm/config"); strings.Contains(body, "replicas") {
		t.Errorf("GET /vm/config shows the replication, which is not Firecracker's: %s", body)
	}
	m.status = HAReplication{
		Generation: 3, CommittedEpoch: 41, Leader: "127.0.0.1:7001", LeaderConnected: true, Policy: "fast", Protected: true,
		Links:     []HALink{{Addr: "127.0.0.1:7000", Alive: true, AckedEpoch: 41, RateBytesPerS: 1e9, BytesLastEpoch: 8192}},
		LastPause: &HAPause{Epoch: 41, DirtyPages: 2, HarvestUs: 120.5, TotalUs: 900},
	}
	run(t, s, []step{
		{"PUT", "/actions", `{"action_type": "InstanceStart"}`, 204, ""},
		{"PUT", "/ha", goodHA, 400, "before InstanceStart"},
	})
	if m.started == nil || m.started.HA == nil || m.started.HA.Leader != "127.0.0.1:7001" || *m.started.HA.EpochMs != 50 {
		t.Fatalf("the Machine started with HA %+v", m.started)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(call2(t, s, "GET", "/ha")), &got); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"enabled", "config", "generation", "committed_epoch", "leader", "leader_connected", "policy", "protected", "degraded", "links", "last_pause"} {
		if _, ok := got[key]; !ok {
			t.Errorf("GET /ha after InstanceStart has no %q: %v", key, got)
		}
	}
	link := got["links"].([]any)[0].(map[string]any)
	for key, want := range map[string]any{"addr": "127.0.0.1:7000", "alive": true, "joining": false, "acked_epoch": 41.0, "lag_epochs": 0.0, "rate_bytes_per_s": 1e9, "bytes_last_epoch": 8192.0} {
		if link[key] != want {
			t.Errorf("link %s = %v, want %v", key, link[key], want)
		}
	}
	pause := got["last_pause"].(map[string]any)
	for key, want := range map[string]any{"epoch": 41.0, "dirty_pages": 2.0, "harvest_us": 120.5, "group_us": 0.0, "transfer_us": 0.0, "ack_us": 0.0, "total_us": 900.0} {
		if pause[key] != want {
			t.Errorf("last_pause %s = %v, want %v", key, pause[key], want)
		}
	}
	m.fail = errors.New("control socket gone")
	run(t, s, []step{{"GET", "/ha", "", 500, "control socket gone"}})
	// Configured for HA but replicating nothing now: unprotected, not an error.
	m.fail = fmt.Errorf("the run reports none: %w", ErrNotReplicating)
	run(t, s, []step{{"GET", "/ha", "", 200, `"generation":0,"committed_epoch":0,"leader":"","leader_connected":false,"policy":"fast","protected":false,"degraded":false,"links":[]`}})
}

// TestHAStatusNeedsReporter: a replicated microVM whose Machine does not
// report is a 400 on GET /ha, one not replicated says so whatever the
// Machine.
func TestHAStatusNeedsReporter(t *testing.T) {
	s := NewServer("vm0", "1", &fakeMachine{})
	run(t, s, []step{
		{"PUT", "/boot-source", `{"kernel_image_path": "/k"}`, 204, ""},
		{"PUT", "/actions", `{"action_type": "InstanceStart"}`, 204, ""},
		{"GET", "/ha", "", 200, `{"enabled":false}`},
	})
	s = NewServer("vm0", "1", &fakeMachine{})
	run(t, s, []step{
		{"PUT", "/boot-source", `{"kernel_image_path": "/k"}`, 204, ""},
		{"PUT", "/ha", goodHA, 204, ""},
		{"PUT", "/actions", `{"action_type": "InstanceStart"}`, 204, ""},
		{"GET", "/ha", "", 400, "does not report its replication"},
	})
}

// call2 is call for a request without a body that must succeed.
func call2(t *testing.T, s *Server, method, path string) string {
	t.Helper()
	status, body := call(t, s, method, path, "")
	if status != 200 {
		t.Fatalf("%s %s: %d %s", method, path, status, body)
	}
	return body
}
