package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// frontendUnderTest is a Frontend serving on a loopback listener, with an
// http.Server on its Fallback, counting hand-overs.
type frontendUnderTest struct {
	f        *Frontend
	hs       *http.Server
	addr     string
	handoffs atomic.Int64
	served   chan error // Frontend.Serve's result
}

// startFrontend serves p's Frontend with handler behind it. A nil handler
// means p mounted on a ServeMux next to GET /api, answering "api".
func startFrontend(t *testing.T, p *Proxy, handler http.Handler, opts FrontendOptions) *frontendUnderTest {
	t.Helper()
	if handler == nil {
		mux := http.NewServeMux()
		p.Mount(mux)
		mux.HandleFunc("GET /api", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "api") })
		handler = mux
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ft := &frontendUnderTest{f: NewFrontend(p, ln, opts), addr: ln.Addr().String(), served: make(chan error, 1)}
	ft.f.testHookHandoff = func() { ft.handoffs.Add(1) }
	ft.hs = &http.Server{Handler: handler, ReadHeaderTimeout: opts.ReadHeaderTimeout}
	go func() { _ = ft.hs.Serve(ft.f.Fallback()) }()
	go func() { ft.served <- ft.f.Serve() }()
	t.Cleanup(func() {
		ft.f.Close()
		ft.hs.Close()
	})
	return ft
}

// dial opens a raw client connection to the Frontend.
func (ft *frontendUnderTest) dial(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", ft.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(hangGuard))
	return conn, bufio.NewReader(conn)
}

// readResponse reads one response (for method) and its whole body.
func readResponse(t *testing.T, br *bufio.Reader, method string) (*http.Response, []byte) {
	t.Helper()
	res, err := http.ReadResponse(br, &http.Request{Method: method})
	for err == nil && res.StatusCode < 200 {
		// An interim answer (100 Continue); the final one follows.
		res, err = http.ReadResponse(br, &http.Request{Method: method})
	}
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatalf("reading response body: %v", err)
	}
	return res, body
}

// rawExchange sends raw on a new connection and reads one response.
func (ft *frontendUnderTest) rawExchange(t *testing.T, raw string) (*http.Response, []byte) {
	t.Helper()
	conn, br := ft.dial(t)
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(raw, " ")
	return readResponse(t, br, method)
}

