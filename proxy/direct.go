package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The fast path: ordinary HTTP/1.1 requests to plain-http upstreams are
// written and answered in the handler's own goroutine over a per-Upstream
// pool of keep-alive connections. http.Transport runs two goroutines per
// connection (readLoop, writeLoop) and hands every request and response
// across channels to them; under load that hand-off and the extra
// netpoller wake-ups it causes cost more CPU than the forwarding itself.
// Anything unusual (protocol upgrades, Expect: 100-continue, request
// trailers, https upstreams, a caller-supplied Transport) still goes
// through the Transport.

// connBufSize is the size of each pooled connection's read and write
// buffers, matching the Transport's tuning.
const connBufSize = 32 << 10

// maxStaleRetries bounds how many pooled connections a replayable request
// tries after finding the previous one closed by the upstream, before it
// dials a new one.
const maxStaleRetries = 2

// aLongTimeAgo is a deadline in the past: setting it wakes any blocked read
// or write on a connection at once.
var aLongTimeAgo = time.Unix(1, 0)

// errUnexpectedSwitch reports a 101 answer to a request that asked for no
// protocol upgrade.
var errUnexpectedSwitch = errors.New("upstream switched protocols without an upgrade request")

// fastConfig is what the fast path needs from Options; a Proxy built with
// a caller-supplied Transport has none and never takes the fast path.
type fastConfig struct {
	dialer        *net.Dialer
	maxIdle       int           // per upstream
	maxIdleTotal  int64         // across upstreams
	idleTimeout   time.Duration // > 0
	headerTimeout time.Duration // <= 0 means no limit
	idleTotal     atomic.Int64
}

// upConn is one keep-alive connection to an upstream, used by one request
// at a time.
type upConn struct {
	conn   net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time // when it was returned to the pool
	// abort wakes any blocked read or write on conn; built once per
	// connection so watching a request's context allocates no closure.
	abort func()
}

// newUpConn wraps a freshly dialled connection.
func newUpConn(conn net.Conn) *upConn {
	return &upConn{
		conn:  conn,
		br:    bufio.NewReaderSize(conn, connBufSize),
		bw:    bufio.NewWriterSize(conn, connBufSize),
		abort: func() { _ = conn.SetDeadline(aLongTimeAgo) },
	}
}

// connPool holds an Upstream's idle connections as a stack: the most
// recently used one is reused first (it is the least likely to have been
// closed by the upstream), the oldest sit at the front and expire first.
type connPool struct {
	mu     sync.Mutex
	idle   []*upConn
	closed bool        // the upstream was replaced: keep nothing
	timer  *time.Timer // expires idle connections; nil when none are idle
}

// get pops the most recently used idle connection, or returns nil.
func (cp *connPool) get(cfg *fastConfig) *upConn {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	n := len(cp.idle)
	if n == 0 {
		return nil
	}
	c := cp.idle[n-1]
	cp.idle[n-1] = nil
	cp.idle = cp.idle[:n-1]
	cfg.idleTotal.Add(-1)
	return c
}

// put returns c to the pool, or closes it when the pool is closed or full.
func (cp *connPool) put(cfg *fastConfig, c *upConn) {
	c.idleAt = time.Now()
	cp.mu.Lock()
	if cp.closed || len(cp.idle) >= cfg.maxIdle || cfg.idleTotal.Load() >= cfg.maxIdleTotal {
		cp.mu.Unlock()
		c.conn.Close()
		return
	}
	cp.idle = append(cp.idle, c)
	cfg.idleTotal.Add(1)
	if cp.timer == nil {
		cp.timer = time.AfterFunc(cfg.idleTimeout, func() { cp.expire(cfg) })
	}
	cp.mu.Unlock()
}

// expire closes the connections idle for longer than the idle timeout and
// re-arms the timer for the oldest one left.
func (cp *connPool) expire(cfg *fastConfig) {
	cutoff := time.Now().Add(-cfg.idleTimeout)
	var stale []*upConn
	cp.mu.Lock()
	i := 0
	for i < len(cp.idle) && !cp.idle[i].idleAt.After(cutoff) {
		i++
	}
	if i > 0 {
		stale = append(stale, cp.idle[:i]...)
		n := copy(cp.idle, cp.idle[i:])
		clear(cp.idle[n:])
		cp.idle = cp.idle[:n]
		cfg.idleTotal.Add(-int64(i))
	}
	if len(cp.idle) > 0 {
		cp.timer.Reset(cp.idle[0].idleAt.Sub(cutoff))
	} else {
		cp.timer = nil
	}
	cp.mu.Unlock()
	for _, c := range stale {
		c.conn.Close()
	}
}

