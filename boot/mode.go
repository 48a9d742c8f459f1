package boot

// Mode is the CPU mode a flat test-guest image is entered in.
type Mode int

const (
	// ModeLong64 enters the image in 64-bit long mode with paging on, the
	// way the VMM sets up the CPU for a flat 64-bit guest (see the package doc).
	ModeLong64 Mode = iota
	// ModeReal16 enters the image in 16-bit real mode, like a boot sector.
	ModeReal16
)

func (m Mode) String() string {
	switch m {
	case ModeLong64:
		return "long64"
	case ModeReal16:
		return "real16"
	}
	return "unknown"
}
