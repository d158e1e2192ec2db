package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func testConfig(t *testing.T, env map[string]string) config {
	t.Helper()
	cfg, err := loadConfig(func(k string) string { return env[k] }, defaultCard)
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	return cfg
}

func testHandler(t *testing.T, env map[string]string) http.Handler {
	t.Helper()
	return newHandler(testConfig(t, env), slog.New(slog.DiscardHandler))
}

var berthEnv = map[string]string{
	"BERTH_AGENT_NAME":    "support-bot",
	"BERTH_AGENT_VERSION": "1.2.0",
	"BERTH_AGENT_ID":      "agent-1",
	"BERTH_DEPLOYMENT_ID": "dep-1",
	"ECHO_GREETING":       "hello",
}

// do serves one request and returns the recorded response.
func do(t *testing.T, h http.Handler, method, target, body string, hdr map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func decode[T any](t *testing.T, rec *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("decoding %q: %v", rec.Body.String(), err)
	}
	return v
}

func TestLoadConfig(t *testing.T) {
	cfg := testConfig(t, nil)
	if cfg.Name != "echo-agent" || cfg.Version != "1.0.0" || cfg.Greeting != "" {
		t.Errorf("loadConfig(no env) = name %q version %q greeting %q, want echo-agent 1.0.0 and no greeting", cfg.Name, cfg.Version, cfg.Greeting)
	}
	cfg = testConfig(t, berthEnv)
	if cfg.Name != "support-bot" || cfg.Version != "1.2.0" || cfg.DeploymentID != "dep-1" || cfg.Greeting != "hello" {
		t.Errorf("loadConfig(berth env) = %+v, want values from the environment", cfg)
	}
	cfg, err := loadConfig(func(string) string { return "" }, []byte(`{"description": "no name"}`))
	if err != nil || cfg.Name != "echo-agent" || cfg.Version != "0.0.0" {
		t.Errorf("loadConfig(card without name) = %q %q, %v; want echo-agent 0.0.0", cfg.Name, cfg.Version, err)
	}
	for _, card := range []string{`[]`, `null`, `{`} {
		if _, err := loadConfig(func(string) string { return "" }, []byte(card)); err == nil {
			t.Errorf("loadConfig(card %s) succeeded, want an error", card)
		}
	}
}

func TestCard(t *testing.T) {
	h := testHandler(t, berthEnv)
	tests := []struct {
		name    string
		path    string
		hdr     map[string]string
		wantURL string
	}{
		{"direct", "/.well-known/agent.json", nil, "http://example.com/"},
		{"new well-known path", "/.well-known/agent-card.json", nil, "http://example.com/"},
		{"behind proxy", "/.well-known/agent.json", map[string]string{
			"X-Forwarded-Prefix": "/agents/support-bot",
			"X-Forwarded-Host":   "berth.example.com",
			"X-Forwarded-Proto":  "https",
		}, "https://berth.example.com/agents/support-bot/"},
		{"bad prefix ignored", "/.well-known/agent.json", map[string]string{"X-Forwarded-Prefix": "evil"}, "http://example.com/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := do(t, h, "GET", tt.path, "", tt.hdr)
			if rec.Code != http.StatusOK {
				t.Fatalf("GET %s = %d, want 200", tt.path, rec.Code)
			}
			card := decode[map[string]any](t, rec)
			if card["name"] != "support-bot" || card["version"] != "1.2.0" || card["url"] != tt.wantURL {
				t.Errorf("card name/version/url = %v/%v/%v, want support-bot/1.2.0/%s", card["name"], card["version"], card["url"], tt.wantURL)
			}
			if skills, _ := card["skills"].([]any); len(skills) == 0 {
				t.Errorf("card skills = %v, want the skills from AgentCard.json", card["skills"])
			}
		})
	}
}

