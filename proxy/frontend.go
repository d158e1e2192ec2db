package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The Frontend is the listener side of the proxy. net/http's server costs
// more CPU per proxied request than forwarding it does (a goroutine
// hand-off per connection read, header maps, a background read per
// request, response buffering); on a 2-core machine that capped the proxy
// at ~0.4 of the backend's direct throughput against nginx's ~0.55. The
// Frontend reads each connection itself: a simple HTTP/1.1 request for
// /agents/{name}/... (see parseRequestHead) is forwarded as bytes: the
// request line rewritten, hop-by-hop and forwarding headers dropped and
// X-Forwarded-* appended, the response head filtered the same way and the
// body copied through as it arrives. Everything else (the API, unknown
// agents, upgrades, chunked or large request bodies, escaped paths,
// HTTP/1.0, oversized heads, anything unusual) is handed, with the bytes
// already read, to an http.Server through Fallback, which then owns the
// connection for good. So net/http stays the authority on edge cases and
// the Frontend only has to be right about the common case.

// Frontend defaults for the zero values of FrontendOptions.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultFrontendIdle      = 2 * time.Minute
)

// frontBufSize is each connection's read buffer: a request head that does
// not fit goes to net/http (which allows up to its MaxHeaderBytes).
const frontBufSize = 8 << 10

// watchDelay is how long the Frontend waits for an upstream answer before
// it starts watching the client connection for a disconnect (which cancels
// the upstream request). Quick requests never pay for the watch.
const watchDelay = 50 * time.Millisecond

// FrontendOptions tunes a Frontend. The zero value is ready to use.
type FrontendOptions struct {
	// ReadHeaderTimeout bounds reading a request head once its first
	// bytes arrived. Zero means DefaultReadHeaderTimeout.
	ReadHeaderTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a keep-alive
	// connection. Zero means DefaultFrontendIdle.
	IdleTimeout time.Duration
}

// Frontend serves connections accepted from a listener: the proxy's simple
// requests itself, every other connection through Fallback.
type Frontend struct {
	p        *Proxy
	ln       net.Listener
	opts     FrontendOptions
	fallback *handoffListener

	shutdown atomic.Bool
	mu       sync.Mutex
	conns    map[*frontConn]struct{}

	// testHookHandoff, when set by a test before Serve, is called for
	// each connection handed to Fallback.
	testHookHandoff func()
	// testHookWatchFired, when set by a test, is called when a watcher's
	// timer fires, before the watcher takes its lock.
	testHookWatchFired func()
}

// NewFrontend returns a Frontend for p that will accept from ln. Serve an
// http.Server (whose handler includes p) on Fallback, and call Serve.
func NewFrontend(p *Proxy, ln net.Listener, opts FrontendOptions) *Frontend {
	if opts.ReadHeaderTimeout <= 0 {
		opts.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultFrontendIdle
	}
	return &Frontend{
		p: p, ln: ln, opts: opts,
		fallback: newHandoffListener(ln.Addr()),
		conns:    map[*frontConn]struct{}{},
	}
}

// Fallback is the listener that yields the connections the Frontend hands
// over, for http.Server.Serve. Closing it (as http.Server.Shutdown does)
// makes further hand-overs close their connection instead.
func (f *Frontend) Fallback() net.Listener { return f.fallback }

// Serve accepts connections until the listener fails or Shutdown or Close
// is called; it then returns nil.
func (f *Frontend) Serve() error {
	var delay time.Duration
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if f.shutdown.Load() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: back off as
			// net/http does, rather than spin or stop serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			f.p.log.Error("proxy: accept failed; retrying", "err", err, "delay", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		fc := &frontConn{f: f, c: c, buf: make([]byte, frontBufSize)}
		fc.wd.timeout = f.p.writeTimeout
		if !f.track(fc) {
			c.Close()
			return nil
		}
		go fc.serve()
	}
}

// track registers fc, or reports false once shutting down.
func (f *Frontend) track(fc *frontConn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.shutdown.Load() {
		return false
	}
	f.conns[fc] = struct{}{}
	return true
}

