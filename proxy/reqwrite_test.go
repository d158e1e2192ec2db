package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"net/url"
	"reflect"
	"testing"
)

// TestWriteBodylessRequestMatchesRequestWrite checks that the fast writer
// sends what Request.Write sends, as seen by a server parsing it.
func TestWriteBodylessRequestMatchesRequestWrite(t *testing.T) {
	tests := []struct {
		name   string
		method string
		url    string
		header http.Header
	}{
		{"get with query", "GET", "http://127.0.0.1:8080/a2a/message?x=1&y=%20", http.Header{"Accept": {"*/*"}, "User-Agent": {""}}},
		{"escaped path", "GET", "http://127.0.0.1:8080/a%2Fb/c%20d", http.Header{"User-Agent": {"ua/1", "ua/2"}}},
		{"root", "HEAD", "http://127.0.0.1:8080", http.Header{}},
		{"force query", "GET", "http://127.0.0.1:8080/p?", http.Header{"X-Multi": {"a", "b"}}},
		{"post without body", "POST", "http://127.0.0.1:8080/task", http.Header{"Content-Type": {"application/json"}}},
		{"delete", "DELETE", "http://127.0.0.1:8080/task/1", nil},
		{"newline in value", "GET", "http://127.0.0.1:8080/", http.Header{"X-Evil": {"a\r\nX-Injected: 1"}, "X-Pad": {"  v\t"}}},
		{"invalid field name", "GET", "http://127.0.0.1:8080/", http.Header{"Bad Name": {"x"}, "Ok": {"y"}}},
		{"framing headers dropped", "GET", "http://[::1]:8080/", http.Header{"Content-Length": {"5"}, "Transfer-Encoding": {"chunked"}, "Trailer": {"X"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := url.Parse(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			out := &http.Request{Method: tt.method, URL: u, Host: u.Host, Header: tt.header, ProtoMajor: 1, ProtoMinor: 1}
			if out.Header == nil {
				out.Header = http.Header{}
			}
			if _, ok := out.Header["User-Agent"]; !ok {
				// As outboundHeader does: no Go default agent.
				out.Header["User-Agent"] = []string{""}
			}
			var want, got bytes.Buffer
			if err := out.Write(&want); err != nil {
				t.Fatalf("Request.Write: %v", err)
			}
			bw := bufio.NewWriter(&got)
			if err := writeBodylessRequest(bw, out); err != nil {
				t.Fatalf("writeBodylessRequest: %v", err)
			}
			bw.Flush()
			w, err := http.ReadRequest(bufio.NewReader(&want))
			if err != nil {
				t.Fatalf("parsing Request.Write output %q: %v", want.String(), err)
			}
			g, err := http.ReadRequest(bufio.NewReader(&got))
			if err != nil {
				t.Fatalf("parsing writeBodylessRequest output %q: %v", got.String(), err)
			}
			if g.Method != w.Method || g.RequestURI != w.RequestURI || g.Host != w.Host ||
				g.ContentLength != w.ContentLength || !reflect.DeepEqual(g.TransferEncoding, w.TransferEncoding) {
				t.Errorf("writeBodylessRequest = %s %s host %q length %d %v; Request.Write = %s %s host %q length %d %v",
					g.Method, g.RequestURI, g.Host, g.ContentLength, g.TransferEncoding,
					w.Method, w.RequestURI, w.Host, w.ContentLength, w.TransferEncoding)
			}
			if !reflect.DeepEqual(g.Header, w.Header) {
				t.Errorf("writeBodylessRequest header = %v, Request.Write header = %v", g.Header, w.Header)
			}
		})
	}
}

func TestWriteBodylessRequestRejectsControlCharacters(t *testing.T) {
	out := &http.Request{Method: "GET", URL: &url.URL{Path: "/a", RawQuery: "x=\n"}, Host: "h", Header: http.Header{}}
	bw := bufio.NewWriter(&bytes.Buffer{})
	if err := writeBodylessRequest(bw, out); err == nil {
		t.Errorf("writeBodylessRequest(query %q) = nil, want an error", out.URL.RawQuery)
	}
}

func TestPlainHost(t *testing.T) {
	tests := []struct {
		host string
		want bool
	}{
		{"127.0.0.1:8080", true},
		{"agent.local", true},
		{"[::1]:80", true},
		{"[fe80::1%25eth0]:80", false},
		{"bücher.example", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := plainHost(tt.host); got != tt.want {
			t.Errorf("plainHost(%q) = %v, want %v", tt.host, got, tt.want)
		}
	}
}