// closeIdle closes every idle connection; with retire, connections
// returned later are closed too.
func (cp *connPool) closeIdle(cfg *fastConfig, retire bool) {
	cp.mu.Lock()
	idle := cp.idle
	cp.idle = nil
	if retire {
		cp.closed = true
	}
	if cp.timer != nil {
		cp.timer.Stop()
		cp.timer = nil
	}
	cfg.idleTotal.Add(-int64(len(idle)))
	cp.mu.Unlock()
	for _, c := range idle {
		c.conn.Close()
	}
}

// maxFastBody is the largest request body the fast path forwards. It
// writes the whole request before reading the response, so a body larger
// than the socket buffers, sent to an upstream that answers (and streams)
// before reading it, could deadlock; such requests take the Transport,
// which writes and reads at once.
const maxFastBody = 64 << 10

// fastEligible reports whether r can take the fast path.
func (p *Proxy) fastEligible(r *http.Request, u *Upstream, upType string) bool {
	bodyOK := r.ContentLength == 0 || (r.ContentLength > 0 && r.ContentLength <= maxFastBody)
	return p.fast != nil && u.dialAddr != "" && upType == "" && bodyOK &&
		len(r.Header["Expect"]) == 0 && len(r.Trailer) == 0
}

// fastExchange is one request in flight on the fast path: the connection
// it holds and the hook watching the request's context. The zero value
// means the request went through the Transport.
type fastExchange struct {
	c    *upConn
	stop func() bool
}

// finishFast ends the exchange fx on u: the connection goes back to the pool only
// when the response body was read to its end, both sides keep the
// connection alive, and the request was not cancelled meanwhile; otherwise
// it is closed.
func (p *Proxy) finishFast(u *Upstream, fx fastExchange, res *http.Response, complete bool) {
	cancelled := !fx.stop()
	if complete && !cancelled && reusable(res) && fx.c.br.Buffered() == 0 {
		u.pool.put(p.fast, fx.c)
		return
	}
	fx.c.conn.Close()
}

// reusable reports whether the connection res came on may carry another
// request once res's body has been read to its end: the upstream did not
// ask to close it and the body's end was marked by framing, not by the
// connection closing.
func reusable(res *http.Response) bool {
	if res.Close {
		return false
	}
	if res.Request != nil && headAnnouncedBody(res.Request.Method == http.MethodHead, res.ContentLength, len(res.TransferEncoding) > 0) {
		return false
	}
	if res.ContentLength >= 0 || res.Body == http.NoBody {
		return true
	}
	for _, te := range res.TransferEncoding {
		if te == "chunked" {
			return true
		}
	}
	return false
}

// headAnnouncedBody reports whether an answer to a HEAD request announced
// a body (a length above zero or a transfer coding). Its connection is
// not reused: a body the upstream sends anyway would be read by the next
// request as its answer (http.Transport catches that with a background
// read, which the fast paths do not have).
func headAnnouncedBody(head bool, contentLength int64, coded bool) bool {
	return head && (contentLength > 0 || coded)
}

// roundTripFast sends out to u on a pooled (or new) connection in the
// calling goroutine and reads the response headers. On success the caller
// owns the returned exchange and must pass it to finishFast once done with
// the response body; res.Body must not be closed (closing it would drain
// the rest of a possibly endless stream).
func (p *Proxy) roundTripFast(out *http.Request, u *Upstream) (*http.Response, fastExchange, error) {
	cfg := p.fast
	ctx := out.Context()
	// Only a request with nothing to resend and no side effects may be
	// retried on another connection when a pooled one turns out to have
	// been closed by the upstream meanwhile (RFC 9110 §9.2.2).
	replayable := out.Body == nil && isIdempotent(out)
	for attempt := 0; ; attempt++ {
		c, reused, err := u.conn(ctx, cfg, attempt, replayable)
		if err != nil {
			return nil, fastExchange{}, err
		}

		// The client going away (or the request's deadline) unblocks any
		// read or write on the connection; finishFast then closes it.
		fx := fastExchange{c: c, stop: context.AfterFunc(ctx, c.abort)}
		res, err := p.exchange(out, u, c)
		if err == nil {
			return res, fx, nil
		}
		fx.stop()
		c.conn.Close()
		if ctx.Err() != nil {
			return nil, fastExchange{}, context.Cause(ctx)
		}
		if reused && replayable && isStale(err) {
			continue
		}
		return nil, fastExchange{}, err
	}
}