func (f *Frontend) untrack(fc *frontConn) {
	f.mu.Lock()
	delete(f.conns, fc)
	f.mu.Unlock()
}

// Shutdown stops accepting, closes idle connections and waits for the
// requests in flight to finish (their connections are closed after the
// response), or for ctx to end, when it closes the rest and returns ctx's
// error. It does not shut down the http.Server serving Fallback.
func (f *Frontend) Shutdown(ctx context.Context) error {
	f.shutdown.Store(true)
	f.ln.Close()
	f.fallback.Close()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if f.closeIdle() {
			return nil
		}
		select {
		case <-ctx.Done():
			f.Close()
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// closeIdle closes the connections waiting for a request and reports
// whether none are left.
func (f *Frontend) closeIdle() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fc := range f.conns {
		if fc.state.CompareAndSwap(stateIdle, stateClosed) {
			// Wake its blocked read; the connection sees stateClosed
			// and closes itself.
			_ = fc.c.SetReadDeadline(aLongTimeAgo)
		}
	}
	return len(f.conns) == 0
}

// Close closes the listener and every connection at once.
func (f *Frontend) Close() error {
	f.shutdown.Store(true)
	err := f.ln.Close()
	f.fallback.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for fc := range f.conns {
		fc.state.Store(stateClosed)
		fc.c.Close()
	}
	return err
}

// Connection states, for Shutdown.
const (
	stateIdle   int32 = iota // waiting for a request
	stateActive              // serving one
	stateClosed              // claimed by Shutdown: close without serving
)

// frontConn is one client connection served by the Frontend.
type frontConn struct {
	f     *Frontend
	c     net.Conn
	buf   []byte // read buffer; buf[r:w] is read but not yet consumed
	r, w  int
	state atomic.Int32
	ip    string // the client's address for X-Forwarded-For
	rh    reqHead
	rs    resHead
	watch watcher
	// up is the upstream the current request counts in flight on, until
	// releaseUp.
	up *Upstream
	// upBroken marks the current request's upstream connection as not
	// reusable (the request could not be written whole).
	upBroken bool
	// wd keeps the client connection's write deadline (see write).
	wd writeDeadline
}

// write writes b to the client. Each write may block for about the
// proxy's WriteTimeout at most: a client that stops reading a response is
// cut off (its caller then closes the upstream connection too) instead of
// holding the connection and the agent's upstream forever.
func (fc *frontConn) write(b []byte) (int, error) {
	if err := fc.wd.refresh(fc.c.SetWriteDeadline); err != nil {
		return 0, err
	}
	n, err := fc.c.Write(b)
	if err != nil && isTimeout(err) {
		fc.f.p.log.Debug("proxy: client stopped reading; disconnected", "client", fc.ip, "err", err)
	}
	return n, err
}

// serve runs fc's request loop.
func (fc *frontConn) serve() {
	defer fc.f.untrack(fc)
	if host, _, err := net.SplitHostPort(fc.c.RemoteAddr().String()); err == nil {
		fc.ip = host
	}
	fc.watch.fc = fc
	for {
		n, oc := fc.nextRequest()
		if oc == keepOpen {
			oc = fc.serveRequest(n)
		}
		switch {
		case oc == keepOpen && !fc.f.shutdown.Load():
			continue
		case oc != handedOff:
			fc.c.Close()
		}
		return
	}
}

// nextRequest waits for a complete request head at buf[r:] and returns its
// length with keepOpen. It returns closeConn when the connection ended,
// timed out or was claimed by Shutdown, and handedOff when the head is too
// large for the buffer (net/http allows more, and answers 431 beyond its
// limit).
func (fc *frontConn) nextRequest() (int, outcome) {
	if fc.r == fc.w {
		fc.r, fc.w = 0, 0
	}
	if !fc.state.CompareAndSwap(stateActive, stateIdle) && fc.state.Load() != stateIdle {
		return 0, closeConn
	}
	if err := fc.c.SetReadDeadline(time.Now().Add(fc.f.opts.IdleTimeout)); err != nil {
		return 0, closeConn
	}
	// Shutdown claims an idle connection before it sets a past deadline:
	// if it claimed this one before the deadline above was set, that past
	// deadline may have been overwritten, so look again.
	if fc.state.Load() != stateIdle {
		return 0, closeConn
	}
	active, searched := false, 0
	for {
		if fc.w > fc.r {
			if !active {
				if !fc.state.CompareAndSwap(stateIdle, stateActive) {
					return 0, closeConn
				}
				active = true
			}
			if n := headEnd(fc.buf[fc.r:fc.w], searched); n >= 0 {
				return n, keepOpen
			}
			if fc.w == len(fc.buf) {
				if fc.r == 0 {
					return 0, fc.handoff()
				}
				fc.w = copy(fc.buf, fc.buf[fc.r:fc.w])
				fc.r = 0
			}
			if searched == 0 && !fc.slowHead() {
				return 0, closeConn
			}
			searched = fc.w - fc.r
		}
		n, err := fc.c.Read(fc.buf[fc.w:])
		fc.w += n
		if err != nil && n == 0 {
			return 0, closeConn
		}
	}
}

// slowHead is called when a request head did not arrive in one read: from
// now on it must complete within ReadHeaderTimeout (a slowloris client
// otherwise holds the connection for the idle timeout per byte).
func (fc *frontConn) slowHead() bool {
	return fc.c.SetReadDeadline(time.Now().Add(fc.f.opts.ReadHeaderTimeout)) == nil
}

// outcome is what serveRequest leaves the connection in.
type outcome uint8

const (
	keepOpen  outcome = iota // ready for the next request
	closeConn                // must be closed
	handedOff                // now net/http's
)

// handoff gives the connection, with its unconsumed bytes, to the
// fallback http.Server.
func (fc *frontConn) handoff() outcome {
	if fc.f.testHookHandoff != nil {
		fc.f.testHookHandoff()
	}
	// net/http sets no write deadline of its own (Berth's server has no
	// WriteTimeout, for streams): one left from the Frontend's writes
	// would cut a later response on this connection.
	_ = fc.c.SetDeadline(time.Time{})
	fc.wd = writeDeadline{}
	fc.state.Store(stateClosed)
	rc := &replayConn{Conn: fc.c, pending: fc.buf[fc.r:fc.w]}
	fc.buf = nil
	if !fc.f.fallback.deliver(rc) {
		// Shutdown closed the fallback: the request was read but can no
		// longer be served. Say so, rather than close without an answer,
		// which a client cannot tell from a crash (and may not retry).
		out := appendErrorResponse(nil, http.StatusServiceUnavailable, codeUnavailable, "the server is shutting down; retry", true)
		_ = fc.c.SetDeadline(time.Now().Add(shutdownAnswerTimeout))
		if _, err := fc.c.Write(out); err == nil {
			lingeringClose(fc.c)
		}
		fc.c.Close()
	}
	return handedOff
}

// lingeringClose ends c's writing side and reads what the client still
// sends (a request body, say) until it closes its side or the deadline
// set on c passes. Closing a socket with unread input makes the kernel
// send a reset, which can destroy the answer just written before the
// client reads it; net/http closes the same way after an error answer.
func lingeringClose(c net.Conn) {
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(c, lingerMax))
}

