package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// connCounter counts the connections an upstream accepted and closed.
type connCounter struct {
	mu             sync.Mutex
	opened, closed int
	closedCh       chan struct{} // one send per closed connection
}

func (c *connCounter) track(_ net.Conn, s http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch s {
	case http.StateNew:
		c.opened++
	case http.StateClosed, http.StateHijacked:
		c.closed++
		select {
		case c.closedCh <- struct{}{}:
		default:
		}
	}
}

func (c *connCounter) counts() (opened, closed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opened, c.closed
}

// countingUpstream starts an upstream running h whose connections are
// counted.
func countingUpstream(t *testing.T, h http.HandlerFunc) (*httptest.Server, *connCounter) {
	t.Helper()
	cc := &connCounter{closedCh: make(chan struct{}, 64)}
	up := httptest.NewUnstartedServer(h)
	up.Config.ConnState = cc.track
	up.Start()
	t.Cleanup(up.Close)
	return up, cc
}

func TestFastPathReusesConnections(t *testing.T) {
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		wantOpened int // after 5 sequential requests
	}{
		{"content-length", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "ok")
		}, 1},
		{"chunked", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "o")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "k")
		}, 1},
		{"connection close", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, "ok")
		}, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, cc := countingUpstream(t, tt.handler)
			p := newProxy(t, Options{})
			p.Set("x", up.URL)
			front := serveMux(t, p)
			c := testClient(t)
			for i := range 5 {
				res, body := get(t, c, front+"/agents/x/")
				if res.StatusCode != http.StatusOK || string(body) != "ok" {
					t.Fatalf("GET #%d = %d %q, want 200 %q", i, res.StatusCode, body, "ok")
				}
			}
			if opened, _ := cc.counts(); opened != tt.wantOpened {
				t.Errorf("upstream connections opened = %d, want %d", opened, tt.wantOpened)
			}
		})
	}
}

func TestFastPathRetriesStaleConnection(t *testing.T) {
	up := echoUpstream(t, "a")
	p := newProxy(t, Options{})
	p.Set("x", up.URL)
	front := serveMux(t, p)
	c := testClient(t)
	tests := []struct {
		method, body string
	}{
		{http.MethodGet, ""},
		{http.MethodPost, `{"jsonrpc":"2.0"}`},
		{http.MethodPost, ""},
	}
	for _, tt := range tests {
		// Fill the pool, then have the upstream close every idle
		// connection behind the proxy's back, as its idle timeout would.
		get(t, c, front+"/agents/x/warm")
		up.CloseClientConnections()
		req, _ := http.NewRequest(tt.method, front+"/agents/x/after", strings.NewReader(tt.body))
		res, body := do(t, c, req)
		e := decodeEcho(t, res, body)
		if e.Method != tt.method || e.BodyLen != len(tt.body) {
			t.Errorf("%s with %d body bytes after the upstream closed idle connections: upstream got %s with %d",
				tt.method, len(tt.body), e.Method, e.BodyLen)
		}
	}
}

func TestFastPathClientGoneClosesUpstreamConn(t *testing.T) {
	upGone := make(chan struct{})
	up, cc := countingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // an endless stream
		close(upGone)
	})
	p := newProxy(t, Options{})
	p.Set("x", up.URL)
	front := serveMux(t, p)

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, front+"/agents/x/stream", nil)
	res, err := testClient(t).Do(req)
	if err != nil {
		t.Fatalf("GET stream: %v", err)
	}
	if ev := readEvent(t, bufio.NewReader(res.Body)); ev != "data: one\n" {
		t.Errorf("first event = %q, want %q", ev, "data: one\n")
	}
	cancel()
	res.Body.Close()
	// The upstream's request ends only if the proxy closed its connection.
	waitFor(t, upGone, "the upstream request to end after the client left")
	waitFor(t, cc.closedCh, "the upstream connection to close after the client left")
	dctx, dcancel := context.WithTimeout(context.Background(), hangGuard)
	defer dcancel()
	if err := p.Lookup("x").Drain(dctx); err != nil {
		t.Errorf("Drain after the client left = %v, want nil", err)
	}
}

