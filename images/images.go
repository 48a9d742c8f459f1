// Package images owns Tandem's small purpose-built test guests: their
// sources (src/, freestanding C and assembly), their build (Makefile), and
// the built flat binaries (bin/), which are committed and embedded here so
// that the VMM and its tests need no C toolchain.
//
// The guests follow the flat-image boot ABI that package boot implements:
// a long64 image is loaded at 0x100000 and entered at its first byte in
// 64-bit mode on every vCPU at once, with RDI = the boot parameter page
// (0x7000), RSI = the vCPU index and RSP = that vCPU's stack; a real16 image
// is loaded at 0x10000 and entered in real mode. Guests print on COM1 and
// stop the VM by writing their exit status to the debug-exit port 0xF4.
// They use only plain integer instructions, because on hosts without
// hardware virtualization KVM runs them in its instruction emulator.
//
// The guests:
//
//   - hello (long64): prints "hello: Tandem guest up, <vcpus> vCPUs, <mem> MiB"
//     and exits 0.
//   - hello16 (real16): prints "hello16: real mode" and exits 0.
//   - counter (long64): a line-oriented service on the UART (see
//     src/counter/counter.c), interrupt driven so that it idles in HLT.
//   - dirty (long64): dirties pages in a known pattern; DirtyParams
//     describes its arguments and PassPages is the reference model tests
//     compare KVM's dirty log against (see src/dirty/dirty.c).
//
// Exit statuses shared by the long64 guests: 0 success, ExitBadParamPage
// if the parameter page's magic or version is wrong; dirty exits
// ExitBadArgs on bad arguments; counter and dirty exit ExitExceptionBase +
// vector on a CPU exception.
package images

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/tandemvm/tandem/boot"
)

// Layout shared with the VMM. Package boot owns the parameter page and
// the memory map; these repeat the values tests of the guests need.
const (
	// ParamMagic is the parameter page's magic: "TANDEMP1" as a
	// little-endian u64 (boot.ParamMagic).
	ParamMagic uint64 = boot.ParamMagic
	// StatusGPA is the status page the guests write progress to
	// (boot.StatusPageGPA).
	StatusGPA = boot.StatusPageGPA
	// StatusSlotBytes is the size of one vCPU's slot in the status page;
	// vCPU i's slot is at StatusGPA + i*StatusSlotBytes.
	StatusSlotBytes = 64
	// DirtyStatusMagic marks a dirty guest's status slot: "DIRTYST1" as a
	// little-endian u64.
	DirtyStatusMagic uint64 = 0x3154535954524944
)

// Exit statuses the guests write to the debug-exit port.
const (
	ExitOK            = 0
	ExitBadParamPage  = 1    // the parameter page's magic or version is wrong
	ExitBadArgs       = 2    // dirty: the arguments do not fit the VM
	ExitExceptionBase = 0xE0 // counter, dirty: 0xE0 + vector of a CPU exception
)

// Guest is one embedded test guest.
type Guest struct {
	Name  string
	Mode  boot.Mode
	Image []byte
	// Summary is one line for `tandem run --help`.
	Summary string
	// Args turns a "key=value,key=value" spec into the parameter page's
	// args for a guest with memBytes of RAM and vcpus vCPUs. It is nil for
	// guests that take no arguments.
	Args func(spec string, memBytes uint64, vcpus int) ([]uint64, error)
}

var (
	//go:embed bin/hello.bin
	helloImage []byte
	//go:embed bin/hello16.bin
	hello16Image []byte
	//go:embed bin/counter.bin
	counterImage []byte
	//go:embed bin/dirty.bin
	dirtyImage []byte
)

var guests = []Guest{
	{
		Name:    "counter",
		Mode:    boot.ModeLong64,
		Image:   counterImage,
		Summary: "line service on the UART: INC <id>, GET (args: initial=N)",
		Args:    counterArgs,
	},
	{
		Name:    "dirty",
		Mode:    boot.ModeLong64,
		Image:   dirtyImage,
		Summary: "dirties pages in a pattern (args: pattern, first, pages, rate, passes, seed, count, ring, bytes)",
		Args: func(spec string, memBytes uint64, vcpus int) ([]uint64, error) {
			p, err := ParseDirtyParams(spec, memBytes, vcpus)
			if err != nil {
				return nil, err
			}
			return p.Args(), nil
		},
	},
	{
		Name:    "hello",
		Mode:    boot.ModeLong64,
		Image:   helloImage,
		Summary: "prints its vCPU count and RAM size, then exits 0",
	},
	{
		Name:    "hello16",
		Mode:    boot.ModeReal16,
		Image:   hello16Image,
		Summary: "real-mode guest: prints one line, then exits 0",
	},
}

// Lookup returns the guest with the given name. Its Image is a copy the
// caller may modify.
func Lookup(name string) (Guest, bool) {
	for _, g := range guests {
		if g.Name == name {
			g.Image = bytes.Clone(g.Image)
			return g, true
		}
	}
	return Guest{}, false
}

// Names returns the names of all guests, sorted.
func Names() []string {
	names := make([]string, 0, len(guests))
	for _, g := range guests {
		names = append(names, g.Name)
	}
	slices.Sort(names)
	return names
}

// counterArgs parses the counter guest's spec: initial=N sets the
// counter's initial value (args[0]).
func counterArgs(spec string, memBytes uint64, vcpus int) ([]uint64, error) {
	var initial uint64
	err := parseSpec("counter", spec, func(key, value string) error {
		switch key {
		case "initial":
			return parseUint(&initial, value)
		}
		return errUnknownKey
	})
	if err != nil {
		return nil, err
	}
	return []uint64{initial}, nil
}

var errUnknownKey = errors.New("unknown key")

// parseSpec splits a "key=value,key=value" spec and calls set for each
// pair. Errors name the guest and the key.
func parseSpec(guest, spec string, set func(key, value string) error) error {
	if strings.TrimSpace(spec) == "" {
		return nil
	}
	seen := map[string]bool{}
	for item := range strings.SplitSeq(spec, ",") {
		key, value, ok := strings.Cut(item, "=")
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if !ok || key == "" {
			return fmt.Errorf("%s args: %q is not key=value", guest, item)
		}
		if seen[key] {
			return fmt.Errorf("%s args: %s given twice", guest, key)
		}
		seen[key] = true
		if err := set(key, value); err == errUnknownKey {
			return fmt.Errorf("%s args: unknown key %q", guest, key)
		} else if err != nil {
			return fmt.Errorf("%s args: %s=%s: %w", guest, key, value, err)
		}
	}
	return nil
}

// parseUint parses a decimal, 0x hex, 0o octal or 0b binary number.
func parseUint(dst *uint64, value string) error {
	v, err := strconv.ParseUint(value, 0, 64)
	if errors.Is(err, strconv.ErrRange) {
		return errors.New("does not fit in 64 bits")
	}
	if err != nil {
		return errors.New("not an unsigned integer")
	}
	*dst = v
	return nil
}