func TestFrontendHandsOverWhatItDoesNotServe(t *testing.T) {
	up := echoUpstream(t, "a")
	p := newProxy(t, Options{})
	p.Set("a", up.URL)
	ft := startFrontend(t, p, nil, FrontendOptions{})

	big := strings.Repeat("x", maxFrontendBody+1)
	tests := []struct {
		name    string
		raw     string
		handoff bool
		status  int
	}{
		{"plain GET", "GET /agents/a/x?q=1 HTTP/1.1\r\nHost: h\r\n\r\n", false, 200},
		{"agent root", "GET /agents/a HTTP/1.1\r\nHost: h\r\n\r\n", false, 200},
		{"POST with body", "POST /agents/a/m HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello", false, 200},
		{"Connection: close", "GET /agents/a/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false, 200},
		{"the API", "GET /api HTTP/1.1\r\nHost: h\r\n\r\n", true, 200},
		{"unknown agent", "GET /agents/nope/ HTTP/1.1\r\nHost: h\r\n\r\n", true, 404},
		{"HTTP/1.0", "GET /agents/a/ HTTP/1.0\r\nHost: h\r\n\r\n", true, 200},
		{"escaped path", "GET /agents/a/x%2Fy HTTP/1.1\r\nHost: h\r\n\r\n", true, 200},
		{"unclean path", "GET /agents/a/x/../y HTTP/1.1\r\nHost: h\r\n\r\n", true, 307},
		{"double slash", "GET /agents/a//y HTTP/1.1\r\nHost: h\r\n\r\n", true, 307},
		{"chunked request body", "POST /agents/a/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", true, 200},
		{"large body", "POST /agents/a/ HTTP/1.1\r\nHost: h\r\nContent-Length: " + strconv.Itoa(len(big)) + "\r\n\r\n" + big, true, 200},
		{"Expect", "POST /agents/a/ HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", true, 200},
		{"TE trailers", "GET /agents/a/ HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n", true, 200},
		{"Connection lists a header", "GET /agents/a/ HTTP/1.1\r\nHost: h\r\nConnection: X-Secret\r\nX-Secret: 1\r\n\r\n", true, 200},
		{"no Host", "GET /agents/a/ HTTP/1.1\r\n\r\n", true, 400},
		{"two Hosts", "GET /agents/a/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", true, 400},
		{"two Content-Lengths", "POST /agents/a/ HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", true, 400},
		{"Content-Length and Transfer-Encoding", "POST /agents/a/ HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", true, 200},
		{"bare LF", "GET /agents/a/ HTTP/1.1\nHost: h\n\n", true, 200},
		{"obs-fold", "GET /agents/a/ HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n 2\r\n\r\n", true, 200},
		{"space before colon", "GET /agents/a/ HTTP/1.1\r\nHost : h\r\n\r\n", true, 400},
		{"absolute form", "GET http://h/agents/a/ HTTP/1.1\r\nHost: h\r\n\r\n", true, 200},
		{"head larger than the buffer", "GET /agents/a/ HTTP/1.1\r\nHost: h\r\nCookie: " + strings.Repeat("c", frontBufSize) + "\r\n\r\n", true, 200},
		{"garbage", "HELLO\r\n\r\n", true, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := ft.handoffs.Load()
			res, body := ft.rawExchange(t, tt.raw)
			if res.StatusCode != tt.status {
				t.Errorf("status = %d, want %d (body %q)", res.StatusCode, tt.status, body)
			}
			if got := ft.handoffs.Load() > before; got != tt.handoff {
				t.Errorf("handed to net/http = %v, want %v", got, tt.handoff)
			}
		})
	}
}

