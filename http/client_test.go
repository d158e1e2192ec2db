package http_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/berthtest"
	berthhttp "github.com/berthhq/berth/http"
	"github.com/berthhq/berth/lifecycle"
	"github.com/berthhq/berth/server"
)

// startServer runs a real control plane (SQLite in a temp dir, real child
// processes, the built-in proxy) on a loopback port and returns its URL and
// a client logged in as the bootstrap superuser.
func startServer(t *testing.T) (string, *berthhttp.Client) {
	t.Helper()
	dataDir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	srv, err := server.Open(context.Background(), server.Config{
		Addr:         ln.Addr().String(),
		DataDir:      dataDir,
		PublicURL:    base,
		ReadyTimeout: 10 * time.Second,
		StopTimeout:  2 * time.Second,
		Engine:       lifecycle.DefaultConfig(),
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		ln.Close()
		t.Fatalf("server.Open: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	b, err := os.ReadFile(filepath.Join(dataDir, server.AdminCredentialsFile))
	if err != nil {
		t.Fatal(err)
	}
	var creds server.AdminCredentials
	if err := json.Unmarshal(b, &creds); err != nil {
		t.Fatal(err)
	}
	c := berthhttp.NewClient(base, "")
	lr, err := c.Login(context.Background(), creds.AccessKey, creds.AccessSecret)
	if err != nil {
		t.Fatalf("Login(admin) = %v", err)
	}
	c.Token = lr.Token
	return base, c
}

// wantCode fails unless err is a *berth.Error with code want and a message.
func wantCode(t *testing.T, what string, err error, want berth.Code) *berth.Error {
	t.Helper()
	var be *berth.Error
	if !errors.As(err, &be) {
		t.Fatalf("%s = %v (%T), want a *berth.Error with code %s", what, err, err, want)
	}
	if be.Code != want || be.Message == "" {
		t.Fatalf("%s = %q %q, want code %s and a message", what, be.Code, be.Message, want)
	}
	return be
}

func TestClientLifecycle(t *testing.T) {
	base, c := startServer(t)
	ctx := context.Background()

	if h, err := c.Health(ctx); err != nil || h.Status != "healthy" {
		t.Fatalf("Health() = %+v, %v, want healthy", h, err)
	}

	// A missing agent is a public 404.
	anon := berthhttp.NewClient(base, "")
	_, err := anon.AgentByName(ctx, "echo-agent")
	wantCode(t, "AgentByName(missing)", err, berth.CodeNotFound)

	up, err := c.Upload(ctx, bytes.NewReader(berthtest.EchoPackage(t, berthtest.PackageOptions{})), berthhttp.UploadOptions{Wait: true})
	if err != nil {
		t.Fatalf("Upload() = %v", err)
	}
	if up.Version != "1.0.0" || up.Status != "running" || up.AgentID == "" || up.OperationID == "" ||
		up.URL != base+"/agents/echo-agent/" {
		t.Fatalf("Upload() = %+v, want 1.0.0 running at %s/agents/echo-agent/", up, base)
	}

	entry, err := anon.AgentByName(ctx, "echo-agent")
	if err != nil || entry.ID != up.AgentID || entry.Version != "1.0.0" {
		t.Fatalf("AgentByName() = %+v, %v, want id %s version 1.0.0", entry, err, up.AgentID)
	}

	upd, err := c.Update(ctx, "echo-agent", bytes.NewReader(berthtest.EchoPackage(t, berthtest.PackageOptions{})),
		berthhttp.UpdateOptions{Version: "minor", Strategy: "blue-green", Wait: true})
	if err != nil {
		t.Fatalf("Update() = %v", err)
	}
	if upd.Version != "1.1.0" || upd.PreviousVersion != "1.0.0" || upd.Status != "running" || upd.UpdateStrategy != "blue-green" {
		t.Fatalf("Update() = %+v, want 1.1.0 from 1.0.0, running, blue-green", upd)
	}

	dry, err := c.Rollback(ctx, up.AgentID, berthhttp.RollbackOptions{DryRun: true})
	if err != nil {
		t.Fatalf("Rollback(dry run) = %v", err)
	}
	if !dry.DryRun || dry.Status != "dry_run" || dry.RolledBackFrom != "1.1.0" || dry.RolledBackTo != "1.0.0" || !dry.Warm {
		t.Fatalf("Rollback(dry run) = %+v, want a warm dry run 1.1.0 → 1.0.0", dry)
	}
	if h, err := c.Versions(ctx, "echo-agent"); err != nil || h.CurrentVersion != "1.1.0" {
		t.Fatalf("after a dry run Versions() = %+v, %v, want current 1.1.0", h, err)
	}

	rb, err := c.Rollback(ctx, "echo-agent", berthhttp.RollbackOptions{Reason: "answers are wrong"})
	if err != nil {
		t.Fatalf("Rollback() = %v", err)
	}
	if rb.Status != "running" || rb.RolledBackFrom != "1.1.0" || rb.RolledBackTo != "1.0.0" || rb.OperationID == "" || rb.CleanedDeployments == nil {
		t.Fatalf("Rollback() = %+v, want 1.1.0 → 1.0.0 running with an operation id", rb)
	}

	_, err = c.Rollback(ctx, "echo-agent", berthhttp.RollbackOptions{})
	wantCode(t, "Rollback(nothing left)", err, berth.CodeNoRollbackTarget)
	_, err = c.Rollback(ctx, "echo-agent", berthhttp.RollbackOptions{TargetVersion: "9.9.9"})
	wantCode(t, "Rollback(to 9.9.9)", err, berth.CodeNotFound)
	_, err = c.Rollback(ctx, "echo-agent", berthhttp.RollbackOptions{TargetVersion: "1.0.0"})
	wantCode(t, "Rollback(to the current version)", err, berth.CodeInvalid)

	h, err := c.Versions(ctx, "echo-agent")
	if err != nil {
		t.Fatalf("Versions() = %v", err)
	}
	if h.CurrentVersion != "1.0.0" || h.AgentID != up.AgentID || len(h.Versions) != 2 {
		t.Fatalf("Versions() = %+v, want current 1.0.0 and two versions", h)
	}
	var rolled *berthhttp.VersionInfo
	for i := range h.Versions {
		if h.Versions[i].Version == "1.1.0" {
			rolled = &h.Versions[i]
		}
	}
	if rolled == nil || rolled.Status != berth.StatusRolledBack || rolled.RollbackInfo == nil ||
		rolled.RollbackInfo.Reason != "answers are wrong" || rolled.RollbackInfo.Actor != "admin" {
		t.Fatalf("Versions() 1.1.0 = %+v, want rolled_back by admin with the reason", rolled)
	}

	ops, err := c.Operations(ctx, "echo-agent", 0)
	if err != nil || len(ops) == 0 {
		t.Fatalf("Operations() = %v, %v, want entries", ops, err)
	}
	if ops[0].Kind != berth.OpRollback || ops[0].Reason != "answers are wrong" || ops[0].Actor != "admin" ||
		ops[0].FromVersion != "1.1.0" || ops[0].ToVersion != "1.0.0" {
		t.Fatalf("Operations()[0] = %+v, want the rollback with its reason", ops[0])
	}
	if limited, err := c.Operations(ctx, "echo-agent", 1); err != nil || len(limited) != 1 {
		t.Fatalf("Operations(limit 1) = %d entries, %v, want 1", len(limited), err)
	}
	op, err := c.Operation(ctx, "echo-agent", rb.OperationID)
	if err != nil || op.ID != rb.OperationID || op.Status != berth.OpSucceeded {
		t.Fatalf("Operation(%s) = %+v, %v, want it succeeded", rb.OperationID, op, err)
	}

	ds, err := c.Deployments(ctx, "echo-agent")
	if err != nil || len(ds) < 2 {
		t.Fatalf("Deployments() = %v, %v, want at least two", ds, err)
	}
	active := 0
	for _, d := range ds {
		if d.Active {
			active++
			if d.Version != "1.0.0" {
				t.Errorf("active deployment is %s, want 1.0.0", d.Version)
			}
		}
	}
	if active != 1 {
		t.Errorf("Deployments() has %d active, want 1", active)
	}
	bs, err := c.Builds(ctx, "echo-agent")
	if err != nil || len(bs) != 2 || bs[0].Status != berth.BuildSuccess {
		t.Fatalf("Builds() = %+v, %v, want two successful builds", bs, err)
	}

	logs, err := c.Logs(ctx, "echo-agent", berthhttp.LogsOptions{Version: "1.1.0"})
	if err != nil || logs.DeploymentID == "" || !strings.Contains(string(logs.Output), "echo-agent listening") {
		t.Fatalf("Logs(1.1.0) = %q from %q, %v, want the agent's start line", logs.Output, logs.DeploymentID, err)
	}
	// The stopped 1.1.0 deployment's log no longer grows: Size is its
	// length, and following from an offset gets exactly the rest.
	if logs.Size != int64(len(logs.Output)) {
		t.Errorf("Logs(1.1.0).Size = %d, want the output's length %d", logs.Size, len(logs.Output))
	}
	for _, off := range []int64{1, logs.Size / 2, logs.Size, logs.Size + 10} {
		rest, err := c.Logs(ctx, "echo-agent", berthhttp.LogsOptions{Version: "1.1.0", Offset: off})
		want := logs.Output[min(off, logs.Size):]
		if err != nil || !bytes.Equal(rest.Output, want) || rest.Size != logs.Size {
			t.Errorf("Logs(1.1.0, offset %d) = %q size %d, %v; want %q size %d", off, rest.Output, rest.Size, err, want, logs.Size)
		}
	}
	_, err = c.Logs(ctx, "echo-agent", berthhttp.LogsOptions{Version: "7.0.0"})
	wantCode(t, "Logs(7.0.0)", err, berth.CodeNotFound)

	agents, err := c.Agents(ctx)
	if err != nil || len(agents) != 1 || agents[0].Name != "echo-agent" || agents[0].CurrentVersion != "1.0.0" {
		t.Fatalf("Agents() = %+v, %v, want echo-agent at 1.0.0", agents, err)
	}

	var tgz bytes.Buffer
	info, err := c.Download(ctx, "echo-agent", "1.1.0", &tgz)
	if err != nil {
		t.Fatalf("Download() = %v", err)
	}
	if info.Filename != "echo-agent-1.1.0.tar.gz" || info.Digest == "" || info.Bytes != int64(tgz.Len()) {
		t.Fatalf("Download() = %+v (%d bytes), want echo-agent-1.1.0.tar.gz with a digest", info, tgz.Len())
	}
	if names := tarNames(t, tgz.Bytes()); !names["berth.json"] || !names["AgentCard.json"] {
		t.Fatalf("Download() holds %v, want berth.json and AgentCard.json", names)
	}
}

func tarNames(t *testing.T, b []byte) map[string]bool {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("download is not gzip: %v", err)
	}
	tr := tar.NewReader(zr)
	names := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatalf("download is not a tar: %v", err)
		}
		names[strings.TrimPrefix(h.Name, "./")] = true
	}
}

