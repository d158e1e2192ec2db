package proxy

import (
	"bytes"
	"errors"
)

// This file parses HTTP/1.1 message heads for the Frontend. The request
// parser is deliberately narrow: it accepts only what it can forward
// byte-for-byte without ambiguity and reports anything else (other
// versions, Transfer-Encoding, Upgrade, Expect, escaped or unclean paths,
// obs-fold, bare LF line ends, ...) as not simple, so the connection goes
// to net/http, which owns every edge case. The response parser is the
// proxy's client side and must accept whatever a reasonable upstream sends.

// headEnd returns the length of the message head at the start of b (up to
// and including the empty line that ends it), or -1 if b holds no complete
// head yet. from is how many bytes of b were already searched. Lines may
// end in CRLF or bare LF, as net/textproto allows.
func headEnd(b []byte, from int) int {
	if from > 0 {
		// The terminator may straddle the previous search's end.
		from = max(from-3, 0)
	}
	for i := from; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		if i < len(b) && b[i] == '\n' {
			return i + 1
		}
		if i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n' {
			return i + 2
		}
	}
}

// reqHead is a parsed simple request head; its slices point into the
// buffer that was parsed.
type reqHead struct {
	method []byte
	name   []byte // the agent name: the path segment after /agents/
	rest   []byte // the path after /agents/{name}: empty or starting with '/'
	query  []byte // the query without its '?'; empty when there is none
	host   []byte
	// headers is the header section (every line after the request line,
	// each ending in CRLF, without the final empty line).
	headers       []byte
	contentLength int64
	close         bool // the client sent Connection: close
	head          bool // the method is HEAD
}

// headerKind classifies the header fields the Frontend treats specially.
type headerKind uint8

const (
	hkOther headerKind = iota
	hkHost
	hkContentLength
	hkConnection
	hkTransferEncoding
	hkTE
	hkUpgrade
	hkTrailer
	hkExpect
	// hkHop fields are hop-by-hop (RFC 9110 §7.6.1 and the non-standard
	// ones proxies traditionally drop) and dropped when forwarding, both
	// ways.
	hkHop
	// hkForwarding fields are set by the proxy itself, never taken from
	// the client.
	hkForwarding
)

// kindOf classifies a header field name, ignoring case.
func kindOf(name []byte) headerKind {
	eq := func(s string) bool { return equalFold(name, s) }
	switch len(name) {
	case 2:
		if eq("Te") {
			return hkTE
		}
	case 4:
		if eq("Host") {
			return hkHost
		}
	case 6:
		if eq("Expect") {
			return hkExpect
		}
	case 7:
		if eq("Upgrade") {
			return hkUpgrade
		}
		if eq("Trailer") {
			return hkTrailer
		}
	case 9:
		if eq("Forwarded") {
			return hkForwarding
		}
	case 10:
		if eq("Connection") {
			return hkConnection
		}
		if eq("Keep-Alive") {
			return hkHop
		}
	case 14:
		if eq("Content-Length") {
			return hkContentLength
		}
	case 15:
		if eq("X-Forwarded-For") {
			return hkForwarding
		}
	case 16:
		if eq("Proxy-Connection") {
			return hkHop
		}
		if eq("X-Forwarded-Host") {
			return hkForwarding
		}
	case 17:
		if eq("Transfer-Encoding") {
			return hkTransferEncoding
		}
		if eq("X-Forwarded-Proto") {
			return hkForwarding
		}
	case 18:
		if eq("Proxy-Authenticate") {
			return hkHop
		}
		if eq("X-Forwarded-Prefix") {
			return hkForwarding
		}
	case 19:
		if eq("Proxy-Authorization") {
			return hkHop
		}
	}
	return hkOther
}

