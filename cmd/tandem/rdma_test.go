package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tandemvm/tandem/replicate"
)

func TestPrintRDMADevices(t *testing.T) {
	devs := []replicate.RDMADevice{{
		Name: "rxe0", NodeType: "InfiniBand channel adapter", GUID: "5054:00ff:fe12:3456", FW: "", MaxQP: 1048560,
		MaxQPWR: 1048576, MaxSGE: 32, MaxCQE: 32767, MaxMR: 524287, MaxMRSize: ^uint64(0),
		Ports: []replicate.RDMAPort{{Num: 1, State: "PORT_ACTIVE", LinkLayer: "Ethernet", ActiveMTU: 1024, MaxMsgSize: 1 << 31, GID: "fe80::5054:ff:fe12:3456"}},
	}, {
		Name: "mlx5_0", MaxSGE: 30, MaxQPWR: 32768, ODP: []string{"send", "write"},
		Ports: []replicate.RDMAPort{{Num: 1, State: "PORT_DOWN", LinkLayer: "InfiniBand", ActiveMTU: 4096, MaxMsgSize: 1 << 30}},
	}}
	var b bytes.Buffer
	if err := printRDMADevices(&b, devs, nil, "unneeded"); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"DEVICE", "MAX_SGE", "MAX_QP_WR", "rxe0", "Ethernet", "1048576", "2 GiB", "mlx5_0", "30", "send,write", "PORT_DOWN", "fork support in libibverbs: unneeded"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	lines := strings.Split(out, "\n")
	if !strings.HasPrefix(lines[1], "rxe0 ") || !strings.Contains(lines[1], " 32 ") {
		t.Errorf("first port line %q", lines[1])
	}

	for _, tc := range []struct {
		devs []replicate.RDMADevice
		err  error
		want string
	}{
		{nil, nil, "no RDMA devices: ibv_get_device_list found none"},
		{nil, replicate.ErrNoRDMAKernel, "no RDMA devices: the kernel has no RDMA support"},
	} {
		b.Reset()
		if err := printRDMADevices(&b, tc.devs, tc.err, ""); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(b.String(), tc.want) || !strings.Contains(b.String(), "rdma link add rxe0 type rxe netdev") {
			t.Errorf("%v: %q", tc.err, b.String())
		}
	}
	if err := printRDMADevices(&b, nil, replicate.ErrNoRDMA, ""); !errors.Is(err, replicate.ErrNoRDMA) {
		t.Errorf("built without RDMA: %v", err)
	}
	if err := printRDMADevices(&b, nil, fmt.Errorf("ibv_get_device_list: %w", errors.New("boom")), ""); err == nil {
		t.Error("a listing error was swallowed")
	}
}

// The test binary is built without -tags rdma: RDMA requests say so.
func TestRDMAWithoutBuildTag(t *testing.T) {
	_, stderr, status := runTandem(t, "rdma-devices")
	if status != 1 || !strings.Contains(stderr, "built without RDMA support") || !strings.Contains(stderr, "-tags rdma") {
		t.Errorf("rdma-devices: status %d, stderr %q", status, stderr)
	}
	_, stderr, status = runTandem(t, "replica", "--listen", "127.0.0.1:0", "--rdma-listen", "127.0.0.1:0", "--auth-key", testKeyFile(t))
	if status != exitUsage || !strings.Contains(stderr, "built without RDMA support") {
		t.Errorf("replica --rdma-listen: status %d, stderr %q", status, stderr)
	}
}
