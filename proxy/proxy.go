// Package proxy is Berth's built-in reverse proxy for
// ANY /agents/{agent_name}/{path...}. Each agent has one active upstream (the
// base URL of its active version's deployment); Set switches it atomically
// while requests already in flight finish on the upstream they started on, and
// Upstream.Drain lets the caller stop an old version once its traffic is gone.
//
// The request path is lock-free: routes live in an immutable map snapshot
// behind an atomic pointer, replaced copy-on-write by Set and Remove.
package proxy

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth"
)

// Defaults for the zero values of Options.
const (
	DefaultMaxIdleConnsPerHost   = 512
	DefaultMaxIdleConns          = 4096
	DefaultDialTimeout           = 5 * time.Second
	DefaultIdleConnTimeout       = 90 * time.Second
	DefaultResponseHeaderTimeout = 5 * time.Minute
	DefaultWriteTimeout          = time.Minute
)

// Options tunes a Proxy. The zero value is ready to use.
type Options struct {
	// Logger receives upstream errors; nil means slog.Default(). Nothing is
	// logged for requests that succeed.
	Logger *slog.Logger
	// Transport, when set, is used for every upstream request instead of the
	// tuned *http.Transport the Proxy builds and its in-handler fast path for
	// ordinary requests; the tuning fields below are then ignored.
	Transport http.RoundTripper
	// MaxIdleConnsPerHost is how many keep-alive connections are kept to one
	// upstream (by the fast path and, for unusual requests, the Transport
	// each). Zero means DefaultMaxIdleConnsPerHost.
	MaxIdleConnsPerHost int
	// MaxIdleConns caps keep-alive connections across all upstreams. Zero
	// means DefaultMaxIdleConns.
	MaxIdleConns int
	// DialTimeout bounds connecting to an upstream. Zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// IdleConnTimeout is how long an idle upstream connection is kept. Zero
	// means DefaultIdleConnTimeout.
	IdleConnTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for an upstream's response
	// headers once the request is written; exceeding it answers 504. Zero
	// means DefaultResponseHeaderTimeout, negative means no limit. It does
	// not limit how long a streamed body (such as SSE) may run.
	ResponseHeaderTimeout time.Duration
	// WriteTimeout bounds how long one write of a response to the client
	// may block (as nginx's send_timeout does: between two successive
	// writes, not for the whole response, so long streams are fine). A
	// client that stops reading for this long is disconnected and the
	// upstream request ended, so it cannot hold an agent's connection
	// forever. Zero means DefaultWriteTimeout, negative means no limit.
	WriteTimeout time.Duration
}

// Proxy forwards /agents/{name}/... to each agent's active upstream. It is an
// http.Handler; use Mount to register it on a ServeMux. A Proxy is safe for
// concurrent use.
type Proxy struct {
	log       *slog.Logger
	transport http.RoundTripper
	// writeTimeout is Options.WriteTimeout with its default applied; 0
	// means no limit.
	writeTimeout time.Duration
	bufs         bufPool
	// fast configures in-handler forwarding over each Upstream's own
	// connection pool (see direct.go); nil when the caller supplied a
	// Transport, which then carries every request.
	fast *fastConfig

	// routes is the current immutable agent→upstream snapshot; readers only
	// Load it, writers (holding mu) Store a modified copy.
	routes atomic.Pointer[map[string]*Upstream]
	mu     sync.Mutex // serialises Set and Remove
}

// New returns a Proxy with no agents configured.
func New(opts Options) *Proxy {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Proxy{log: log, transport: opts.Transport, writeTimeout: opts.WriteTimeout}
	switch {
	case p.writeTimeout == 0:
		p.writeTimeout = DefaultWriteTimeout
	case p.writeTimeout < 0:
		p.writeTimeout = 0
	}
	if p.transport == nil {
		p.transport = newTransport(opts)
		p.fast = newFastConfig(opts)
	}
	empty := map[string]*Upstream{}
	p.routes.Store(&empty)
	return p
}

