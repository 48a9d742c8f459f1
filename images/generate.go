package images

// The guest binaries in bin/ are built from src/ by the Makefile and
// committed, so building Tandem needs no C toolchain. After changing a
// guest's sources, rebuild them with `go generate ./images` (or make) and
// commit bin/ too; `make check` verifies that bin/ matches src/.

//go:generate make -C . all