// asciiEqualFold reports whether b equals s ignoring ASCII case; s must be
// as long as b.
func asciiEqualFold[S string | []byte](b []byte, s S) bool {
	for i := range len(b) {
		c, d := b[i], s[i]
		if c == d {
			continue
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// equalFold is asciiEqualFold for operands of any length.
func equalFold[S string | []byte](b []byte, s S) bool {
	return len(b) == len(s) && asciiEqualFold(b, s)
}

// nextToken splits the first element off the comma-separated list v,
// without its surrounding whitespace.
func nextToken(v []byte) (tok, rest []byte) {
	if i := bytes.IndexByte(v, ','); i >= 0 {
		tok, rest = v[:i], v[i+1:]
	} else {
		tok = v
	}
	return bytes.Trim(tok, " \t"), rest
}

// hasToken reports whether the comma-separated list v contains tok,
// ignoring case and surrounding whitespace.
func hasToken[S string | []byte](v []byte, tok S) bool {
	for len(v) > 0 {
		var t []byte
		t, v = nextToken(v)
		if equalFold(t, tok) {
			return true
		}
	}
	return false
}

// isTokenChar reports whether c may appear in a method or header name
// (RFC 9110 §5.6.2 tchar).
func isTokenChar(c byte) bool {
	return tokenTable[c]
}

var tokenTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// pathTable marks the bytes the Frontend forwards in a path as they are:
// RFC 3986 pchar and '/' without '%' (an escaped path goes to net/http,
// which unescapes the agent name and keeps the raw path).
var pathTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "-._~!$&'()*+,;=:@/" {
		t[c] = true
	}
	return t
}()

// hostTable marks the bytes net/http accepts in a Host header (as
// httpguts.ValidHostHeader does): a request with any other goes to
// net/http, which answers 400.
var hostTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!$%&'()*+,-.:;=[]_~" {
		t[c] = true
	}
	return t
}()

// isQueryChar reports whether c may appear in a forwarded query: any
// visible ASCII byte but '#'.
func isQueryChar(c byte) bool { return c > ' ' && c < 0x7f && c != '#' }

// maxFrontendBody is the largest request body the Frontend forwards; a
// larger one goes to net/http, whose Transport path streams both ways (see
// maxFastBody).
const maxFrontendBody = maxFastBody

// parseRequestHead parses the complete head h (as delimited by headEnd)
// and reports whether it is a simple request the Frontend can forward
// itself: HTTP/1.1, origin-form target under /agents/{name} with a clean
// unescaped path, one Host of the bytes net/http allows, at most one
// Content-Length no larger than maxFrontendBody, no Transfer-Encoding,
// Upgrade, Expect, TE or Trailer, a Connection header naming only close or
// keep-alive, and CRLF line ends without obs-fold or control characters.
func parseRequestHead(h []byte, rh *reqHead) bool {
	*rh = reqHead{}
	eol := bytes.IndexByte(h, '\n')
	if eol < 1 || h[eol-1] != '\r' {
		return false
	}
	line := h[:eol-1]
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return false
	}
	rh.method = line[:sp]
	for _, c := range rh.method {
		if !isTokenChar(c) {
			return false
		}
	}
	if string(rh.method) == "CONNECT" {
		return false
	}
	rh.head = string(rh.method) == "HEAD"
	line = line[sp+1:]
	sp = bytes.IndexByte(line, ' ')
	if sp < 0 || string(line[sp+1:]) != "HTTP/1.1" {
		return false
	}
	if !parseTarget(line[:sp], rh) {
		return false
	}

	rh.headers = h[eol+1:]
	// Drop the final empty line.
	if !bytes.HasSuffix(rh.headers, []byte("\r\n")) {
		return false
	}
	rh.headers = rh.headers[:len(rh.headers)-2]
	rh.contentLength = 0
	seenHost, seenLength := false, false
	for rest := rh.headers; len(rest) > 0; {
		name, value, next, ok := nextHeader(rest)
		if !ok {
			return false
		}
		rest = next
		switch kindOf(name) {
		case hkHost:
			if seenHost || len(value) == 0 {
				return false
			}
			// net/http answers 400 to a Host with other bytes.
			for _, c := range value {
				if !hostTable[c] {
					return false
				}
			}
			seenHost = true
			rh.host = value
		case hkContentLength:
			if seenLength {
				return false
			}
			seenLength = true
			n, ok := parseLength(value)
			if !ok || n > maxFrontendBody {
				return false
			}
			rh.contentLength = n
		case hkConnection:
			if !connectionSimple(value, &rh.close) {
				return false
			}
		case hkTransferEncoding, hkTE, hkUpgrade, hkTrailer, hkExpect:
			return false
		}
	}
	return seenHost
}

