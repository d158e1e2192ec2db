package proxy

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/berthhq/berth"
)

// bufPool lends the 32 KiB body-copy buffers so copying a response does not
// allocate one per request. It holds pointers so Put does not allocate.
type bufPool struct{ pool sync.Pool }

func (b *bufPool) get() *[]byte {
	if v, ok := b.pool.Get().(*[]byte); ok {
		return v
	}
	buf := make([]byte, 32<<10)
	return &buf
}

func (b *bufPool) put(buf *[]byte) { b.pool.Put(buf) }

// forward sends r to u and copies the answer back. Ordinary requests take
// the fast path (roundTripFast: in this goroutine, over u's own connection
// pool); protocol upgrades, Expect: 100-continue, request trailers, https
// upstreams and a caller-supplied Transport go through one RoundTrip on the
// Transport.
//
// It is hand-written rather than built on httputil.ReverseProxy: with the
// Transport stubbed out (BenchmarkForward), ReverseProxy's per-request work
// measured 2.8µs and 27 allocations against 1.1µs and 12 here, about 7 of
// each being the stub's own. ReverseProxy clones the whole request, installs
// an httptrace hook, copies every header value and parses the response media
// type. Behaviour follows ReverseProxy's: hop-by-hop headers dropped both
// ways, trailers and protocol upgrades passed through, streams flushed as
// they arrive. 1xx informational responses other than 101 are not relayed.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, u *Upstream) {
	upType, ok := upgradeType(r.Header)
	if !ok {
		p.writeError(w, http.StatusBadRequest, string(berth.CodeInvalid), "invalid Upgrade header")
		return
	}

	// A shallow copy (one allocation) keeps r's context; Clone would also
	// deep-copy the URL and header, which are replaced below anyway, as is
	// every other field the Transport reads that must differ.
	out := r.WithContext(r.Context())
	out.URL = &url.URL{Scheme: u.target.Scheme, Host: u.target.Host, RawQuery: r.URL.RawQuery}
	out.URL.Path, out.URL.RawPath = forwardPath(r, u)
	out.Host = u.target.Host
	out.RequestURI = ""
	out.Close = false
	// The Transport picks its own framing from ContentLength: chunked when
	// the length is unknown.
	out.TransferEncoding = nil
	out.Header = outboundHeader(r, u, upType)
	if r.ContentLength == 0 {
		// A nil body lets the Transport retry an idempotent request on a
		// keep-alive connection the upstream closed meanwhile.
		out.Body = nil
	} else if r.Body != nil {
		// The Transport closes the body on failure; closing the server's
		// request body early can block on an unread Expect: 100-continue
		// body, and the handler owns it anyway.
		out.Body = &noCloseBody{r: r.Body}
	}

	var (
		res *http.Response
		fx  fastExchange
		err error
	)
	if p.fastEligible(r, u, upType) {
		res, fx, err = p.roundTripFast(out, u)
	} else {
		res, err = p.transport.RoundTrip(out)
	}
	if err != nil {
		p.upstreamError(w, r, u, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols && fx.c == nil {
		p.switchProtocols(w, r, u, upType, res)
		return
	}
	// complete records that the body was read to its end, which is when a
	// fast-path connection may be pooled again. The deferred func also runs
	// when bodyError aborts the handler.
	complete := false
	defer func() {
		if fx.c != nil {
			p.finishFast(u, fx, res, complete)
		} else {
			res.Body.Close()
		}
	}()

	eventStream := isEventStream(res.Header["Content-Type"])
	buf := p.bufs.get()
	defer p.bufs.put(buf)
	// For an ordinary body, read its first bytes before committing to a
	// status: an upstream that sent headers and then died can still be
	// answered with a 502 instead of a truncated 200. Streams skip this so
	// their headers reach the client before the first event.
	var n int
	var rerr error
	if !eventStream && res.ContentLength > 0 {
		n, rerr = res.Body.Read(*buf)
		if rerr != nil && rerr != io.EOF {
			p.upstreamError(w, r, u, rerr)
			return
		}
	}

	// res.Header is ours alone, so its value slices can be handed to the
	// ResponseWriter as they are instead of being copied.
	dst := w.Header()
	resConn := res.Header["Connection"]
	for k, vv := range res.Header {
		if !isHopHeader(k) && !connectionListed(resConn, k) {
			dst[k] = vv
		}
	}
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		dst["Trailer"] = []string{strings.Join(keys, ", ")}
	}
	// Each write to the client may block for about WriteTimeout at most
	// (see Options.WriteTimeout): the head's too (an event stream's is
	// flushed at once), and the tail net/http writes after the handler
	// returns (a bodyless answer, the last chunk, trailers), under the
	// deadline renewed on the way out. net/http takes the deadline off
	// before it reads the connection's next request.
	cw := newClientWriter(w, p.writeTimeout)
	cw.refresh()
	defer cw.refresh()
	w.WriteHeader(res.StatusCode)

	// Streams (SSE, or any body of unknown length) are flushed after every
	// read so each event reaches the client as soon as the agent sends it;
	// bodies of known length go out through the server's buffer.
	var flusher http.Flusher
	if eventStream || res.ContentLength < 0 || announced > 0 {
		flusher = flusherOf(w)
		if eventStream && flusher != nil {
			flusher.Flush()
		}
	}
	for {
		if n > 0 {
			if _, werr := cw.write((*buf)[:n]); werr != nil {
				// The client went away or stopped reading; nothing is
				// left to tell it.
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if rerr == io.EOF {
			complete = true
			break
		}
		if rerr != nil {
			p.bodyError(r, u, rerr)
			return
		}
		n, rerr = res.Body.Read(*buf)
	}

	if len(res.Trailer) > 0 {
		for k, vv := range res.Trailer {
			if announced != len(res.Trailer) {
				// Only announced trailers may be set by their bare name.
				k = http.TrailerPrefix + k
			}
			dst[k] = vv
		}
	}
}

// clientWriter writes a response under a write deadline per write.
type clientWriter struct {
	w  http.ResponseWriter
	dl writeDeadliner // nil when w cannot take deadlines (a test recorder)
	d  writeDeadline
}

// writeDeadliner is what net/http's ResponseWriter offers (and
// http.ResponseController uses) to set the connection's write deadline.
type writeDeadliner interface{ SetWriteDeadline(time.Time) error }

func newClientWriter(w http.ResponseWriter, timeout time.Duration) clientWriter {
	cw := clientWriter{w: w, d: writeDeadline{timeout: timeout}}
	if timeout > 0 {
		cw.dl = writeDeadlinerOf(w)
	}
	return cw
}

// refresh keeps the deadline about WriteTimeout ahead.
func (cw *clientWriter) refresh() {
	if cw.dl != nil && cw.d.refresh(cw.dl.SetWriteDeadline) != nil {
		cw.dl = nil
	}
}

func (cw *clientWriter) write(b []byte) (int, error) {
	cw.refresh()
	return cw.w.Write(b)
}

// bodyError handles an upstream that failed after the response status was
// sent: the only honest signal left is to abort the client's connection so
// it sees a truncated response rather than a complete-looking one.
func (p *Proxy) bodyError(r *http.Request, u *Upstream, err error) {
	if r.Context().Err() == nil {
		p.log.Warn("proxy: upstream response body failed", "agent", u.agent, "upstream", u.raw, "err", err)
	}
	// Outside net/http's server (a test recorder) the panic would not be
	// recovered; there the truncated body is all that can be done.
	if r.Context().Value(http.ServerContextKey) != nil {
		panic(http.ErrAbortHandler)
	}
}

// outboundHeader builds the upstream request's header from r's: hop-by-hop
// and client-supplied forwarding headers dropped, X-Forwarded-* set. All
// values share one backing array sized up front, so the whole header costs
// two allocations.
func outboundHeader(r *http.Request, u *Upstream, upType string) http.Header {
	in := r.Header
	inConn := in["Connection"]
	n := 6
	for _, vv := range in {
		n += len(vv)
	}
	vals := make([]string, 0, n)
	h := make(http.Header, len(in)+6)
	add := func(k, v string) {
		vals = append(vals, v)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	for k, vv := range in {
		if isHopHeader(k) || isForwardingHeader(k) || connectionListed(inConn, k) {
			continue
		}
		vals = append(vals, vv...)
		h[k] = vals[len(vals)-len(vv) : len(vals) : len(vals)]
	}
	// Tell the upstream trailers are welcome only if the client said so.
	if headerHasToken(in["Te"], "trailers") {
		add("Te", "trailers")
	}
	if upType != "" {
		add("Connection", "Upgrade")
		add("Upgrade", upType)
	}
	if _, ok := h["User-Agent"]; !ok {
		// An empty value stops the Transport adding Go's default agent.
		add("User-Agent", "")
	}
	// Client-sent forwarding headers were dropped above: the chain starts
	// at Berth, so an agent can trust what it sees.
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		add("X-Forwarded-For", ip)
	}
	add("X-Forwarded-Host", r.Host)
	if r.TLS != nil {
		add("X-Forwarded-Proto", "https")
	} else {
		add("X-Forwarded-Proto", "http")
	}
	add("X-Forwarded-Prefix", u.prefix)
	return h
}

// isHopHeader reports whether the canonical header key k is hop-by-hop
// (RFC 9110 §7.6.1 plus the non-standard ones proxies traditionally drop).
func isHopHeader(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// isForwardingHeader reports whether k is a forwarding header the proxy sets
// itself and so never takes from the client.
func isForwardingHeader(k string) bool {
	switch k {
	case "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Prefix":
		return true
	}
	return false
}

// connectionListed reports whether key is named by a Connection header value
// (RFC 9110 §7.6.1), which makes it hop-by-hop too.
func connectionListed(conn []string, key string) bool {
	return len(conn) > 0 && headerHasToken(conn, key)
}

// headerHasToken reports whether any comma-separated element of values
// equals token, ignoring case and surrounding whitespace.
func headerHasToken(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var elem string
			elem, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(elem), token) {
				return true
			}
		}
	}
	return false
}

