package replicate

import (
	"github.com/tandemvm/tandem/replicate/auth"
)

// testKey is the replication key of the tests' primaries and replicas;
// testCreds and testPlainCreds authenticate with it, encrypted and in
// clear.
var (
	testKey        = mustGenerateKey()
	testCreds      = mustCredentials(testKey, auth.Encrypted)
	testPlainCreds = mustCredentials(testKey, auth.Plaintext)
)

func mustGenerateKey() *auth.Key {
	k, err := auth.GenerateKey()
	if err != nil {
		panic(err)
	}
	return k
}

func mustCredentials(k *auth.Key, m auth.Mode) *auth.Credentials {
	c, err := auth.NewCredentials(k, m)
	if err != nil {
		panic(err)
	}
	return c
}
