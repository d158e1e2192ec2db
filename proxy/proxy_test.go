package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth"
)

// hangGuard bounds every client request in these tests so a proxy that hangs
// fails the test instead of stalling it. It is a safety net, not a timing
// assertion: nothing here is expected to come close to it.
const hangGuard = 20 * time.Second

// echoReply is what echoUpstream reports about the request it received.
type echoReply struct {
	ID      string      `json:"id"`
	Method  string      `json:"method"`
	Path    string      `json:"path"`
	Escaped string      `json:"escaped"`
	Query   string      `json:"query"`
	Host    string      `json:"host"`
	Header  http.Header `json:"header"`
	BodyLen int         `json:"body_len"`
	BodySum string      `json:"body_sum"`
	CL      int64       `json:"content_length"`
}

// echoUpstream starts an upstream that answers with an echoReply tagged id.
func echoUpstream(t *testing.T, id string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		sum := sha256.Sum256(body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Upstream", id)
		_ = json.NewEncoder(w).Encode(echoReply{
			ID: id, Method: r.Method, Path: r.URL.Path, Escaped: r.URL.EscapedPath(),
			Query: r.URL.RawQuery, Host: r.Host, Header: r.Header,
			BodyLen: len(body), BodySum: hex.EncodeToString(sum[:]), CL: r.ContentLength,
		})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// newProxy returns a Proxy with logs discarded and opts applied.
func newProxy(t *testing.T, opts Options) *Proxy {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	p := New(opts)
	t.Cleanup(p.CloseIdleConnections)
	return p
}

// serveMux serves p mounted on a ServeMux, as Berth does, and returns the
// front server's base URL.
func serveMux(t *testing.T, p *Proxy) string {
	t.Helper()
	mux := http.NewServeMux()
	p.Mount(mux)
	if !viaFrontend {
		front := httptest.NewServer(mux)
		t.Cleanup(front.Close)
		return front.URL
	}
	return serveFrontend(t, p, mux, FrontendOptions{})
}

// serveFrontend serves p's Frontend, handing other connections to an
// http.Server with handler, as berth serve does, and returns its base URL.
func serveFrontend(t *testing.T, p *Proxy, handler http.Handler, opts FrontendOptions) string {
	t.Helper()
	return "http://" + startFrontend(t, p, handler, opts).addr
}

// viaFrontend makes serveMux serve through the Frontend; TestMain runs
// the package's tests once each way.
var viaFrontend bool

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		// The same tests again with connections read by the Frontend,
		// as berth serve does: its byte-level fast path must behave
		// like the handler.
		fmt.Println("=== proxy tests again, through the Frontend")
		viaFrontend = true
		code = m.Run()
	}
	os.Exit(code)
}

// waitDrained fails t unless the requests to agent on p stop counting in
// flight: a client that left or was cut off must not leave the agent's
// upstream held.
func waitDrained(t *testing.T, p *Proxy, agent string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	if err := p.Lookup(agent).Drain(ctx); err != nil {
		t.Errorf("Drain(%q) = %v, want the request to end", agent, err)
	}
}

// serveBare serves p as the whole handler, so no path values are set.
func serveBare(t *testing.T, p *Proxy) string {
	t.Helper()
	front := httptest.NewServer(p)
	t.Cleanup(front.Close)
	return front.URL
}

func testClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: hangGuard}
}

// do sends req and returns the response with its body read.
func do(t *testing.T, c *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return res, body
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, c, req)
}

func decodeEcho(t *testing.T, res *http.Response, body []byte) echoReply {
	t.Helper()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status = %d, want 200; body %s", res.StatusCode, body)
	}
	var e echoReply
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("decoding upstream echo %q: %v", body, err)
	}
	return e
}