// upgradeType returns the protocol h asks to upgrade to, or "" for none; ok
// is false when the requested protocol is not printable ASCII.
func upgradeType(h http.Header) (string, bool) {
	if !headerHasToken(h["Connection"], "Upgrade") {
		return "", true
	}
	t := h.Get("Upgrade")
	for i := 0; i < len(t); i++ {
		if t[i] < ' ' || t[i] > '~' {
			return "", false
		}
	}
	return t, true
}

// isEventStream reports whether a Content-Type header value is
// text/event-stream, without mime.ParseMediaType's allocations.
func isEventStream(ct []string) bool {
	if len(ct) == 0 {
		return false
	}
	const sse = "text/event-stream"
	v := strings.TrimSpace(ct[0])
	if len(v) < len(sse) || !strings.EqualFold(v[:len(sse)], sse) {
		return false
	}
	rest := v[len(sse):]
	return rest == "" || rest[0] == ';' || rest[0] == ' ' || rest[0] == '\t'
}

// flusherOf returns w's Flusher, looking through wrappers that expose
// Unwrap as http.ResponseController does, or nil if there is none.
func flusherOf(w http.ResponseWriter) http.Flusher {
	for {
		if f, ok := w.(http.Flusher); ok {
			return f
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return nil
		}
		w = u.Unwrap()
	}
}

