package fcapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// driveMachine is a fakeMachine whose drives take new backing files.
type driveMachine struct {
	*fakeMachine
	updates   []string // "index path"
	failDrive error
}

func (m *driveMachine) UpdateDrive(index int, path string) error {
	if m.failDrive != nil {
		return m.failDrive
	}
	m.updates = append(m.updates, fmt.Sprintf("%d %s", index, path))
	return nil
}

// startedWithDrives is a server with three drives configured (the root one
// second) and started.
func startedWithDrives(t *testing.T, m Machine) *Server {
	t.Helper()
	s := NewServer("vm0", "1", m)
	run(t, s, []step{
		{"PUT", "/boot-source", `{"kernel_image_path": "/k"}`, 204, ""},
		{"PUT", "/drives/data", `{"drive_id": "data", "path_on_host": "/data.img", "is_root_device": false}`, 204, ""},
		{"PUT", "/drives/rootfs", `{"drive_id": "rootfs", "path_on_host": "/root.img", "is_root_device": true}`, 204, ""},
		{"PUT", "/drives/logs", `{"drive_id": "logs", "path_on_host": "/logs.img", "is_root_device": false, "is_read_only": true}`, 204, ""},
		{"PATCH", "/drives/data", `{"drive_id": "data", "path_on_host": "/early.img"}`, 400, "has not started"},
		{"PUT", "/actions", `{"action_type": "InstanceStart"}`, 204, ""},
	})
	return s
}

func configJSON(t *testing.T, s *Server) string {
	t.Helper()
	b, err := json.Marshal(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestPatchDriveRefusals: every bad PATCH /drives is a 400 that says why
// and changes nothing, neither the configuration nor the microVM.
func TestPatchDriveRefusals(t *testing.T) {
	m := &driveMachine{fakeMachine: &fakeMachine{}}
	s := startedWithDrives(t, m)
	before := configJSON(t, s)
	run(t, s, []step{
		{"PATCH", "/drives/data", `{"drive_id": "data", "path_on_host": "/new.img"`, 400, "malformed"},
		{"PATCH", "/drives/data", `{"drive_id": "data", "path_on_host": 7}`, 400, "malformed"},
		{"PATCH", "/drives/data", `{"drive_id": "data", "path_on_host": "/new.img", "is_read_only": true}`, 400, "unknown field"},
		{"PATCH", "/drives/data", `{"drive_id": "data"} {}`, 400, "more than one JSON value"},
		{"PATCH", "/drives/data", `{"drive_id": "other", "path_on_host": "/new.img"}`, 400, "differs"},
		{"PATCH", "/drives/data", `{"path_on_host": "/new.img"}`, 400, "differs"},
		{"PATCH", "/drives/nosuch", `{"drive_id": "nosuch", "path_on_host": "/new.img"}`, 400, `no drive \"nosuch\"`},
		{"PATCH", "/drives/data", `{"drive_id": "data", "path_on_host": ""}`, 400, "path_on_host is empty"},
		{"PATCH", "/drives/data", `{"drive_id": "data", "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}`, 400, "rate limiters on drives"},
		{"PATCH", "/drives/data", `{"drive_id": "data", "path_on_host": "/new.img", "rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}`, 400, "rate limiters on drives"},
		{"PATCH", "/drives/data", `{"drive_id": "data", "rate_limiter": {"turbo": 1}}`, 400, "unknown field"},
	})
	m.failDrive = errors.New("open /missing.img: no such file or directory")
	run(t, s, []step{
		{"PATCH", "/drives/data", `{"drive_id": "data", "path_on_host": "/missing.img"}`, 400, `updating drive \"data\": open /missing.img`},
	})
	if after := configJSON(t, s); after != before || len(m.updates) != 0 {
		t.Errorf("refused PATCHes changed the server: %s -> %s, updates %v", before, after, m.updates)
	}
	// A Machine that cannot update drives refuses, unless nothing changes.
	plain := startedWithDrives(t, &fakeMachine{})
	run(t, plain, []step{
		{"PATCH", "/drives/data", `{"drive_id": "data", "path_on_host": "/new.img"}`, 400, "cannot be updated"},
		{"PATCH", "/drives/data", `{"drive_id": "data", "rate_limiter": null}`, 204, ""},
	})
}

// TestPatchDrive: a new path_on_host reaches the Machine with the drive's
// index in the microVM (the root device first), paused or running, and
// GET /vm/config shows it; a PATCH without a path or with null rate
// limiters changes nothing and succeeds.
func TestPatchDrive(t *testing.T) {
	m := &driveMachine{fakeMachine: &fakeMachine{}}
	s := startedWithDrives(t, m)
	run(t, s, []step{
		{"PATCH", "/drives/data", `{"drive_id": "data"}`, 204, ""},
		{"PATCH", "/drives/data", `{"drive_id": "data", "rate_limiter": null}`, 204, ""},
		{"PATCH", "/drives/data", `{"drive_id": "data", "rate_limiter": {"bandwidth": null, "ops": null}}`, 204, ""},
		{"PATCH", "/drives/data", `{"drive_id": "data", "path_on_host": "/data2.img"}`, 204, ""},
		{"GET", "/vm/config", "", 200, `"drive_id":"data","path_on_host":"/data2.img","is_root_device":false`},
		{"PATCH", "/drives/logs", `{"drive_id": "logs", "path_on_host": "/logs2.img", "rate_limiter": null}`, 204, ""},
		{"GET", "/vm/config", "", 200, `"drive_id":"logs","path_on_host":"/logs2.img","is_root_device":false,"is_read_only":true`},
		{"PATCH", "/vm", `{"state": "Paused"}`, 204, ""},
		{"PATCH", "/drives/rootfs/", `{"drive_id": "rootfs", "path_on_host": "/root2.img"}`, 204, ""},
		{"PATCH", "/vm", `{"state": "Resumed"}`, 204, ""},
		{"PATCH", "/drives/data", `{"drive_id": "data", "path_on_host": "/data2.img"}`, 204, ""}, // the same file again: reopened
	})
	if want := []string{"1 /data2.img", "2 /logs2.img", "0 /root2.img", "1 /data2.img"}; !slices.Equal(m.updates, want) {
		t.Errorf("updates %v, want %v", m.updates, want)
	}
	var cfg Config
	if err := json.Unmarshal([]byte(configJSON(t, s)), &cfg); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, d := range cfg.DriveOrder() {
		paths = append(paths, d.PathOnHost)
	}
	if want := []string{"/root2.img", "/data2.img", "/logs2.img"}; !slices.Equal(paths, want) {
		t.Errorf("drives in the microVM's order: %v, want %v", paths, want)
	}
}

// TestDriveOrder: the root device first, then the others as configured,
// whichever position the root device was configured in.
func TestDriveOrder(t *testing.T) {
	for _, tc := range []struct {
		drives []Drive
		want   []string
	}{
		{nil, nil},
		{[]Drive{{DriveID: "a"}, {DriveID: "b"}}, []string{"a", "b"}},
		{[]Drive{{DriveID: "a"}, {DriveID: "r", IsRootDevice: true}, {DriveID: "b"}}, []string{"r", "a", "b"}},
		{[]Drive{{DriveID: "r", IsRootDevice: true}, {DriveID: "a"}}, []string{"r", "a"}},
	} {
		var got []string
		for _, d := range (Config{Drives: tc.drives}).DriveOrder() {
			got = append(got, d.DriveID)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%v: order %v, want %v", tc.drives, got, tc.want)
		}
	}
}