func TestMessageSend(t *testing.T) {
	tests := []struct {
		name     string
		env      map[string]string
		params   string
		wantText string
	}{
		{"with greeting", berthEnv, `{"message":{"role":"user","messageId":"m1","parts":[{"kind":"text","text":"hi"}]}}`, "echo (v1.2.0): hi [hello]"},
		{"without greeting", map[string]string{"BERTH_AGENT_VERSION": "2.0.0"}, `{"message":{"role":"user","parts":[{"kind":"text","text":"hi"}]}}`, "echo (v2.0.0): hi"},
		{"several parts, non-text skipped", map[string]string{"BERTH_AGENT_VERSION": "1.0.0"},
			`{"message":{"role":"user","parts":[{"kind":"text","text":"a"},{"kind":"file","file":{"uri":"x"}},{"text":"b"}]}}`, "echo (v1.0.0): a\nb"},
		{"empty text", map[string]string{"BERTH_AGENT_VERSION": "1.0.0"}, `{"message":{"parts":[{"kind":"text","text":""}]}}`, "echo (v1.0.0): "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := testHandler(t, tt.env)
			body := `{"jsonrpc":"2.0","id":7,"method":"message/send","params":` + tt.params + `}`
			rec := do(t, h, "POST", "/", body, nil)
			if rec.Code != http.StatusOK {
				t.Fatalf("POST / = %d %s, want 200", rec.Code, rec.Body)
			}
			resp := decode[struct {
				JSONRPC string          `json:"jsonrpc"`
				ID      json.RawMessage `json:"id"`
				Error   *rpcError       `json:"error"`
				Result  message         `json:"result"`
			}](t, rec)
			if resp.Error != nil || resp.JSONRPC != "2.0" || string(resp.ID) != "7" {
				t.Fatalf("response = %s, want a result for id 7", rec.Body)
			}
			m := resp.Result
			if m.Kind != "message" || m.Role != "agent" || m.MessageID == "" || m.ContextID == "" {
				t.Errorf("result = %+v, want an agent message with ids", m)
			}
			if len(m.Parts) != 1 || m.Parts[0].Text != tt.wantText {
				t.Errorf("reply parts = %+v, want one text part %q", m.Parts, tt.wantText)
			}
		})
	}
}

func TestMessageSendKeepsContextID(t *testing.T) {
	h := testHandler(t, berthEnv)
	body := `{"jsonrpc":"2.0","id":"a","method":"message/send","params":{"message":{"contextId":"ctx-9","parts":[{"kind":"text","text":"x"}]}}}`
	rec := do(t, h, "POST", "/", body, nil)
	resp := decode[struct {
		ID     string  `json:"id"`
		Result message `json:"result"`
	}](t, rec)
	if resp.ID != "a" || resp.Result.ContextID != "ctx-9" {
		t.Errorf("id, contextId = %q, %q; want a, ctx-9", resp.ID, resp.Result.ContextID)
	}
}

func TestRPCErrors(t *testing.T) {
	h := testHandler(t, berthEnv)
	tests := []struct {
		name     string
		body     string
		wantCode int
		wantID   string
	}{
		{"not JSON", `{"jsonrpc":`, codeParseError, "null"},
		{"empty body", ``, codeParseError, "null"},
		{"batch", `[{"jsonrpc":"2.0","id":1,"method":"message/send"}]`, codeInvalidRequest, "null"},
		{"not an object", `"hi"`, codeInvalidRequest, "null"},
		{"object id", `{"jsonrpc":"2.0","id":{},"method":"message/send"}`, codeInvalidRequest, "null"},
		{"wrong version", `{"jsonrpc":"1.0","id":1,"method":"message/send"}`, codeInvalidRequest, "1"},
		{"no method", `{"jsonrpc":"2.0","id":1}`, codeInvalidRequest, "1"},
		{"method not a string", `{"jsonrpc":"2.0","id":1,"method":5}`, codeInvalidRequest, "1"},
		{"unknown method", `{"jsonrpc":"2.0","id":"x","method":"tasks/get"}`, codeMethodNotFound, `"x"`},
		{"no params", `{"jsonrpc":"2.0","id":2,"method":"message/send"}`, codeInvalidParams, "2"},
		{"no message", `{"jsonrpc":"2.0","id":2,"method":"message/send","params":{}}`, codeInvalidParams, "2"},
		{"no text parts", `{"jsonrpc":"2.0","id":2,"method":"message/send","params":{"message":{"parts":[]}}}`, codeInvalidParams, "2"},
		{"params of wrong type", `{"jsonrpc":"2.0","id":2,"method":"message/send","params":{"message":"hi"}}`, codeInvalidParams, "2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := do(t, h, "POST", "/", tt.body, nil)
			resp := decode[struct {
				ID     json.RawMessage `json:"id"`
				Error  *rpcError       `json:"error"`
				Result json.RawMessage `json:"result"`
			}](t, rec)
			if resp.Error == nil {
				t.Fatalf("POST %s = %s, want error %d", tt.body, rec.Body, tt.wantCode)
			}
			if resp.Error.Code != tt.wantCode || string(resp.ID) != tt.wantID || resp.Result != nil {
				t.Errorf("POST %s = code %d id %s, want code %d id %s", tt.body, resp.Error.Code, resp.ID, tt.wantCode, tt.wantID)
			}
		})
	}
}

