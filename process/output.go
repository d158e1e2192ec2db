package process

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

const (
	// tailLines is how many of a process's last output lines error messages
	// quote.
	tailLines = 20
	// maxLineLen caps one remembered line so that an agent printing a
	// megabyte without a newline cannot bloat an error message.
	maxLineLen = 1024
)

// lineRing remembers the last few lines written to it. It is safe for
// concurrent use.
type lineRing struct {
	mu      sync.Mutex
	n       int
	lines   []string
	partial []byte
	cut     bool // the partial line was longer than maxLineLen
}

func newLineRing(n int) *lineRing { return &lineRing{n: n} }

// Write splits b into lines and keeps the last n. It never fails.
func (r *lineRing) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		chunk := b
		if i >= 0 {
			chunk = b[:i]
		}
		if room := maxLineLen - len(r.partial); room < len(chunk) {
			chunk = chunk[:max(room, 0)]
			r.cut = true
		}
		r.partial = append(r.partial, chunk...)
		if i < 0 {
			break
		}
		r.push()
		b = b[i+1:]
	}
	return n, nil
}

// push moves the partial line into the ring. r.mu must be held.
func (r *lineRing) push() {
	line := strings.TrimRight(string(r.partial), "\r")
	if r.cut {
		line += " [line truncated]"
	}
	r.partial, r.cut = r.partial[:0], false
	if len(r.lines) == r.n {
		copy(r.lines, r.lines[1:])
		r.lines = r.lines[:r.n-1]
	}
	r.lines = append(r.lines, line)
}

// Lines returns the remembered lines, oldest first, including an
// unterminated last line.
func (r *lineRing) Lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := append([]string(nil), r.lines...)
	if len(r.partial) > 0 {
		out = append(out, string(r.partial))
		if len(out) > r.n {
			out = out[1:]
		}
	}
	return out
}

// describeOutput formats the remembered lines for an error message.
func describeOutput(r *lineRing) string {
	lines := r.Lines()
	if len(lines) == 0 {
		return "; it printed nothing"
	}
	return fmt.Sprintf("; last %d lines of output:\n%s", len(lines), strings.Join(lines, "\n"))
}

// logSink appends a deployment's output to its log file. When the file would
// grow past max bytes it is rotated: the current file becomes <path>.1
// (replacing an older one) and a fresh file is started, so a deployment
// never uses more than about 2*max bytes of disk however much it prints.
//
// Writes never block on and never fail towards the child's output pipe: a
// disk error drops output rather than stalling the agent.
type logSink struct {
	mu     sync.Mutex
	path   string
	max    int64
	f      *os.File
	size   int64
	closed bool
}

// openLogSink opens (appending to) the log file at path.
func openLogSink(path string, max int64) (*logSink, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &logSink{path: path, max: max, f: f, size: st.Size()}, nil
}

// Write appends b, rotating as needed. It always reports success.
func (s *logSink) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(b)
	for len(b) > 0 && !s.closed && s.f != nil {
		room := s.max - s.size
		if room <= 0 {
			s.rotate()
			continue
		}
		chunk := b[:min(int64(len(b)), room)]
		w, err := s.f.Write(chunk)
		s.size += int64(w)
		if err != nil {
			break
		}
		b = b[len(chunk):]
	}
	return n, nil
}

// Notef writes one line of Berth's own (prefixed, timestamped) into the log
// so that restarts and exits can be told apart when reading it later.
func (s *logSink) Notef(format string, args ...any) {
	line := fmt.Sprintf("[berth %s] %s\n", time.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
	s.Write([]byte(line))
}

// rotate starts a fresh log file. s.mu must be held.
func (s *logSink) rotate() {
	s.f.Close()
	s.f = nil
	// Renaming keeps the previous generation readable; a failure here only
	// means we truncate instead.
	_ = os.Rename(s.path, s.path+".1")
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o640)
	if err != nil {
		return // output is dropped until the deployment is started again
	}
	s.f, s.size = f, 0
}

// Close closes the file; later writes are dropped.
func (s *logSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}

// openLogs opens the rotated and the current log files at path, oldest
// first. Missing files are skipped. Holding mu (when there is a live sink)
// while opening keeps a concurrent rotation from making us miss a file.
func openLogs(path string, mu *sync.Mutex) ([]*os.File, error) {
	if mu != nil {
		mu.Lock()
		defer mu.Unlock()
	}
	var files []*os.File
	for _, p := range []string{path + ".1", path} {
		f, err := os.Open(p)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

// tailBuffer keeps the last max bytes written to it. It is safe for
// concurrent use.
type tailBuffer struct {
	mu      sync.Mutex
	max     int
	buf     []byte
	dropped int64
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	// Compact only once the slack is as large as the cap, so each byte is
	// copied O(1) times on average.
	if len(t.buf) >= 2*t.max {
		cut := len(t.buf) - t.max
		t.dropped += int64(cut)
		t.buf = append(t.buf[:0], t.buf[cut:]...)
	}
	return len(b), nil
}

// truncatedMarker starts the returned output when its head was dropped.
const truncatedMarker = "[berth: earlier output truncated]\n"

// Bytes returns at most max bytes: the tail of what was written, starting
// with truncatedMarker if anything was dropped (and the marker fits).
func (t *tailBuffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	dropped := t.dropped
	if len(b) > t.max {
		dropped += int64(len(b) - t.max)
		b = b[len(b)-t.max:]
	}
	if dropped == 0 {
		return append([]byte(nil), b...)
	}
	if len(truncatedMarker) >= t.max {
		return append([]byte(nil), b...)
	}
	b = b[len(b)-min(len(b), t.max-len(truncatedMarker)):]
	return append([]byte(truncatedMarker), b...)
}