// parseTarget splits an origin-form /agents/{name}[/rest][?query] target
// into rh, reporting false for anything else or a path ServeMux would
// redirect (empty, '.' or '..' segments).
func parseTarget(t []byte, rh *reqHead) bool {
	const prefix = "/agents/"
	if !bytes.HasPrefix(t, []byte(prefix)) {
		return false
	}
	path := t
	if q := bytes.IndexByte(t, '?'); q >= 0 {
		path, rh.query = t[:q], t[q+1:]
		for _, c := range rh.query {
			if !isQueryChar(c) {
				return false
			}
		}
	}
	for _, c := range path {
		if !pathTable[c] {
			return false
		}
	}
	after := path[len(prefix):]
	if i := bytes.IndexByte(after, '/'); i >= 0 {
		rh.name, rh.rest = after[:i], after[i:]
	} else {
		rh.name = after
	}
	if len(rh.name) == 0 || rh.name[0] == '.' && (len(rh.name) == 1 || len(rh.name) == 2 && rh.name[1] == '.') {
		return false
	}
	return cleanPath(rh.rest)
}

// cleanPath reports whether p (empty or starting with '/') has no empty,
// '.' or '..' segment other than an empty last one, so that ServeMux would
// route it without a redirect.
func cleanPath(p []byte) bool {
	for len(p) > 0 {
		// p starts with '/'.
		p = p[1:]
		seg := p
		if i := bytes.IndexByte(p, '/'); i >= 0 {
			seg, p = p[:i], p[i:]
			if len(seg) == 0 {
				return false
			}
		} else {
			p = nil
		}
		if string(seg) == "." || string(seg) == ".." {
			return false
		}
	}
	return true
}

// nextHeader reads one "Name: value\r\n" line from b. It reports false for
// a line without CRLF, obs-fold, an invalid name, whitespace before the
// colon, or control characters other than HTAB in the value. value has
// surrounding whitespace trimmed.
func nextHeader(b []byte) (name, value, rest []byte, ok bool) {
	eol := bytes.IndexByte(b, '\n')
	if eol < 1 || b[eol-1] != '\r' {
		return nil, nil, nil, false
	}
	line, rest := b[:eol-1], b[eol+1:]
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return nil, nil, nil, false
	}
	name = line[:colon]
	for _, c := range name {
		if !isTokenChar(c) {
			return nil, nil, nil, false
		}
	}
	value = line[colon+1:]
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			return nil, nil, nil, false
		}
	}
	return name, bytes.Trim(value, " \t"), rest, true
}

// parseLength parses a Content-Length value: decimal digits only.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// connectionSimple reports whether a Connection value names only close and
// keep-alive (any other token lists a header that would have to be
// dropped, or asks for an upgrade), setting *closeConn for close.
func connectionSimple(v []byte, closeConn *bool) bool {
	for len(v) > 0 {
		var tok []byte
		tok, v = nextToken(v)
		switch {
		case len(tok) == 0:
		case equalFold(tok, "close"):
			*closeConn = true
		case equalFold(tok, "keep-alive"):
		default:
			return false
		}
	}
	return true
}