// lingerMax bounds what lingeringClose reads and drops.
const lingerMax = 256 << 10

// outPool lends the buffers request and response heads are assembled in.
var outPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// serveRequest serves the request whose head is buf[r:r+n].
func (fc *frontConn) serveRequest(n int) outcome {
	p := fc.f.p
	rh := &fc.rh
	if p.fast == nil || !parseRequestHead(fc.buf[fc.r:fc.r+n], rh) {
		return fc.handoff()
	}
	u := acquire(p, rh.name)
	if u == nil || u.err != nil || u.dialAddr == "" || !u.plainHost {
		// Unknown agents (404) and upstreams the fast path cannot
		// reach are net/http's.
		if u != nil {
			u.release()
		}
		return fc.handoff()
	}
	fc.up = u
	defer fc.releaseUp()

	outp := outPool.Get().(*[]byte)
	defer func() {
		if cap(*outp) <= 64<<10 {
			outPool.Put(outp)
		}
	}()
	out := appendUpstreamHead((*outp)[:0], rh, u, fc.ip)
	fc.r += n
	// The part of the body already read goes out with the head.
	bodyHere := min(int64(fc.w-fc.r), rh.contentLength)
	out = append(out, fc.buf[fc.r:fc.r+int(bodyHere)]...)
	fc.r += int(bodyHere)
	bodyLeft := rh.contentLength - bodyHere

	fc.upBroken = false
	c, err := fc.send(u, out, bodyLeft, rh)
	*outp = out
	if err != nil {
		if bodyLeft > 0 && !rh.close && c == nil {
			// Whether or not part of the body was read, the rest
			// is still on the client's connection, where it would
			// be taken for the next request.
			rh.close = true
		}
		if errors.Is(err, errClientGone) {
			return closeConn
		}
		return fc.upstreamError(u, err, outp)
	}
	return fc.relay(u, c, outp)
}