// TestFrontendForwardsLikeTheHandler sends the same requests through the
// Frontend's fast path and through the handler behind a plain http.Server
// and compares what the upstream received and what the client got back.
func TestFrontendForwardsLikeTheHandler(t *testing.T) {
	up := echoUpstream(t, "a")
	p := newProxy(t, Options{})
	p.Set("a", up.URL)
	ft := startFrontend(t, p, nil, FrontendOptions{})
	mux := http.NewServeMux()
	p.Mount(mux)
	plain := httptest.NewServer(mux)
	t.Cleanup(plain.Close)

	requests := []string{
		"GET /agents/a/x/y?b=2&a=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
		"GET /agents/a HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
		"GET /agents/a/?x HTTP/1.1\r\nHost: h\r\n\r\n",
		"HEAD /agents/a/h HTTP/1.1\r\nHost: h\r\n\r\n",
		"DELETE /agents/a/d HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
		"POST /agents/a/message HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"a\":\"hello\"}",
		// Hop-by-hop and client-sent forwarding headers must not reach the agent.
		"GET /agents/a/ HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\n" +
			"Proxy-Authorization: Basic eA==\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\n" +
			"X-Forwarded-Prefix: /evil\r\nForwarded: for=6.6.6.6\r\nX-Keep: kept\r\nx-lower-case: v\r\n\r\n",
		"GET /agents/a/dup HTTP/1.1\r\nHost: h\r\nX-Multi: 1\r\nX-Multi: 2\r\nX-Spaces:   padded value  \r\n\r\n",
		"OPTIONS /agents/a/opt HTTP/1.1\r\nHost: h\r\nOrigin: https://o\r\n\r\n",
	}
	for _, raw := range requests {
		line, _, _ := strings.Cut(raw, "\r\n")
		t.Run(line, func(t *testing.T) {
			before := ft.handoffs.Load()
			fres, fbody := ft.rawExchange(t, raw)
			if ft.handoffs.Load() != before {
				t.Fatalf("request was handed to net/http; this test is about the fast path")
			}
			conn, err := net.Dial("tcp", strings.TrimPrefix(plain.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_, _ = io.WriteString(conn, raw)
			method, _, _ := strings.Cut(raw, " ")
			hres, hbody := readResponse(t, bufio.NewReader(conn), method)

			if fres.StatusCode != hres.StatusCode {
				t.Errorf("status: frontend %d, handler %d", fres.StatusCode, hres.StatusCode)
			}
			for _, h := range []http.Header{fres.Header, hres.Header} {
				h.Del("Date")
			}
			if !reflect.DeepEqual(fres.Header, hres.Header) {
				t.Errorf("response header:\nfrontend %v\nhandler  %v", fres.Header, hres.Header)
			}
			if method == http.MethodHead {
				if len(fbody) != 0 {
					t.Errorf("HEAD body = %q, want none", fbody)
				}
				return
			}
			var fe, he echoReply
			if err := json.Unmarshal(fbody, &fe); err != nil {
				t.Fatalf("frontend body %q: %v", fbody, err)
			}
			if err := json.Unmarshal(hbody, &he); err != nil {
				t.Fatalf("handler body %q: %v", hbody, err)
			}
			if !reflect.DeepEqual(fe, he) {
				t.Errorf("upstream saw:\nfrontend %+v\nhandler  %+v", fe, he)
			}
			for _, k := range []string{"Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Forwarded"} {
				if v, ok := fe.Header[k]; ok {
					t.Errorf("upstream got %s: %q, want it dropped", k, v)
				}
			}
			if got := fe.Header.Get("X-Forwarded-For"); got != "127.0.0.1" {
				t.Errorf("X-Forwarded-For = %q, want 127.0.0.1", got)
			}
		})
	}
}

func TestFrontendPipelinedRequests(t *testing.T) {
	up := echoUpstream(t, "a")
	p := newProxy(t, Options{})
	p.Set("a", up.URL)
	ft := startFrontend(t, p, nil, FrontendOptions{})
	conn, br := ft.dial(t)
	// Three requests in one write, the second with a body, the last
	// closing the connection.
	raw := "GET /agents/a/1 HTTP/1.1\r\nHost: h\r\n\r\n" +
		"POST /agents/a/2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc" +
		"GET /agents/a/3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"/1", "/2", "/3"} {
		res, body := readResponse(t, br, "GET")
		var e echoReply
		if err := json.Unmarshal(body, &e); err != nil || e.Path != want {
			t.Fatalf("response %d: %d %q (%v), want path %s", i, res.StatusCode, body, err, want)
		}
		if i == 1 && e.BodyLen != 3 {
			t.Errorf("second request's body length = %d, want 3", e.BodyLen)
		}
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("after Connection: close, read %d, %v; want the connection closed", n, err)
	}
	if h := ft.handoffs.Load(); h != 0 {
		t.Errorf("handoffs = %d, want 0", h)
	}
}

func TestFrontendBodySentInPieces(t *testing.T) {
	up := echoUpstream(t, "a")
	p := newProxy(t, Options{})
	p.Set("a", up.URL)
	ft := startFrontend(t, p, nil, FrontendOptions{})
	conn, br := ft.dial(t)
	body := strings.Repeat("0123456789", 5000) // 50,000 bytes: several reads
	if _, err := io.WriteString(conn, "PUT /agents/a/up HTTP/1.1\r\nHost: h\r\nContent-Length: 50000\r\n\r\n"+body[:10]); err != nil {
		t.Fatal(err)
	}
	for rest := body[10:]; len(rest) > 0; {
		n := min(len(rest), 7000)
		if _, err := io.WriteString(conn, rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	_, got := readResponse(t, br, "PUT")
	var e echoReply
	if err := json.Unmarshal(got, &e); err != nil {
		t.Fatal(err)
	}
	if e.BodyLen != len(body) || e.CL != int64(len(body)) {
		t.Errorf("upstream body = %d bytes (Content-Length %d), want %d", e.BodyLen, e.CL, len(body))
	}
	if h := ft.handoffs.Load(); h != 0 {
		t.Errorf("handoffs = %d, want 0", h)
	}
}

func TestFrontendChunkedResponseWithTrailers(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		for i := range 3 {
			_, _ = io.WriteString(w, strings.Repeat(string(rune('a'+i)), 1000))
			w.(http.Flusher).Flush()
		}
		w.Header().Set("X-Sum", "ok")
	}))
	t.Cleanup(up.Close)
	p := newProxy(t, Options{})
	p.Set("a", up.URL)
	ft := startFrontend(t, p, nil, FrontendOptions{})
	conn, br := ft.dial(t)
	for range 2 { // the second exchange proves the framing was followed exactly
		_, _ = io.WriteString(conn, "GET /agents/a/ HTTP/1.1\r\nHost: h\r\n\r\n")
		res, body := readResponse(t, br, "GET")
		want := strings.Repeat("a", 1000) + strings.Repeat("b", 1000) + strings.Repeat("c", 1000)
		if string(body) != want {
			t.Errorf("body = %d bytes, want %d", len(body), len(want))
		}
		if got := res.Trailer.Get("X-Sum"); got != "ok" {
			t.Errorf("trailer X-Sum = %q, want ok", got)
		}
	}
}

