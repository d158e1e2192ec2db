package proxy

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestFrontendWatcherStaleTimerGoroutine covers a watcher whose timer fired
// but whose goroutine only got to run after the watch was disarmed and
// armed again (as relay does right after awaitHead): the late goroutine
// then reads under the new watch, and disarm must still wait for it.
// Otherwise it keeps reading the client connection after the request is
// over and, when the client leaves, aborts whatever upstream connection
// the watch last named, by then back in the pool and in use by another
// request.
func TestFrontendWatcherStaleTimerGoroutine(t *testing.T) {
	client, server := tcpPair(t)
	upA, upB := tcpPair(t)
	_ = upB

	fired := make(chan struct{})
	proceed := make(chan struct{})
	var once sync.Once
	f := &Frontend{}
	f.testHookWatchFired = func() {
		first := false
		once.Do(func() { first = true })
		if first {
			close(fired)
			<-proceed
		}
	}
	fc := &frontConn{f: f, c: server, buf: make([]byte, frontBufSize)}
	fc.watch.fc = fc
	uc := newUpConn(upA)

	fc.watch.arm(uc)
	<-fired // the timer fired; its goroutine waits before taking the lock
	if gone := fc.watch.disarm(); gone {
		t.Fatal("disarm reported the client gone")
	}
	fc.watch.arm(uc)
	close(proceed)
	// Let the late goroutine start its read under the second watch.
	deadline := time.Now().Add(hangGuard)
	for {
		fc.watch.mu.Lock()
		st := fc.watch.state
		fc.watch.mu.Unlock()
		if st == watchReading || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if gone := fc.watch.disarm(); gone {
		t.Fatal("disarm reported the client gone")
	}

	// The request is over: the client leaving now must not reach the
	// upstream connection, which may be serving another request.
	client.Close()
	select {
	case <-fc.watch.done:
		t.Error("a watcher read was still running after disarm returned")
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := upA.Write([]byte("x")); err != nil {
		t.Errorf("upstream connection after the watch ended: Write = %v, want it untouched", err)
	}
}

// TestFrontendMalformedHost checks that a Host net/http rejects is not
// forwarded by the fast path (it would reach the agent as
// X-Forwarded-Host).
func TestFrontendMalformedHost(t *testing.T) {
	up := echoUpstream(t, "a")
	p := newProxy(t, Options{})
	p.Set("a", up.URL)
	ft := startFrontend(t, p, nil, FrontendOptions{})
	for _, host := range []string{"a b", "a\tb", "a/b", "a@b", "a\"b", "<x>", "h\x80"} {
		t.Run(host, func(t *testing.T) {
			res, body := ft.rawExchange(t, "GET /agents/a/ HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
			if res.StatusCode != http.StatusBadRequest {
				t.Errorf("Host %q: status %d (body %q), want 400 as net/http answers", host, res.StatusCode, body)
			}
		})
	}
	// Hosts net/http accepts still take the fast path.
	for _, host := range []string{"example.com:8080", "[::1]:80", "a_b.c-d"} {
		before := ft.handoffs.Load()
		res, _ := ft.rawExchange(t, "GET /agents/a/ HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		if res.StatusCode != http.StatusOK || ft.handoffs.Load() != before {
			t.Errorf("Host %q: status %d handed off %v, want 200 on the fast path", host, res.StatusCode, ft.handoffs.Load() != before)
		}
	}
}

// TestFrontendResponseHeaderTimeout checks the fast path's 504 and that
// the client connection and the pool stay usable afterwards.
func TestFrontendResponseHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(up.Close)
	p := newProxy(t, Options{ResponseHeaderTimeout: 100 * time.Millisecond})
	p.Set("a", up.URL)
	ft := startFrontend(t, p, nil, FrontendOptions{})
	conn, br := ft.dial(t)
	_, _ = io.WriteString(conn, "GET /agents/a/slow HTTP/1.1\r\nHost: h\r\n\r\n")
	res, body := readResponse(t, br, "GET")
	var eb errorBody
	if res.StatusCode != http.StatusGatewayTimeout || json.Unmarshal(body, &eb) != nil || eb.Code != codeGatewayTimeout {
		t.Fatalf("slow upstream: %d %q, want 504 gateway_timeout", res.StatusCode, body)
	}
	for range 3 {
		_, _ = io.WriteString(conn, "GET /agents/a/fast HTTP/1.1\r\nHost: h\r\n\r\n")
		res, body = readResponse(t, br, "GET")
		if res.StatusCode != http.StatusOK || string(body) != "ok" {
			t.Fatalf("next request: %d %q, want 200 ok", res.StatusCode, body)
		}
	}
	if n := p.Lookup("a").InFlight(); n != 0 {
		t.Errorf("InFlight = %d, want 0", n)
	}
	if h := ft.handoffs.Load(); h != 0 {
		t.Errorf("handoffs = %d, want 0", h)
	}
}

// TestFrontendPipelinedDuringSlowResponse sends the next request while the
// upstream is still thinking on the first, so that the client watch reads
// it: it must be served next, in order, and not taken for a disconnect.
func TestFrontendPipelinedDuringSlowResponse(t *testing.T) {
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, r.URL.Path)
	}))
	t.Cleanup(up.Close)
	p := newProxy(t, Options{})
	p.Set("a", up.URL)
	ft := startFrontend(t, p, nil, FrontendOptions{})
	conn, br := ft.dial(t)
	_, _ = io.WriteString(conn, "GET /agents/a/slow HTTP/1.1\r\nHost: h\r\n\r\n")
	<-arrived
	// Past watchDelay the watch is reading the client connection.
	time.Sleep(2 * watchDelay)
	_, _ = io.WriteString(conn, "GET /agents/a/next HTTP/1.1\r\nHost: h\r\n\r\n")
	time.Sleep(watchDelay)
	close(release)
	for _, want := range []string{"/slow", "/next"} {
		res, body := readResponse(t, br, "GET")
		if res.StatusCode != http.StatusOK || string(body) != want {
			t.Fatalf("response: %d %q, want 200 %q", res.StatusCode, body, want)
		}
	}
	if n := p.Lookup("a").InFlight(); n != 0 {
		t.Errorf("InFlight = %d, want 0", n)
	}
}
