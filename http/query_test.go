package http

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/lifecycle"
)

// queryStore is the part of a store the mutating agent routes read before
// they reach the engine: the caller and the agent. Any other method panics
// (the embedded nil interface), which a test would notice.
type queryStore struct {
	berth.Store
	user  berth.User
	agent berth.Agent
}

func (s *queryStore) UserByID(_ context.Context, id string) (berth.User, error) {
	if id != s.user.ID {
		return berth.User{}, berth.Errorf(berth.CodeNotFound, "user %q not found", id)
	}
	return s.user, nil
}

func (s *queryStore) AgentByID(_ context.Context, id string) (berth.Agent, error) {
	if id != s.agent.ID {
		return berth.Agent{}, berth.Errorf(berth.CodeNotFound, "agent %q not found", id)
	}
	return s.agent, nil
}

func (s *queryStore) AgentByName(_ context.Context, name string) (berth.Agent, error) {
	if name != s.agent.Name {
		return berth.Agent{}, berth.Errorf(berth.CodeNotFound, "agent %q not found", name)
	}
	return s.agent, nil
}

// queryEngine records what the handlers ask of the engine.
type queryEngine struct {
	mu        sync.Mutex
	calls     []string
	rollbacks []lifecycle.RollbackRequest
	deploys   []lifecycle.DeployRequest
}

func (e *queryEngine) record(call string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, call)
}

func (e *queryEngine) Upload(_ context.Context, _ berth.User, req lifecycle.DeployRequest) (lifecycle.DeployResult, error) {
	os.Remove(req.ZipPath)
	e.record("upload")
	e.mu.Lock()
	e.deploys = append(e.deploys, req)
	e.mu.Unlock()
	return lifecycle.DeployResult{AgentName: "echo", Version: "1.0.0", Status: "running"}, nil
}

func (e *queryEngine) Update(_ context.Context, _ berth.User, a berth.Agent, req lifecycle.DeployRequest) (lifecycle.DeployResult, error) {
	os.Remove(req.ZipPath)
	e.record("update")
	e.mu.Lock()
	e.deploys = append(e.deploys, req)
	e.mu.Unlock()
	return lifecycle.DeployResult{AgentID: a.ID, Version: "1.1.0", Status: "running"}, nil
}

func (e *queryEngine) Rollback(_ context.Context, _ berth.User, a berth.Agent, req lifecycle.RollbackRequest) (lifecycle.RollbackResult, error) {
	e.record("rollback")
	e.mu.Lock()
	e.rollbacks = append(e.rollbacks, req)
	e.mu.Unlock()
	return lifecycle.RollbackResult{AgentID: a.ID, From: "1.1.0", To: "1.0.0", DryRun: req.DryRun, Pending: req.Async}, nil
}

func (e *queryEngine) Delete(context.Context, berth.User, berth.Agent) error {
	e.record("delete")
	return nil
}

func (e *queryEngine) PackagePath(agentID, label string) string { return "" }

// queryServer is an API server on fakes, with a token for the agent's owner.
type queryServer struct {
	srv    *Server
	engine *queryEngine
	token  string
}

func newQueryServer(t *testing.T) *queryServer {
	t.Helper()
	user := berth.User{ID: "u-1", Username: "owner"}
	store := &queryStore{user: user, agent: berth.Agent{ID: "a-1", Name: "echo", OwnerID: user.ID, ActiveVersion: "1.1.0"}}
	engine := &queryEngine{}
	tokens := &Tokens{Secret: []byte("query-test-secret-query-test-secret"), TTL: time.Hour}
	tok, err := tokens.Issue(user)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(Config{TempDir: t.TempDir(), PublicURL: "http://127.0.0.1:1"}, store, engine, nil, tokens, nil,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	return &queryServer{srv: srv, engine: engine, token: tok}
}

// do sends a request and returns the status and body.
func (qs *queryServer) do(t *testing.T, method, target, contentType string, body []byte) (int, []byte) {
	t.Helper()
	r := httptest.NewRequest(method, target, bytes.NewReader(body))
	r.Header.Set("Authorization", "Bearer "+qs.token)
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	w := httptest.NewRecorder()
	qs.srv.ServeHTTP(w, r)
	return w.Code, w.Body.Bytes()
}

// multipartPackage is an upload form with a (fake) package in its file part.
func multipartPackage(t *testing.T) (string, []byte) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile("file", "echo.zip")
	if err != nil {
		t.Fatal(err)
	}
	fw.Write([]byte("PK not really a zip; the fake engine does not look"))
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return mw.FormDataContentType(), buf.Bytes()
}

