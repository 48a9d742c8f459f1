package vmm

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// seekData returns the offset of the first data byte of f at or after off,
// or -1 when there is none.
func seekData(f *os.File, off int64) (int64, error) {
	n, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return -1, nil
	}
	return n, err
}

// seekHole returns the offset of the first hole of f at or after off (the
// file's end counts as one).
func seekHole(f *os.File, off int64) (int64, error) {
	return unix.Seek(int(f.Fd()), off, unix.SEEK_HOLE)
}