// writeDeadlinerOf returns what sets w's write deadline, looking through
// wrappers as flusherOf does, or nil if nothing does.
func writeDeadlinerOf(w http.ResponseWriter) writeDeadliner {
	for {
		if d, ok := w.(writeDeadliner); ok {
			return d
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return nil
		}
		w = u.Unwrap()
	}
}

// noCloseBody hides Close from the Transport; see forward. It also records
// the first error reading the client's body other than io.EOF, which the
// fast path needs to tell a failing client from a failing upstream.
type noCloseBody struct {
	r   io.Reader
	err error
}

func (b *noCloseBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

func (*noCloseBody) Close() error { return nil }

// switchProtocols completes a 101 Switching Protocols answer (WebSocket and
// the like): it hijacks the client connection and copies bytes both ways
// until either side closes.
func (p *Proxy) switchProtocols(w http.ResponseWriter, r *http.Request, u *Upstream, reqType string, res *http.Response) {
	resType, _ := upgradeType(res.Header)
	backend, ok := res.Body.(io.ReadWriteCloser)
	if !ok || !strings.EqualFold(reqType, resType) {
		res.Body.Close()
		p.upstreamError(w, r, u, errors.New("upstream switched to protocol "+resType+" when "+reqType+" was requested"))
		return
	}
	defer backend.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.upstreamError(w, r, u, err)
		return
	}
	defer conn.Close()

	dst := w.Header()
	resConn := res.Header["Connection"]
	for k, vv := range res.Header {
		if !isHopHeader(k) && !connectionListed(resConn, k) {
			dst[k] = vv
		}
	}
	dst["Connection"] = []string{"Upgrade"}
	dst["Upgrade"] = []string{resType}
	res.Header = dst
	res.Body = nil // res.Write must write only the status line and headers
	// The connection is ours now: every write to the client, the head's
	// included, gets the write deadline (see Options.WriteTimeout).
	client := &deadlineWriter{w: conn, set: conn.SetWriteDeadline, d: writeDeadline{timeout: p.writeTimeout}}
	if err := client.d.refresh(client.set); err != nil {
		return
	}
	if err := res.Write(brw); err != nil {
		return
	}
	if err := brw.Flush(); err != nil {
		return
	}

	// Either copy ending (or the request context ending) tears down both
	// connections, which in turn ends the other copy.
	errc := make(chan error, 2)
	go func() {
		_, err := io.Copy(backend, brw.Reader)
		errc <- err
	}()
	go func() {
		_, err := io.Copy(client, backend)
		errc <- err
	}()
	select {
	case <-errc:
	case <-r.Context().Done():
	}
}