// wantRefused fails unless the answer is 400 invalid whose message
// mentions every one of parts.
func wantRefused(t *testing.T, what string, status int, body []byte, parts ...string) {
	t.Helper()
	var e ErrorBody
	if err := json.Unmarshal(body, &e); err != nil {
		t.Errorf("%s: answer %d %s is not an error body: %v", what, status, body, err)
		return
	}
	if status != http.StatusBadRequest || e.Code != berth.CodeInvalid {
		t.Errorf("%s = %d %s, want 400 %s", what, status, body, berth.CodeInvalid)
		return
	}
	for _, p := range parts {
		if !strings.Contains(e.Message, p) {
			t.Errorf("%s message = %q, want it to mention %q", what, e.Message, p)
		}
	}
}

func TestRollbackRefusesUnknownQuery(t *testing.T) {
	qs := newQueryServer(t)
	for _, c := range []struct {
		query string
		parts []string
	}{
		{"?dryrun=true", []string{`unknown query parameter "dryrun"`, "accepted: dry_run, wait"}},
		{"?dry-run=true", []string{`"dry-run"`, "accepted: dry_run, wait"}},
		{"?DRY_RUN=true", []string{`"DRY_RUN"`}},
		{"?dry_run=true&force=1", []string{`"force"`}},
		{"?=true", []string{`unknown query parameter ""`}},
		{"?dry_run", []string{"dry_run needs a value"}},
		{"?dry_run=", []string{"dry_run needs a value"}},
		{"?wait", []string{"wait needs a value"}},
		{"?dry_run=yes", []string{"dry_run must be true or false"}},
		{"?dry_run=true&dry_run=false", []string{`"dry_run" is given 2 times`}},
		{"?dry_run=%zz", []string{"malformed query string"}},
		{"?dry_run=true;wait=false", []string{"malformed query string"}},
	} {
		// The body is fine: only the query is wrong.
		st, b := qs.do(t, "POST", "/api/v1/agents/echo/rollback"+c.query, "application/json", []byte(`{"reason":"typo"}`))
		wantRefused(t, "rollback"+c.query, st, b, c.parts...)
	}
	// A malformed query is refused before the body is looked at, and
	// whatever the agent.
	st, b := qs.do(t, "POST", "/api/v1/agents/missing/rollback?dryrun=true", "application/json", []byte(`{"bad":1}`))
	wantRefused(t, "rollback of a missing agent with a bad body ?dryrun=true", st, b, `"dryrun"`)
	if len(qs.engine.calls) != 0 {
		t.Fatalf("refused rollbacks reached the engine: %v", qs.engine.calls)
	}
}

func TestRollbackAcceptsItsQuery(t *testing.T) {
	for _, c := range []struct {
		query      string
		status     int
		dry, async bool
	}{
		{"", http.StatusOK, false, false},
		{"?dry_run=true", http.StatusOK, true, false},
		{"?dry_run=1&wait=true", http.StatusOK, true, false},
		{"?dry_run=false", http.StatusOK, false, false},
		{"?wait=false", http.StatusAccepted, false, true},
		{"?wait=false&dry_run=true", http.StatusOK, true, true},
		{"?&dry_run=true&", http.StatusOK, true, false}, // empty pairs are nothing
	} {
		qs := newQueryServer(t)
		st, b := qs.do(t, "POST", "/api/v1/agents/echo/rollback"+c.query, "application/json", nil)
		if st != c.status {
			t.Errorf("rollback%s = %d %s, want %d", c.query, st, b, c.status)
			continue
		}
		if len(qs.engine.rollbacks) != 1 {
			t.Errorf("rollback%s reached the engine %d times, want once", c.query, len(qs.engine.rollbacks))
			continue
		}
		if got := qs.engine.rollbacks[0]; got.DryRun != c.dry || got.Async != c.async || !got.CleanupFailed {
			t.Errorf("rollback%s asked the engine for %+v, want dry run %v, async %v, cleanup", c.query, got, c.dry, c.async)
		}
	}
}

