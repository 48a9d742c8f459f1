package main

import (
	"fmt"
	"os"

	"github.com/tandemvm/tandem/cmd/tandem/internal/fcapi"
)

// applyConfigFile configures the microVM of srv as the file at path
// says, Firecracker's --config-file, and starts it. Its errors name the
// file and the part of it that is wrong.
func applyConfigFile(srv *fcapi.Server, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return usagef("--config-file: %w", err)
	}
	cfg, err := fcapi.ParseConfigFile(b)
	if err != nil {
		return usagef("--config-file %s: %w", path, err)
	}
	if err := srv.Apply(cfg); err != nil {
		return fmt.Errorf("--config-file %s: %w", path, err)
	}
	return nil
}
