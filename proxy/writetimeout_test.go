package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// dialProxy opens a raw connection to the proxy at base (http://host:port).
func dialProxy(t *testing.T, base string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(hangGuard))
	return conn, bufio.NewReader(conn)
}

// A client that stops reading a response is disconnected after the write
// timeout, and the agent's request is ended with it: neither the client
// nor the agent's connection is held forever.
func TestClientThatStopsReadingIsCutOff(t *testing.T) {
	ended := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(ended)
		chunk := make([]byte, 32<<10)
		// An endless body: it ends only when the proxy stops taking it.
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(up.Close)
	p := newProxy(t, Options{WriteTimeout: 200 * time.Millisecond})
	p.Set("a", up.URL)
	base := serveMux(t, p)

	// (The socket buffers on both sides fill up within milliseconds; a
	// smaller receive buffer would make reading the rest below crawl at
	// the pace of TCP's zero-window probes.)
	conn, br := dialProxy(t, base)
	if _, err := io.WriteString(conn, "GET /agents/a/stream HTTP/1.1\r\nHost: h\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Read the head, then nothing more.
	if _, err := http.ReadResponse(br, &http.Request{Method: "GET"}); err != nil {
		t.Fatalf("reading the response head: %v", err)
	}
	select {
	case <-ended:
	case <-time.After(hangGuard):
		t.Fatal("the agent's request was still running long after the client stopped reading")
	}
	waitDrained(t, p, "a")
	// The client's connection was closed: reading on, it reaches the end
	// (or a reset) rather than blocking until the guard.
	if _, err := io.Copy(io.Discard, br); err != nil && isTimeout(err) {
		t.Errorf("client connection still open after the write timeout: %v", err)
	}
}

// The write timeout is per write, not per response: a client that reads a
// large body slowly but steadily gets all of it, though the transfer takes
// several times the timeout. (The body is larger than the kernel's socket
// buffers, so the proxy's writes do wait on the client.)
func TestSlowReaderGetsWholeBody(t *testing.T) {
	const size = 8 << 20
	body := strings.Repeat("0123456789abcdef", size/16)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(up.Close)
	// A blocked write resumes only when a third of the socket's send
	// buffer (up to 4 MiB here) has drained, ~0.4 s at this reader's pace:
	// the timeout leaves room for that.
	p := newProxy(t, Options{WriteTimeout: time.Second})
	p.Set("a", up.URL)
	base := serveMux(t, p)

	conn, br := dialProxy(t, base)
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(64 << 10)
	}
	_, _ = io.WriteString(conn, "GET /agents/a/big HTTP/1.1\r\nHost: h\r\n\r\n")
	res, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	var got strings.Builder
	buf := make([]byte, 64<<10)
	for {
		n, err := res.Body.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes: %v", got.Len(), err)
		}
		// At most 3.2 MB/s: the 8 MiB take over 2.5 s, more than twice
		// the timeout.
		time.Sleep(20 * time.Millisecond)
	}
	if got.String() != body {
		t.Errorf("slow reader got %d bytes, want the whole %d-byte body", got.Len(), size)
	}
}

// A stream that stays quiet for longer than the write timeout is not cut:
// the deadline bounds blocked writes, not the time between them.
func TestQuietStreamOutlivesWriteTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for _, ev := range []string{"data: a\n\n", "data: b\n\n"} {
			_, _ = io.WriteString(w, ev)
			w.(http.Flusher).Flush()
			time.Sleep(4 * timeout)
		}
	}))
	t.Cleanup(up.Close)
	p := newProxy(t, Options{WriteTimeout: timeout})
	p.Set("a", up.URL)
	base := serveMux(t, p)
	res, body := get(t, testClient(t), base+"/agents/a/events")
	if res.StatusCode != 200 || string(body) != "data: a\n\ndata: b\n\n" {
		t.Errorf("stream = %d %q, want 200 with both events", res.StatusCode, body)
	}
}