// resHead is a parsed upstream response head.
type resHead struct {
	status int
	// statusLine is the status code and reason phrase, without the
	// version and line end.
	statusLine []byte
	// headers is the header section, as for reqHead.
	headers       []byte
	contentLength int64 // -1 when absent
	chunked       bool
	// keepAlive reports that the upstream connection may carry another
	// request once this response has been read.
	keepAlive bool
	// connTokens is the upstream's Connection header values; fields they
	// name are hop-by-hop.
	connTokens [][]byte
}

// Errors of the upstream's response head; each becomes a 502.
var (
	errBadResponse      = errors.New("malformed HTTP response from upstream")
	errBadLength        = errors.New("invalid Content-Length from upstream")
	errBadTE            = errors.New("unsupported Transfer-Encoding from upstream")
	errResponseTooLarge = errors.New("upstream response head too large")
)

// parseResponseHead parses a complete response head h (as delimited by
// headEnd). Lines may end in bare LF. into is reused for connTokens.
func parseResponseHead(h []byte, rs *resHead) error {
	tokens := rs.connTokens[:0]
	*rs = resHead{contentLength: -1, connTokens: tokens}
	eol := bytes.IndexByte(h, '\n')
	if eol < 0 {
		return errBadResponse
	}
	line := bytes.TrimSuffix(h[:eol], []byte("\r"))
	var http10 bool
	switch {
	case bytes.HasPrefix(line, []byte("HTTP/1.1 ")):
	case bytes.HasPrefix(line, []byte("HTTP/1.0 ")):
		http10 = true
	default:
		return errBadResponse
	}
	rs.statusLine = line[len("HTTP/1.1 "):]
	if len(rs.statusLine) < 3 || len(rs.statusLine) > 3 && rs.statusLine[3] != ' ' {
		return errBadResponse
	}
	for _, c := range rs.statusLine[:3] {
		if c < '0' || c > '9' {
			return errBadResponse
		}
		rs.status = rs.status*10 + int(c-'0')
	}
	if rs.status < 100 {
		return errBadResponse
	}
	for _, c := range rs.statusLine {
		if c < ' ' && c != '\t' || c == 0x7f {
			return errBadResponse
		}
	}
	rs.headers = h[eol+1:]
	rs.keepAlive = !http10
	for rest := rs.headers; len(rest) > 0; {
		eol := bytes.IndexByte(rest, '\n')
		if eol < 0 {
			return errBadResponse
		}
		line := bytes.TrimSuffix(rest[:eol], []byte("\r"))
		rest = rest[eol+1:]
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return errBadResponse
		}
		name := line[:colon]
		for _, c := range name {
			if !isTokenChar(c) {
				return errBadResponse
			}
		}
		value := bytes.Trim(line[colon+1:], " \t")
		for _, c := range value {
			if c < ' ' && c != '\t' || c == 0x7f {
				return errBadResponse
			}
		}
		switch kindOf(name) {
		case hkContentLength:
			n, ok := parseLength(value)
			if !ok || rs.contentLength >= 0 && rs.contentLength != n {
				return errBadLength
			}
			rs.contentLength = n
		case hkTransferEncoding:
			if !equalFold(value, "chunked") || rs.chunked {
				return errBadTE
			}
			rs.chunked = true
		case hkConnection:
			rs.connTokens = append(rs.connTokens, value)
			if hasToken(value, "close") {
				rs.keepAlive = false
			} else if http10 && hasToken(value, "keep-alive") {
				rs.keepAlive = true
			}
		}
	}
	switch {
	case rs.chunked && http10:
		// HTTP/1.0 has no chunked coding; net/http ignores the header
		// there and reads to the end of the connection.
		rs.chunked, rs.keepAlive = false, false
	case rs.chunked && rs.contentLength >= 0:
		// Transfer-Encoding overrides Content-Length, and a connection
		// that carried both must not be reused (RFC 9112 §6.3).
		rs.contentLength = -1
		rs.keepAlive = false
	}
	return nil
}

