//go:build !amd64

package persist

// flushKind is empty where Tandem has no cache-line flush: the log is
// never mapped there (mapLog refuses), and writes go through the file.
var flushKind = ""

func flushCache(b []byte) {}
