// Command echo-agent is a small A2A agent that echoes messages back, tagged
// with the version that answered. It is Berth's example agent and the agent
// Berth's own tests deploy.
//
// It listens on 127.0.0.1:$PORT and serves:
//
//	GET  /.well-known/agent.json  its A2A agent card (version from $BERTH_AGENT_VERSION)
//	POST /                        JSON-RPC 2.0; method "message/send" echoes the text parts
//	GET  /healthz                 200 while the process is serving
//	GET  /whoami                  name, version, deployment and greeting it runs with
//	GET  /slow?ms=N               answers after N milliseconds (for drain tests)
//	GET  /sse?n=N&ms=M            N server-sent events, M milliseconds apart
//
// $ECHO_GREETING, when set, is added to every echo. SIGTERM or SIGINT stops
// the server gracefully: requests in flight are finished first.
//
// It uses only the standard library, so its folder zipped alone is a
// complete Berth package (see berth.json).
package main

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// defaultCard is used when the working directory has no AgentCard.json.
//
//go:embed AgentCard.json
var defaultCard []byte

const (
	// maxBodyBytes bounds a JSON-RPC request body.
	maxBodyBytes = 1 << 20
	// maxSlow and maxEvents bound the test endpoints so a typo cannot park
	// a request for hours.
	maxSlow   = 10 * time.Minute
	maxEvents = 10_000
	// shutdownTimeout is how long requests in flight get to finish after
	// SIGTERM.
	shutdownTimeout = 30 * time.Second
)

// JSON-RPC 2.0 error codes.
const (
	codeParseError     = -32700
	codeInvalidRequest = -32600
	codeMethodNotFound = -32601
	codeInvalidParams  = -32602
)

// config is what the agent runs with, read from the environment.
type config struct {
	Name         string
	Version      string
	AgentID      string
	DeploymentID string
	Greeting     string
	// Card is the agent card served, before name, version and url are
	// filled in per request.
	Card map[string]any
}

// loadConfig reads the card (./AgentCard.json, else the embedded one) and
// the environment Berth sets: BERTH_AGENT_NAME, BERTH_AGENT_VERSION,
// BERTH_AGENT_ID, BERTH_DEPLOYMENT_ID, plus ECHO_GREETING.
func loadConfig(getenv func(string) string, cardJSON []byte) (config, error) {
	var card map[string]any
	if err := json.Unmarshal(cardJSON, &card); err != nil || card == nil {
		return config{}, fmt.Errorf("agent card is not a JSON object: %v", err)
	}
	cfg := config{
		Name:         getenv("BERTH_AGENT_NAME"),
		Version:      getenv("BERTH_AGENT_VERSION"),
		AgentID:      getenv("BERTH_AGENT_ID"),
		DeploymentID: getenv("BERTH_DEPLOYMENT_ID"),
		Greeting:     getenv("ECHO_GREETING"),
		Card:         card,
	}
	// Outside Berth the card's own name and version stand in.
	if cfg.Name == "" {
		cfg.Name, _ = card["name"].(string)
	}
	if cfg.Version == "" {
		cfg.Version, _ = card["version"].(string)
	}
	if cfg.Name == "" {
		cfg.Name = "echo-agent"
	}
	if cfg.Version == "" {
		cfg.Version = "0.0.0"
	}
	return cfg, nil
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		log.Error("echo-agent failed", "err", err)
		os.Exit(1)
	}
}

