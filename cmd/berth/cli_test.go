package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/berthtest"
	berthhttp "github.com/berthhq/berth/http"
	"github.com/berthhq/berth/server"
)

// berthBin is the berth binary the tests run, built once by TestMain.
var berthBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "berth-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	berthBin = filepath.Join(dir, "berth")
	build := exec.Command("go", "build", "-o", berthBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "go build ./cmd/berth: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testServer is a real control plane serving on a loopback port.
type testServer struct {
	URL     string
	DataDir string
}

// CredentialsFile is the bootstrap superuser's credentials file.
func (s testServer) CredentialsFile() string {
	return filepath.Join(s.DataDir, server.AdminCredentialsFile)
}

// startServer runs `berth serve` (the built binary: SQLite in a temp dir,
// real child processes, the built-in proxy) on a free loopback port until
// the test ends. The server's log is shown if the test fails.
func startServer(t *testing.T) testServer {
	t.Helper()
	return startServerCmd(t, exec.Command(berthBin, "serve"), "")
}

// startServerCmd starts cmd (a `berth serve`) with its environment set up
// for a test: port 0, a temp data dir, JSON logs. dir is its working
// directory ("" = the test's). It waits until the server answers.
func startServerCmd(t *testing.T, cmd *exec.Cmd, dir string) testServer {
	t.Helper()
	dataDir := t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BERTH_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "BERTH_ADDR=127.0.0.1:0", "BERTH_DATA_DIR="+dataDir, "BERTH_LOG_FORMAT=json",
		"BERTH_READY_TIMEOUT=10s", "BERTH_STOP_TIMEOUT=2s")
	cmd.Dir = dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting berth serve: %v", err)
	}
	var logs syncBuffer
	addr := make(chan string, 1)
	exited := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			logs.WriteString(line + "\n")
			var entry struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "berth serving" {
				addr <- entry.Addr
			}
		}
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("berth serve exited with %v after SIGTERM", err)
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("berth serve did not stop within 30s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("berth serve log:\n%s", logs.String())
		}
	})
	select {
	case a := <-addr:
		return testServer{URL: "http://" + a, DataDir: dataDir}
	case err := <-exited:
		t.Fatalf("berth serve exited at start: %v\n%s", err, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("berth serve did not start:\n%s", logs.String())
	}
	return testServer{}
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) WriteString(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.WriteString(s)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// user is a person at a terminal: a temporary HOME (and config dir) from
// which they run the berth binary.
type user struct {
	t    *testing.T
	home string
	env  []string
}

func newUser(t *testing.T) *user {
	t.Helper()
	home := t.TempDir()
	env := []string{"HOME=" + home, "XDG_CONFIG_HOME=" + filepath.Join(home, "config"), "PATH=" + os.Getenv("PATH")}
	if v := os.Getenv("TMPDIR"); v != "" {
		env = append(env, "TMPDIR="+v)
	}
	return &user{t: t, home: home, env: env}
}

// with returns a copy of u with more environment variables.
func (u *user) with(kv ...string) *user {
	c := *u
	c.env = append(append([]string{}, u.env...), kv...)
	return &c
}

// configFile is where login stores the config for u.
func (u *user) configFile() string { return filepath.Join(u.home, "config", "berth", "config.json") }

type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// run runs berth with args.
func (u *user) run(args ...string) result {
	u.t.Helper()
	cmd := exec.Command(berthBin, args...)
	cmd.Env = u.env
	cmd.Dir = u.home
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		u.t.Fatalf("running berth %v: %v", args, err)
	}
	return r
}

// ok runs berth and fails the test unless it exits 0; it returns stdout.
func (u *user) ok(args ...string) string {
	u.t.Helper()
	r := u.run(args...)
	if r.code != 0 {
		u.t.Fatalf("berth %s: %s", strings.Join(args, " "), r)
	}
	return r.stdout
}

// fails runs berth and fails the test unless it exits with code and says
// something on stderr containing each of want.
func (u *user) fails(code int, want []string, args ...string) result {
	u.t.Helper()
	r := u.run(args...)
	if r.code != code || strings.TrimSpace(r.stderr) == "" {
		u.t.Fatalf("berth %s: %s\nwant exit %d with a message on stderr", strings.Join(args, " "), r, code)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			u.t.Errorf("berth %s: stderr %q does not contain %q", strings.Join(args, " "), r.stderr, w)
		}
	}
	return r
}

