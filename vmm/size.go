package vmm

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseMemSize parses a RAM size such as "64M", "1G", "512MiB" or "1048576"
// (bytes). Suffixes are binary: K = 1024. The result is checked against the
// limits guest RAM must meet.
func ParseMemSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "i")
	mult := uint64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K', 'k':
			mult = 1 << 10
		case 'M', 'm':
			mult = 1 << 20
		case 'G', 'g':
			mult = 1 << 30
		case 'T', 't':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q is not a size (examples: 64M, 1G, 512MiB)", ErrMemSize, s)
	}
	if n > MaxMemBytes/mult {
		return 0, fmt.Errorf("%w: %s is above the maximum of 1 TiB", ErrMemSize, s)
	}
	b := n * mult
	switch {
	case b < MinMemBytes:
		return 0, fmt.Errorf("%w: %s is below the minimum of 1 MiB", ErrMemSize, s)
	case b%PageSize != 0:
		return 0, fmt.Errorf("%w: %s is not a multiple of the 4 KiB page size", ErrMemSize, s)
	}
	return b, nil
}
