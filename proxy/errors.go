package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Codes of the proxy's own error bodies. They are not berth.Codes because
// they describe the agent's upstream, not a Berth operation; the body shape
// is the API's.
const (
	codeBadGateway     = "bad_gateway"
	codeGatewayTimeout = "gateway_timeout"
	// codeUnavailable is berth.CodeUnavailable: the server itself cannot
	// serve the request now (it is shutting down).
	codeUnavailable = "unavailable"
)

// shutdownAnswerTimeout bounds writing the 503 a connection gets when its
// request arrives as the server shuts down.
const shutdownAnswerTimeout = time.Second

// errorBody is the API's error shape: {"status_code", "message", "detail",
// "code"}. Detail repeats the message for clients written against FastAPI.
type errorBody struct {
	StatusCode int    `json:"status_code"`
	Message    string `json:"message"`
	Detail     string `json:"detail"`
	Code       string `json:"code"`
}

// writeError writes status with the API's JSON error body.
func writeError(w http.ResponseWriter, status int, code, message string) {
	b, err := json.Marshal(errorBody{StatusCode: status, Message: message, Detail: message, Code: code})
	if err != nil {
		// Marshalling four plain fields cannot fail; keep a body anyway.
		b = []byte(`{"status_code":` + strconv.Itoa(status) + `,"code":"` + code + `"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeError writes an error answer as writeError does, under the write
// deadline (see Options.WriteTimeout): a pipelining client that reads
// nothing must not hold the connection even when all it gets is errors.
func (p *Proxy) writeError(w http.ResponseWriter, status int, code, message string) {
	cw := newClientWriter(w, p.writeTimeout)
	cw.refresh()
	writeError(w, status, code, message)
}

// isTimeout reports whether an upstream round trip failed because a deadline
// passed: the Transport's ResponseHeaderTimeout or dial timeout, or a deadline
// on the request's context.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// upstreamError answers a failed upstream round trip: 504 for a timeout, 502
// otherwise, and logs it (at debug level when the client itself went away,
// since that is no fault of the upstream).
func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, u *Upstream, err error) {
	status, code, msg := http.StatusBadGateway, codeBadGateway, "agent "+strconv.Quote(u.agent)+" upstream is unavailable"
	if isTimeout(err) {
		status, code, msg = http.StatusGatewayTimeout, codeGatewayTimeout, "agent "+strconv.Quote(u.agent)+" upstream timed out"
	}
	if r.Context().Err() != nil && errors.Is(err, context.Canceled) {
		p.log.Debug("proxy: client went away", "agent", u.agent, "upstream", u.raw, "err", err)
	} else {
		p.log.Warn("proxy: upstream request failed", "agent", u.agent, "upstream", u.raw,
			"method", r.Method, "status", status, "err", err)
	}
	p.writeError(w, status, code, msg)
}