func TestClientUsers(t *testing.T) {
	base, admin := startServer(t)
	ctx := context.Background()

	u, err := admin.Register(ctx, berthhttp.NewUser{Username: "alice", Email: "alice@example.com"})
	if err != nil {
		t.Fatalf("Register(alice) = %v", err)
	}
	if u.Username != "alice" || u.Role != "user" || u.AccessKey == "" || u.AccessSecret == "" {
		t.Fatalf("Register(alice) = %+v, want a user with credentials", u)
	}
	_, err = admin.Register(ctx, berthhttp.NewUser{Username: "alice"})
	wantCode(t, "Register(alice again)", err, berth.CodeConflict)

	alice := berthhttp.NewClient(base, "")
	_, err = alice.Login(ctx, u.AccessKey, "wrong")
	wantCode(t, "Login(wrong secret)", err, berth.CodeUnauthorized)
	lr, err := alice.Login(ctx, u.AccessKey, u.AccessSecret)
	if err != nil || lr.Token == "" || lr.Username != "alice" || lr.IsSuperUser {
		t.Fatalf("Login(alice) = %+v, %v, want a token for a plain user", lr, err)
	}
	alice.Token = lr.Token
	_, err = alice.Register(ctx, berthhttp.NewUser{Username: "bob"})
	wantCode(t, "Register by a plain user", err, berth.CodeForbidden)

	// Without a token, or with a bad one, owner routes refuse.
	_, err = berthhttp.NewClient(base, "").Agents(ctx)
	wantCode(t, "Agents() without a token", err, berth.CodeUnauthorized)
	_, err = berthhttp.NewClient(base, "not-a-token").Versions(ctx, "echo-agent")
	wantCode(t, "Versions() with a bad token", err, berth.CodeUnauthorized)
}