// waitFor fails the test if ch yields nothing within hangGuard, a safety
// net against hangs rather than a timing assertion.
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(hangGuard):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestFastPathSetClosesOldUpstreamIdleConns(t *testing.T) {
	old, cc := countingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "old")
	})
	p := newProxy(t, Options{})
	p.Set("x", old.URL)
	front := serveMux(t, p)
	c := testClient(t)
	if _, body := get(t, c, front+"/agents/x/"); string(body) != "old" {
		t.Fatalf("GET = %q, want old", body)
	}
	prev := p.Set("x", echoUpstream(t, "new").URL)
	if prev == nil {
		t.Fatal("Set returned no previous upstream")
	}
	waitFor(t, cc.closedCh, "the old upstream's pooled connection to close")
	if opened, closed := cc.counts(); opened != 1 || closed != 1 {
		t.Errorf("old upstream connections opened/closed = %d/%d, want 1/1", opened, closed)
	}
}

// rawUpstream starts an upstream that hands each connection to serve (and
// closes it after), for answers net/http would not write, and returns its
// URL.
func rawUpstream(t *testing.T, serve func(conn net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				serve(conn)
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// cannedUpstream starts an upstream that answers one request per connection
// with the bytes resp, then closes the connection, and returns its URL.
func cannedUpstream(t *testing.T, resp string) string {
	t.Helper()
	return rawUpstream(t, func(conn net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(conn)); err == nil {
			_, _ = io.WriteString(conn, resp)
		}
	})
}

func TestFastPathResponseFraming(t *testing.T) {
	raw := func(resp string) string { return cannedUpstream(t, resp) }
	tests := []struct {
		name, resp string
		status     int
		body       string
	}{
		{"close-delimited body", "HTTP/1.1 200 OK\r\n\r\nuntil close", 200, "until close"},
		{"interim 103 skipped", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok"},
		{"http/1.0", "HTTP/1.0 201 Created\r\nContent-Length: 3\r\n\r\nnew", 201, "new"},
		// HTTP/1.0 has no chunked coding: the body runs to the close.
		{"http/1.0 claiming chunked", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 200, "3\r\nabc\r\n0\r\n\r\n"},
		{"length and chunked", "HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 200, "ok"},
	}
	p := newProxy(t, Options{})
	front := serveMux(t, p)
	c := testClient(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.Set("x", raw(tt.resp))
			res, body := get(t, c, front+"/agents/x/")
			if res.StatusCode != tt.status || string(body) != tt.body {
				t.Errorf("GET = %d %q, want %d %q", res.StatusCode, body, tt.status, tt.body)
			}
		})
	}
}

func TestFastPathRelaysAnswerBeforeBodyRead(t *testing.T) {
	// The upstream refuses the upload without reading it, as a size limit
	// would; the client must see that answer, not a 502.
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	}))
	t.Cleanup(up.Close)
	p := newProxy(t, Options{})
	p.Set("x", up.URL)
	req, _ := http.NewRequest(http.MethodPost, serveMux(t, p)+"/agents/x/upload",
		strings.NewReader(strings.Repeat("x", 4<<20)))
	res, body := do(t, testClient(t), req)
	if res.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("POST 4 MiB = %d %q, want 413", res.StatusCode, body)
	}
}

func TestFastPathIdleConnsBounded(t *testing.T) {
	t.Run("expire after IdleConnTimeout", func(t *testing.T) {
		up, cc := countingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "ok")
		})
		p := newProxy(t, Options{IdleConnTimeout: time.Millisecond})
		p.Set("x", up.URL)
		get(t, testClient(t), serveMux(t, p)+"/agents/x/")
		waitFor(t, cc.closedCh, "the idle connection to expire")
	})
	t.Run("at most MaxIdleConnsPerHost kept", func(t *testing.T) {
		const inFlight = 3
		started := make(chan struct{}, inFlight)
		release := make(chan struct{})
		up, cc := countingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			started <- struct{}{}
			<-release
			_, _ = io.WriteString(w, "ok")
		})
		p := newProxy(t, Options{MaxIdleConnsPerHost: 1})
		p.Set("x", up.URL)
		front := serveMux(t, p)
		c := testClient(t)
		var results []<-chan string
		for range inFlight {
			results = append(results, asyncGet(c, front+"/agents/x/"))
		}
		for range inFlight {
			waitFor(t, started, "the requests to reach the upstream")
		}
		close(release)
		for _, res := range results {
			if got := <-res; got != "ok" {
				t.Errorf("GET = %q, want ok", got)
			}
		}
		for range inFlight - 1 {
			waitFor(t, cc.closedCh, "the connections beyond the idle limit to close")
		}
		if opened, closed := cc.counts(); opened != inFlight || closed != inFlight-1 {
			t.Errorf("upstream connections opened/closed = %d/%d, want %d/%d", opened, closed, inFlight, inFlight-1)
		}
	})
}
