package replicate

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate/auth"
)

// TestWriteBuffersGathersRecords: on an encrypted connection, slices of
// every size around a TLS record (empty, a header, pages, whole records
// and more) arrive as the same bytes in the same order, and a scratch
// record reused across calls changes nothing; a plain one writes them as
// they are.
func TestWriteBuffersGathersRecords(t *testing.T) {
	for _, creds := range []*auth.Credentials{testCreds, testPlainCreds} {
		t.Run(creds.Mode().String(), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					if c, _, err = creds.Server(ctx, c); err == nil {
						accepted <- c
						return
					}
				}
				t.Error(err)
				close(accepted)
			}()
			raw, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c, err := creds.Client(ctx, raw, auth.Role(RoleLink))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			peer := <-accepted
			if peer == nil {
				t.FailNow()
			}
			defer peer.Close()

			rng := rand.New(rand.NewPCG(7, 8))
			sizes := []int{0, 1, headerSize, PageSize, tlsRecord - 1, tlsRecord, tlsRecord + 1, 3*tlsRecord + 40, 2 * PageSize}
			var want bytes.Buffer
			var scratch []byte
			var calls []net.Buffers
			for range 20 {
				var bufs net.Buffers
				for range 1 + rng.IntN(12) {
					b := make([]byte, sizes[rng.IntN(len(sizes))])
					for i := range b {
						b[i] = byte(rng.Uint32())
					}
					bufs = append(bufs, b)
					want.Write(b)
				}
				calls = append(calls, bufs)
			}
			peer.SetReadDeadline(time.Now().Add(10 * time.Second)) // bytes held back fail, not hang
			got := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(io.LimitReader(peer, int64(want.Len())))
				got <- b
			}()
			for _, bufs := range calls {
				if err := writeBuffers(c, bufs, &scratch); err != nil {
					t.Fatal(err)
				}
			}
			if b := <-got; !bytes.Equal(b, want.Bytes()) {
				t.Fatalf("received %d bytes that differ from the %d written", len(b), want.Len())
			}
		})
	}
}