// decodeError checks that body is exactly the API's error shape with the
// given status and code, and returns its message.
func decodeError(t *testing.T, res *http.Response, body []byte, status int, code string) string {
	t.Helper()
	if res.StatusCode != status {
		t.Fatalf("status = %d, want %d; body %s", res.StatusCode, status, body)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("error body %q is not JSON: %v", body, err)
	}
	if len(m) != 4 {
		t.Errorf("error body keys = %v, want exactly status_code, message, detail, code", m)
	}
	if got := m["status_code"]; got != float64(status) {
		t.Errorf("status_code = %v, want %d", got, status)
	}
	if got := m["code"]; got != code {
		t.Errorf("code = %v, want %q", got, code)
	}
	msg, _ := m["message"].(string)
	if msg == "" {
		t.Errorf("message = %v, want a non-empty string", m["message"])
	}
	if got := m["detail"]; got != msg {
		t.Errorf("detail = %v, want the message %q", got, msg)
	}
	return msg
}

func TestForwardPath(t *testing.T) {
	up := echoUpstream(t, "a")
	p := newProxy(t, Options{})
	p.Set("x", up.URL)
	p.Set("based", up.URL+"/base/")
	c := testClient(t)

	tests := []struct {
		reqPath     string
		wantPath    string
		wantEscaped string
		wantQuery   string
	}{
		{"/agents/x", "/", "/", ""},
		{"/agents/x/", "/", "/", ""},
		{"/agents/x?q=1", "/", "/", "q=1"},
		{"/agents/x/a/b", "/a/b", "/a/b", ""},
		{"/agents/x/a/b/", "/a/b/", "/a/b/", ""},
		{"/agents/x/a?q=1&r=two%20words&s=%2F", "/a", "/a", "q=1&r=two%20words&s=%2F"},
		{"/agents/x/hello%20world", "/hello world", "/hello%20world", ""},
		{"/agents/x/a%2Fb/c", "/a/b/c", "/a%2Fb/c", ""},
		{"/agents/x/agents/x/y", "/agents/x/y", "/agents/x/y", ""},
		{"/agents/%78/a%2Fb", "/a/b", "/a%2Fb", ""},
		{"/agents/based", "/base/", "/base/", ""},
		{"/agents/based/a/b?k=v", "/base/a/b", "/base/a/b", "k=v"},
		{"/agents/based/a%2Fb", "/base/a/b", "/base/a%2Fb", ""},
	}
	fronts := []struct {
		name string
		url  string
	}{
		{"mux", serveMux(t, p)},
		{"bare", serveBare(t, p)},
	}
	for _, front := range fronts {
		for _, tt := range tests {
			t.Run(front.name+tt.reqPath, func(t *testing.T) {
				res, body := get(t, c, front.url+tt.reqPath)
				e := decodeEcho(t, res, body)
				if e.Path != tt.wantPath || e.Escaped != tt.wantEscaped || e.Query != tt.wantQuery {
					t.Errorf("GET %s reached upstream as path %q escaped %q query %q, want %q %q %q",
						tt.reqPath, e.Path, e.Escaped, e.Query, tt.wantPath, tt.wantEscaped, tt.wantQuery)
				}
			})
		}
	}
}

