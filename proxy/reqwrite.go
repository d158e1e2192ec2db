package proxy

import (
	"bufio"
	"errors"
	"net/http"
	"strings"
)

// errCTLInURI rejects a request target with control characters, as
// Request.Write does.
var errCTLInURI = errors.New("proxy: control character in request URI")

// writeBodylessRequest writes the head of out, which has no body, to bw the
// way out.Write would: request line, Host, User-Agent (only when set and
// non-empty), Content-Length: 0 for the methods servers expect it on, then
// the other header fields with newlines in values turned into spaces. It
// skips Request.Write's fmt formatting, sorted-header copy and transfer
// bookkeeping, measurable on the proxy's hot path. Header order is not
// sorted; only the order of one field's values matters (RFC 9110 §5.3), and
// that is kept. The caller guarantees out.Host is a plain host[:port]
// (see plainHost). Unlike Request.Write it never adds Go's default
// User-Agent; outboundHeader always sets one, empty meaning none.
func writeBodylessRequest(bw *bufio.Writer, out *http.Request) error {
	path := out.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	if hasCTL(path) || hasCTL(out.URL.RawQuery) {
		return errCTLInURI
	}
	method := out.Method
	if method == "" {
		method = http.MethodGet
	}
	bw.WriteString(method)
	bw.WriteByte(' ')
	bw.WriteString(path)
	if out.URL.RawQuery != "" || out.URL.ForceQuery {
		bw.WriteByte('?')
		bw.WriteString(out.URL.RawQuery)
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(out.Host)
	bw.WriteString("\r\n")
	if method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch {
		bw.WriteString("Content-Length: 0\r\n")
	}
	for k, vv := range out.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		if !validFieldName(k) {
			// Request.Write drops these too.
			continue
		}
		if k == "User-Agent" && len(vv) > 1 {
			// Request.Write sends only the first User-Agent.
			vv = vv[:1]
		}
		for _, v := range vv {
			if strings.ContainsAny(v, "\r\n") {
				v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
			}
			v = strings.Trim(v, " \t")
			if v == "" && k == "User-Agent" {
				// An empty User-Agent means "send none".
				continue
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// hasCTL reports whether s contains an ASCII control character.
func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] == 0x7f {
			return true
		}
	}
	return false
}

// validFieldName reports whether k is an RFC 9110 token.
func validFieldName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// plainHost reports whether host (a URL's host[:port]) can be written as
// the Host header as it is: ASCII letters, digits, '.', '-', ':' and the
// brackets of an IPv6 literal, so no punycoding or zone removal applies.
func plainHost(host string) bool {
	if host == "" {
		return false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '-', c == ':', c == '[', c == ']':
		default:
			return false
		}
	}
	return true
}