// newTransport builds the one Transport shared by every upstream: keep-alive
// HTTP/1.1 to loopback agents, with a large idle pool so a busy agent never
// pays for a new connection per request.
func newTransport(opts Options) *http.Transport {
	orDefault := func(v, d time.Duration) time.Duration {
		if v == 0 {
			return d
		}
		return v
	}
	perHost := opts.MaxIdleConnsPerHost
	if perHost <= 0 {
		perHost = DefaultMaxIdleConnsPerHost
	}
	total := opts.MaxIdleConns
	if total <= 0 {
		total = DefaultMaxIdleConns
	}
	headerTimeout := orDefault(opts.ResponseHeaderTimeout, DefaultResponseHeaderTimeout)
	if headerTimeout < 0 {
		headerTimeout = 0
	}
	dialer := &net.Dialer{
		Timeout:   orDefault(opts.DialTimeout, DefaultDialTimeout),
		KeepAlive: 30 * time.Second,
	}
	return &http.Transport{
		// Upstreams are Berth's own deployments: an HTTP_PROXY in the
		// environment must never reroute them.
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		MaxIdleConns:          total,
		MaxIdleConnsPerHost:   perHost,
		IdleConnTimeout:       orDefault(opts.IdleConnTimeout, DefaultIdleConnTimeout),
		ResponseHeaderTimeout: headerTimeout,
		ExpectContinueTimeout: time.Second,
		// Pass the agent's encoding through untouched instead of having the
		// Transport ask for gzip and decompress it again.
		DisableCompression: true,
		ForceAttemptHTTP2:  false,
		WriteBufferSize:    32 << 10,
		ReadBufferSize:     32 << 10,
	}
}

// newFastConfig applies Options' defaults for the fast path the way
// newTransport does for the Transport.
func newFastConfig(opts Options) *fastConfig {
	cfg := &fastConfig{
		dialer:        &net.Dialer{Timeout: opts.DialTimeout, KeepAlive: 30 * time.Second},
		maxIdle:       opts.MaxIdleConnsPerHost,
		maxIdleTotal:  int64(opts.MaxIdleConns),
		idleTimeout:   opts.IdleConnTimeout,
		headerTimeout: opts.ResponseHeaderTimeout,
	}
	if cfg.dialer.Timeout == 0 {
		cfg.dialer.Timeout = DefaultDialTimeout
	}
	if cfg.maxIdle <= 0 {
		cfg.maxIdle = DefaultMaxIdleConnsPerHost
	}
	if cfg.maxIdleTotal <= 0 {
		cfg.maxIdleTotal = DefaultMaxIdleConns
	}
	if cfg.idleTimeout <= 0 {
		cfg.idleTimeout = DefaultIdleConnTimeout
	}
	if cfg.headerTimeout == 0 {
		cfg.headerTimeout = DefaultResponseHeaderTimeout
	}
	return cfg
}

// Mount registers p on mux for /agents/{name} and /agents/{name}/{path...}.
func (p *Proxy) Mount(mux *http.ServeMux) {
	mux.Handle("/agents/{name}", p)
	mux.Handle("/agents/{name}/{path...}", p)
}

// CloseIdleConnections closes idle keep-alive connections to upstreams, for
// example on shutdown.
func (p *Proxy) CloseIdleConnections() {
	type idleCloser interface{ CloseIdleConnections() }
	if c, ok := p.transport.(idleCloser); ok {
		c.CloseIdleConnections()
	}
	if p.fast != nil {
		for _, u := range *p.routes.Load() {
			u.pool.closeIdle(p.fast, false)
		}
	}
}

// retire marks u replaced: requests that looked it up move to its
// successor, and its pooled connections are closed, now and as in-flight
// requests hand theirs back.
func (p *Proxy) retire(u *Upstream) {
	u.retired.Store(true)
	if p.fast != nil {
		u.pool.closeIdle(p.fast, true)
	}
}

// Set makes upstreamURL (for example "http://127.0.0.1:41234") the active
// upstream of agentName and returns the upstream it replaced, or nil if the
// agent had none or already had exactly this URL (Set is then a no-op, so a
// caller never drains and stops the upstream it just installed).
//
// Requests that started on the previous upstream finish there; once Set has
// returned, no new request starts on it, so previous.Drain followed by
// stopping its deployment drops no traffic. An upstreamURL that is not an
// absolute http or https URL is still installed, so the agent stops being
// served by the old one, but every request to it answers 502 and the problem
// is logged.
func (p *Proxy) Set(agentName, upstreamURL string) (previous *Upstream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur := *p.routes.Load()
	old := cur[agentName]
	if old != nil && old.raw == upstreamURL {
		return nil
	}
	u := p.newUpstream(agentName, upstreamURL)
	if u.err != nil {
		p.log.Error("proxy: invalid upstream URL; requests to the agent will fail with 502",
			"agent", agentName, "upstream", upstreamURL, "err", u.err)
	}
	next := maps.Clone(cur)
	next[agentName] = u
	p.routes.Store(&next)
	if old != nil {
		// Retire only after the new snapshot is visible: a request that
		// read the old snapshot sees retired, backs out and retries on u.
		p.retire(old)
	}
	return old
}

