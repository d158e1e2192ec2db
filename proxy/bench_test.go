package proxy

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"
)

// benchBody is what the minimal backend answers: a small JSON document, the
// shape of a typical agent reply.
var benchBody = []byte(`{"jsonrpc":"2.0","id":1,"result":{"status":"ok"}}`)

// newBenchBackend starts the minimal upstream the benchmarks hit over real
// loopback TCP.
func newBenchBackend(b *testing.B) *httptest.Server {
	b.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(benchBody)
	}))
	b.Cleanup(srv.Close)
	return srv
}

// runBench sends GETs to url from parallel keep-alive clients and reports
// the p50 and p99 request latency next to ns/op.
func runBench(b *testing.B, url string) {
	b.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 1024, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	// Warm the connection pools so the timed loop measures steady state.
	for range 64 {
		benchGet(b, client, url)
	}
	b.SetParallelism(16)
	b.ReportAllocs()
	b.ResetTimer()
	var (
		mu  sync.Mutex
		all []time.Duration
	)
	b.RunParallel(func(pb *testing.PB) {
		lat := make([]time.Duration, 0, 1024)
		for pb.Next() {
			start := time.Now()
			benchGet(b, client, url)
			lat = append(lat, time.Since(start))
		}
		mu.Lock()
		all = append(all, lat...)
		mu.Unlock()
	})
	b.StopTimer()
	if len(all) > 0 {
		slices.Sort(all)
		pct := func(q float64) float64 {
			return float64(all[int(q*float64(len(all)-1))].Nanoseconds()) / 1e3
		}
		b.ReportMetric(pct(0.50), "p50-µs")
		b.ReportMetric(pct(0.99), "p99-µs")
	}
}

func benchGet(b *testing.B, client *http.Client, url string) {
	res, err := client.Get(url)
	if err != nil {
		b.Error(err)
		return
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b.Errorf("GET %s = %d, want 200", url, res.StatusCode)
	}
}

// BenchmarkDirect is the baseline: clients straight to the backend.
func BenchmarkDirect(b *testing.B) {
	backend := newBenchBackend(b)
	runBench(b, backend.URL+"/a2a/message?x=1")
}

// BenchmarkProxy is the same load through the proxy's handler, mounted on
// a ServeMux behind a plain http.Server (the path of requests the Frontend
// hands over).
func BenchmarkProxy(b *testing.B) { benchProxy(b, false) }

// BenchmarkFrontend is the same load through the Frontend, as berth serve
// runs the proxy.
func BenchmarkFrontend(b *testing.B) {
	backend := newBenchBackend(b)
	p := New(Options{})
	b.Cleanup(p.CloseIdleConnections)
	p.Set("bench", backend.URL)
	mux := http.NewServeMux()
	p.Mount(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	front := NewFrontend(p, ln, FrontendOptions{})
	hs := &http.Server{Handler: mux}
	go func() { _ = hs.Serve(front.Fallback()) }()
	go func() { _ = front.Serve() }()
	b.Cleanup(func() {
		front.Close()
		hs.Close()
	})
	runBench(b, "http://"+ln.Addr().String()+"/agents/bench/a2a/message?x=1")
}

// BenchmarkProxyTransport is BenchmarkProxy with the in-handler fast path
// switched off, so every request goes through http.Transport as unusual
// requests (upgrades, Expect: 100-continue, trailers) still do.
func BenchmarkProxyTransport(b *testing.B) { benchProxy(b, true) }

func benchProxy(b *testing.B, transportOnly bool) {
	backend := newBenchBackend(b)
	p := New(Options{})
	if transportOnly {
		p.fast = nil
	}
	b.Cleanup(p.CloseIdleConnections)
	p.Set("bench", backend.URL)
	mux := http.NewServeMux()
	p.Mount(mux)
	front := httptest.NewServer(mux)
	b.Cleanup(front.Close)
	runBench(b, front.URL+"/agents/bench/a2a/message?x=1")
}

// stubTransport answers every request in memory, so BenchmarkForward*
// measure only the proxy's own per-request work.
type stubTransport struct{}

func (stubTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode:    200,
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"application/json"}, "Content-Length": {"49"}},
		ContentLength: int64(len(benchBody)),
		Body:          io.NopCloser(bytes.NewReader(benchBody)),
		Request:       r,
	}, nil
}

type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

// BenchmarkForward measures the proxy's own per-request work: routing,
// building the upstream request and copying the response, with the network
// stubbed out.
func BenchmarkForward(b *testing.B) {
	p := New(Options{Transport: stubTransport{}})
	p.Set("bench", "http://127.0.0.1:1")
	req := httptest.NewRequest("GET", "/agents/bench/a2a/message?x=1", nil)
	req.Header.Set("User-Agent", "bench")
	req.Header.Set("Accept", "*/*")
	req.SetPathValue("name", "bench")
	req.SetPathValue("path", "a2a/message")
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		p.ServeHTTP(w, req)
	}
}
