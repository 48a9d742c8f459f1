package virtio

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OpenTAP attaches to the TAP interface name (created if it does not
// exist, which needs CAP_NET_ADMIN) and returns it as a NetBackend, with
// the interface's name as the kernel reports it. Frames carry no packet
// information header and no virtio-net header (no offloads).
func OpenTAP(name string) (NetBackend, string, error) {
	if len(name) >= unix.IFNAMSIZ {
		return nil, "", fmt.Errorf("virtio-net: TAP name %q is longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("virtio-net: open /dev/net/tun: %w", err)
	}
	req, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("virtio-net: TAP name %q: %w", name, err)
	}
	req.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, req); err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("virtio-net: attach TAP %q (TUNSETIFF): %w", name, err)
	}
	got := req.Name()
	return FrameFile(os.NewFile(uintptr(fd), "/dev/net/tun:"+got)), got, nil
}