func TestRPCNotificationGetsNoReply(t *testing.T) {
	h := testHandler(t, berthEnv)
	rec := do(t, h, "POST", "/", `{"jsonrpc":"2.0","method":"message/send","params":{"message":{"parts":[{"text":"x"}]}}}`, nil)
	if rec.Code != http.StatusNoContent || rec.Body.Len() != 0 {
		t.Errorf("notification = %d %q, want 204 and no body", rec.Code, rec.Body)
	}
}

func TestRPCBodyTooLarge(t *testing.T) {
	h := testHandler(t, berthEnv)
	rec := do(t, h, "POST", "/", `{"x":"`+strings.Repeat("a", maxBodyBytes)+`"}`, nil)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized POST / = %d, want 413", rec.Code)
	}
}

func TestRoutesAndMethods(t *testing.T) {
	h := testHandler(t, berthEnv)
	tests := []struct {
		method, path string
		want         int
	}{
		{"GET", "/", http.StatusMethodNotAllowed},
		{"POST", "/whoami", http.StatusMethodNotAllowed},
		{"GET", "/healthz", http.StatusOK},
		{"GET", "/nope", http.StatusNotFound},
	}
	for _, tt := range tests {
		if rec := do(t, h, tt.method, tt.path, "", nil); rec.Code != tt.want {
			t.Errorf("%s %s = %d, want %d", tt.method, tt.path, rec.Code, tt.want)
		}
	}
}

func TestWhoami(t *testing.T) {
	rec := do(t, testHandler(t, berthEnv), "GET", "/whoami", "", nil)
	got := decode[whoamiResponse](t, rec)
	want := whoamiResponse{Name: "support-bot", Version: "1.2.0", AgentID: "agent-1", DeploymentID: "dep-1", Greeting: "hello", PID: got.PID}
	if got != want || got.PID == 0 {
		t.Errorf("GET /whoami = %+v, want %+v with a pid", got, want)
	}
}

func TestSlow(t *testing.T) {
	h := testHandler(t, berthEnv)
	tests := []struct {
		query string
		want  int
	}{
		{"", http.StatusOK},
		{"?ms=1", http.StatusOK},
		{"?ms=-1", http.StatusBadRequest},
		{"?ms=abc", http.StatusBadRequest},
		{"?ms=999999999", http.StatusBadRequest},
	}
	for _, tt := range tests {
		if rec := do(t, h, "GET", "/slow"+tt.query, "", nil); rec.Code != tt.want {
			t.Errorf("GET /slow%s = %d, want %d", tt.query, rec.Code, tt.want)
		}
	}

	// A client that goes away gets no answer and frees the handler.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := httptest.NewRequest("GET", "/slow?ms=600000", nil).WithContext(ctx)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Body.Len() != 0 {
		t.Errorf("cancelled GET /slow wrote %q, want nothing", rec.Body)
	}
}

func TestSSE(t *testing.T) {
	srv := httptest.NewServer(testHandler(t, berthEnv))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/sse?n=3")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q, want text/event-stream", ct)
	}
	var events []map[string]any
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var ev map[string]any
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				t.Fatalf("event data %q: %v", data, err)
			}
			events = append(events, ev)
		}
	}
	if len(events) != 3 {
		t.Fatalf("GET /sse?n=3 gave %d events, want 3", len(events))
	}
	for i, ev := range events {
		if ev["seq"] != float64(i+1) || ev["version"] != "1.2.0" {
			t.Errorf("event %d = %v, want seq %d version 1.2.0", i, ev, i+1)
		}
	}

	for _, q := range []string{"n=-1", "n=x", "n=1&ms=-5", "n=100000"} {
		resp, err := http.Get(srv.URL + "/sse?" + q)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET /sse?%s = %d, want 400", q, resp.StatusCode)
		}
	}
}

func TestNewIDIsUUIDv4(t *testing.T) {
	a, b := newID(), newID()
	if len(a) != 36 || a[14] != '4' || a == b {
		t.Errorf("newID() = %q, %q; want two distinct version 4 UUIDs", a, b)
	}
}