func TestForwardHeaders(t *testing.T) {
	up := echoUpstream(t, "a")
	p := newProxy(t, Options{})
	p.Set("x", up.URL)
	front := serveMux(t, p)
	c := testClient(t)

	req, err := http.NewRequest(http.MethodPut, front+"/agents/x/h", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Custom", "kept")
	req.Header.Add("X-Multi", "one")
	req.Header.Add("X-Multi", "two")
	req.Header.Set("Authorization", "Bearer agent-token")
	req.Header.Set("Connection", "X-Hop-Secret")
	req.Header.Set("X-Hop-Secret", "dropped")
	req.Header.Set("Proxy-Authorization", "Basic dropped")
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	req.Header.Set("X-Forwarded-Host", "spoofed.example")
	req.Header.Set("X-Forwarded-Prefix", "/spoofed")
	req.Header.Set("Forwarded", "for=6.6.6.6")
	req.Header.Set("User-Agent", "berth-test/1")
	res, body := do(t, c, req)
	e := decodeEcho(t, res, body)

	if e.Method != http.MethodPut {
		t.Errorf("upstream method = %q, want PUT", e.Method)
	}
	frontHost := strings.TrimPrefix(front, "http://")
	want := map[string][]string{
		"X-Custom":            {"kept"},
		"X-Multi":             {"one", "two"},
		"Authorization":       {"Bearer agent-token"},
		"User-Agent":          {"berth-test/1"},
		"X-Forwarded-For":     {"127.0.0.1"},
		"X-Forwarded-Host":    {frontHost},
		"X-Forwarded-Proto":   {"http"},
		"X-Forwarded-Prefix":  {"/agents/x"},
		"X-Hop-Secret":        nil,
		"Proxy-Authorization": nil,
		"Forwarded":           nil,
	}
	for k, v := range want {
		if got := e.Header[k]; fmt.Sprint(got) != fmt.Sprint(v) {
			t.Errorf("upstream header %s = %q, want %q", k, got, v)
		}
	}
	if got := res.Header.Get("X-Upstream"); got != "a" {
		t.Errorf("response header X-Upstream = %q, want %q", got, "a")
	}
	if e.Host != strings.TrimPrefix(up.URL, "http://") {
		t.Errorf("upstream Host = %q, want the upstream's own %q", e.Host, up.URL)
	}

	// Without a User-Agent the proxy must not invent Go's default one.
	req, _ = http.NewRequest(http.MethodGet, front+"/agents/x/", nil)
	req.Header["User-Agent"] = []string{""}
	res, body = do(t, c, req)
	if got := decodeEcho(t, res, body).Header.Get("User-Agent"); got != "" {
		t.Errorf("upstream User-Agent = %q, want none", got)
	}
}

func TestForwardStatusAndResponseHeaders(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Reply", "yes")
		w.Header().Add("Set-Cookie", "a=1")
		w.Header().Add("Set-Cookie", "b=2")
		w.WriteHeader(http.StatusTeapot)
		_, _ = io.WriteString(w, "short and stout")
	}))
	t.Cleanup(up.Close)
	p := newProxy(t, Options{})
	p.Set("x", up.URL)
	c := testClient(t)
	res, body := get(t, c, serveMux(t, p)+"/agents/x/tea")
	if res.StatusCode != http.StatusTeapot || string(body) != "short and stout" {
		t.Errorf("GET = %d %q, want 418 %q", res.StatusCode, body, "short and stout")
	}
	if got := res.Header.Get("X-Reply"); got != "yes" {
		t.Errorf("X-Reply = %q, want yes", got)
	}
	if got := res.Header.Values("Set-Cookie"); fmt.Sprint(got) != "[a=1 b=2]" {
		t.Errorf("Set-Cookie = %q, want [a=1 b=2]", got)
	}
}

func TestForwardBodylessResponses(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/no-content":
			w.WriteHeader(http.StatusNoContent)
		case "/not-modified":
			w.WriteHeader(http.StatusNotModified)
		default:
			w.Header().Set("Content-Length", "5")
			_, _ = io.WriteString(w, "hello")
		}
	}))
	t.Cleanup(up.Close)
	p := newProxy(t, Options{})
	p.Set("x", up.URL)
	front := serveMux(t, p)
	c := testClient(t)
	tests := []struct {
		method, path string
		status       int
		length       int64
	}{
		{http.MethodHead, "/hello", http.StatusOK, 5},
		{http.MethodGet, "/hello", http.StatusOK, 5},
		{http.MethodGet, "/no-content", http.StatusNoContent, 0},
		{http.MethodGet, "/not-modified", http.StatusNotModified, 0},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(tt.method, front+"/agents/x"+tt.path, nil)
		res, body := do(t, c, req)
		wantBody := ""
		if tt.method == http.MethodGet && tt.length > 0 {
			wantBody = "hello"
		}
		if res.StatusCode != tt.status || res.ContentLength != tt.length || string(body) != wantBody {
			t.Errorf("%s %s = %d, length %d, body %q; want %d, length %d, body %q", tt.method, tt.path,
				res.StatusCode, res.ContentLength, body, tt.status, tt.length, wantBody)
		}
	}
}