// errClientGone reports that the client disconnected (or stopped sending
// its body) before the response: nothing is answered.
var errClientGone = errors.New("client went away")

// send writes the request (head and the body's first bytes in out, then
// bodyLeft more bytes of body from the client) on a pooled or new
// connection to u and waits for the response head, which it leaves
// unparsed at the front of c.br. Requests without a body and with a safe
// method are retried on another connection when a pooled one turns out to
// have been closed by the upstream.
func (fc *frontConn) send(u *Upstream, out []byte, bodyLeft int64, rh *reqHead) (*upConn, error) {
	cfg := fc.f.p.fast
	replayable := rh.contentLength == 0 && safeMethod(rh.method)
	for attempt := 0; ; attempt++ {
		c, reused, err := u.conn(context.Background(), cfg, attempt, replayable)
		if err != nil {
			return nil, err
		}
		_, err = c.conn.Write(out)
		bodySent := err == nil
		if bodySent && bodyLeft > 0 {
			err = fc.copyBody(c, bodyLeft)
			bodySent = err == nil
		}
		if !bodySent && bodyLeft > 0 {
			// The client's connection holds unread body bytes: it
			// cannot carry another request.
			rh.close = true
		}
		if errors.Is(err, errClientGone) {
			c.conn.Close()
			return nil, err
		}
		if err != nil {
			if reused && replayable && isStale(err) {
				c.conn.Close()
				continue
			}
			// An upstream may answer (413, 401, ...) and close
			// without reading the whole body; relay that answer, on
			// a connection that is then not reused.
			if rh.contentLength > 0 && fc.awaitHead(c) == nil {
				fc.upBroken = true
				return c, nil
			}
			c.conn.Close()
			return nil, err
		}
		err = fc.awaitHead(c)
		if err == nil {
			return c, nil
		}
		c.conn.Close()
		if reused && replayable && isStale(err) {
			continue
		}
		return nil, err
	}
}

// copyBody copies the rest of the request body, n bytes, from the client
// to c.
func (fc *frontConn) copyBody(c *upConn, n int64) error {
	// The head's deadline (ReadHeaderTimeout when it came slowly) must not
	// cut a slow upload short; the body gets the idle timeout to go on.
	if err := fc.c.SetReadDeadline(time.Now().Add(fc.f.opts.IdleTimeout)); err != nil {
		return errClientGone
	}
	bufp := fc.f.p.bufs.get()
	defer fc.f.p.bufs.put(bufp)
	buf := *bufp
	for n > 0 {
		k, err := fc.c.Read(buf[:min(int64(len(buf)), n)])
		if k > 0 {
			if _, werr := c.conn.Write(buf[:k]); werr != nil {
				return werr
			}
			n -= int64(k)
		}
		if err != nil && n > 0 {
			return errClientGone
		}
	}
	return nil
}

