package main

import (
	"archive/zip"
	"bytes"
	"io"
	"io/fs"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	series := func(n int) []time.Duration {
		ds := make([]time.Duration, n)
		for i := range ds {
			ds[i] = time.Duration(n-i) * time.Millisecond // reversed, so sorting matters
		}
		return ds
	}
	tests := []struct {
		name string
		in   []time.Duration
		want summary
	}{
		{"empty", nil, summary{}},
		{"one", []time.Duration{7}, summary{N: 1, P50: 7, P90: 7, P99: 7, Max: 7}},
		{"1000", series(1000), summary{N: 1000, P50: 500 * time.Millisecond, P90: 900 * time.Millisecond,
			P99: 990 * time.Millisecond, Max: 1000 * time.Millisecond}},
		{"10", series(10), summary{N: 10, P50: 5 * time.Millisecond, P90: 9 * time.Millisecond,
			P99: 10 * time.Millisecond, Max: 10 * time.Millisecond}},
		{"3", []time.Duration{3, 1, 2}, summary{N: 3, P50: 2, P90: 3, P99: 3, Max: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := summarize(tt.in); got != tt.want {
				t.Errorf("summarize(%s) = %+v, want %+v", tt.name, got, tt.want)
			}
		})
	}
}

func TestParseServerTiming(t *testing.T) {
	tests := []struct {
		in      string
		want    map[string]time.Duration
		wantErr bool
	}{
		{"rollback;dur=3.125, ready;dur=0.402", map[string]time.Duration{"rollback": 3125 * time.Microsecond, "ready": 402 * time.Microsecond}, false},
		{`rollback;desc="x";dur="12"`, map[string]time.Duration{"rollback": 12 * time.Millisecond}, false},
		{"cache, rollback;dur=1", map[string]time.Duration{"rollback": time.Millisecond}, false},
		{"", map[string]time.Duration{}, false},
		{"rollback;dur=abc", nil, true},
	}
	for _, tt := range tests {
		got, err := parseServerTiming(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseServerTiming(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if tt.wantErr {
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("parseServerTiming(%q) = %v, want %v", tt.in, got, tt.want)
			continue
		}
		for k, v := range tt.want {
			if got[k] != v {
				t.Errorf("parseServerTiming(%q)[%q] = %v, want %v", tt.in, k, got[k], v)
			}
		}
	}
}

const wrkReport = `Running 10s test @ http://127.0.0.1:34567/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.52ms    2.10ms  45.30ms   91.23%
    Req/Sec    22.61k     1.92k   27.40k    71.00%
  Latency Distribution
     50%    1.10ms
     75%    1.60ms
     90%    2.50ms
     99%   12.40ms
  450123 requests in 10.00s, 60.10MB read
  Socket errors: connect 0, read 2, write 1, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:  45012.30
Transfer/sec:      6.01MB
`

func TestParseWrk(t *testing.T) {
	got, err := parseWrk(wrkReport)
	if err != nil {
		t.Fatalf("parseWrk: %v", err)
	}
	want := loadResult{
		RPS:      45012.30,
		Lat:      summary{N: 450123, P50: 1100 * time.Microsecond, P90: 2500 * time.Microsecond, P99: 12400 * time.Microsecond, Max: 45300 * time.Microsecond},
		Requests: 450123,
		Errors:   10,
	}
	if got != want {
		t.Errorf("parseWrk = %+v, want %+v", got, want)
	}
	if _, err := parseWrk("wrk: connection refused\n"); err == nil {
		t.Errorf("parseWrk(garbage) = nil error, want an error")
	}
}

func TestEpochs(t *testing.T) {
	var ep epochs
	ep.set("1.0.0")          // 0
	ep.set("1.0.0", "1.1.0") // 1: switching
	ep.set("1.1.0")          // 2: switched
	tests := []struct {
		e0, e1  int
		version string
		want    bool
	}{
		{0, 0, "1.0.0", true},
		{0, 0, "1.1.0", false}, // nothing had switched when it was sent and answered
		{0, 1, "1.1.0", true},
		{1, 2, "1.0.0", true},  // sent during the switch
		{2, 2, "1.0.0", false}, // sent after the switch returned
		{2, 2, "1.1.0", true},
		{0, 2, "2.0.0", false},
	}
	for _, tt := range tests {
		if got := ep.ok(tt.e0, tt.e1, tt.version); got != tt.want {
			t.Errorf("ok(%d, %d, %q) = %v, want %v", tt.e0, tt.e1, tt.version, got, tt.want)
		}
	}
	if got := ep.current(); got != 2 {
		t.Errorf("current() = %d, want 2", got)
	}
}

func TestZipFiles(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 2<<20)
	b, err := zipFiles(map[string][]byte{"a.json": []byte("{}"), "bin": big}, map[string]fs.FileMode{"bin": 0o755})
	if err != nil {
		t.Fatalf("zipFiles: %v", err)
	}
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("reading the zip: %v", err)
	}
	if len(zr.File) != 2 {
		t.Fatalf("zip has %d entries, want 2", len(zr.File))
	}
	for _, f := range zr.File {
		wantMode, wantMethod, wantLen := fs.FileMode(0o644), zip.Deflate, 2
		if f.Name == "bin" {
			wantMode, wantMethod, wantLen = 0o755, zip.Store, len(big)
		}
		if f.Mode().Perm() != wantMode || f.Method != wantMethod {
			t.Errorf("%s: mode %v method %d, want %v %d", f.Name, f.Mode().Perm(), f.Method, wantMode, wantMethod)
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || len(data) != wantLen {
			t.Errorf("%s: read %d bytes (err %v), want %d", f.Name, len(data), err, wantLen)
		}
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