// jsonOut runs berth with --json and decodes stdout into v.
func (u *user) jsonOut(v any, args ...string) {
	u.t.Helper()
	out := u.ok(append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		u.t.Fatalf("berth %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// loginAdmin logs u in as the bootstrap superuser.
func (u *user) loginAdmin(s testServer) {
	u.t.Helper()
	out := u.ok("login", "--server", s.URL, "--credentials-file", s.CredentialsFile())
	if !strings.Contains(out, "logged in to "+s.URL+" as admin (superuser)") {
		u.t.Fatalf("login said %q", out)
	}
}

// agentDir writes an agent folder holding the prebuilt echo agent (so no
// build step runs unless cfg asks for one) and returns its path.
func agentDir(t *testing.T, name string, cfg map[string]any, extra map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	bin, err := os.ReadFile(berthtest.EchoAgentBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if cfg == nil {
		cfg = map[string]any{}
	}
	if _, ok := cfg["run"]; !ok {
		cfg["run"] = []string{"./echo-agent"}
	}
	if _, ok := cfg["health_path"]; !ok {
		cfg["health_path"] = "/healthz"
	}
	files := map[string][]byte{
		"AgentCard.json": mustMarshal(t, map[string]any{"name": name, "description": "CLI test agent"}),
		"berth.json":     mustMarshal(t, cfg),
		"echo-agent":     bin,
	}
	for k, v := range extra {
		files[k] = []byte(v)
	}
	for name, b := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if name == "echo-agent" {
			mode = 0o755
		}
		if err := os.WriteFile(p, b, mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func whoami(t *testing.T, s testServer, agent string) berthtest.Whoami {
	t.Helper()
	w, err := berthtest.GetWhoami(context.Background(), s.URL+"/agents/"+agent)
	if err != nil {
		t.Fatalf("whoami through the proxy: %v", err)
	}
	return w
}

func TestUsageErrorsExitTwo(t *testing.T) {
	t.Parallel()
	u := newUser(t)
	tests := [][]string{
		{"nosuchcommand"},
		{"rollback"},
		{"rollback", "a", "b"},
		{"versions"},
		{"deploy"},
		{"deploy", "dir", "--bogus"},
		{"deploy", "dir", "--strategy", "sideways"},
		{"deploy", "dir", "--version", "1.2"},
		{"deploy", "dir", "--name", "Not A Name"},
		{"ops", "x", "--limit", "0"},
		{"logs", "x", "--follow", "--json"},
		{"users", "create"},
		{"users", "nosuch"},
		{"login", "--access-key", "k"},
		{"ls", "extra"},
		{"serve", "extra"},
	}
	for _, args := range tests {
		r := u.fails(2, []string{"berth: ", "--help"}, args...)
		if r.stdout != "" {
			t.Errorf("berth %s printed %q on stdout, want nothing", strings.Join(args, " "), r.stdout)
		}
	}
	if out := u.ok("--help"); !strings.Contains(out, "rollback") {
		t.Errorf("berth --help = %q, want the command list", out)
	}
}

// serve refuses bad settings, from flags or from the environment, before
// it starts: a typo must not silently become a default (BERTH_READY_TIMEOUT=30
// is not 30 seconds) or leave a half-made data dir (a short JWT secret).
func TestServeRefusesBadSettings(t *testing.T) {
	t.Parallel()
	u := newUser(t)
	tests := []struct {
		env  string
		args []string
		want string
	}{
		{"BERTH_READY_TIMEOUT=30", nil, "BERTH_READY_TIMEOUT"},
		{"BERTH_WRITE_TIMEOUT=soon", nil, "BERTH_WRITE_TIMEOUT"},
		{"BERTH_NO_AUTO_ROLLBACK=yes", nil, "BERTH_NO_AUTO_ROLLBACK"},
		{"BERTH_STANDBY=two", nil, "BERTH_STANDBY"},
		{"BERTH_LOG_FORMAT=xml", nil, "--log-format"},
		{"", []string{"--log-format", "xml"}, "--log-format"},
		{"", []string{"--standby", "-1"}, "--standby"},
		{"", []string{"--max-upload-mb", "0"}, "--max-upload-mb"},
		{"", []string{"--ready-timeout", "0s"}, "--ready-timeout"},
		{"", []string{"--rollback-grace", "-1s"}, "--rollback-grace"},
		{"", []string{"--runtime", "docker"}, "--runtime"},
		{"", []string{"--log-level", "loud"}, "--log-level"},
	}
	for _, tt := range tests {
		c := u
		if tt.env != "" {
			c = u.with(tt.env)
		}
		dataDir := filepath.Join(t.TempDir(), "data")
		// An address that cannot be listened on: a setting wrongly
		// accepted makes serve fail with exit 1 instead of running on.
		args := append([]string{"serve", "--data-dir", dataDir, "--addr", "256.0.0.1:1"}, tt.args...)
		c.fails(2, []string{tt.want}, args...)
		if _, err := os.Stat(dataDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("berth %v with %s made the data dir (%v), want nothing made", tt.args, tt.env, err)
		}
	}
	// A short token secret stops the start before any superuser exists.
	dataDir := filepath.Join(t.TempDir(), "data")
	u.with("BERTH_JWT_SECRET=short").fails(1, []string{"BERTH_JWT_SECRET"}, "serve", "--data-dir", dataDir, "--addr", "127.0.0.1:0")
	if _, err := os.Stat(filepath.Join(dataDir, "admin-credentials.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("admin credentials after a refused start: %v, want none written", err)
	}
}

func TestLoginConfigAndOverrides(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	u := newUser(t)

	u.fails(1, []string{"not logged in", "berth login"}, "ls")
	r := u.fails(1, []string{"invalid access key or secret", "[unauthorized]"},
		"login", "--server", s.URL, "--access-key", "nope", "--access-secret", "nope")
	if strings.Contains(r.stderr, "Log in again") {
		t.Errorf("a refused login says %q; want no advice to log in again", r.stderr)
	}
	if _, err := os.Stat(u.configFile()); err == nil {
		t.Fatalf("a failed login wrote %s", u.configFile())
	}

	var creds server.AdminCredentials
	b, err := os.ReadFile(s.CredentialsFile())
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &creds); err != nil {
		t.Fatal(err)
	}
	u.ok("login", "--server", s.URL+"/", "--access-key", creds.AccessKey, "--access-secret", creds.AccessSecret)
	fi, err := os.Stat(u.configFile())
	if err != nil {
		t.Fatalf("login did not write %s: %v", u.configFile(), err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", u.configFile(), fi.Mode().Perm())
	}
	var cfg struct{ Server, Token string }
	b, _ = os.ReadFile(u.configFile())
	if err := json.Unmarshal(b, &cfg); err != nil || cfg.Server != s.URL || cfg.Token == "" {
		t.Fatalf("config = %s (%v), want server %s and a token", b, err, s.URL)
	}
	if out := u.ok("ls"); !strings.Contains(out, "no agents yet") {
		t.Errorf("berth ls on an empty server = %q", out)
	}

	// Without XDG_CONFIG_HOME the config lives in ~/.config/berth.
	plain := newUser(t)
	plain.env = []string{"HOME=" + plain.home, "PATH=" + os.Getenv("PATH")}
	plain.loginAdmin(s)
	if _, err := os.Stat(filepath.Join(plain.home, ".config", "berth", "config.json")); err != nil {
		t.Errorf("login without XDG_CONFIG_HOME: %v", err)
	}

	// BERTH_TOKEN and BERTH_SERVER override the stored login.
	u.with("BERTH_TOKEN=garbage").fails(1, []string{"invalid token", "[unauthorized]", "Log in again"}, "ls")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	u.with("BERTH_SERVER=http://"+dead).fails(1, []string{"cannot reach", dead, "[unavailable]"}, "ls")
	fresh := newUser(t).with("BERTH_SERVER="+s.URL, "BERTH_TOKEN="+cfg.Token)
	fresh.ok("ls")

	// An expired login is caught before the server is asked.
	expired := "e30." + base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"exp":%d}`, time.Now().Add(-time.Hour).Unix()))) + ".sig"
	u.with("BERTH_TOKEN="+expired).fails(1, []string{"expired", "Log in again: berth login"}, "versions", "x")
}

// TestDeployRollbackAndAuditTrail is the CLI's main path: deploy a folder,
// change it and deploy again, roll back with a reason (dry run first), and
// read the reason back from versions and ops.
func TestDeployRollbackAndAuditTrail(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	u := newUser(t)
	u.loginAdmin(s)

	dir := agentDir(t, "demo", map[string]any{"env": map[string]string{"ECHO_GREETING": "first"}}, map[string]string{
		".berthignore":    "# local junk\nsecret.txt\ntmp/\n/notes/*.md\n",
		"secret.txt":      "do not ship",
		"tmp/cache.bin":   "junk",
		"notes/todo.md":   "junk",
		"notes/keep.txt":  "shipped",
		"sub/secret.txt":  "not shipped either: unanchored names match at any depth",
		"sub/tmp":         "a file named tmp: the rule tmp/ is for folders only",
		".git/HEAD":       "ref: refs/heads/main",
		"static/app.json": "{}",
	})
	r := u.run("deploy", dir)
	if r.code != 0 {
		t.Fatalf("first deploy: %s", r)
	}
	for _, want := range []string{"uploading demo", "accepted  demo 1.0.0", "building", "starting  ./echo-agent", "health    waiting for GET /healthz"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("first deploy progress %q does not contain %q", r.stderr, want)
		}
	}
	if want := "live      demo 1.0.0 at " + s.URL + "/agents/demo/"; !strings.Contains(r.stdout, want) {
		t.Errorf("first deploy said %q, want %q", r.stdout, want)
	}
	if w := whoami(t, s, "demo"); w.Version != "1.0.0" || w.Greeting != "first" {
		t.Fatalf("after the first deploy the proxy reaches %+v, want 1.0.0 greeting first", w)
	}
	checkPackage(t, s, "demo", "1.0.0",
		[]string{"AgentCard.json", "berth.json", "echo-agent", "notes/keep.txt", "sub/tmp", "static/app.json", ".berthignore"},
		[]string{"secret.txt", "tmp/cache.bin", "notes/todo.md", "sub/secret.txt", ".git/HEAD"})

	// Change the config and deploy again, keeping 1.0.0 warm.
	if err := os.WriteFile(filepath.Join(dir, "berth.json"), mustMarshal(t, map[string]any{
		"run": []string{"./echo-agent"}, "health_path": "/healthz", "env": map[string]string{"ECHO_GREETING": "second"},
	}), 0o644); err != nil {
		t.Fatal(err)
	}
	var dep berthhttp.DeployResult
	u.jsonOut(&dep, "deploy", dir, "--version", "minor", "--strategy", "blue-green")
	if dep.Version != "1.1.0" || dep.PreviousVersion != "1.0.0" || dep.Status != "running" || dep.URL != s.URL+"/agents/demo/" {
		t.Fatalf("second deploy = %+v, want 1.1.0 from 1.0.0 running", dep)
	}
	if w := whoami(t, s, "demo"); w.Version != "1.1.0" || w.Greeting != "second" {
		t.Fatalf("after the second deploy the proxy reaches %+v, want 1.1.0 greeting second", w)
	}

	var h berthhttp.VersionHistory
	u.jsonOut(&h, "versions", "demo")
	if h.CurrentVersion != "1.1.0" || len(h.Versions) != 2 || h.Versions[0].Version != "1.1.0" ||
		h.Versions[0].Status != "active" || h.Versions[1].Status != "standby" {
		t.Fatalf("versions --json = %+v, want 1.1.0 active and 1.0.0 standby", h)
	}

	// A dry run says what would happen and changes nothing.
	out := u.ok("rollback", "demo", "--dry-run", "--reason", "just looking")
	if !strings.Contains(out, "would roll back demo 1.1.0 → 1.0.0 (warm standby") || !strings.Contains(out, "nothing changed") {
		t.Errorf("rollback --dry-run said %q", out)
	}
	u.jsonOut(&h, "versions", "demo")
	if h.CurrentVersion != "1.1.0" || h.Versions[0].RollbackInfo != nil {
		t.Fatalf("after a dry run versions = %+v, want 1.1.0 still current and no rollback recorded", h)
	}
	if w := whoami(t, s, "demo"); w.Version != "1.1.0" {
		t.Fatalf("after a dry run the proxy reaches %s, want 1.1.0", w.Version)
	}

	out = u.ok("rollback", "demo", "--reason", "second greeting is wrong")
	if !regexp.MustCompile(`(?m)^rolled back demo 1\.1\.0 → 1\.0\.0 in \d+ ms$`).MatchString(out) {
		t.Errorf("rollback said %q, want \"rolled back demo 1.1.0 → 1.0.0 in N ms\"", out)
	}
	// The whole config comes back, not only the code.
	if w := whoami(t, s, "demo"); w.Version != "1.0.0" || w.Greeting != "first" {
		t.Fatalf("after the rollback the proxy reaches %+v, want 1.0.0 greeting first", w)
	}

	u.jsonOut(&h, "versions", "demo")
	if h.CurrentVersion != "1.0.0" || h.Versions[0].Status != "rolled_back" || h.Versions[0].RollbackInfo == nil ||
		h.Versions[0].RollbackInfo.Reason != "second greeting is wrong" || h.Versions[0].RollbackInfo.Actor != "admin" {
		t.Fatalf("versions --json after the rollback = %+v, want 1.1.0 rolled back by admin with the reason", h)
	}
	table := u.ok("versions", "demo")
	for _, want := range []string{"VERSION", "rolled_back", "by admin → 1.0.0", `"second greeting is wrong"`, "active"} {
		if !strings.Contains(table, want) {
			t.Errorf("versions table %q does not contain %q", table, want)
		}
	}

	ops := u.ok("ops", "demo")
	for _, want := range []string{"rollback", "second greeting is wrong", "admin", "upload", "update"} {
		if !strings.Contains(ops, want) {
			t.Errorf("ops table %q does not contain %q", ops, want)
		}
	}
	var opList []berthhttp.OperationInfo
	u.jsonOut(&opList, "ops", "demo")
	if len(opList) != 3 || opList[0].Kind != "rollback" || opList[0].Reason != "second greeting is wrong" ||
		opList[0].FromVersion != "1.1.0" || opList[0].ToVersion != "1.0.0" || opList[0].Actor != "admin" {
		t.Fatalf("ops --json = %+v, want the rollback first, with its reason", opList)
	}

	// Nothing good is left to go back to by default; --to names one.
	u.fails(1, []string{"no earlier good version", "[no_rollback_target]"}, "rollback", "demo")
	u.fails(1, []string{"9.9.9", "[not_found]"}, "rollback", "demo", "--to", "9.9.9")
	out = u.ok("rollback", "demo", "--to", "1.1.0", "--reason", "fine after all")
	if !strings.Contains(out, "rolled back demo 1.0.0 → 1.1.0 in ") {
		t.Errorf("rollback --to 1.1.0 said %q", out)
	}

	var rows []agentRow
	u.jsonOut(&rows, "ls")
	if len(rows) != 1 || rows[0].Name != "demo" || rows[0].CurrentVersion != "1.1.0" || rows[0].Status != "active" ||
		rows[0].URL != s.URL+"/agents/demo/" {
		t.Fatalf("ls --json = %+v, want demo 1.1.0 active", rows)
	}
	if out := u.ok("ls"); !regexp.MustCompile(`(?m)^demo\s+1\.1\.0\s+active\s+http://`).MatchString(out) {
		t.Errorf("ls = %q, want a row for demo", out)
	}

	if out := u.ok("logs", "demo"); !strings.Contains(out, "echo-agent listening") || !strings.Contains(out, "version=1.1.0") {
		t.Errorf("logs demo = %q, want the active version's start line", out)
	}
	if out := u.ok("logs", "demo", "--version", "1.0.0"); !strings.Contains(out, "version=1.0.0") {
		t.Errorf("logs demo --version 1.0.0 = %q, want 1.0.0's start line", out)
	}
	var lj logsJSON
	u.jsonOut(&lj, "logs", "demo")
	if lj.Agent != "demo" || lj.DeploymentID == "" || !strings.Contains(lj.Output, "version=1.1.0") {
		t.Errorf("logs --json = %+v", lj)
	}
	u.fails(1, []string{"[not_found]"}, "logs", "demo", "--version", "4.0.0")
	u.fails(1, []string{"[not_found]"}, "versions", "nosuchagent")

	testLogsFollow(t, s, u)
}

// testLogsFollow follows demo's logs across a rollback: the new active
// deployment's output appears without restarting the command.
func testLogsFollow(t *testing.T, s testServer, u *user) {
	t.Helper()
	cmd := exec.Command(berthBin, "logs", "demo", "--follow", "--interval", "100ms")
	cmd.Env = u.env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitLine := func(want string) {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("logs --follow ended before printing %q; stderr: %s", want, stderr.String())
				}
				if strings.Contains(l, want) {
					return
				}
			case <-timeout:
				cmd.Process.Kill()
				t.Fatalf("logs --follow did not print %q", want)
			}
		}
	}
	waitLine("version=1.1.0")
	u.ok("rollback", "demo", "--to", "1.0.0", "--reason", "follow test")
	waitLine("version=1.0.0")
	// Ctrl-C ends a follow normally.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("logs --follow after SIGINT: %v; stderr: %s", err, stderr.String())
	}
}

// checkPackage downloads an agent version's package and checks which files
// it holds.
func checkPackage(t *testing.T, s testServer, agent, version string, want, notWant []string) {
	t.Helper()
	b, err := os.ReadFile(s.CredentialsFile())
	if err != nil {
		t.Fatal(err)
	}
	var creds server.AdminCredentials
	if err := json.Unmarshal(b, &creds); err != nil {
		t.Fatal(err)
	}
	c := berthhttp.NewClient(s.URL, "")
	lr, err := c.Login(context.Background(), creds.AccessKey, creds.AccessSecret)
	if err != nil {
		t.Fatal(err)
	}
	c.Token = lr.Token
	var tgz bytes.Buffer
	if _, err := c.Download(context.Background(), agent, version, &tgz); err != nil {
		t.Fatalf("Download(%s %s) = %v", agent, version, err)
	}
	names := tarNames(t, tgz.Bytes())
	for _, n := range want {
		if !names[n] {
			t.Errorf("package of %s %s lacks %s (has %v)", agent, version, n, names)
		}
	}
	for _, n := range notWant {
		if names[n] {
			t.Errorf("package of %s %s holds %s, which should have been left out", agent, version, n)
		}
	}
}

func TestDeployFailures(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	u := newUser(t)
	u.loginAdmin(s)

	// A build that fails: the build log's tail is shown.
	dir := agentDir(t, "broken-build", map[string]any{
		"build": []string{"sh", "-c", "echo compiling; echo 'main.go:3:2: undefined: fmt.Printn' >&2; exit 1"},
	}, nil)
	r := u.fails(1, []string{"[build_failed]", "build log", "undefined: fmt.Printn", "deploy of broken-build 1.0.0 failed"}, "deploy", dir)
	if strings.Contains(r.stdout, "live") {
		t.Errorf("a failed deploy said %q on stdout", r.stdout)
	}

	// A process that exits at once: its last output is in the message.
	dir = agentDir(t, "crasher", map[string]any{
		"run": []string{"sh", "-c", "echo 'config error: OPENAI_KEY is not set'; exit 3"},
	}, nil)
	u.fails(1, []string{"[deploy_failed]", "OPENAI_KEY is not set"}, "deploy", dir)

	// An update that fails its health check leaves the current version
	// serving.
	dir = agentDir(t, "steady", nil, nil)
	u.ok("deploy", dir)
	if err := os.WriteFile(filepath.Join(dir, "berth.json"), mustMarshal(t, map[string]any{
		"run": []string{"./echo-agent"}, "health_path": "/no-such-path", "ready_timeout": "1s",
	}), 0o644); err != nil {
		t.Fatal(err)
	}
	u.fails(1, []string{"deploy of steady 1.0.1 failed (1.0.0 keeps serving)", "operation: "}, "deploy", dir)
	if w := whoami(t, s, "steady"); w.Version != "1.0.0" {
		t.Fatalf("after a failed update the proxy reaches %s, want 1.0.0", w.Version)
	}
	var h berthhttp.VersionHistory
	u.jsonOut(&h, "versions", "steady")
	if h.CurrentVersion != "1.0.0" || h.Versions[0].Version != "1.0.1" || h.Versions[0].Status != "failed" {
		t.Fatalf("versions after a failed update = %+v, want 1.0.1 failed and 1.0.0 current", h)
	}

	// Broken packages are refused before anything is sent.
	empty := t.TempDir()
	u.fails(1, []string{"AgentCard.json"}, "deploy", empty)
	u.fails(1, []string{"no such file"}, "deploy", filepath.Join(empty, "missing"))
	dir = agentDir(t, "linked", nil, nil)
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "passwd")); err != nil {
		t.Fatal(err)
	}
	u.fails(1, []string{"passwd is a symbolic link"}, "deploy", dir)
	u.fails(1, []string{`for agent "linked"`, `not "other"`}, "deploy", agentDir(t, "linked", nil, nil), "--name", "other")

	// A zip deploys as it is.
	zipPath := filepath.Join(t.TempDir(), "agent.zip")
	if err := os.WriteFile(zipPath, berthtest.EchoPackage(t, berthtest.PackageOptions{Name: "zipped"}), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := u.ok("deploy", zipPath); !strings.Contains(out, "live      zipped 1.0.0") {
		t.Errorf("deploy of a zip said %q", out)
	}

	// --no-wait returns once the package is accepted.
	var dep berthhttp.DeployResult
	u.jsonOut(&dep, "deploy", zipPath, "--no-wait")
	if dep.Version != "1.0.1" || dep.Status != "building" || dep.OperationID == "" {
		t.Fatalf("deploy --no-wait = %+v, want 1.0.1 building", dep)
	}
}