func TestForwardRequestBody(t *testing.T) {
	up := echoUpstream(t, "a")
	p := newProxy(t, Options{})
	p.Set("x", up.URL)
	front := serveMux(t, p)
	c := testClient(t)

	big := bytes.Repeat([]byte("berth-body-"), 100_000) // ~1.1 MB
	tests := []struct {
		name    string
		body    []byte
		chunked bool
	}{
		{"empty", nil, false},
		{"small", []byte(`{"jsonrpc":"2.0"}`), false},
		{"large", big, false},
		{"chunked", big, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r io.Reader = bytes.NewReader(tt.body)
			if tt.chunked {
				// Hide the length so the client sends chunked encoding.
				r = io.MultiReader(r)
			}
			req, err := http.NewRequest(http.MethodPost, front+"/agents/x/upload", r)
			if err != nil {
				t.Fatal(err)
			}
			res, body := do(t, c, req)
			e := decodeEcho(t, res, body)
			sum := sha256.Sum256(tt.body)
			if e.Method != http.MethodPost || e.BodyLen != len(tt.body) || e.BodySum != hex.EncodeToString(sum[:]) {
				t.Errorf("upstream got %s with %d bytes (sum %s), want POST with %d bytes (sum %x)",
					e.Method, e.BodyLen, e.BodySum, len(tt.body), sum)
			}
			wantCL := int64(len(tt.body))
			if tt.chunked {
				wantCL = -1
			}
			if e.CL != wantCL {
				t.Errorf("upstream ContentLength = %d, want %d", e.CL, wantCL)
			}
		})
	}
}

func TestSSEStreamsBeforeUpstreamFinishes(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = io.WriteString(w, "event: status\ndata: {\"state\":\"working\"}\n\n")
		w.(http.Flusher).Flush()
		// Hold the response open until the test has read the first event.
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: done\n\n")
	}))
	t.Cleanup(up.Close)
	// Release before up.Close, so a failing test does not block Close.
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	p := newProxy(t, Options{})
	p.Set("x", up.URL)
	c := testClient(t)

	res, err := c.Get(serveMux(t, p) + "/agents/x/stream")
	if err != nil {
		t.Fatalf("GET stream: %v", err)
	}
	defer res.Body.Close()
	if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q, want text/event-stream", ct)
	}
	br := bufio.NewReader(res.Body)
	// The upstream is blocked on release, so these reads can only succeed
	// if the proxy flushed the first event through.
	first := readEvent(t, br)
	if want := "event: status\ndata: {\"state\":\"working\"}\n"; first != want {
		t.Errorf("first event = %q, want %q", first, want)
	}
	close(release)
	if second := readEvent(t, br); second != "data: done\n" {
		t.Errorf("second event = %q, want %q", second, "data: done\n")
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after the last event read %q, %v; want a clean end of stream", rest, err)
	}
}

// readEvent reads one SSE event (lines up to a blank line).
func readEvent(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	var ev strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading event after %q: %v", ev.String(), err)
		}
		if line == "\n" {
			return ev.String()
		}
		ev.WriteString(line)
	}
}

func TestTrailersPassThrough(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "payload")
		w.Header().Set("X-Checksum", "abc123")
	}))
	t.Cleanup(up.Close)
	p := newProxy(t, Options{})
	p.Set("x", up.URL)
	c := testClient(t)
	res, body := get(t, c, serveMux(t, p)+"/agents/x/")
	if string(body) != "payload" {
		t.Errorf("body = %q, want payload", body)
	}
	if got := res.Trailer.Get("X-Checksum"); got != "abc123" {
		t.Errorf("trailer X-Checksum = %q, want abc123", got)
	}
}

