package persist

import "unsafe"

func cpuidLeaf7() (ebx uint32)
func flushCLWB(p, n uintptr)
func flushCLFLUSHOPT(p, n uintptr)
func flushCLFLUSH(p, n uintptr)

// flushKind is the cache-line flush this CPU has, best first: CLWB writes
// a line back and keeps it cached, CLFLUSHOPT writes it back and evicts it
// (both ordered by an SFENCE), CLFLUSH does so serially (every CPU that
// runs Go on amd64 has it).
var flushKind = func() string {
	ebx := cpuidLeaf7()
	switch {
	case ebx&(1<<24) != 0:
		return "clwb"
	case ebx&(1<<23) != 0:
		return "clflushopt"
	}
	return "clflush"
}()

// flushCache writes the cache lines of b back to memory and fences: on
// persistent memory mapped with MAP_SYNC, b is durable when it returns.
func flushCache(b []byte) {
	if len(b) == 0 {
		return
	}
	p, n := uintptr(unsafe.Pointer(&b[0])), uintptr(len(b))
	switch flushKind {
	case "clwb":
		flushCLWB(p, n)
	case "clflushopt":
		flushCLFLUSHOPT(p, n)
	default:
		flushCLFLUSH(p, n)
	}
}