func TestUsersCreate(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	admin := newUser(t)
	admin.loginAdmin(s)

	out := admin.ok("users", "create", "alice", "--email", "alice@example.com")
	key := regexp.MustCompile(`(?m)^access key:\s+(\S+)$`).FindStringSubmatch(out)
	secret := regexp.MustCompile(`(?m)^access secret:\s+(\S+)$`).FindStringSubmatch(out)
	if key == nil || secret == nil || !strings.Contains(out, "created user alice") {
		t.Fatalf("users create said %q, want the key and secret", out)
	}
	var bob berthhttp.RegisteredUser
	admin.jsonOut(&bob, "users", "create", "bob", "--superuser")
	if bob.Username != "bob" || bob.Role != "superuser" || bob.AccessKey == "" || bob.AccessSecret == "" {
		t.Fatalf("users create --json = %+v", bob)
	}
	admin.fails(1, []string{"already exists", "[conflict]"}, "users", "create", "alice")

	alice := newUser(t)
	if out := alice.ok("login", "--server", s.URL, "--access-key", key[1], "--access-secret", secret[1]); !strings.Contains(out, "as alice (user)") {
		t.Fatalf("alice's login said %q", out)
	}
	alice.fails(1, []string{"only a superuser", "[forbidden]"}, "users", "create", "carol")

	// Alice may not touch the admin's agents.
	admin.ok("deploy", agentDir(t, "admins", nil, nil))
	alice.fails(1, []string{"[forbidden]"}, "rollback", "admins")
	alice.fails(1, []string{"[forbidden]"}, "deploy", agentDir(t, "admins", nil, nil))
}