func TestUpgradePassesThrough(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(conn, brw)
	}))
	t.Cleanup(up.Close)
	p := newProxy(t, Options{})
	p.Set("x", up.URL)
	front := serveMux(t, p)

	conn, err := net.Dial("tcp", strings.TrimPrefix(front, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(hangGuard))
	_, _ = io.WriteString(conn, "GET /agents/x/ws HTTP/1.1\r\nHost: berth\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading upgrade response: %v", err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols || res.Header.Get("Upgrade") != "echo" {
		t.Fatalf("upgrade response = %d Upgrade %q, want 101 echo", res.StatusCode, res.Header.Get("Upgrade"))
	}
	_, _ = io.WriteString(conn, "ping\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "ping\n" {
		t.Errorf("echo over upgraded connection = %q, %v; want %q", line, err, "ping\n")
	}
}

func TestUnknownAgent(t *testing.T) {
	up := echoUpstream(t, "a")
	p := newProxy(t, Options{})
	p.Set("gone", up.URL)
	if prev := p.Remove("gone"); prev == nil || prev.URL() != up.URL {
		t.Fatalf("Remove(gone) = %v, want the upstream %s", prev, up.URL)
	}
	c := testClient(t)
	for _, front := range []string{serveMux(t, p), serveBare(t, p)} {
		for _, name := range []string{"nope", "gone"} {
			res, body := get(t, c, front+"/agents/"+name+"/x?y=z")
			msg := decodeError(t, res, body, http.StatusNotFound, "not_found")
			if want := `agent "` + name + `" not found`; msg != want {
				t.Errorf("message = %q, want %q", msg, want)
			}
		}
	}
	// Not under /agents/ at all: the bare handler has no agent to route to.
	res, body := get(t, c, serveBare(t, p)+"/elsewhere")
	decodeError(t, res, body, http.StatusNotFound, "not_found")
}

func TestSetLookupRemove(t *testing.T) {
	p := newProxy(t, Options{})
	if prev := p.Set("a", "http://127.0.0.1:1001"); prev != nil {
		t.Errorf("first Set = %v, want nil", prev)
	}
	first := p.Lookup("a")
	if first == nil || first.URL() != "http://127.0.0.1:1001" || first.Agent() != "a" {
		t.Fatalf("Lookup(a) = %v, want upstream http://127.0.0.1:1001 of a", first)
	}
	if prev := p.Set("a", "http://127.0.0.1:1001"); prev != nil || p.Lookup("a") != first {
		t.Errorf("Set with the same URL = %v and replaced the upstream; want a no-op", prev)
	}
	if prev := p.Set("a", "http://127.0.0.1:1002"); prev != first {
		t.Errorf("Set to a new URL returned %v, want the first upstream", prev)
	}
	if got := p.Lookup("a").URL(); got != "http://127.0.0.1:1002" {
		t.Errorf("Lookup(a).URL() = %q, want the new URL", got)
	}
	if p.Lookup("b") != nil {
		t.Errorf("Lookup(b) = %v, want nil", p.Lookup("b"))
	}
	if prev := p.Remove("b"); prev != nil {
		t.Errorf("Remove(b) = %v, want nil", prev)
	}
	if prev := p.Remove("a"); prev == nil || prev.URL() != "http://127.0.0.1:1002" {
		t.Errorf("Remove(a) = %v, want the active upstream", prev)
	}
	if p.Lookup("a") != nil {
		t.Errorf("Lookup(a) after Remove = %v, want nil", p.Lookup("a"))
	}
}

func TestInvalidUpstreamURL(t *testing.T) {
	p := newProxy(t, Options{})
	c := testClient(t)
	front := serveMux(t, p)
	for _, raw := range []string{"127.0.0.1:8080", "ftp://host/", "http://", "http://[::1"} {
		p.Set("x", raw)
		res, body := get(t, c, front+"/agents/x/")
		decodeError(t, res, body, http.StatusBadGateway, "bad_gateway")
	}
}

// blockingUpstream starts an upstream whose requests report on started and
// then wait for release (closed by the test or at cleanup).
type blockingUpstream struct {
	*httptest.Server
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

func newBlockingUpstream(t *testing.T, id string) *blockingUpstream {
	t.Helper()
	b := &blockingUpstream{started: make(chan struct{}, 16), release: make(chan struct{})}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.started <- struct{}{}
		select {
		case <-b.release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, id)
	}))
	t.Cleanup(b.Server.Close)
	t.Cleanup(b.Release) // runs before Close
	return b
}

