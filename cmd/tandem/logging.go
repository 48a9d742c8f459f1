package main

// Logging: every command that logs takes the same flags (--log-level,
// --log-format, --log-path and the two --log-show-*), and a process that
// logs to a path opens it once; the API process's handler can be
// switched by PUT /logger.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/tandemvm/tandem/cmd/tandem/internal/fcapi"
)

// logFlags are the flags that say where a process logs and how:
// --log-level, --log-format, --log-path, --log-show-level and
// --log-show-origin.
type logFlags struct {
	level, format, path   string
	showLevel, showOrigin bool
}

// addLogFlags defines the logging flags on fs.
func addLogFlags(fs *flag.FlagSet) *logFlags {
	var f logFlags
	fs.StringVar(&f.level, "log-level", "info", "log level: debug, info, warn, error, or off for no log")
	fs.StringVar(&f.format, "log-format", "text", "log format: text (key=value, for people) or json (one object a line, for machines)")
	fs.StringVar(&f.path, "log-path", "", "append the log to this file (created if missing) or FIFO (which must have a reader) instead of standard error")
	fs.BoolVar(&f.showLevel, "log-show-level", true, "put each line's level in it")
	fs.BoolVar(&f.showOrigin, "log-show-origin", false, "put each line's source file and line in it")
	return &f
}

// args are the flags that give a command f's settings.
func (f logFlags) args() []string {
	args := []string{"--log-level", f.level, "--log-format", f.format,
		fmt.Sprintf("--log-show-level=%t", f.showLevel), fmt.Sprintf("--log-show-origin=%t", f.showOrigin)}
	if f.path != "" {
		args = append(args, "--log-path", f.path)
	}
	return args
}

// newLogger builds the process's logger from its logging flags.
func newLogger(f logFlags) (*slog.Logger, error) {
	h, err := newLogHandler(f)
	if err != nil {
		return nil, err
	}
	return slog.New(h), nil
}

// newLogHandler is the slog handler of newLogger.
func newLogHandler(f logFlags) (slog.Handler, error) {
	var level slog.Level
	off := strings.EqualFold(f.level, "off")
	if err := level.UnmarshalText([]byte(f.level)); err != nil && !off {
		return nil, usagef("--log-level %q: want debug, info, warn, error or off", f.level)
	}
	if f.format != "text" && f.format != "json" {
		return nil, usagef("--log-format %q: want text or json", f.format)
	}
	out, err := openLogOutput(f.path)
	if err != nil {
		return nil, usagef("--log-path: %w", err)
	}
	if off {
		return slog.DiscardHandler, nil
	}
	opts := &slog.HandlerOptions{Level: level, AddSource: f.showOrigin}
	if !f.showLevel {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.LevelKey {
				return slog.Attr{}
			}
			return a
		}
	}
	if f.format == "json" {
		return slog.NewJSONHandler(out, opts), nil
	}
	return slog.NewTextHandler(out, opts), nil
}

// logOutputs are the files the process logs to, by path, open for as
// long as it runs: every logger of the process that logs to a path (the
// API's and the run's it starts) shares the one file.
var logOutputs = struct {
	sync.Mutex
	files map[string]*os.File
}{files: map[string]*os.File{}}

// openLogOutput is the file path names, opened for appending (standard
// error for ""), or the file already open on it.
func openLogOutput(path string) (io.Writer, error) {
	if path == "" {
		return os.Stderr, nil
	}
	logOutputs.Lock()
	defer logOutputs.Unlock()
	if f, ok := logOutputs.files[path]; ok {
		return f, nil
	}
	f, err := fcapi.OpenOutput(path, true)
	if err != nil {
		return nil, err
	}
	logOutputs.files[path] = f
	return f, nil
}

// adoptLogOutput makes f, open on path, the process's log file there,
// unless it has one already.
func adoptLogOutput(path string, f *os.File) {
	logOutputs.Lock()
	defer logOutputs.Unlock()
	if _, ok := logOutputs.files[path]; ok {
		f.Close()
		return
	}
	logOutputs.files[path] = f
}

// switchableHandler is a slog.Handler that hands each record to a
// handler that can be switched while the process logs (PUT /logger
// switches the API process's). The handlers derived from it by WithAttrs
// and WithGroup follow the switch.
type switchableHandler struct {
	current *atomic.Pointer[slog.Handler]
	// derive are the WithAttrs and WithGroup calls that made this handler
	// from the switched one; derived caches their result.
	derive  []func(slog.Handler) slog.Handler
	derived *atomic.Pointer[derivedHandler]
}

// derivedHandler is a switchableHandler's handler, derived from base.
type derivedHandler struct {
	base *slog.Handler
	h    slog.Handler
}

func newSwitchableHandler(h slog.Handler) *switchableHandler {
	s := &switchableHandler{current: new(atomic.Pointer[slog.Handler]), derived: new(atomic.Pointer[derivedHandler])}
	s.current.Store(&h)
	return s
}

// switchTo makes h the handler of s and of the handlers derived from it.
func (s *switchableHandler) switchTo(h slog.Handler) { s.current.Store(&h) }

func (s *switchableHandler) handler() slog.Handler {
	base := s.current.Load()
	if len(s.derive) == 0 {
		return *base
	}
	if d := s.derived.Load(); d != nil && d.base == base {
		return d.h
	}
	h := *base
	for _, derive := range s.derive {
		h = derive(h)
	}
	s.derived.Store(&derivedHandler{base, h})
	return h
}

func (s *switchableHandler) with(derive func(slog.Handler) slog.Handler) slog.Handler {
	return &switchableHandler{current: s.current, derive: append(s.derive[:len(s.derive):len(s.derive)], derive), derived: new(atomic.Pointer[derivedHandler])}
}

// Enabled implements slog.Handler.
func (s *switchableHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return s.handler().Enabled(ctx, level)
}

// Handle implements slog.Handler.
func (s *switchableHandler) Handle(ctx context.Context, r slog.Record) error {
	return s.handler().Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (s *switchableHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return s.with(func(h slog.Handler) slog.Handler { return h.WithAttrs(attrs) })
}

// WithGroup implements slog.Handler.
func (s *switchableHandler) WithGroup(name string) slog.Handler {
	return s.with(func(h slog.Handler) slog.Handler { return h.WithGroup(name) })
}
