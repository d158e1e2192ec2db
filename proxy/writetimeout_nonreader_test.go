//go:build unix

package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cutGuard bounds the wait for the proxy to cut off a client that stopped
// reading. The write timeout in these tests is 100ms: the guard is fifty
// times that, a hang guard rather than a timing assertion.
const cutGuard = 5 * time.Second

// watchedConn is a server-side connection that reports its Close, so a
// test can see the proxy end a connection without reading from it (which
// would let the blocked write proceed).
type watchedConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *watchedConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// CloseWrite keeps the half-close net/http (and replayConn) look for.
func (c *watchedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// watchListener hands out watchedConns with small send buffers (so that a
// few KiB fill the connection once its client stops reading) and reports
// each on conns.
type watchListener struct {
	net.Listener
	conns chan *watchedConn
}

func (l *watchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4 << 10)
	}
	wc := &watchedConn{Conn: c, closed: make(chan struct{})}
	l.conns <- wc
	return wc, nil
}

// serveWatched serves p as serveMux does (through the Frontend when
// viaFrontend), on a watchListener.
func serveWatched(t *testing.T, p *Proxy) (addr string, conns <-chan *watchedConn) {
	t.Helper()
	mux := http.NewServeMux()
	p.Mount(mux)
	mux.HandleFunc("GET /api", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "api") })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wl := &watchListener{Listener: ln, conns: make(chan *watchedConn, 16)}
	if !viaFrontend {
		srv := httptest.NewUnstartedServer(mux)
		srv.Listener.Close()
		srv.Listener = wl
		srv.Start()
		t.Cleanup(srv.Close)
		return ln.Addr().String(), wl.conns
	}
	f := NewFrontend(p, wl, FrontendOptions{})
	hs := &http.Server{Handler: mux}
	go func() { _ = hs.Serve(f.Fallback()) }()
	go func() { _ = f.Serve() }()
	t.Cleanup(func() {
		f.Close()
		hs.Close()
	})
	return ln.Addr().String(), wl.conns
}

// dialNonReader connects to addr with a small receive buffer (set before
// the handshake, so the window stays small) and returns the client end and
// the proxy's end of the connection.
func dialNonReader(t *testing.T, addr string, conns <-chan *watchedConn) (net.Conn, *watchedConn) {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
		}); err != nil {
			return err
		}
		return serr
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(hangGuard))
	select {
	case sc := <-conns:
		return conn, sc
	case <-time.After(hangGuard):
		t.Fatal("the proxy did not accept the connection")
		return nil, nil
	}
}

// waitCut fails t unless the proxy closes sc (its end of a connection
// whose client stopped reading) within cutGuard.
func waitCut(t *testing.T, sc *watchedConn, what string) {
	t.Helper()
	select {
	case <-sc.closed:
	case <-time.After(cutGuard):
		t.Errorf("%s: the proxy still held the connection of a client that stopped reading, %v after its write timeout", what, cutGuard)
	}
}

// bigValue is a header or trailer value larger than what the kernel
// buffers between the proxy and a client that stopped reading hold (~10
// KiB here), yet below the Frontend's 32 KiB response head limit.
var bigValue = strings.Repeat("v", 24<<10)

// Every write of a response must be bounded by the write timeout, not only
// the body writes: a response head flushed before the body (an event
// stream), a head with no body after it (204, HEAD), and what net/http
// writes after the handler (the last chunk and the trailers) are writes to
// the client too.
func TestHeadAndTailToNonReaderAreCutOff(t *testing.T) {
	for _, tc := range []struct {
		name, method string
		upstream     http.HandlerFunc
	}{
		{"event stream head", "GET", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("X-Big", bigValue)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}},
		{"204 head", "GET", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Big", bigValue)
			w.WriteHeader(http.StatusNoContent)
		}},
		{"HEAD answer", "HEAD", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Big", bigValue)
			w.Header().Set("Content-Length", "5")
		}},
		{"chunked body's trailer", "GET", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", "X-Tail")
			_, _ = io.WriteString(w, "x")
			w.(http.Flusher).Flush()
			w.Header().Set("X-Tail", bigValue)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := httptest.NewServer(tc.upstream)
			t.Cleanup(up.Close)
			p := newProxy(t, Options{WriteTimeout: 100 * time.Millisecond})
			p.Set("a", up.URL)
			addr, conns := serveWatched(t, p)
			conn, sc := dialNonReader(t, addr, conns)
			if _, err := io.WriteString(conn, tc.method+" /agents/a/x HTTP/1.1\r\nHost: h\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			waitCut(t, sc, tc.name)
			if !t.Failed() {
				waitDrained(t, p, "a")
			}
		})
	}
}