// Release lets every blocked and future request finish.
func (b *blockingUpstream) Release() { b.once.Do(func() { close(b.release) }) }

// asyncGet starts a GET and returns a channel with its body (or error text).
func asyncGet(c *http.Client, url string) <-chan string {
	out := make(chan string, 1)
	go func() {
		res, err := c.Get(url)
		if err != nil {
			out <- "error: " + err.Error()
			return
		}
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		if err != nil {
			out <- "error: " + err.Error()
			return
		}
		out <- string(body)
	}()
	return out
}

func TestSwitchKeepsInFlightOnOldUpstream(t *testing.T) {
	old := newBlockingUpstream(t, "old")
	next := echoUpstream(t, "new")
	p := newProxy(t, Options{})
	p.Set("x", old.URL)
	front := serveMux(t, p)
	c := testClient(t)

	slow := asyncGet(c, front+"/agents/x/slow")
	<-old.started
	prev := p.Set("x", next.URL)
	if prev == nil || prev.URL() != old.URL {
		t.Fatalf("Set = %v, want the old upstream %s", prev, old.URL)
	}
	if n := prev.InFlight(); n != 1 {
		t.Errorf("old InFlight() = %d, want 1", n)
	}
	res, body := get(t, c, front+"/agents/x/fast")
	if e := decodeEcho(t, res, body); e.ID != "new" {
		t.Errorf("request after Set reached %q, want new", e.ID)
	}
	if n := p.Lookup("x").InFlight(); n != 0 {
		t.Errorf("new InFlight() after its request finished = %d, want 0", n)
	}
	old.Release()
	if got := <-slow; got != "old" {
		t.Errorf("in-flight request answered %q, want it to finish on old", got)
	}
	if err := prev.Drain(context.Background()); err != nil {
		t.Errorf("Drain after the in-flight request finished = %v, want nil", err)
	}
	if n := prev.InFlight(); n != 0 {
		t.Errorf("old InFlight() = %d, want 0", n)
	}
}

// TestSetRacingRequestNeverLandsOnDrainedUpstream pauses a request after it
// read the old route but before it counted itself in flight, switches and
// drains the old upstream meanwhile, and checks the request then goes to the
// new upstream instead of one that may already be stopped.
func TestSetRacingRequestNeverLandsOnDrainedUpstream(t *testing.T) {
	old := echoUpstream(t, "old")
	next := echoUpstream(t, "new")
	p := newProxy(t, Options{})
	p.Set("x", old.URL)
	front := serveMux(t, p)
	c := testClient(t)

	paused, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	testHookAfterLookup = func() {
		once.Do(func() {
			close(paused)
			<-resume
		})
	}
	t.Cleanup(func() { testHookAfterLookup = nil })

	reply := asyncGet(c, front+"/agents/x/")
	<-paused
	prev := p.Set("x", next.URL)
	if err := prev.Drain(context.Background()); err != nil {
		t.Fatalf("Drain = %v", err)
	}
	close(resume)
	var e echoReply
	if got := <-reply; json.Unmarshal([]byte(got), &e) != nil || e.ID != "new" {
		t.Errorf("request racing Set was answered by %q, want the new upstream", got)
	}
	if n := prev.InFlight(); n != 0 {
		t.Errorf("old InFlight() = %d, want 0", n)
	}
}

