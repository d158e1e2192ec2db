package proxy

import (
	"io"
	"time"
)

// writeDeadline keeps a connection's write deadline ahead of each write,
// so that every write may block for at most about the proxy's
// WriteTimeout. Moving a deadline costs a runtime timer update, so it is
// moved only when it has come within slack of the current time: each write
// then gets between timeout-slack and timeout, and a stream of quick writes
// pays for a timer update about once per slack rather than per write.
type writeDeadline struct {
	timeout time.Duration
	// until is the deadline last set; zero when none is.
	until time.Time
}

// maxDeadlineSlack bounds how much shorter than the timeout a write's
// deadline may be.
const maxDeadlineSlack = time.Second

// refresh moves the deadline to now+timeout through set when fewer than
// timeout-slack remain. It does nothing when timeout is zero (no limit).
func (d *writeDeadline) refresh(set func(time.Time) error) error {
	if d.timeout <= 0 {
		return nil
	}
	slack := min(d.timeout/4, maxDeadlineSlack)
	now := time.Now()
	if !d.until.IsZero() && d.until.Sub(now) > d.timeout-slack {
		return nil
	}
	d.until = now.Add(d.timeout)
	return set(d.until)
}

// deadlineWriter is an io.Writer that refreshes its connection's write
// deadline before each write (for copies onto a hijacked connection).
type deadlineWriter struct {
	w   io.Writer
	set func(time.Time) error
	d   writeDeadline
}

func (w *deadlineWriter) Write(b []byte) (int, error) {
	if err := w.d.refresh(w.set); err != nil {
		return 0, err
	}
	return w.w.Write(b)
}