// A keep-alive connection used again after a pause longer than the write
// timeout still works: a deadline left from the first response must not
// cut the second, whoever serves it.
func TestKeepAliveAfterWriteTimeoutPause(t *testing.T) {
	const timeout = 100 * time.Millisecond
	up := echoUpstream(t, "a")
	p := newProxy(t, Options{WriteTimeout: timeout})
	p.Set("a", up.URL)
	for _, tc := range []struct{ name, second, want string }{
		{"proxied again", "GET /agents/a/two HTTP/1.1\r\nHost: h\r\n\r\n", `"path":"/two"`},
		// Through the Frontend this one is handed to net/http.
		{"then the API", "GET /api HTTP/1.1\r\nHost: h\r\n\r\n", "api"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var base string
			if viaFrontend {
				base = "http://" + startFrontend(t, p, nil, FrontendOptions{}).addr
			} else {
				mux := http.NewServeMux()
				p.Mount(mux)
				mux.HandleFunc("GET /api", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "api") })
				front := httptest.NewServer(mux)
				t.Cleanup(front.Close)
				base = front.URL
			}
			conn, br := dialProxy(t, base)
			_, _ = io.WriteString(conn, "GET /agents/a/one HTTP/1.1\r\nHost: h\r\n\r\n")
			if res, _ := readResponse(t, br, "GET"); res.StatusCode != 200 {
				t.Fatalf("first request: %d, want 200", res.StatusCode)
			}
			time.Sleep(3 * timeout)
			_, _ = io.WriteString(conn, tc.second)
			res, body := readResponse(t, br, "GET")
			if res.StatusCode != 200 || !strings.Contains(string(body), tc.want) {
				t.Errorf("second request after a pause: %d %q, want 200 with %q", res.StatusCode, body, tc.want)
			}
		})
	}
}

// A request that completes while the server shuts down and that the
// Frontend would hand to net/http (here an API call) is answered 503
// unavailable with Connection: close, not dropped without an answer; also
// while the client is still sending a large body. (The Frontend then reads
// and drops the rest before closing, as net/http does, so that a reset
// cannot destroy the answer before the client reads it; Linux lets a
// client read data that arrived before a reset, so this test cannot see
// that part.)
func TestFrontendHandoffDuringShutdown(t *testing.T) {
	for _, tc := range []struct {
		name, head string
		body       int
	}{
		{"no body", "GET /api HTTP/1.1\r\nHost: h\r\n", 0},
		{"large body", "POST /api HTTP/1.1\r\nHost: h\r\nContent-Length: 200000\r\n", 200000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProxy(t, Options{})
			ft := startFrontend(t, p, nil, FrontendOptions{})
			conn, br := ft.dial(t)
			_, _ = io.WriteString(conn, tc.head)
			waitActive(t, ft.f)

			shut := make(chan error, 1)
			go func() { shut <- ft.f.Shutdown(context.Background()) }()
			for !ft.f.shutdown.Load() {
				time.Sleep(time.Millisecond)
			}
			_, _ = io.WriteString(conn, "\r\n")
			if tc.body > 0 {
				go func() {
					// Sent while the answer comes back; writes fail
					// once the proxy closes, which is fine.
					_, _ = conn.Write(make([]byte, tc.body))
				}()
			}
			res, body := readResponse(t, br, "GET")
			var eb errorBody
			_ = json.Unmarshal(body, &eb)
			if res.StatusCode != http.StatusServiceUnavailable || eb.Code != codeUnavailable || !res.Close {
				t.Errorf("request during shutdown = %d %q close=%v, want 503 %q with Connection: close", res.StatusCode, body, res.Close, codeUnavailable)
			}
			waitShutdown(t, shut)
		})
	}
}

// waitActive waits until one of f's connections is serving a request
// (has read some of one).
func waitActive(t *testing.T, f *Frontend) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		active := false
		for fc := range f.conns {
			active = active || fc.state.Load() == stateActive
		}
		f.mu.Unlock()
		if active {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no connection became active")
}

func TestWriteDeadlineRefresh(t *testing.T) {
	var sets []time.Time
	set := func(d time.Time) error { sets = append(sets, d); return nil }

	var off writeDeadline
	if err := off.refresh(set); err != nil || len(sets) != 0 {
		t.Fatalf("refresh with no timeout: err %v, %d deadlines set, want none", err, len(sets))
	}
	d := writeDeadline{timeout: time.Hour}
	_ = d.refresh(set)
	_ = d.refresh(set) // within the slack: no new timer
	if len(sets) != 1 || sets[0].Before(time.Now().Add(59*time.Minute)) {
		t.Fatalf("two quick refreshes set %v, want one deadline an hour out", sets)
	}
	d.until = time.Now().Add(30 * time.Minute) // half the timeout used up
	_ = d.refresh(set)
	if len(sets) != 2 {
		t.Fatalf("refresh after the slack set %d deadlines, want 2", len(sets))
	}
}
