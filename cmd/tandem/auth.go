package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/tandemvm/tandem/replicate/auth"
)

// cmdKeygen writes a new replication key.
func cmdKeygen(ctx context.Context, args []string) error {
	fs := newFlagSet("keygen", "FILE")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() != 1 {
		return usagef("keygen takes one argument: the key file to create")
	}
	path := fs.Arg(0)
	if err := newKeyFile(path); err != nil {
		return err
	}
	fmt.Printf("wrote a replication key to %s (mode 0600); copy it to every node of the VM (primary, replicas, leader) and pass --auth-key %s\n", path, path)
	return nil
}

// newKeyFile makes a replication key and writes it to path (mode 0600).
func newKeyFile(path string) error {
	k, err := auth.GenerateKey()
	if err != nil {
		return err
	}
	return auth.WriteKeyFile(path, k)
}

// authFlags are the replication authentication flags.
type authFlags struct {
	key       *string
	plaintext *bool
}

func addAuthFlags(fs *flag.FlagSet) *authFlags {
	return &authFlags{
		key:       fs.String("auth-key", "", "replication key file (from tandem keygen FILE), the same on the primary, every replica and the leader; required"),
		plaintext: fs.Bool("insecure-plaintext", false, "authenticate replication connections with the key but carry them unencrypted: faster, no protection against anyone on the network path; every node must agree"),
	}
}

// credentials loads the key; which command needs it goes in the error.
func (a *authFlags) credentials(what string) (*auth.Credentials, error) {
	if *a.key == "" {
		return nil, usagef("%s needs --auth-key FILE, the replication key shared by the primary, the replicas and the leader (make one with: tandem keygen FILE)", what)
	}
	k, err := auth.LoadKey(*a.key)
	if err != nil {
		return nil, usagef("--auth-key: %v", err)
	}
	mode := auth.Encrypted
	if *a.plaintext {
		mode = auth.Plaintext
	}
	return auth.NewCredentials(k, mode)
}