// awaitHead waits, within the response-header timeout, until c.br holds
// a complete response head, while the watcher turns a client disconnect
// into errClientGone.
func (fc *frontConn) awaitHead(c *upConn) error {
	timeout := fc.f.p.fast.headerTimeout
	if timeout > 0 {
		if err := c.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return err
		}
	}
	fc.watch.arm(c)
	err := peekHead(c.br)
	if fc.watch.disarm() {
		return errClientGone
	}
	if err == nil && timeout > 0 {
		err = c.conn.SetReadDeadline(time.Time{})
	}
	return err
}

// peekHead fills br until it holds a complete message head. A connection
// that ends before the first byte reports io.EOF, which a retry of a
// request on a stale pooled connection looks for.
func peekHead(br *bufio.Reader) error {
	searched := 0
	for {
		b, _ := br.Peek(br.Buffered())
		if headEnd(b, searched) >= 0 {
			return nil
		}
		if len(b) == br.Size() {
			return errResponseTooLarge
		}
		searched = len(b)
		if _, err := br.Peek(len(b) + 1); err != nil {
			if len(b) > 0 && err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
}

// relay parses the response head waiting in c.br, skipping 1xx interim
// responses, and copies the response to the client.
func (fc *frontConn) relay(u *Upstream, c *upConn, outp *[]byte) outcome {
	p := fc.f.p
	rs := &fc.rs
	var head []byte
	for {
		b, _ := c.br.Peek(c.br.Buffered())
		head = b[:headEnd(b, 0)]
		if err := parseResponseHead(head, rs); err != nil {
			c.conn.Close()
			return fc.upstreamError(u, err, outp)
		}
		if rs.status == http.StatusSwitchingProtocols {
			c.conn.Close()
			return fc.upstreamError(u, errUnexpectedSwitch, outp)
		}
		if rs.status >= 200 {
			break
		}
		// 1xx other than 101 are not relayed, as with net/http.
		_, _ = c.br.Discard(len(head))
		if err := fc.awaitHead(c); err != nil {
			c.conn.Close()
			if errors.Is(err, errClientGone) {
				return closeConn
			}
			return fc.upstreamError(u, err, outp)
		}
	}

	const (
		modeNone = iota
		modeLength
		modeChunked
		modeClose
	)
	mode := modeClose
	switch {
	case bodyless(rs.status, fc.rh.head):
		mode = modeNone
	case rs.chunked:
		mode = modeChunked
	case rs.contentLength >= 0:
		mode = modeLength
	}
	closeClient := fc.rh.close || mode == modeClose || fc.f.shutdown.Load()
	reuse := rs.keepAlive && mode != modeClose && !fc.upBroken &&
		!headAnnouncedBody(fc.rh.head, rs.contentLength, rs.chunked)
	if mode == modeNone {
		// No body may follow (RFC 9112 §6.1): no chunked framing is
		// announced to the client either.
		rs.chunked = false
	}
	out := appendClientHead((*outp)[:0], rs, closeClient)
	_, _ = c.br.Discard(len(head))

	left := rs.contentLength
	if mode == modeLength && left > 0 && c.br.Buffered() == 0 {
		// Read the body's first bytes before committing to the status:
		// an upstream that sent headers and then died gets a 502
		// rather than a truncated 200.
		fc.watch.arm(c)
		_, err := c.br.Peek(1)
		if fc.watch.disarm() {
			c.conn.Close()
			return closeConn
		}
		if err != nil {
			c.conn.Close()
			*outp = out
			return fc.upstreamError(u, err, outp)
		}
	}
	var cs chunkScanner
	done := mode == modeNone || mode == modeLength && left == 0
	take := func(b []byte) ([]byte, error) {
		switch mode {
		case modeLength:
			b = b[:min(int64(len(b)), left)]
			left -= int64(len(b))
			done = left == 0
		case modeChunked:
			n, end, err := cs.scan(b)
			if err != nil {
				return nil, err
			}
			b, done = b[:n], end
		}
		return b, nil
	}
	// Whatever of the body is already buffered goes out with the head in
	// one write.
	var bodyErr error
	if !done && c.br.Buffered() > 0 {
		b, _ := c.br.Peek(c.br.Buffered())
		b, bodyErr = take(b)
		out = append(out, b...)
		_, _ = c.br.Discard(len(b))
	}
	*outp = out
	if done && bodyErr == nil {
		// The whole response is in out: the upstream is finished with
		// before the client has it, so a Drain waiting on it does not
		// wait on the client.
		fc.finishUpstream(c, reuse)
	}
	if _, err := fc.write(out); err != nil {
		if fc.up != nil {
			// Still ours (not pooled by finishUpstream).
			c.conn.Close()
		}
		return closeConn
	}

	if !done && bodyErr == nil {
		bufp := p.bufs.get()
		defer p.bufs.put(bufp)
		// The rest streams through as it arrives: each read is written
		// at once, so server-sent events are never held back.
		fc.watch.arm(c)
		for !done {
			n, err := c.br.Read(*bufp)
			if n > 0 {
				var b []byte
				b, bodyErr = take((*bufp)[:n])
				if len(b) < n {
					reuse = false // the upstream sent more than its response
				}
				if _, werr := fc.write(b); werr != nil {
					fc.watch.disarm()
					c.conn.Close()
					return closeConn
				}
				if bodyErr != nil {
					break
				}
			}
			if err != nil {
				if mode == modeClose && err == io.EOF {
					done = true
					break
				}
				bodyErr = err
				break
			}
		}
		if fc.watch.disarm() {
			c.conn.Close()
			return closeConn
		}
	}
	if bodyErr != nil || !done {
		// The status is sent: the only honest signal left is to cut the
		// client's connection so it sees a truncated response.
		p.log.Warn("proxy: upstream response body failed", "agent", u.agent, "upstream", u.raw, "err", bodyErr)
		c.conn.Close()
		return closeConn
	}
	fc.finishUpstream(c, reuse)
	if closeClient {
		return closeConn
	}
	return keepOpen
}

// finishUpstream ends the current request's use of its upstream: c goes
// back to the pool when reuse allows and nothing unread is left on it
// (else it is closed), and the request stops counting in flight. Calling
// it again is harmless.
func (fc *frontConn) finishUpstream(c *upConn, reuse bool) {
	u := fc.up
	if u == nil {
		return
	}
	if reuse && c.br.Buffered() == 0 {
		u.pool.put(fc.f.p.fast, c)
	} else {
		c.conn.Close()
	}
	fc.releaseUp()
}

// releaseUp stops counting the current request in flight on its upstream.
func (fc *frontConn) releaseUp() {
	if fc.up != nil {
		fc.up.release()
		fc.up = nil
	}
}

// upstreamError answers a failed exchange with the upstream as the
// handler does (see Proxy.upstreamError) and keeps the connection unless
// the client asked to close it.
func (fc *frontConn) upstreamError(u *Upstream, err error, outp *[]byte) outcome {
	fc.releaseUp()
	status, code, msg := http.StatusBadGateway, codeBadGateway, "agent "+strconv.Quote(u.agent)+" upstream is unavailable"
	if isTimeout(err) {
		status, code, msg = http.StatusGatewayTimeout, codeGatewayTimeout, "agent "+strconv.Quote(u.agent)+" upstream timed out"
	}
	fc.f.p.log.Warn("proxy: upstream request failed", "agent", u.agent, "upstream", u.raw,
		"method", string(fc.rh.method), "status", status, "err", err)
	closeClient := fc.rh.close || fc.f.shutdown.Load()
	out := appendErrorResponse((*outp)[:0], status, code, msg, closeClient)
	*outp = out
	if _, werr := fc.write(out); werr != nil || closeClient {
		return closeConn
	}
	return keepOpen
}

// appendErrorResponse appends a complete response with the API's JSON
// error body.
func appendErrorResponse(out []byte, status int, code, msg string, closeConn bool) []byte {
	body, err := json.Marshal(errorBody{StatusCode: status, Message: msg, Detail: msg, Code: code})
	if err != nil {
		body = []byte(`{"status_code":` + strconv.Itoa(status) + `,"code":"` + code + `"}`)
	}
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(status)...)
	out = append(out, "\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nDate: "...)
	out = time.Now().UTC().AppendFormat(out, http.TimeFormat)
	out = append(out, "\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(body)), 10)
	if closeConn {
		out = append(out, "\r\nConnection: close"...)
	}
	out = append(out, "\r\n\r\n"...)
	return append(out, body...)
}

// appendUpstreamHead appends the request head to send to u for rh: the
// path without /agents/{name} joined to u's base path, Host set to u's,
// hop-by-hop and client-sent forwarding headers dropped, X-Forwarded-*
// appended (as outboundHeader does for the handler).
func appendUpstreamHead(out []byte, rh *reqHead, u *Upstream, clientIP string) []byte {
	out = append(out, rh.method...)
	out = append(out, ' ')
	out = append(out, u.baseRawPath...)
	if len(rh.rest) == 0 {
		out = append(out, '/')
	} else {
		out = append(out, rh.rest...)
	}
	if len(rh.query) > 0 {
		out = append(out, '?')
		out = append(out, rh.query...)
	}
	out = append(out, " HTTP/1.1\r\nHost: "...)
	out = append(out, u.target.Host...)
	out = append(out, "\r\n"...)
	for rest := rh.headers; len(rest) > 0; {
		eol := bytes.IndexByte(rest, '\n') + 1
		line := rest[:eol]
		rest = rest[eol:]
		switch kindOf(line[:bytes.IndexByte(line, ':')]) {
		case hkHost, hkConnection, hkHop, hkForwarding:
		case hkContentLength:
			// As Request.Write does for the handler: a zero length
			// is only sent for methods that normally carry a body.
			if rh.contentLength > 0 || bodyMethod(rh.method) {
				out = append(out, line...)
			}
		default:
			out = append(out, line...)
		}
	}
	if clientIP != "" {
		out = append(out, "X-Forwarded-For: "...)
		out = append(out, clientIP...)
		out = append(out, "\r\n"...)
	}
	out = append(out, "X-Forwarded-Host: "...)
	out = append(out, rh.host...)
	out = append(out, "\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Prefix: "...)
	out = append(out, u.prefix...)
	return append(out, "\r\n\r\n"...)
}

// appendClientHead appends the response head to send the client for rs:
// HTTP/1.1, hop-by-hop fields and those the upstream's Connection header
// lists dropped, chunked framing kept, and Connection: close when the
// client connection ends after this response.
func appendClientHead(out []byte, rs *resHead, closeClient bool) []byte {
	out = append(out, "HTTP/1.1 "...)
	out = append(out, rs.statusLine...)
	if len(rs.statusLine) == 3 {
		out = append(out, ' ')
		out = append(out, http.StatusText(rs.status)...)
	}
	out = append(out, "\r\n"...)
	for rest := rs.headers; len(rest) > 0; {
		eol := bytes.IndexByte(rest, '\n')
		line := rest[:eol]
		rest = rest[eol+1:]
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		if len(line) == 0 {
			break
		}
		name := line[:bytes.IndexByte(line, ':')]
		switch kindOf(name) {
		case hkConnection, hkHop, hkTE, hkUpgrade, hkTransferEncoding:
			continue
		case hkContentLength:
			if rs.chunked {
				continue
			}
		}
		if listed(rs.connTokens, name) {
			continue
		}
		out = append(out, line...)
		out = append(out, "\r\n"...)
	}
	if rs.chunked {
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	}
	if closeClient {
		out = append(out, "Connection: close\r\n"...)
	}
	return append(out, "\r\n"...)
}

// listed reports whether a Connection header value in tokens names the
// field name.
func listed(tokens [][]byte, name []byte) bool {
	for _, v := range tokens {
		if hasToken(v, name) {
			return true
		}
	}
	return false
}

// bodyMethod reports whether requests with method m normally carry a
// body, so that an explicit zero Content-Length means something.
func bodyMethod(m []byte) bool {
	switch string(m) {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		return true
	}
	return false
}

// safeMethod reports whether a request with this method may be sent twice
// (RFC 9110 §9.2.2), as isIdempotent does for the handler without looking
// at idempotency keys.
func safeMethod(m []byte) bool {
	switch string(m) {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// watcher detects a client that disconnects while its request waits on
// the upstream (an agent can think for minutes): after watchDelay it
// reads the client connection in the timer's goroutine, and a read that
// fails aborts the upstream connection. Bytes it reads (a pipelined next
// request) are kept in the connection's buffer.
type watcher struct {
	fc    *frontConn
	timer *time.Timer
	mu    sync.Mutex
	state uint8
	up    *upConn
	gone  bool
	done  chan struct{}
}

const (
	watchOff     = iota
	watchArmed   // the timer is set
	watchReading // the timer fired and a read is running
	watchStopped // disarm asked the read to stop
)

// arm starts the watch over a request waiting on c.
func (w *watcher) arm(c *upConn) {
	if w.fc.w == len(w.fc.buf) {
		// No room to read into; the client is not watched.
		return
	}
	w.mu.Lock()
	w.up, w.gone, w.state = c, false, watchArmed
	w.mu.Unlock()
	if w.timer == nil {
		w.done = make(chan struct{}, 1)
		w.timer = time.AfterFunc(watchDelay, w.read)
	} else {
		w.timer.Reset(watchDelay)
	}
}

// read runs in the timer's goroutine.
func (w *watcher) read() {
	fc := w.fc
	if h := fc.f.testHookWatchFired; h != nil {
		h()
	}
	w.mu.Lock()
	if w.state != watchArmed {
		w.mu.Unlock()
		return
	}
	w.state = watchReading
	// Clear the idle deadline under the lock, so that disarm's past
	// deadline cannot come first and be undone.
	_ = fc.c.SetReadDeadline(time.Time{})
	w.mu.Unlock()

	n, err := fc.c.Read(fc.buf[fc.w:])
	w.mu.Lock()
	fc.w += n
	if n == 0 && err != nil && w.state == watchReading {
		// The client is gone (not our own wake-up): abort the
		// upstream exchange.
		w.gone = true
		_ = w.up.conn.SetDeadline(aLongTimeAgo)
	}
	w.mu.Unlock()
	w.done <- struct{}{}
}

// disarm ends the watch and reports whether the client went away.
func (w *watcher) disarm() bool {
	if w.timer == nil {
		return false
	}
	// Whether Stop stopped the timer says nothing about a goroutine of an
	// earlier firing that took the lock only after the watch was armed
	// again and is now reading: only the state tells.
	w.timer.Stop()
	w.mu.Lock()
	switch w.state {
	case watchArmed:
		// The timer was stopped, or it fired but read has not
		// started: read will see watchOff and do nothing.
		w.state = watchOff
		w.mu.Unlock()
		return false
	case watchOff:
		w.mu.Unlock()
		return false
	}
	w.state = watchStopped
	_ = w.fc.c.SetReadDeadline(aLongTimeAgo)
	w.mu.Unlock()
	<-w.done
	w.mu.Lock()
	gone := w.gone
	w.state = watchOff
	w.mu.Unlock()
	return gone
}

// handoffListener is the net.Listener side of Frontend.Fallback.
type handoffListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

// deliver passes c to Accept, or reports false once the listener is
// closed.
func (l *handoffListener) deliver(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		return false
	}
}

// Accept returns the next connection handed over.
func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops Accept; connections handed over later are closed.
func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr is the Frontend listener's address.
func (l *handoffListener) Addr() net.Addr { return l.addr }

// replayConn is a connection handed to net/http with the bytes the
// Frontend had already read in front of the rest.
type replayConn struct {
	net.Conn
	pending []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the connection when the underlying one can, as
// net/http does before closing a connection after an error.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