// TestExampleAgentDeploys deploys examples/echo-agent as it is in the
// repository (its berth.json builds it with go build) and talks to it
// through the proxy.
func TestExampleAgentDeploys(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	u := newUser(t)
	u.loginAdmin(s)
	example, err := filepath.Abs(filepath.Join("..", "..", "examples", "echo-agent"))
	if err != nil {
		t.Fatal(err)
	}
	r := u.run("deploy", example)
	if r.code != 0 {
		t.Fatalf("deploy examples/echo-agent: %s", r)
	}
	if !strings.Contains(r.stderr, "building  sh -c '") || !strings.Contains(r.stdout, "live      echo-agent 1.0.0") {
		t.Errorf("deploy examples/echo-agent said %s", r)
	}
	reply := sendMessage(t, s.URL+"/agents/echo-agent/", "hello there")
	if reply != "echo (v1.0.0): hello there [hello]" {
		t.Errorf("message/send through the proxy answered %q", reply)
	}
}

// sendMessage sends an A2A message/send to url and returns the reply text.
func sendMessage(t *testing.T, url, text string) string {
	t.Helper()
	body := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":{"role":"user","messageId":"m1","parts":[{"kind":"text","text":%q}]}}}`, text)
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("message/send: %v", err)
	}
	defer resp.Body.Close()
	var r struct {
		Result struct {
			Parts []struct{ Text string } `json:"parts"`
		} `json:"result"`
		Error *struct{ Message string } `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Error != nil || len(r.Result.Parts) != 1 {
		t.Fatalf("message/send answered %d %+v (%v)", resp.StatusCode, r, err)
	}
	return r.Result.Parts[0].Text
}