// Remove stops routing agentName (requests then answer 404) and returns the
// upstream it had, or nil. Requests already in flight on it finish there.
func (p *Proxy) Remove(agentName string) (previous *Upstream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur := *p.routes.Load()
	old := cur[agentName]
	if old == nil {
		return nil
	}
	next := maps.Clone(cur)
	delete(next, agentName)
	p.routes.Store(&next)
	p.retire(old)
	return old
}

// Lookup returns agentName's active upstream, or nil if it has none.
func (p *Proxy) Lookup(agentName string) *Upstream {
	return (*p.routes.Load())[agentName]
}

// testHookAfterLookup, when set by a test, runs between reading the route
// snapshot and counting the request in flight: the window acquire's retired
// check exists for.
var testHookAfterLookup func()

// acquire returns agentName's active upstream with one request counted in
// flight on it, or nil if the agent has none. The caller must call release.
// It takes the name as a string (the handler) or as bytes (the Frontend,
// whose lookup then allocates nothing).
func acquire[S string | []byte](p *Proxy, agentName S) *Upstream {
	for {
		u := (*p.routes.Load())[string(agentName)]
		if u == nil {
			return nil
		}
		if testHookAfterLookup != nil {
			testHookAfterLookup()
		}
		u.inFlight.Add(1)
		// Set stores the new snapshot before marking the old upstream
		// retired, and a drainer reads inFlight only after Set returns. So
		// if retired is still false here, our increment is visible to any
		// Drain of u; if it is true, u may already be drained and stopped,
		// and the request must go to whatever replaced it.
		if !u.retired.Load() {
			return u
		}
		u.release()
	}
}

// Upstream is one agent's upstream as installed by one Set call. It is
// immutable apart from its in-flight count and whether it has been replaced;
// a later Set with a different URL creates a new Upstream, even for a URL
// used before.
type Upstream struct {
	agent  string
	raw    string
	target *url.URL // nil when err is set
	err    error
	// basePath and baseRawPath are target's path without a trailing slash,
	// prepended to the forwarded path; both are empty for the usual
	// "http://host:port" upstream.
	basePath, baseRawPath string
	// prefix is "/agents/{agent}", stripped from request paths and sent
	// as X-Forwarded-Prefix.
	prefix string
	// dialAddr is target's host:port for the fast path; empty for https
	// upstreams, which always go through the Transport.
	dialAddr string
	// plainHost reports that target.Host needs no cleaning to be sent as
	// the Host header, so bodyless requests can skip Request.Write.
	plainHost bool
	// pool holds the fast path's idle keep-alive connections to target.
	pool connPool

	inFlight atomic.Int64
	retired  atomic.Bool
	// drainers counts Drain calls waiting; release only takes mu to wake
	// them when there are any, so the request path stays lock-free.
	drainers atomic.Int32
	mu       sync.Mutex
	idle     chan struct{} // closed and replaced when inFlight drops to 0
}

func (p *Proxy) newUpstream(agent, raw string) *Upstream {
	u := &Upstream{agent: agent, raw: raw, idle: make(chan struct{})}
	u.prefix = "/agents/" + agent
	t, err := url.Parse(raw)
	switch {
	case err != nil:
		u.err = err
	case t.Scheme != "http" && t.Scheme != "https":
		u.err = berth.Errorf(berth.CodeInvalid, "upstream URL %q must use http or https", raw)
	case t.Host == "":
		u.err = berth.Errorf(berth.CodeInvalid, "upstream URL %q has no host", raw)
	default:
		u.target = t
		if t.Scheme == "http" {
			port := t.Port()
			if port == "" {
				port = "80"
			}
			u.dialAddr = net.JoinHostPort(t.Hostname(), port)
			u.plainHost = plainHost(t.Host)
		}
		if t.Path != "" && t.Path != "/" {
			u.basePath = strings.TrimSuffix(t.Path, "/")
			u.baseRawPath = strings.TrimSuffix(t.EscapedPath(), "/")
		}
	}
	return u
}