// run serves until SIGTERM or SIGINT, then shuts down gracefully.
func run(log *slog.Logger) error {
	cardJSON, err := os.ReadFile("AgentCard.json")
	if err != nil {
		cardJSON = defaultCard
	}
	cfg, err := loadConfig(os.Getenv, cardJSON)
	if err != nil {
		return err
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           newHandler(cfg, log),
		ReadHeaderTimeout: 10 * time.Second,
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("echo-agent listening", "addr", ln.Addr().String(), "name", cfg.Name, "version", cfg.Version)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("echo-agent shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// handler serves the agent's routes.
type handler struct {
	cfg config
	log *slog.Logger
}

// newHandler returns the agent's HTTP handler.
func newHandler(cfg config, log *slog.Logger) http.Handler {
	h := &handler{cfg: cfg, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/agent.json", h.card)
	// The newer A2A well-known path, for clients that use it.
	mux.HandleFunc("GET /.well-known/agent-card.json", h.card)
	mux.HandleFunc("POST /{$}", h.rpc)
	mux.HandleFunc("GET /healthz", h.healthz)
	mux.HandleFunc("GET /whoami", h.whoami)
	mux.HandleFunc("GET /slow", h.slow)
	mux.HandleFunc("GET /sse", h.sse)
	return mux
}

func (h *handler) card(w http.ResponseWriter, r *http.Request) {
	card := maps.Clone(h.cfg.Card)
	card["name"] = h.cfg.Name
	card["version"] = h.cfg.Version
	card["url"] = publicURL(r)
	writeJSON(w, http.StatusOK, card)
}

// publicURL is where clients reach this agent: behind Berth's proxy that is
// the proxy's address plus X-Forwarded-Prefix, not 127.0.0.1:$PORT.
func publicURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if p := r.Header.Get("X-Forwarded-Proto"); p == "http" || p == "https" {
		scheme = p
	}
	host := r.Host
	if fh := r.Header.Get("X-Forwarded-Host"); fh != "" {
		host, _, _ = strings.Cut(fh, ",")
		host = strings.TrimSpace(host)
	}
	prefix := strings.TrimRight(r.Header.Get("X-Forwarded-Prefix"), "/")
	if prefix != "" && !strings.HasPrefix(prefix, "/") {
		prefix = ""
	}
	return scheme + "://" + host + prefix + "/"
}

func (h *handler) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// whoamiResponse tells tests which version answered and with what config.
type whoamiResponse struct {
	Name         string `json:"name"`
	Version      string `json:"version"`
	AgentID      string `json:"agent_id"`
	DeploymentID string `json:"deployment_id"`
	Greeting     string `json:"greeting"`
	PID          int    `json:"pid"`
}

func (h *handler) whoami(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, whoamiResponse{
		Name:         h.cfg.Name,
		Version:      h.cfg.Version,
		AgentID:      h.cfg.AgentID,
		DeploymentID: h.cfg.DeploymentID,
		Greeting:     h.cfg.Greeting,
		PID:          os.Getpid(),
	})
}

// slow answers after ?ms= milliseconds, or not at all if the client goes
// away first.
func (h *handler) slow(w http.ResponseWriter, r *http.Request) {
	ms, err := queryInt(r, "ms", 0, int(maxSlow/time.Millisecond))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"slept_ms": ms, "version": h.cfg.Version})
}

