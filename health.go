package berth

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
)

// maxHealthBody is how much of a health response is read (and discarded)
// so that the connection can be reused.
const maxHealthBody = 64 << 10

// HealthError is a health check that got an answer other than 2xx.
type HealthError struct{ Status string }

func (e *HealthError) Error() string { return "answered " + e.Status }

// CheckHealth makes one health request: a deployment is healthy when GET
// url (its health_path) answers 2xx. Every runtime uses it, so "healthy"
// means the same everywhere.
func CheckHealth(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	io.CopyN(io.Discard, resp.Body, maxHealthBody)
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &HealthError{Status: resp.Status}
	}
	return nil
}

// HealthReason shortens a failed health check for a caller-facing message,
// without server-side detail.
func HealthReason(err error) string {
	var he *HealthError
	if errors.As(err, &he) {
		return he.Error()
	}
	var de *net.DNSError
	if errors.As(err, &de) {
		return "cannot resolve " + de.Name
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe.Err.Error()
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return "no answer"
	}
	return "request failed"
}