// URL returns the upstream's base URL as given to Set.
func (u *Upstream) URL() string { return u.raw }

// Agent returns the name of the agent the upstream serves.
func (u *Upstream) Agent() string { return u.agent }

// InFlight returns how many requests are being served by this upstream.
func (u *Upstream) InFlight() int64 { return u.inFlight.Load() }

// release ends one request on u and wakes any Drain when it was the last.
func (u *Upstream) release() {
	// The decrement comes before the drainers check, and Drain registers
	// before reading inFlight, so at least one side sees the other.
	if u.inFlight.Add(-1) == 0 && u.drainers.Load() > 0 {
		u.mu.Lock()
		close(u.idle)
		u.idle = make(chan struct{})
		u.mu.Unlock()
	}
}

// Drain waits until no request is in flight on u and returns nil, or returns
// an error wrapping ctx's error if ctx ends first. It is meant for an upstream
// that Set or Remove replaced: no new request starts on it then, so once
// Drain returns its deployment can be stopped without dropping traffic. On an
// upstream that is still active it returns at the first moment nothing is in
// flight.
func (u *Upstream) Drain(ctx context.Context) error {
	u.drainers.Add(1)
	defer u.drainers.Add(-1)
	for {
		// Take the channel before checking the count so a release between
		// the two closes the very channel we wait on.
		u.mu.Lock()
		idle := u.idle
		u.mu.Unlock()
		if u.inFlight.Load() == 0 {
			return nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			return &berth.Error{
				Code: berth.CodeUnavailable,
				Message: "draining agent " + strconv.Quote(u.agent) + " upstream " + u.raw +
					" stopped with requests still in flight",
				Err: ctx.Err(),
			}
		}
	}
}

// ServeHTTP forwards r to the active upstream of the agent named by the
// {name} path wildcard (or, without one, by the segment after /agents/),
// stripping the /agents/{name} prefix.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if name == "" {
		name = nameFromPath(r.URL)
	}
	u := acquire(p, name)
	if u == nil {
		p.writeError(w, http.StatusNotFound, string(berth.CodeNotFound), "agent "+strconv.Quote(name)+" not found")
		return
	}
	// Deferred so the count drops even when the forwarder aborts the
	// response with http.ErrAbortHandler after an upstream dies mid-body.
	defer u.release()
	if u.err != nil {
		p.writeError(w, http.StatusBadGateway, codeBadGateway,
			"agent "+strconv.Quote(u.agent)+" has an invalid upstream")
		return
	}
	p.forward(w, r, u)
}

// nameFromPath returns the agent name in a /agents/{name}[/...] path, or ""
// when the path has no such prefix. It reads the escaped path so an encoded
// slash inside the name segment is not taken for a separator, matching how
// ServeMux splits wildcards.
func nameFromPath(u *url.URL) string {
	esc := u.RawPath
	if esc == "" {
		esc = u.Path
	}
	rest, ok := strings.CutPrefix(esc, "/agents/")
	if !ok {
		return ""
	}
	seg, _, _ := strings.Cut(rest, "/")
	if u.RawPath == "" {
		return seg
	}
	name, err := url.PathUnescape(seg)
	if err != nil {
		return ""
	}
	return name
}

// forwardPath returns the path (and, when the request carried a non-default
// escaping, the raw path) to send upstream: r's path without the
// /agents/{name} prefix, "/" when nothing is left, joined to u's base path.
func forwardPath(r *http.Request, u *Upstream) (path, rawPath string) {
	// Path is the full unescape of the escaped path, and the name is the
	// unescaped name segment, so the unescaped path always starts with
	// prefix when the request was routed by name.
	path, ok := strings.CutPrefix(r.URL.Path, u.prefix)
	if !ok || (path != "" && path[0] != '/') {
		// Mounted under another pattern that still names {path}.
		path = "/" + r.PathValue("path")
	} else if path == "" {
		path = "/"
	}
	if r.URL.RawPath != "" && ok {
		// Drop the first two segments of the escaped path; the name
		// segment may be escaped differently from u.agent.
		raw := strings.TrimPrefix(r.URL.RawPath, "/agents/")
		if i := strings.IndexByte(raw, '/'); i >= 0 {
			rawPath = raw[i:]
		} else {
			rawPath = "/"
		}
	}
	if u.basePath != "" {
		if rawPath != "" {
			rawPath = u.baseRawPath + rawPath
		}
		path = u.basePath + path
	}
	return path, rawPath
}