// sse streams ?n= server-sent events, ?ms= milliseconds apart, flushing
// each one so that a proxy that buffers is caught out.
func (h *handler) sse(w http.ResponseWriter, r *http.Request) {
	n, err := queryInt(r, "n", 1, maxEvents)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ms, err := queryInt(r, "ms", 0, int(maxSlow/time.Millisecond))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	for i := 1; i <= n; i++ {
		if i > 1 && ms > 0 {
			select {
			case <-time.After(time.Duration(ms) * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
		data, _ := json.Marshal(map[string]any{"seq": i, "of": n, "version": h.cfg.Version})
		if _, err := fmt.Fprintf(w, "id: %d\nevent: tick\ndata: %s\n\n", i, data); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// queryInt reads an integer query parameter in [0, max], def if absent.
func queryInt(r *http.Request, name string, def, max int) (int, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 || v > max {
		return 0, fmt.Errorf("%s must be an integer from 0 to %d", name, max)
	}
	return v, nil
}

// rpcResponse is a JSON-RPC 2.0 response.
type rpcResponse struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  any             `json:"result,omitempty"`
	Error   *rpcError       `json:"error,omitempty"`
}

type rpcError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// sendParams are the A2A message/send params this agent reads.
type sendParams struct {
	Message *struct {
		Role      string `json:"role"`
		MessageID string `json:"messageId"`
		ContextID string `json:"contextId"`
		Parts     []struct {
			Kind string  `json:"kind"`
			Text *string `json:"text"`
		} `json:"parts"`
	} `json:"message"`
}

// message is an A2A Message.
type message struct {
	Kind      string `json:"kind"`
	Role      string `json:"role"`
	MessageID string `json:"messageId"`
	ContextID string `json:"contextId,omitempty"`
	Parts     []part `json:"parts"`
}

type part struct {
	Kind string `json:"kind"`
	Text string `json:"text"`
}

// rpc serves JSON-RPC 2.0 requests (no batches: A2A does not use them).
func (h *handler) rpc(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeRPCError(w, http.StatusRequestEntityTooLarge, nil, codeInvalidRequest, "request body is too large")
			return
		}
		writeRPCError(w, http.StatusBadRequest, nil, codeParseError, "could not read request body")
		return
	}
	if !json.Valid(body) {
		writeRPCError(w, http.StatusOK, nil, codeParseError, "parse error: body is not valid JSON")
		return
	}
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil || req == nil {
		writeRPCError(w, http.StatusOK, nil, codeInvalidRequest, "invalid request: expected a JSON-RPC request object")
		return
	}
	id, hasID := req["id"]
	if hasID && !validID(id) {
		writeRPCError(w, http.StatusOK, nil, codeInvalidRequest, "invalid request: id must be a string, number or null")
		return
	}
	var version, method string
	if err := json.Unmarshal(req["jsonrpc"], &version); err != nil || version != "2.0" {
		writeRPCError(w, http.StatusOK, id, codeInvalidRequest, `invalid request: "jsonrpc" must be "2.0"`)
		return
	}
	if err := json.Unmarshal(req["method"], &method); err != nil || method == "" {
		writeRPCError(w, http.StatusOK, id, codeInvalidRequest, `invalid request: "method" must be a non-empty string`)
		return
	}

	var (
		result any
		rerr   *rpcError
	)
	switch method {
	case "message/send":
		result, rerr = h.send(req["params"])
	default:
		rerr = &rpcError{Code: codeMethodNotFound, Message: fmt.Sprintf("method not found: %q", method)}
	}
	if !hasID {
		// A notification: JSON-RPC forbids any reply.
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if rerr != nil {
		writeRPCError(w, http.StatusOK, id, rerr.Code, rerr.Message)
		return
	}
	writeJSON(w, http.StatusOK, rpcResponse{JSONRPC: "2.0", ID: id, Result: result})
}

// send implements A2A message/send: the reply echoes the text parts.
func (h *handler) send(raw json.RawMessage) (any, *rpcError) {
	var p sendParams
	if len(raw) == 0 || json.Unmarshal(raw, &p) != nil || p.Message == nil {
		return nil, &rpcError{Code: codeInvalidParams, Message: "invalid params: expected {\"message\": {\"parts\": [{\"kind\": \"text\", \"text\": \"...\"}]}}"}
	}
	var texts []string
	for _, pt := range p.Message.Parts {
		if pt.Text != nil && (pt.Kind == "" || pt.Kind == "text") {
			texts = append(texts, *pt.Text)
		}
	}
	if len(texts) == 0 {
		return nil, &rpcError{Code: codeInvalidParams, Message: "invalid params: the message has no text parts"}
	}
	contextID := p.Message.ContextID
	if contextID == "" {
		contextID = newID()
	}
	return message{
		Kind:      "message",
		Role:      "agent",
		MessageID: newID(),
		ContextID: contextID,
		Parts:     []part{{Kind: "text", Text: h.echo(strings.Join(texts, "\n"))}},
	}, nil
}

// echo is the reply text: "echo (v1.2.0): <input>", plus " [<greeting>]"
// when ECHO_GREETING is set.
func (h *handler) echo(input string) string {
	s := fmt.Sprintf("echo (v%s): %s", h.cfg.Version, input)
	if h.cfg.Greeting != "" {
		s += " [" + h.cfg.Greeting + "]"
	}
	return s
}

// validID reports whether a JSON-RPC id is a string, a number or null.
func validID(raw json.RawMessage) bool {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return false
	}
	switch v.(type) {
	case string, float64, nil:
		return true
	}
	return false
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
}

func writeRPCError(w http.ResponseWriter, status int, id json.RawMessage, code int, msg string) {
	if id == nil {
		id = json.RawMessage("null")
	}
	writeJSON(w, status, rpcResponse{JSONRPC: "2.0", ID: id, Error: &rpcError{Code: code, Message: msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client is gone if this fails; nothing to do
}

// newID returns a random UUID (version 4) for message and context ids.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