func TestDrain(t *testing.T) {
	old := newBlockingUpstream(t, "old")
	next := echoUpstream(t, "new")
	p := newProxy(t, Options{})
	p.Set("x", old.URL)
	front := serveMux(t, p)
	c := testClient(t)

	// An idle upstream drains at once.
	if err := p.Lookup("x").Drain(context.Background()); err != nil {
		t.Fatalf("Drain with nothing in flight = %v, want nil", err)
	}

	reqs := []<-chan string{asyncGet(c, front+"/agents/x/1"), asyncGet(c, front+"/agents/x/2")}
	<-old.started
	<-old.started
	prev := p.Set("x", next.URL)

	// A context that ends first stops the wait with an error saying so.
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	err := prev.Drain(canceled)
	if !errors.Is(err, context.Canceled) || berth.ErrorCode(err) != berth.CodeUnavailable {
		t.Errorf("Drain(canceled ctx) = %v, want an unavailable error wrapping context.Canceled", err)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancelShort()
	if err := prev.Drain(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Drain(expiring ctx) = %v, want context.DeadlineExceeded", err)
	}

	drained := make(chan error, 1)
	go func() { drained <- prev.Drain(context.Background()) }()
	// Two requests are blocked upstream, so Drain cannot have returned.
	select {
	case err := <-drained:
		t.Fatalf("Drain returned %v with %d requests in flight", err, prev.InFlight())
	default:
	}
	old.Release()
	for _, r := range reqs {
		if got := <-r; got != "old" {
			t.Errorf("in-flight request answered %q, want old", got)
		}
	}
	if err := <-drained; err != nil {
		t.Errorf("Drain = %v, want nil once requests finished", err)
	}
}

// refusedURL returns the URL of a loopback port nobody listens on: a dial
// to it is refused.
func refusedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return "http://" + ln.Addr().String()
}

func TestUpstreamFailures(t *testing.T) {
	refused := refusedURL(t)

	// An upstream that accepts the request and drops the connection
	// without answering.
	dropper := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	t.Cleanup(dropper.Close)

	// An upstream that never answers.
	stuck := newBlockingUpstream(t, "stuck")

	tests := []struct {
		name     string
		upstream string
		status   int
		code     string
	}{
		{"refused", refused, http.StatusBadGateway, "bad_gateway"},
		{"closed before response", dropper.URL, http.StatusBadGateway, "bad_gateway"},
		{"response header timeout", stuck.URL, http.StatusGatewayTimeout, "gateway_timeout"},
	}
	p := newProxy(t, Options{ResponseHeaderTimeout: 50 * time.Millisecond})
	front := serveMux(t, p)
	c := testClient(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.Set("x", tt.upstream)
			req, _ := http.NewRequest(http.MethodPost, front+"/agents/x/task", strings.NewReader("{}"))
			res, body := do(t, c, req)
			msg := decodeError(t, res, body, tt.status, tt.code)
			if !strings.Contains(msg, `agent "x"`) {
				t.Errorf("message %q does not name the agent", msg)
			}
			if n := p.Lookup("x").InFlight(); n != 0 {
				t.Errorf("InFlight() after the failure = %d, want 0", n)
			}
		})
	}
}

func TestUpstreamDiesAfterHeaders(t *testing.T) {
	// dieAfter returns an upstream that promises 1000 bytes, sends partial
	// of them and drops the connection.
	dieAfter := func(partial string) string {
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, partial)
			w.(http.Flusher).Flush()
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		}))
		t.Cleanup(up.Close)
		return up.URL
	}
	p := newProxy(t, Options{})
	front := serveMux(t, p)
	c := testClient(t)

	t.Run("before any body", func(t *testing.T) {
		// Nothing of the body arrived, so the proxy can still say 502.
		p.Set("x", dieAfter(""))
		res, body := get(t, c, front+"/agents/x/")
		decodeError(t, res, body, http.StatusBadGateway, "bad_gateway")
	})
	t.Run("mid body", func(t *testing.T) {
		p.Set("x", dieAfter("partial"))
		res, err := c.Get(front + "/agents/x/")
		if err != nil {
			return // the client saw the failure: the connection was aborted
		}
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		// A status may have been sent already; then the truncation must
		// surface as a read error, never as a body that looks complete.
		if err == nil && res.StatusCode != http.StatusBadGateway {
			t.Errorf("GET = %d %q with no error; want 502 or a truncated-body error", res.StatusCode, body)
		}
	})
	if n := p.Lookup("x").InFlight(); n != 0 {
		t.Errorf("InFlight() after the failures = %d, want 0", n)
	}
}

