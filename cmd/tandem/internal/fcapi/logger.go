package fcapi

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"syscall"
)

// LoggerConfig is Firecracker's Logger: where the log goes and what it
// shows. Without LogPath the log stays where it is (standard error, or
// the --log-path the process was started with).
type LoggerConfig struct {
	LogPath       string `json:"log_path,omitempty"`
	Level         string `json:"level,omitempty"`
	ShowLevel     *bool  `json:"show_level,omitempty"`
	ShowLogOrigin *bool  `json:"show_log_origin,omitempty"`
	Module        string `json:"module,omitempty"`
}

// LogOptions are a PUT /logger's settings in slog's terms, for
// Server.RedirectLog.
type LogOptions struct {
	// Path and File are the log_path and the file opened on it for
	// appending; "" and nil keep the log where it is.
	Path string
	File *os.File
	// Level is slog's: debug, info, warn or error; or off, for no log
	// at all.
	Level string
	// ShowLevel puts each record's level in its line, ShowOrigin its
	// source file and line (slog.HandlerOptions.AddSource).
	ShowLevel, ShowOrigin bool
}

// slogLevel is the slog level of a Firecracker log level, which the spec
// says is case-insensitive. slog has no level under debug, so Trace is
// Debug.
func slogLevel(level string) (string, error) {
	switch strings.ToLower(level) {
	case "error":
		return "error", nil
	case "warning":
		return "warn", nil
	case "info", "":
		return "info", nil
	case "debug", "trace":
		return "debug", nil
	case "off":
		return "off", nil
	}
	return "", badRequest("level %q: want Error, Warning, Info, Debug, Trace or Off", level)
}

// OpenOutput opens path, a file or a FIFO, for appending log or metrics
// lines to it. Firecracker wants the file or FIFO to exist, so OpenOutput
// creates a missing file only if create. A FIFO is opened without
// waiting for a reader: one without a reader is an error that says so,
// never an open that blocks. The file stays non-blocking, which lets Go
// park a writer to a full FIFO on its poller rather than block a thread,
// and lets writers set deadlines (regular files ignore the flag).
func OpenOutput(path string, create bool) (*os.File, error) {
	flags := os.O_WRONLY | os.O_APPEND | syscall.O_NONBLOCK
	if create {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, 0o600)
	switch {
	case errors.Is(err, syscall.ENXIO):
		return nil, fmt.Errorf("%s is a FIFO without a reader: start its reader first", path)
	case errors.Is(err, fs.ErrNotExist) && !create:
		return nil, fmt.Errorf("%s does not exist: create the file or FIFO first", path)
	case err != nil:
		return nil, err
	}
	return f, nil
}

// putLogger serves PUT /logger: once, before InstanceStart, it sends the
// log of the API process and of the microVM it will run where the body
// says, at its level.
func (s *Server) putLogger(r *http.Request) (int, any, error) {
	var l LoggerConfig
	if err := decode(r, &l); err != nil {
		return 0, nil, err
	}
	level, err := slogLevel(l.Level)
	if err != nil {
		return 0, nil, err
	}
	if l.Module != "" {
		return 0, nil, badRequest("Tandem does not support module %q: its log is not filtered by module", l.Module)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.state != NotStarted:
		return 0, nil, badRequest("the microVM has started: the logger can only be configured before InstanceStart")
	case s.cfg.Logger != nil:
		return 0, nil, badRequest("the logger is configured already: it is configured once")
	case s.RedirectLog == nil:
		return 0, nil, badRequest("this server's log cannot be redirected")
	}
	o := LogOptions{Path: l.LogPath, Level: level, ShowLevel: l.ShowLevel != nil && *l.ShowLevel, ShowOrigin: l.ShowLogOrigin != nil && *l.ShowLogOrigin}
	if l.LogPath != "" {
		if o.File, err = OpenOutput(l.LogPath, false); err != nil {
			return 0, nil, badRequest("log_path: %v", err)
		}
	}
	if err := s.RedirectLog(o); err != nil {
		if o.File != nil {
			o.File.Close()
		}
		return 0, nil, badRequest("redirecting the log: %v", err)
	}
	s.cfg.Logger = &l
	return http.StatusNoContent, nil, nil
}
