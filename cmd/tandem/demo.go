package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tandemvm/tandem/images"
	"github.com/tandemvm/tandem/vmm"
)

// cmdDemo boots the built-in counter guest, talks to its service over the
// serial line and shows the transcript.
func cmdDemo(ctx context.Context, args []string) error {
	fs := newFlagSet("demo", "[--incs N]")
	incs := fs.Int("incs", 5, "how many increments to send")
	logLevel := fs.String("log-level", "warn", "log level: debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *incs < 1 {
		return usagef("--incs %d: want at least 1", *incs)
	}
	log, err := newLogger(*logLevel)
	if err != nil {
		return err
	}
	guest, _ := images.Lookup("counter")
	outR, outW := io.Pipe()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			fmt.Printf("  guest> %s\n", sc.Text())
			lines <- sc.Text()
		}
		close(lines)
	}()
	vm, err := vmm.New(vmm.Config{
		Memory:    vmm.MemoryConfig{Bytes: 16 << 20},
		VCPUs:     1,
		SerialOut: outW,
		Logger:    log,
	})
	if err != nil {
		return err
	}
	defer vm.Close()
	if err := vm.LoadFlat(guest.Image, guest.Mode, nil); err != nil {
		return err
	}
	fmt.Println("demo: booting the counter guest (16 MiB, 1 vCPU); it serves INC and GET on its serial line")
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		res, err := vm.Run(ctx)
		if err == nil && res.Kind != vmm.ExitStopped {
			err = fmt.Errorf("guest stopped unexpectedly: %v (status %d)", res.Kind, res.Code)
		}
		outW.Close()
		done <- err
	}()
	expect := func(want string) error {
		timeout := time.NewTimer(30 * time.Second)
		defer timeout.Stop()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					return fmt.Errorf("guest output ended before %q: %v", want, <-done)
				}
				if strings.HasPrefix(l, want) {
					return nil
				}
			case <-timeout.C:
				return fmt.Errorf("no %q from the guest within 30s", want)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	send := func(line string) {
		fmt.Printf("  host > %s\n", line)
		vm.Serial().Write([]byte(line + "\n"))
	}
	if err := expect("counter: ready"); err != nil {
		return err
	}
	fmt.Printf("demo: guest ready after %v\n", time.Since(start).Round(time.Millisecond))
	for i := 1; i <= *incs; i++ {
		send(fmt.Sprintf("INC demo-%d", i))
		if err := expect(fmt.Sprintf("OK demo-%d %d", i, i)); err != nil {
			return err
		}
	}
	send("GET")
	if err := expect(fmt.Sprintf("VALUE %d", *incs)); err != nil {
		return err
	}
	vm.Stop()
	if err := <-done; err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "demo: %d increments acknowledged, counter reads %d; stopped after %v\n",
		*incs, *incs, time.Since(start).Round(time.Millisecond))
	return nil
}