// TestConcurrentSetUnderLoad switches an agent among upstreams while requests
// run. Every request must succeed on one of them, and after Set returned and
// Drain finished on the previous upstream, that upstream must never see
// another request, which is what makes stopping it safe.
func TestConcurrentSetUnderLoad(t *testing.T) {
	const (
		nUpstreams = 3
		nSwitches  = 150
		nWorkers   = 6
	)
	var stopped [nUpstreams]atomic.Bool
	var lateHits atomic.Int64
	urls := make([]string, nUpstreams)
	for i := range nUpstreams {
		id := fmt.Sprint(i)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if stopped[i].Load() {
				lateHits.Add(1)
			}
			_, _ = io.WriteString(w, id)
		}))
		t.Cleanup(srv.Close)
		urls[i] = srv.URL
	}
	p := newProxy(t, Options{})
	p.Set("x", urls[0])
	for i := 1; i < nUpstreams; i++ {
		stopped[i].Store(true)
	}
	front := serveMux(t, p)
	c := testClient(t)

	done := make(chan struct{})
	var wg sync.WaitGroup
	var failures atomic.Int64
	var firstFailure atomic.Value
	var served, attempts atomic.Int64
	for range nWorkers {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				res, err := c.Get(front + "/agents/x/ping")
				attempts.Add(1)
				if err != nil {
					failures.Add(1)
					firstFailure.CompareAndSwap(nil, err.Error())
					continue
				}
				body, err := io.ReadAll(res.Body)
				res.Body.Close()
				served.Add(1)
				if err != nil || res.StatusCode != http.StatusOK || len(body) != 1 || body[0] < '0' || body[0] >= '0'+nUpstreams {
					failures.Add(1)
					firstFailure.CompareAndSwap(nil, fmt.Sprintf("%d %q %v", res.StatusCode, body, err))
				}
			}
		})
	}

	cur := 0
	for s := range nSwitches {
		// Let some requests through between switches so the switches
		// interleave with traffic rather than finishing before it starts.
		for attempts.Load() < int64(2*s) {
			runtime.Gosched()
		}
		next := (cur + 1 + s%(nUpstreams-1)) % nUpstreams
		stopped[next].Store(false)
		prev := p.Set("x", urls[next])
		if prev == nil || prev.URL() != urls[cur] {
			t.Fatalf("Set #%d returned %v, want upstream %s", s, prev, urls[cur])
		}
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		err := prev.Drain(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Drain #%d: %v", s, err)
		}
		stopped[cur].Store(true)
		cur = next
	}
	close(done)
	wg.Wait()

	if n := failures.Load(); n > 0 {
		t.Errorf("%d of %d requests failed during switches; first: %v", n, served.Load(), firstFailure.Load())
	}
	if n := lateHits.Load(); n > 0 {
		t.Errorf("%d requests reached an upstream after it was drained", n)
	}
	if served.Load() == 0 {
		t.Errorf("no request was served during the switches")
	}
}

func TestNameFromPath(t *testing.T) {
	tests := []struct {
		path string
		want string
	}{
		{"/agents/x", "x"},
		{"/agents/x/", "x"},
		{"/agents/my-agent/a/b", "my-agent"},
		{"/agents/", ""},
		{"/agents", ""},
		{"/other/x", ""},
		{"/agents/a%2Fb/c", "a/b"},
		{"/agents/%78/c", "x"},
	}
	for _, tt := range tests {
		req := httptest.NewRequest(http.MethodGet, tt.path, nil)
		if got := nameFromPath(req.URL); got != tt.want {
			t.Errorf("nameFromPath(%q) = %q, want %q", tt.path, got, tt.want)
		}
	}
}

func TestIsEventStream(t *testing.T) {
	tests := []struct {
		ct   []string
		want bool
	}{
		{nil, false},
		{[]string{"text/event-stream"}, true},
		{[]string{"Text/Event-Stream; charset=utf-8"}, true},
		{[]string{" text/event-stream "}, true},
		{[]string{"text/event-streams"}, false},
		{[]string{"application/json"}, false},
		{[]string{"text/event"}, false},
	}
	for _, tt := range tests {
		if got := isEventStream(tt.ct); got != tt.want {
			t.Errorf("isEventStream(%q) = %v, want %v", tt.ct, got, tt.want)
		}
	}
}