func TestDeployRoutesRefuseUnknownQuery(t *testing.T) {
	qs := newQueryServer(t)
	ct, pkg := multipartPackage(t)
	for _, c := range []struct {
		method, target string
		parts          []string
	}{
		// Neither route has a dry run: with it, the real thing happened.
		{"PUT", "/api/v1/agents/echo/update?dry_run=true", []string{`unknown query parameter "dry_run"`, "accepted: wait"}},
		{"POST", "/api/v1/agents/upload?dry_run=true", []string{`"dry_run"`, "accepted: wait"}},
		{"PUT", "/api/v1/agents/echo/update?wiat=true", []string{`"wiat"`}},
		{"POST", "/api/v1/agents/upload?wiat=true", []string{`"wiat"`}},
		{"PUT", "/api/v1/agents/echo/update?version=2.0.0", []string{`"version"`}}, // a form field, not a query one
		{"PUT", "/api/v1/agents/echo/update?wait", []string{"wait needs a value"}},
		{"POST", "/api/v1/agents/upload?wait=true&wait=true", []string{"given 2 times"}},
		{"POST", "/api/v1/agents/upload?wait=%", []string{"malformed query string"}},
		// Refused before the agent is looked up.
		{"PUT", "/api/v1/agents/missing/update?bogus=1", []string{`"bogus"`}},
	} {
		st, b := qs.do(t, c.method, c.target, ct, pkg)
		wantRefused(t, c.method+" "+c.target, st, b, c.parts...)
	}
	if len(qs.engine.calls) != 0 {
		t.Fatalf("refused deploys reached the engine: %v", qs.engine.calls)
	}
}

func TestDeployRoutesAcceptWait(t *testing.T) {
	for _, c := range []struct {
		method, target string
		async          bool
	}{
		{"POST", "/api/v1/agents/upload", true},
		{"POST", "/api/v1/agents/upload?wait=true", false},
		{"PUT", "/api/v1/agents/echo/update?wait=true", false},
		{"PUT", "/api/v1/agents/echo/update?wait=false", true},
	} {
		qs := newQueryServer(t)
		ct, pkg := multipartPackage(t)
		st, b := qs.do(t, c.method, c.target, ct, pkg)
		if st != http.StatusOK || len(qs.engine.deploys) != 1 {
			t.Errorf("%s %s = %d %s, engine called %d times; want 200 and one call", c.method, c.target, st, b, len(qs.engine.deploys))
			continue
		}
		if got := qs.engine.deploys[0].Async; got != c.async {
			t.Errorf("%s %s asked the engine for async=%v, want %v", c.method, c.target, got, c.async)
		}
	}
}

func TestQueryParams(t *testing.T) {
	for _, c := range []struct {
		raw      string
		accepted []string
		ok       bool
	}{
		{"", nil, true},
		{"", []string{"wait"}, true},
		{"wait=true", []string{"wait"}, true},
		{"wait=true", nil, false},
		{"Wait=true", []string{"wait"}, false},
		{"wait=true&wait=true", []string{"wait"}, false},
		{"wait=%41", []string{"wait"}, true},
		{"w%61it=true", []string{"wait"}, true}, // an escaped name is the same name
		{"wait=%4", []string{"wait"}, false},
		{"wait=true;", []string{"wait"}, false},
		{"&&", []string{"wait"}, true},
	} {
		r := &http.Request{URL: &url.URL{RawQuery: c.raw}}
		_, err := queryParams(r, c.accepted...)
		if (err == nil) != c.ok {
			t.Errorf("queryParams(%q, %v) = %v, want ok=%v", c.raw, c.accepted, err, c.ok)
		}
		if err != nil && berth.ErrorCode(err) != berth.CodeInvalid {
			t.Errorf("queryParams(%q) code = %s, want %s", c.raw, berth.ErrorCode(err), berth.CodeInvalid)
		}
	}
	if _, err := queryParams(&http.Request{URL: &url.URL{RawQuery: "x=1"}}); err == nil ||
		!strings.Contains(berth.ErrorMessage(err), "takes no query parameters") {
		t.Errorf(`queryParams("x=1") with none accepted = %v, want "takes no query parameters"`, err)
	}
}