// conn returns a connection to u for the attempt-th try of a request: the
// most recently pooled one, or a new one when the pool is empty or earlier
// tries met connections the upstream had closed. A request that cannot be
// retried (not replayable) only gets a pooled connection checked to be
// still open, so it is never lost to the race with the upstream's idle
// timeout.
func (u *Upstream) conn(ctx context.Context, cfg *fastConfig, attempt int, replayable bool) (c *upConn, reused bool, err error) {
	if attempt <= maxStaleRetries {
		c = u.pool.get(cfg)
	}
	for c != nil && !replayable && !connAlive(c) {
		c.conn.Close()
		c = u.pool.get(cfg)
	}
	if c != nil {
		return c, true, nil
	}
	conn, err := cfg.dialer.DialContext(ctx, "tcp", u.dialAddr)
	if err != nil {
		return nil, false, err
	}
	return newUpConn(conn), false, nil
}

// exchange writes out on c and reads the response headers.
func (p *Proxy) exchange(out *http.Request, u *Upstream, c *upConn) (*http.Response, error) {
	var err error
	if out.Body == nil && u.plainHost {
		err = writeBodylessRequest(c.bw, out)
	} else {
		err = out.Write(c.bw)
	}
	if err == nil {
		err = c.bw.Flush()
	}
	if err != nil {
		if out.Body == nil || out.Context().Err() != nil || clientBodyFailed(out.Body) {
			return nil, err
		}
		// An upstream may answer (413, 401, ...) and close without
		// reading the whole request body; relay that answer, as the
		// Transport does, rather than the write error it caused. Not
		// when reading the client's body failed: the upstream is then
		// still waiting for the rest and would never answer. The
		// connection cannot be reused after a partial request.
		res, rerr := p.readResponse(out, c)
		if rerr != nil {
			return nil, err
		}
		res.Close = true
		return res, nil
	}
	return p.readResponse(out, c)
}

// readResponse reads the response headers to out from c, skipping 1xx
// interim responses, within the response-header timeout.
func (p *Proxy) readResponse(out *http.Request, c *upConn) (*http.Response, error) {
	timeout := p.fast.headerTimeout
	if timeout > 0 {
		if err := c.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return nil, err
		}
	}
	// Wait for the first byte apart: ReadResponse reports a connection
	// closed before any byte as io.ErrUnexpectedEOF, like one closed
	// mid-header, while only the former is a stale pooled connection that
	// is safe to retry.
	if _, err := c.br.Peek(1); err != nil {
		return nil, err
	}
	for {
		res, err := http.ReadResponse(c.br, out)
		if err != nil {
			return nil, err
		}
		if res.StatusCode == http.StatusSwitchingProtocols {
			return nil, errUnexpectedSwitch
		}
		if res.StatusCode >= 200 || res.StatusCode < 100 {
			if timeout > 0 {
				if err := c.conn.SetReadDeadline(time.Time{}); err != nil {
					return nil, err
				}
				// A cancellation that fired before the deadline was
				// cleared would otherwise be lost.
				if err := out.Context().Err(); err != nil {
					return nil, err
				}
			}
			return res, nil
		}
		// 1xx other than 101 are not relayed, as with the Transport.
	}
}

// isIdempotent reports whether out may be sent twice: an idempotent method
// or an explicit idempotency key, as http.Transport decides.
func isIdempotent(out *http.Request) bool {
	switch out.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, k1 := out.Header["Idempotency-Key"]
	_, k2 := out.Header["X-Idempotency-Key"]
	return k1 || k2
}

// isStale reports whether err is what a request meets on a kept-alive
// connection the upstream had already closed: nothing came back, or the
// connection was reset.
func isStale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// clientBodyFailed reports whether reading the client's request body
// failed (as opposed to writing it upstream). Request.Write reports both
// alike, without an error chain to tell them apart.
func clientBodyFailed(body io.Reader) bool {
	b, ok := body.(*noCloseBody)
	return ok && b.err != nil
}
