package fcapi

import (
	"bufio"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// logRecorder is a Server.RedirectLog that logs to the file it is
// handed, at the level asked, as cmdAPI's does.
type logRecorder struct {
	got []LogOptions
	log *slog.Logger
}

func (l *logRecorder) redirect(o LogOptions) error {
	l.got = append(l.got, o)
	if o.Level == "off" || o.File == nil {
		l.log = slog.New(slog.DiscardHandler)
		return nil
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.Level)); err != nil {
		return err
	}
	l.log = slog.New(slog.NewTextHandler(o.File, &slog.HandlerOptions{Level: level}))
	return nil
}

func newLoggingServer(t *testing.T) (*Server, *logRecorder, *fakeMachine) {
	m := &fakeMachine{}
	s := NewServer("vm0", "1", m)
	rec := &logRecorder{}
	s.RedirectLog = rec.redirect
	return s, rec, m
}

// mkfifo makes a FIFO in a test directory.
func mkfifo(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// fifoReader opens the reading end of a FIFO without waiting for a
// writer; its lines are read with a deadline.
func fifoReader(t *testing.T, path string) *bufio.Reader {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	f.SetReadDeadline(time.Now().Add(30 * time.Second))
	return bufio.NewReader(f)
}

// TestLoggerLevels: the spec's levels, in any case, are slog's; others
// are refused.
func TestLoggerLevels(t *testing.T) {
	for _, c := range []struct{ level, want string }{
		{"Error", "error"}, {"Warning", "warn"}, {"Info", "info"}, {"Debug", "debug"}, {"Trace", "debug"}, {"Off", "off"},
		{"WARNING", "warn"}, {"trace", "debug"}, {"", "info"},
	} {
		s, rec, _ := newLoggingServer(t)
		f := filepath.Join(t.TempDir(), "log")
		os.WriteFile(f, nil, 0o600)
		body := `{"log_path": "` + f + `", "level": "` + c.level + `"}`
		run(t, s, []step{{"PUT", "/logger", body, 204, ""}})
		if len(rec.got) != 1 || rec.got[0].Level != c.want {
			t.Errorf("level %q: redirected with %+v, want level %q", c.level, rec.got, c.want)
		}
	}
	s, rec, _ := newLoggingServer(t)
	run(t, s, []step{{"PUT", "/logger", `{"level": "Verbose"}`, 400, "want Error, Warning, Info, Debug, Trace or Off"}})
	if len(rec.got) != 0 {
		t.Errorf("a bad level redirected the log: %+v", rec.got)
	}
}

// TestLoggerToFile: PUT /logger hands over the file, which lines are
// appended to, with the options asked; without log_path the log stays
// where it is.
func TestLoggerToFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tandem.log")
	os.WriteFile(path, []byte("before\n"), 0o600)
	s, rec, _ := newLoggingServer(t)
	run(t, s, []step{
		{"PUT", "/logger", `{"log_path": "` + path + `", "level": "Warning", "show_level": true, "show_log_origin": true}`, 204, ""},
		{"GET", "/vm/config", "", 200, `"logger":{"log_path":"` + path + `","level":"Warning","show_level":true,"show_log_origin":true}`},
	})
	o := rec.got[0]
	if o.Path != path || o.File == nil || o.Level != "warn" || !o.ShowLevel || !o.ShowOrigin {
		t.Fatalf("redirected with %+v", o)
	}
	rec.log.Warn("disk slow", "ms", 40)
	rec.log.Info("not at warn")
	b, _ := os.ReadFile(path)
	if got := string(b); !strings.HasPrefix(got, "before\n") || !strings.Contains(got, `msg="disk slow" ms=40`) || strings.Contains(got, "not at warn") {
		t.Errorf("the log file holds %q", got)
	}

	s, rec, _ = newLoggingServer(t)
	run(t, s, []step{{"PUT", "/logger", `{"level": "Debug"}`, 204, ""}})
	if o := rec.got[0]; o.Path != "" || o.File != nil || o.Level != "debug" || o.ShowLevel {
		t.Errorf("without log_path: redirected with %+v", o)
	}
}

// TestLoggerToFIFO: a FIFO with a reader gets the lines; one without is
// refused at once, and so is a missing file, a second PUT, a PUT after
// InstanceStart and a module filter, each changing nothing.
func TestLoggerToFIFO(t *testing.T) {
	fifo := mkfifo(t)
	s, rec, _ := newLoggingServer(t)
	body := `{"log_path": "` + fifo + `", "level": "Info"}`
	run(t, s, []step{
		{"PUT", "/logger", body, 400, "FIFO without a reader"},
		{"PUT", "/logger", `{"log_path": "` + filepath.Join(t.TempDir(), "missing") + `"}`, 400, "does not exist"},
		{"PUT", "/logger", `{"log_path": "` + t.TempDir() + `"}`, 400, "is a directory"},
		{"PUT", "/logger", `{"level": "Info", "module": "api_server::request"}`, 400, "does not support module"},
		{"PUT", "/logger", `{"level": "Info", "colour": true}`, 400, "unknown field"},
		{"GET", "/vm/config", "", 200, `"network-interfaces":[]}`},
	})
	if len(rec.got) != 0 {
		t.Fatalf("refused requests redirected the log: %+v", rec.got)
	}
	lines := fifoReader(t, fifo)
	run(t, s, []step{
		{"PUT", "/logger", body, 204, ""},
		{"PUT", "/logger", body, 400, "configured already"},
	})
	rec.log.Info("first line")
	rec.log.Info("second line")
	for _, want := range []string{"first line", "second line"} {
		line, err := lines.ReadString('\n')
		if err != nil || !strings.Contains(line, want) {
			t.Fatalf("read %q, %v from the FIFO; want %q", line, err, want)
		}
	}
	if len(rec.got) != 1 {
		t.Errorf("the log was redirected %d times", len(rec.got))
	}

	s, rec, _ = newLoggingServer(t)
	run(t, s, []step{
		{"PUT", "/boot-source", `{"kernel_image_path": "/k"}`, 204, ""},
		{"PUT", "/actions", `{"action_type": "InstanceStart"}`, 204, ""},
		{"PUT", "/logger", `{"level": "Debug"}`, 400, "before InstanceStart"},
	})
	if len(rec.got) != 0 {
		t.Errorf("a PUT /logger after InstanceStart redirected the log: %+v", rec.got)
	}
}

// TestLoggerBeforeSnapshotLoad: the logger is not a configuration that
// rules out loading a snapshot, and the loaded microVM keeps it.
func TestLoggerBeforeSnapshotLoad(t *testing.T) {
	s, _, m := newLoggingServer(t)
	run(t, s, []step{
		{"PUT", "/logger", `{"level": "Debug"}`, 204, ""},
		{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m"}`, 204, ""},
		{"GET", "/vm/config", "", 200, `"logger":{"level":"Debug"}`},
	})
	if len(m.calls) != 1 {
		t.Errorf("machine calls %v", m.calls)
	}
}