// TestClientAsyncDeployAndOperationInProgress follows an update that does
// not wait, and checks that a rollback while it runs is refused with the
// running operation's id.
func TestClientAsyncDeployAndOperationInProgress(t *testing.T) {
	_, c := startServer(t)
	ctx := context.Background()
	if _, err := c.Upload(ctx, bytes.NewReader(berthtest.EchoPackage(t, berthtest.PackageOptions{})), berthhttp.UploadOptions{Wait: true}); err != nil {
		t.Fatalf("Upload() = %v", err)
	}
	// A second good version, so that a rollback has somewhere to go.
	if _, err := c.Update(ctx, "echo-agent", bytes.NewReader(berthtest.EchoPackage(t, berthtest.PackageOptions{})), berthhttp.UpdateOptions{Wait: true}); err != nil {
		t.Fatalf("Update() = %v", err)
	}

	// The build waits for a file, so the update holds the agent exactly as
	// long as the test wants.
	release := filepath.Join(t.TempDir(), "release")
	pkg := berthtest.EchoPackage(t, berthtest.PackageOptions{
		Build: []string{"sh", "-c", "while [ ! -e '" + release + "' ]; do sleep 0.05; done"},
	})
	upd, err := c.Update(ctx, "echo-agent", bytes.NewReader(pkg), berthhttp.UpdateOptions{})
	if err != nil {
		t.Fatalf("Update(no wait) = %v", err)
	}
	if upd.Status != "building" || upd.OperationID == "" || upd.Version != "1.0.2" {
		t.Fatalf("Update(no wait) = %+v, want 1.0.2 building with an operation id", upd)
	}

	_, err = c.Rollback(ctx, "echo-agent", berthhttp.RollbackOptions{})
	be := wantCode(t, "Rollback during an update", err, berth.CodeOperationInProgress)
	if be.OperationID != upd.OperationID {
		t.Errorf("Rollback during an update names operation %q, want %q", be.OperationID, upd.OperationID)
	}

	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		op, err := c.Operation(ctx, "echo-agent", upd.OperationID)
		if err != nil {
			t.Fatalf("Operation() = %v", err)
		}
		if op.Status == berth.OpSucceeded {
			break
		}
		if op.Status != berth.OpRunning || time.Now().After(deadline) {
			t.Fatalf("Operation() = %+v, want it to succeed", op)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if h, err := c.Versions(ctx, "echo-agent"); err != nil || h.CurrentVersion != "1.0.2" {
		t.Fatalf("Versions() = %+v, %v, want current 1.0.2", h, err)
	}
}

func TestClientDeployFailureCarriesServerMessage(t *testing.T) {
	_, c := startServer(t)
	ctx := context.Background()
	pkg := berthtest.EchoPackage(t, berthtest.PackageOptions{Build: []string{"sh", "-c", "echo compiling; echo boom >&2; exit 3"}})
	_, err := c.Upload(ctx, bytes.NewReader(pkg), berthhttp.UploadOptions{Wait: true})
	wantCode(t, "Upload(failing build)", err, berth.CodeBuildFailed)
	bs, err := c.Builds(ctx, "echo-agent")
	if err != nil || len(bs) != 1 || bs[0].Status != berth.BuildFailed || !strings.Contains(bs[0].Logs, "boom") {
		t.Fatalf("Builds() = %+v, %v, want one failed build whose log holds its output", bs, err)
	}

	_, err = c.Upload(ctx, strings.NewReader("not a zip"), berthhttp.UploadOptions{Wait: true})
	wantCode(t, "Upload(not a zip)", err, berth.CodeInvalid)
}

func TestClientErrorsWithoutBerthBody(t *testing.T) {
	tests := []struct {
		status int
		body   string
		want   berth.Code
	}{
		{http.StatusBadGateway, "upstream down", berth.CodeUnavailable},
		{http.StatusNotFound, "<html>nope</html>", berth.CodeNotFound},
		{http.StatusUnauthorized, "", berth.CodeUnauthorized},
		{http.StatusTeapot, "{}", berth.CodeInternal},
		{http.StatusConflict, `{"status_code":409,"message":"busy","detail":"busy","code":"operation_in_progress","operation_id":"op-1"}`, berth.CodeOperationInProgress},
	}
	for _, tt := range tests {
		ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(tt.status)
			io.WriteString(w, tt.body)
		}))
		_, err := berthhttp.NewClient(ts.URL, "tok").Versions(context.Background(), "x")
		ts.Close()
		be := wantCode(t, "Versions() against a server answering "+tt.body, err, tt.want)
		if tt.want == berth.CodeOperationInProgress && (be.Message != "busy" || be.OperationID != "op-1") {
			t.Errorf("decoded error = %+v, want message busy and operation op-1", be)
		}
	}

	// Nothing listens on a closed listener's port.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = berthhttp.NewClient("http://"+addr, "").Health(context.Background())
	be := wantCode(t, "Health() with no server", err, berth.CodeUnavailable)
	if !strings.Contains(be.Message, addr) {
		t.Errorf("unreachable error %q does not name %s", be.Message, addr)
	}
	_, err = berthhttp.NewClient("", "").Health(context.Background())
	wantCode(t, "Health() with no URL", err, berth.CodeInvalid)
}