// bodyless reports whether a response with this status to a request with
// this method has no body whatever its headers say.
func bodyless(status int, head bool) bool {
	return head || status < 200 || status == 204 || status == 304
}

// chunkScanner follows a chunked body as it is copied through unchanged,
// to find where it ends (after the last chunk and the trailer section).
// It is strict: anything it does not understand is an error, and the
// upstream connection is then not reused.
type chunkScanner struct {
	state   uint8
	size    uint64 // bytes of chunk data left, or the size being parsed
	digits  int
	trailer int // bytes of trailer section seen, bounded
}

const (
	csSize        = iota // reading the chunk-size hex digits
	csExt                // skipping a chunk extension up to CR
	csSizeLF             // expecting LF after the size line's CR
	csData               // copying chunk data
	csDataCR             // expecting CR after chunk data
	csDataLF             // expecting LF after chunk data
	csLineStart          // at the start of a trailer line (or the final CRLF)
	csTrailerName        // inside a trailer field name
	csTrailer            // inside a trailer field value
	csTrailerLF          // expecting LF after a trailer line's CR
	csEndLF              // expecting the final LF
	csDone
)

// maxTrailerBytes bounds the trailer section a chunked body may carry.
const maxTrailerBytes = 64 << 10

var errBadChunk = errors.New("malformed chunked body from upstream")

// scan consumes p, the next bytes of the body, and returns how many of
// them belong to it: len(p), or fewer when the body ended inside p (done
// is then true).
func (s *chunkScanner) scan(p []byte) (n int, done bool, err error) {
	for n < len(p) {
		c := p[n]
		switch s.state {
		case csSize:
			switch {
			case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
				if s.digits == 15 {
					return n, false, errBadChunk
				}
				s.size = s.size<<4 | uint64(unhex(c))
				s.digits++
			case c == ';' && s.digits > 0:
				s.state = csExt
			case c == '\r' && s.digits > 0:
				s.state = csSizeLF
			default:
				return n, false, errBadChunk
			}
		case csExt:
			if c == '\r' {
				s.state = csSizeLF
			} else if c < ' ' && c != '\t' || c == 0x7f {
				return n, false, errBadChunk
			}
		case csSizeLF:
			if c != '\n' {
				return n, false, errBadChunk
			}
			s.digits = 0
			if s.size == 0 {
				s.state = csLineStart
			} else {
				s.state = csData
			}
		case csData:
			k := uint64(len(p) - n)
			if k > s.size {
				k = s.size
			}
			n += int(k)
			s.size -= k
			if s.size == 0 {
				s.state = csDataCR
			}
			continue
		case csDataCR:
			if c != '\r' {
				return n, false, errBadChunk
			}
			s.state = csDataLF
		case csDataLF:
			if c != '\n' {
				return n, false, errBadChunk
			}
			s.state = csSize
		case csLineStart:
			switch {
			case c == '\r':
				s.state = csEndLF
			case isTokenChar(c):
				s.state = csTrailerName
			default:
				return n, false, errBadChunk
			}
		case csTrailerName:
			if c == ':' {
				s.state = csTrailer
			} else if !isTokenChar(c) {
				return n, false, errBadChunk
			}
		case csTrailer:
			if c == '\r' {
				s.state = csTrailerLF
			} else if c < ' ' && c != '\t' || c == 0x7f {
				return n, false, errBadChunk
			}
		case csTrailerLF:
			if c != '\n' {
				return n, false, errBadChunk
			}
			s.state = csLineStart
		case csEndLF:
			if c != '\n' {
				return n, false, errBadChunk
			}
			s.state = csDone
			return n + 1, true, nil
		}
		if s.state >= csLineStart {
			s.trailer++
			if s.trailer > maxTrailerBytes {
				return n, false, errBadChunk
			}
		}
		n++
	}
	return n, false, nil
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}
