package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berthhq/berth/berthtest"
	"github.com/berthhq/berth/lifecycle"
	"github.com/berthhq/berth/server"
)

// testServer is a real Berth control plane (SQLite in a temp dir, real
// child processes, real proxy) serving on a loopback port.
type testServer struct {
	t       testing.TB
	URL     string
	DataDir string
	Admin   string // the bootstrap superuser's token
	srv     *server.Server
	stop    context.CancelFunc
	done    chan error
}

type serverOption func(*server.Config)

func withGrace(d time.Duration) serverOption {
	return func(c *server.Config) { c.Engine.Grace = d }
}

func withStandby(n int) serverOption {
	return func(c *server.Config) { c.Engine.Standby = n }
}

// startServer starts a server on dataDir ("" = a new temp dir) and logs
// in as the bootstrap superuser (ts.Admin).
func startServer(t testing.TB, dataDir string, opts ...serverOption) *testServer {
	t.Helper()
	ts := openServer(t, dataDir, opts...)
	ts.Admin = ts.loginFile()
	return ts
}

// openServer starts a server on dataDir ("" = a new temp dir), not logged in.
func openServer(t testing.TB, dataDir string, opts ...serverOption) *testServer {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{
		Addr:         ln.Addr().String(),
		DataDir:      dataDir,
		PublicURL:    "http://" + ln.Addr().String(),
		ReadyTimeout: 10 * time.Second,
		StopTimeout:  2 * time.Second,
		Engine:       lifecycle.DefaultConfig(),
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if url := os.Getenv("BERTH_TEST_DATABASE_URL"); url != "" {
		cfg.DatabaseURL = freshDatabase(t, url, dataDir)
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := server.Open(context.Background(), cfg)
	if err != nil {
		ln.Close()
		t.Fatalf("server.Open: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{t: t, URL: "http://" + ln.Addr().String(), DataDir: dataDir, srv: srv, stop: cancel, done: make(chan error, 1)}
	go func() { ts.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(ts.Close)
	return ts
}

// Close shuts the server down gracefully (idempotent).
func (ts *testServer) Close() {
	if ts.stop == nil {
		return
	}
	ts.stop()
	ts.stop = nil
	if err := <-ts.done; err != nil {
		ts.t.Errorf("Serve: %v", err)
	}
}

func (ts *testServer) loginFile() string {
	ts.t.Helper()
	b, err := os.ReadFile(filepath.Join(ts.DataDir, server.AdminCredentialsFile))
	if err != nil {
		ts.t.Fatalf("read admin credentials: %v", err)
	}
	var c server.AdminCredentials
	if err := json.Unmarshal(b, &c); err != nil {
		ts.t.Fatal(err)
	}
	return ts.login(c.AccessKey, c.AccessSecret)
}

func (ts *testServer) login(key, secret string) string {
	ts.t.Helper()
	st, body := ts.do("POST", "/auth/users/login", "", jsonBody(map[string]string{"access_key": key, "access_secret": secret}), "application/json", nil)
	if st != http.StatusOK {
		ts.t.Fatalf("login = %d %s", st, body)
	}
	var r struct{ Token string }
	mustJSON(ts.t, body, &r)
	return r.Token
}

// newUser registers a user and returns its token.
func (ts *testServer) newUser(name string) string {
	ts.t.Helper()
	st, body := ts.do("POST", "/api/v1/user/register", ts.Admin, jsonBody(map[string]any{"username": name, "email": name + "@example.com"}), "application/json", nil)
	if st != http.StatusCreated {
		ts.t.Fatalf("register %s = %d %s", name, st, body)
	}
	var r struct{ AccessKey, AccessSecret string }
	mustJSON(ts.t, body, &struct {
		AccessKey    *string `json:"access_key"`
		AccessSecret *string `json:"access_secret"`
	}{&r.AccessKey, &r.AccessSecret})
	return ts.login(r.AccessKey, r.AccessSecret)
}

func jsonBody(v any) io.Reader {
	b, _ := json.Marshal(v)
	return bytes.NewReader(b)
}

func mustJSON(t testing.TB, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

// do sends one request and returns the status and body (call, in
// api_test.go, also returns the headers).
func (ts *testServer) do(method, path, token string, body io.Reader, contentType string, header http.Header) (int, []byte) {
	ts.t.Helper()
	st, _, b := ts.call(method, path, token, body, contentType, header)
	return st, b
}

// multipartBody builds a multipart form with a "file" part and fields.
func multipartBody(t testing.TB, zip []byte, fields map[string]string) (io.Reader, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for k, v := range fields {
		if err := mw.WriteField(k, v); err != nil {
			t.Fatal(err)
		}
	}
	if zip != nil {
		fw, err := mw.CreateFormFile("file", "agent.zip")
		if err != nil {
			t.Fatal(err)
		}
		fw.Write(zip)
	}
	mw.Close()
	return &buf, mw.FormDataContentType()
}

// deployResult is the part of upload/update answers tests look at.
type deployResult struct {
	AgentID      string `json:"agent_id"`
	Version      string `json:"version"`
	NewVersion   string `json:"new_version"`
	Status       string `json:"status"`
	BuildID      string `json:"build_id"`
	DeploymentID string `json:"deployment_id"`
	OperationID  string `json:"operation_id"`
}

// upload uploads zip with ?wait=true and expects success.
func (ts *testServer) upload(token string, zip []byte) deployResult {
	ts.t.Helper()
	st, body := ts.uploadRaw(token, zip, nil, "?wait=true")
	if st != http.StatusOK {
		ts.t.Fatalf("upload = %d %s", st, body)
	}
	var r struct{ Data deployResult }
	mustJSON(ts.t, body, &r)
	return r.Data
}

func (ts *testServer) uploadRaw(token string, zip []byte, fields map[string]string, query string) (int, []byte) {
	ts.t.Helper()
	body, ct := multipartBody(ts.t, zip, fields)
	return ts.do("POST", "/api/v1/agents/upload"+query, token, body, ct, nil)
}

// update deploys a new version with ?wait=true and expects success.
func (ts *testServer) update(token, agent string, zip []byte, fields map[string]string) deployResult {
	ts.t.Helper()
	st, body := ts.updateRaw(token, agent, zip, fields, "?wait=true", nil)
	if st != http.StatusOK {
		ts.t.Fatalf("update %s = %d %s", agent, st, body)
	}
	var r struct{ Data deployResult }
	mustJSON(ts.t, body, &r)
	return r.Data
}

func (ts *testServer) updateRaw(token, agent string, zip []byte, fields map[string]string, query string, h http.Header) (int, []byte) {
	ts.t.Helper()
	body, ct := multipartBody(ts.t, zip, fields)
	return ts.do("PUT", "/api/v1/agents/"+agent+"/update"+query, token, body, ct, h)
}

// rollbackData is the data of a rollback answer.
type rollbackData struct {
	Message        string   `json:"message"`
	AgentID        string   `json:"agent_id"`
	RolledBackTo   string   `json:"rolled_back_to"`
	RolledBackFrom string   `json:"rolled_back_from"`
	Status         string   `json:"status"`
	StatusCode     int      `json:"status_code"`
	OperationID    string   `json:"operation_id"`
	Cleaned        []string `json:"cleaned_deployments"`
	DurationMS     int64    `json:"duration_ms"`
	Warm           bool     `json:"warm"`
	WouldClean     []string `json:"would_clean"`
}

type errorBody struct {
	StatusCode  int    `json:"status_code"`
	Message     string `json:"message"`
	Detail      string `json:"detail"`
	Code        string `json:"code"`
	OperationID string `json:"operation_id"`
}

func (ts *testServer) rollbackRaw(token, agent, body, query string, h http.Header) (int, []byte) {
	ts.t.Helper()
	var r io.Reader
	if body != "" {
		r = bytes.NewBufferString(body)
	}
	return ts.do("POST", "/api/v1/agents/"+agent+"/rollback"+query, token, r, "application/json", h)
}

// rollback rolls back and expects 200.
func (ts *testServer) rollback(token, agent, body string) rollbackData {
	ts.t.Helper()
	st, b := ts.rollbackRaw(token, agent, body, "", nil)
	if st != http.StatusOK {
		ts.t.Fatalf("rollback(%s, %s) = %d %s, want 200", agent, body, st, b)
	}
	var r struct{ Data rollbackData }
	mustJSON(ts.t, b, &r)
	return r.Data
}

// rollbackErr rolls back and expects an error with status and code.
func (ts *testServer) rollbackErr(token, agent, body string, status int, code string) errorBody {
	ts.t.Helper()
	st, b := ts.rollbackRaw(token, agent, body, "", nil)
	var e errorBody
	mustJSON(ts.t, b, &e)
	if st != status || e.Code != code || e.StatusCode != status || e.Message == "" || e.Detail != e.Message {
		ts.t.Fatalf("rollback(%s, %s) = %d %s, want %d %s", agent, body, st, b, status, code)
	}
	return e
}

// whoami asks the agent, through Berth's proxy, which version answers.
func (ts *testServer) whoami(agent string) berthtest.Whoami {
	ts.t.Helper()
	w, err := berthtest.GetWhoami(context.Background(), ts.URL+"/agents/"+agent)
	if err != nil {
		ts.t.Fatalf("whoami through the proxy: %v", err)
	}
	return w
}

// versionEntry is one entry of version history.
type versionEntry struct {
	Version       string          `json:"version"`
	Status        string          `json:"status"`
	CreatedAt     string          `json:"created_at"`
	BuildIDs      []string        `json:"build_ids"`
	DeploymentIDs []string        `json:"deployment_ids"`
	RollbackInfo  *rollbackRecord `json:"rollback_info"`
}

type rollbackRecord struct {
	Reason, Actor, From, To string
	OperationID             string `json:"operation_id"`
}

type history struct {
	AgentID        string         `json:"agent_id"`
	CurrentVersion string         `json:"current_version"`
	Versions       []versionEntry `json:"versions"`
	NextCursor     string         `json:"next_cursor"`
	StatusCode     int            `json:"status_code"`
	Message        string         `json:"message"`
}

func (ts *testServer) history(token, agent string) history {
	ts.t.Helper()
	st, b := ts.do("GET", "/api/v1/agents/"+agent+"/versions", token, nil, "", nil)
	if st != http.StatusOK {
		ts.t.Fatalf("versions = %d %s", st, b)
	}
	var h history
	mustJSON(ts.t, b, &h)
	return h
}

// statuses maps version → status from history.
func (h history) statuses() map[string]string {
	m := map[string]string{}
	for _, v := range h.Versions {
		m[v.Version] = v.Status
	}
	return m
}

type deploymentEntry struct {
	ID         string  `json:"_id"`
	Version    string  `json:"version"`
	Status     string  `json:"status"`
	ServiceURL *string `json:"service_url"`
	Error      string  `json:"error_message"`
	Active     bool    `json:"active"`
	RemovedAt  *string `json:"removed_at"`
}

func (ts *testServer) deployments(token, agent string) []deploymentEntry {
	ts.t.Helper()
	st, b := ts.do("GET", "/api/v1/agents/"+agent+"/deployments", token, nil, "", nil)
	if st != http.StatusOK {
		ts.t.Fatalf("deployments = %d %s", st, b)
	}
	var r struct{ Data []deploymentEntry }
	mustJSON(ts.t, b, &r)
	return r.Data
}

type operationEntry struct {
	ID          string `json:"operation_id"`
	AgentName   string `json:"agent_name"`
	Kind        string `json:"kind"`
	Status      string `json:"status"`
	Actor       string `json:"actor"`
	Reason      string `json:"reason"`
	FromVersion string `json:"from_version"`
	ToVersion   string `json:"to_version"`
	ErrorCode   string `json:"error_code"`
}

func (ts *testServer) operations(token, agent string) []operationEntry {
	ts.t.Helper()
	st, b := ts.do("GET", "/api/v1/agents/"+agent+"/operations", token, nil, "", nil)
	if st != http.StatusOK {
		ts.t.Fatalf("operations = %d %s", st, b)
	}
	var r struct{ Data []operationEntry }
	mustJSON(ts.t, b, &r)
	return r.Data
}

// state is what a refused operation must leave unchanged.
type state struct {
	Current     string
	Statuses    string
	Deployments string
}

func (ts *testServer) state(token, agent string) state {
	ts.t.Helper()
	h := ts.history(token, agent)
	ds := ts.deployments(token, agent)
	var dsum string
	for _, d := range ds {
		dsum += fmt.Sprintf("%s:%s:%v;", d.ID, d.Status, d.RemovedAt != nil)
	}
	st, _ := json.Marshal(h.statuses())
	return state{Current: h.CurrentVersion, Statuses: string(st), Deployments: dsum}
}

// echo returns an echo-agent package of the given name and card version.
func echo(t testing.TB, name, version string, env map[string]string) []byte {
	t.Helper()
	return berthtest.EchoPackage(t, berthtest.PackageOptions{Name: name, Version: version, Env: env})
}

// broken returns a package whose process exits at once.
func broken(t *testing.T, name, version string) []byte {
	t.Helper()
	return berthtest.EchoPackage(t, berthtest.PackageOptions{Name: name, Version: version, Run: []string{"sh", "-c", "echo boom >&2; exit 3"}})
}

// waitFor polls cond until it is true or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