func TestFrontendUpstreamRefusedKeepsClientConnection(t *testing.T) {
	dead := refusedURL(t)
	good := echoUpstream(t, "good")
	p := newProxy(t, Options{})
	p.Set("a", dead)
	ft := startFrontend(t, p, nil, FrontendOptions{})
	conn, br := ft.dial(t)
	_, _ = io.WriteString(conn, "GET /agents/a/ HTTP/1.1\r\nHost: h\r\n\r\n")
	res, body := readResponse(t, br, "GET")
	var eb errorBody
	if res.StatusCode != http.StatusBadGateway || json.Unmarshal(body, &eb) != nil || eb.Code != codeBadGateway {
		t.Fatalf("refused upstream: %d %q, want 502 with a bad_gateway JSON body", res.StatusCode, body)
	}
	p.Set("a", good.URL)
	_, _ = io.WriteString(conn, "GET /agents/a/ HTTP/1.1\r\nHost: h\r\n\r\n")
	res, body = readResponse(t, br, "GET")
	if res.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"id":"good"`)) {
		t.Errorf("next request on the same connection: %d %q, want 200 from good", res.StatusCode, body)
	}

	// A body still on its way when the upstream fails must not be read
	// as the next request: the connection closes after the 502.
	p.Set("a", dead)
	conn, br = ft.dial(t)
	_, _ = io.WriteString(conn, "POST /agents/a/ HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\n\r\n")
	res, _ = readResponse(t, br, "POST")
	if res.StatusCode != http.StatusBadGateway || !res.Close {
		t.Errorf("refused upstream with the body unsent: %d close=%v, want 502 and Connection: close", res.StatusCode, res.Close)
	}
	_, _ = io.WriteString(conn, "GET /agents/a/smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
	if n, err := br.Read(make([]byte, 1)); err == nil {
		t.Errorf("read %d bytes after the 502, want the connection closed", n)
	}
}

func TestFrontendClientGoneCancelsUpstream(t *testing.T) {
	cancelled := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// An agent thinking for a long time; it only learns the client
		// left when the proxy drops the upstream connection.
		select {
		case <-r.Context().Done():
			close(cancelled)
		case <-time.After(hangGuard):
		}
	}))
	t.Cleanup(up.Close)
	p := newProxy(t, Options{})
	p.Set("a", up.URL)
	ft := startFrontend(t, p, nil, FrontendOptions{})
	conn, _ := ft.dial(t)
	_, _ = io.WriteString(conn, "GET /agents/a/think HTTP/1.1\r\nHost: h\r\n\r\n")
	// Let the request reach the upstream before leaving.
	deadline := time.Now().Add(hangGuard)
	for p.Lookup("a").InFlight() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	conn.Close()
	select {
	case <-cancelled:
	case <-time.After(hangGuard):
		t.Fatal("the upstream request was not cancelled after the client disconnected")
	}
	waitDrained(t, p, "a")
}

func TestFrontendTimeouts(t *testing.T) {
	up := echoUpstream(t, "a")
	p := newProxy(t, Options{})
	p.Set("a", up.URL)
	ft := startFrontend(t, p, nil, FrontendOptions{ReadHeaderTimeout: 100 * time.Millisecond, IdleTimeout: 200 * time.Millisecond})

	t.Run("slow header", func(t *testing.T) {
		conn, br := ft.dial(t)
		_, _ = io.WriteString(conn, "GET /agents/a/ HTTP/1.1\r\nHo")
		// Never finishes the head: the connection must be closed.
		if n, err := br.Read(make([]byte, 1)); err == nil {
			t.Errorf("read %d bytes, want the connection closed", n)
		}
	})
	t.Run("slow header after a request", func(t *testing.T) {
		conn, br := ft.dial(t)
		_, _ = io.WriteString(conn, "GET /agents/a/ HTTP/1.1\r\nHost: h\r\n\r\n")
		readResponse(t, br, "GET")
		_, _ = io.WriteString(conn, "GET /agents/a/ HTTP/1.1\r\n")
		if n, err := br.Read(make([]byte, 1)); err == nil {
			t.Errorf("read %d bytes, want the connection closed", n)
		}
	})
	t.Run("idle", func(t *testing.T) {
		conn, br := ft.dial(t)
		_, _ = io.WriteString(conn, "GET /agents/a/ HTTP/1.1\r\nHost: h\r\n\r\n")
		readResponse(t, br, "GET")
		if n, err := br.Read(make([]byte, 1)); err == nil {
			t.Errorf("read %d bytes, want the idle connection closed", n)
		}
	})
}

// waitShutdown fails t unless the Shutdown reporting on shut returns nil.
func waitShutdown(t *testing.T, shut <-chan error) {
	t.Helper()
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown = %v, want nil", err)
		}
	case <-time.After(hangGuard):
		t.Fatal("Shutdown did not return")
	}
}

func TestFrontendShutdown(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, "done")
	}))
	t.Cleanup(up.Close)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	p := newProxy(t, Options{})
	p.Set("a", up.URL)
	ft := startFrontend(t, p, nil, FrontendOptions{})

	idle, idleBR := ft.dial(t)
	_, _ = io.WriteString(idle, "GET /agents/a/ HTTP/1.1\r\nHost: h\r\n\r\n")
	readResponse(t, idleBR, "GET")
	busy, busyBR := ft.dial(t)
	_, _ = io.WriteString(busy, "GET /agents/a/slow HTTP/1.1\r\nHost: h\r\n\r\n")
	<-started

	shut := make(chan error, 1)
	go func() { shut <- ft.f.Shutdown(context.Background()) }()
	// The idle connection is closed at once; the busy one is answered.
	if n, err := idleBR.Read(make([]byte, 1)); err == nil {
		t.Errorf("idle connection: read %d bytes, want it closed by Shutdown", n)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	close(release)
	res, body := readResponse(t, busyBR, "GET")
	if res.StatusCode != 200 || string(body) != "done" || !res.Close {
		t.Errorf("in-flight request: %d %q close=%v, want 200 \"done\" with Connection: close", res.StatusCode, body, res.Close)
	}
	waitShutdown(t, shut)
	if err := <-ft.served; err != nil {
		t.Errorf("Serve = %v, want nil after Shutdown", err)
	}
	if _, err := net.Dial("tcp", ft.addr); err == nil {
		t.Error("still accepting after Shutdown")
	}
}

func TestFrontendUpstreamMisbehaves(t *testing.T) {
	raw := func(resp string) string { return cannedUpstream(t, resp) }
	tests := []struct {
		name, resp string
		status     int // 0: the client connection is cut
	}{
		{"garbage", "SPDY/3 200 OK\r\n\r\n", 502},
		{"bad status", "HTTP/1.1 2x0 OK\r\n\r\n", 502},
		{"conflicting lengths", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 502},
		{"unknown transfer coding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 502},
		{"unasked switch", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", 502},
		{"closed mid-head", "HTTP/1.1 200 OK\r\nContent-Le", 502},
		{"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0},
		{"short body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 0},
	}
	p := newProxy(t, Options{})
	ft := startFrontend(t, p, nil, FrontendOptions{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.Set("a", raw(tt.resp))
			conn, br := ft.dial(t)
			_, _ = io.WriteString(conn, "GET /agents/a/ HTTP/1.1\r\nHost: h\r\n\r\n")
			res, err := http.ReadResponse(br, nil)
			if tt.status == 0 {
				if err == nil {
					_, err = io.ReadAll(res.Body)
				}
				if err == nil {
					t.Errorf("got a complete response, want the connection cut")
				}
				return
			}
			if err != nil {
				t.Fatalf("reading response: %v", err)
			}
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != tt.status {
				t.Errorf("status = %d %q, want %d", res.StatusCode, body, tt.status)
			}
		})
	}
}

func FuzzParseRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET /agents/a/x?q=1 HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /agents/a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
		"GET /agents/a/./x HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /agents/a/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n := headEnd(b, 0)
		if n < 0 {
			return
		}
		var rh reqHead
		if !parseRequestHead(b[:n], &rh) {
			return
		}
		// Whatever the fast path accepts, net/http must read the same
		// way: same method, Host and body length, a path under the
		// agent's prefix.
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b[:n])))
		if err != nil {
			t.Fatalf("parseRequestHead accepted %q; http.ReadRequest: %v", b[:n], err)
		}
		if req.Method != string(rh.method) || req.Host != string(rh.host) || req.ContentLength != rh.contentLength {
			t.Fatalf("%q: fast path %s host %q length %d; net/http %s host %q length %d",
				b[:n], rh.method, rh.host, rh.contentLength, req.Method, req.Host, req.ContentLength)
		}
		if req.Close != rh.close {
			t.Fatalf("%q: close = %v, net/http %v", b[:n], rh.close, req.Close)
		}
		want := "/agents/" + string(rh.name) + string(rh.rest)
		if req.URL.Path != want || req.URL.RawQuery != string(rh.query) {
			t.Fatalf("%q: path %q query %q, net/http %q %q", b[:n], want, rh.query, req.URL.Path, req.URL.RawQuery)
		}
	})
}

func FuzzChunkScanner(f *testing.F) {
	for _, s := range []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"3;ext=1\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n",
		"a\r\n0123456789\r\n0\r\n\r\nextra",
		"0\r\n\r\n",
	} {
		f.Add([]byte(s), 3)
	}
	f.Fuzz(func(t *testing.T, body []byte, split int) {
		// Whatever the scanner, fed in two pieces, takes for a complete
		// body, net/http must read as one that ends at the same byte.
		var s chunkScanner
		split = min(max(split, 0), len(body))
		end, done := -1, false
		n, d, err := s.scan(body[:split])
		if err == nil && d {
			end, done = n, true
		} else if err == nil {
			n2, d2, err2 := s.scan(body[split:])
			if err2 == nil && d2 {
				end, done = split+n2, true
			}
		}
		if !done {
			// The scanner may be stricter than net/http (the
			// connection is then cut), never more lenient.
			return
		}
		msg := "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + string(body)
		sr := strings.NewReader(msg)
		br := bufio.NewReader(sr)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, res.Body); err != nil {
			t.Fatalf("scanner accepted %q up to %d; net/http: %v", body, end, err)
		}
		if consumed := len(body) - br.Buffered() - sr.Len(); end != consumed {
			t.Fatalf("body %q: scanner ended at %d, net/http at %d", body, end, consumed)
		}
	})
}

func TestUpstreamFramingEdges(t *testing.T) {
	// sloppy answers HEAD with a Content-Length and then, a moment later,
	// the body anyway; 204 with chunked framing; anything else "fine".
	url := rawUpstream(t, func(conn net.Conn) {
		br := bufio.NewReader(conn)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			switch {
			case req.Method == http.MethodHead:
				_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
				time.Sleep(30 * time.Millisecond)
				_, _ = io.WriteString(conn, "stray")
			case req.URL.Path == "/nocontent":
				_, _ = io.WriteString(conn, "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n")
			default:
				_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine")
			}
		}
	})
	p := newProxy(t, Options{})
	p.Set("a", url)
	// Through serveMux, so that TestMain runs it on both paths.
	conn, err := net.Dial("tcp", strings.TrimPrefix(serveMux(t, p), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(hangGuard))
	br := bufio.NewReader(conn)

	_, _ = io.WriteString(conn, "HEAD /agents/a/ HTTP/1.1\r\nHost: h\r\n\r\n")
	if res, body := readResponse(t, br, "HEAD"); res.StatusCode != 200 || len(body) != 0 {
		t.Fatalf("HEAD = %d %q, want 200 without a body", res.StatusCode, body)
	}
	time.Sleep(60 * time.Millisecond) // the stray body has arrived by now
	_, _ = io.WriteString(conn, "GET /agents/a/ HTTP/1.1\r\nHost: h\r\n\r\n")
	if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || string(body) != "fine" {
		t.Errorf("GET after a HEAD answered with a stray body = %d %q, want 200 \"fine\" (the connection must not be reused)", res.StatusCode, body)
	}

	_, _ = io.WriteString(conn, "GET /agents/a/nocontent HTTP/1.1\r\nHost: h\r\n\r\n")
	res, _ := readResponse(t, br, "GET")
	if res.StatusCode != 204 || len(res.TransferEncoding) != 0 {
		t.Errorf("204 = %d with Transfer-Encoding %v, want none announced", res.StatusCode, res.TransferEncoding)
	}
}

func TestFrontendSlowBodyAfterSlowHead(t *testing.T) {
	up := echoUpstream(t, "a")
	p := newProxy(t, Options{})
	p.Set("a", up.URL)
	ft := startFrontend(t, p, nil, FrontendOptions{ReadHeaderTimeout: 200 * time.Millisecond})
	conn, br := ft.dial(t)
	// The head arrives in two pieces, so it runs under ReadHeaderTimeout;
	// the body then takes longer than that, which is the idle timeout's
	// business, not the header timeout's.
	_, _ = io.WriteString(conn, "POST /agents/a/ HTTP/1.1\r\nHost: h\r\n")
	time.Sleep(20 * time.Millisecond)
	_, _ = io.WriteString(conn, "Content-Length: 6\r\n\r\n")
	for _, piece := range []string{"ab", "cd", "ef"} {
		time.Sleep(150 * time.Millisecond)
		_, _ = io.WriteString(conn, piece)
	}
	res, body := readResponse(t, br, "POST")
	var e echoReply
	if res.StatusCode != 200 || json.Unmarshal(body, &e) != nil || e.BodyLen != 6 {
		t.Errorf("slow upload = %d %q, want 200 with the 6-byte body", res.StatusCode, body)
	}
}