// The proxy's own error answers (here 404 for an unknown agent) are writes
// to the client as well: a client that pipelines requests and reads none
// of the answers must be cut off, not hold a goroutine and a connection
// forever.
func TestErrorAnswersToNonReaderAreCutOff(t *testing.T) {
	p := newProxy(t, Options{WriteTimeout: 100 * time.Millisecond})
	addr, conns := serveWatched(t, p)
	conn, sc := dialNonReader(t, addr, conns)
	reqs := strings.Repeat("GET /agents/nope/x HTTP/1.1\r\nHost: h\r\n\r\n", 64)
	go func() {
		for {
			if _, err := io.WriteString(conn, reqs); err != nil {
				return
			}
		}
	}()
	waitCut(t, sc, "pipelined 404s")
}

// An upgraded connection's client that stops reading what the agent sends
// is cut off (the backend-to-client copy writes under the deadline), and
// one that merely stays quiet for longer than the write timeout is not.
func TestUpgradeWriteTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		_ = brw.Flush()
		if r.URL.Path == "/flood" {
			chunk := make([]byte, 32<<10)
			for {
				if _, err := conn.Write(chunk); err != nil {
					return
				}
			}
		}
		_, _ = io.Copy(conn, brw)
	}))
	t.Cleanup(up.Close)
	p := newProxy(t, Options{WriteTimeout: timeout})
	p.Set("a", up.URL)
	addr, conns := serveWatched(t, p)
	const upgrade = " HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"

	t.Run("agent floods a non-reader", func(t *testing.T) {
		conn, sc := dialNonReader(t, addr, conns)
		_, _ = io.WriteString(conn, "GET /agents/a/flood"+upgrade)
		waitCut(t, sc, "upgraded flood")
		if !t.Failed() {
			waitDrained(t, p, "a")
		}
	})
	t.Run("quiet, then echo", func(t *testing.T) {
		conn, _ := dialNonReader(t, addr, conns)
		br := bufio.NewReader(conn)
		_, _ = io.WriteString(conn, "GET /agents/a/echo"+upgrade)
		if res, err := http.ReadResponse(br, nil); err != nil || res.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade answer: %v, %v; want 101", res, err)
		}
		time.Sleep(3 * timeout) // past the deadline the 101 was written under
		_, _ = io.WriteString(conn, "ping\n")
		if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
			t.Errorf("echo after a quiet spell = %q, %v; want %q", line, err, "ping\n")
		}
	})
}

// deadlineDiscardWriter is a discardWriter that takes write deadlines, as
// net/http's ResponseWriter does.
type deadlineDiscardWriter struct{ discardWriter }

func (*deadlineDiscardWriter) SetWriteDeadline(time.Time) error { return nil }

// The write timeout is on by default, so it must not cost the hot path an
// allocation per request, whether or not the ResponseWriter takes
// deadlines.
func TestWriteTimeoutAddsNoAllocations(t *testing.T) {
	if viaFrontend {
		t.Skip("measures the handler alone")
	}
	req := httptest.NewRequest("GET", "/agents/bench/a2a/message?x=1", nil)
	req.SetPathValue("name", "bench")
	req.SetPathValue("path", "a2a/message")
	allocs := func(timeout time.Duration, w http.ResponseWriter) float64 {
		p := New(Options{Transport: stubTransport{}, WriteTimeout: timeout})
		p.Set("bench", "http://127.0.0.1:1")
		return testing.AllocsPerRun(200, func() {
			clear(w.Header())
			p.ServeHTTP(w, req)
		})
	}
	for _, tc := range []struct {
		name string
		w    http.ResponseWriter
	}{
		{"writer without deadlines", &discardWriter{h: http.Header{}}},
		{"writer with deadlines", &deadlineDiscardWriter{discardWriter{h: http.Header{}}}},
	} {
		without, with := allocs(-1, tc.w), allocs(time.Minute, tc.w)
		if with > without {
			t.Errorf("%s: ServeHTTP allocates %v times per request with a write timeout, %v without", tc.name, with, without)
		}
	}
}
