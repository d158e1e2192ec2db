package process_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/process"
	"github.com/berthhq/berth/runtimetest"
)

// agentBin is the test agent (testdata/agent), built once by TestMain.
var agentBin string

// helperEnv makes the test binary act as a server that starts one agent and
// waits to be killed (see TestAgentDiesWithServer).
const helperEnv = "BERTH_PROCESS_TEST_HELPER"

// waitLimit bounds waits for things that happen asynchronously (a restart,
// a port closing). It only keeps a broken runtime from hanging the tests.
const waitLimit = 20 * time.Second

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		runHelper()
		return
	}
	dir, err := os.MkdirTemp("", "berth-process-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "agent")
	build := exec.Command("go", "build", "-o", agentBin, "./testdata/agent")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the test agent:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// newRuntime returns a runtime with fast test settings (mod may change
// them), closed when t ends.
func newRuntime(t *testing.T, mod func(*process.Options)) *process.Runtime {
	t.Helper()
	base := t.TempDir()
	opts := process.Options{
		RunDir:            filepath.Join(base, "run"),
		LogDir:            filepath.Join(base, "log"),
		StopTimeout:       5 * time.Second,
		RestartBackoff:    10 * time.Millisecond,
		MaxRestartBackoff: 100 * time.Millisecond,
		Logger:            slog.New(slog.DiscardHandler),
	}
	if mod != nil {
		mod(&opts)
	}
	rt, err := process.New(opts)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

// agentSpec returns a spec running the test agent as ./bin/agent from a
// fresh package directory, with env as its berth.json env.
func agentSpec(t *testing.T, id, version string, env map[string]string) berth.DeploymentSpec {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(agentBin, filepath.Join(dir, "bin", "agent")); err != nil {
		t.Fatal(err)
	}
	return berth.DeploymentSpec{
		DeploymentID: id,
		AgentID:      "agent-" + id,
		AgentName:    "test-agent",
		Version:      version,
		Dir:          dir,
		Config: berth.Config{
			Run:          []string{"./bin/agent"},
			Env:          env,
			ReadyTimeout: berth.Duration(waitLimit),
		},
	}
}

func TestRuntimeSuite(t *testing.T) {
	runtimetest.Run(t, runtimetest.Harness{
		New: func(t *testing.T) berth.Runtime { return newRuntime(t, nil) },
		Spec: func(t *testing.T, kind runtimetest.Kind, id, version string) berth.DeploymentSpec {
			env := map[runtimetest.Kind]map[string]string{
				runtimetest.ExitAtStart:  {"AGENT_EXIT_AT_START": "3"},
				runtimetest.NeverHealthy: {"AGENT_UNHEALTHY": "1"},
			}[kind]
			return agentSpec(t, id, version, env)
		},
		LogOutput:         "agent starting version=",
		ExitOutput:        "agent failing at start: boom",
		WhoamiPath:        "/whoami",
		ShortReadyTimeout: 500 * time.Millisecond,
	})
}

// client makes test requests; no keep-alives, so that every request shows
// whether the port answers now.
var client = &http.Client{
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	Timeout:   5 * time.Second,
}

type whoami struct {
	Version string `json:"version"`
	Port    string `json:"port"`
	PID     int    `json:"pid"`
	Cwd     string `json:"cwd"`
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %s, want 200", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: decoding: %v", url, err)
	}
}

func get(t *testing.T, url string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// waitUntil polls cond until it holds, failing t after waitLimit.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// answers reports whether anything accepts HTTP requests at url.
func answers(url string) bool {
	resp, err := client.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

func waitClosed(t *testing.T, url string) {
	t.Helper()
	waitUntil(t, url+" stops answering", func() bool { return !answers(url) })
}

func start(t *testing.T, rt *process.Runtime, spec berth.DeploymentSpec) berth.Instance {
	t.Helper()
	inst, err := rt.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("Start(%q) = %v", spec.DeploymentID, err)
	}
	return inst
}

func logs(t *testing.T, rt *process.Runtime, id string) string {
	t.Helper()
	var b strings.Builder
	if err := rt.Logs(context.Background(), id, &b); err != nil {
		t.Fatalf("Logs(%q) = %v", id, err)
	}
	return b.String()
}

func TestChildEnvironment(t *testing.T) {
	// Secrets in the server's environment must not reach agents.
	t.Setenv("BERTH_JWT_SECRET", "s3cret")
	t.Setenv("SERVER_ONLY_VAR", "x")
	var runDir string
	rt := newRuntime(t, func(o *process.Options) { runDir = o.RunDir })
	spec := agentSpec(t, "env1", "1.2.3", map[string]string{
		"FOO":            "bar",
		"PORT":           "1",    // Berth's own value wins
		"BERTH_AGENT_ID": "fake", // likewise
	})
	spec.Config.HealthPath = "/healthz"
	inst := start(t, rt, spec)

	var env map[string]string
	getJSON(t, inst.URL+"/env", &env)
	var who whoami
	getJSON(t, inst.URL+"/whoami", &who)
	want := map[string]string{
		"FOO":                 "bar",
		"PORT":                who.Port,
		"BERTH_AGENT_ID":      "agent-env1",
		"BERTH_AGENT_NAME":    "test-agent",
		"BERTH_AGENT_VERSION": "1.2.3",
		"BERTH_DEPLOYMENT_ID": "env1",
		"TMPDIR":              filepath.Join(runDir, "env1"),
		"HOME":                os.Getenv("HOME"),
		"PATH":                os.Getenv("PATH"),
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("child env %s = %q, want %q", k, env[k], v)
		}
	}
	if inst.URL != "http://127.0.0.1:"+who.Port {
		t.Errorf("Start URL = %q, but the agent listens on port %s", inst.URL, who.Port)
	}
	allowed := []string{"LANG"}
	for k := range want {
		allowed = append(allowed, k)
	}
	for k := range env {
		if !slices.Contains(allowed, k) {
			t.Errorf("child env has %s=%q, which it should not", k, env[k])
		}
	}
	wantDir, _ := filepath.EvalSymlinks(spec.Dir)
	if gotDir, _ := filepath.EvalSymlinks(who.Cwd); gotDir != wantDir {
		t.Errorf("child cwd = %q, want %q", who.Cwd, wantDir)
	}
	if st, err := os.Stat(filepath.Join(runDir, "env1")); err != nil || !st.IsDir() {
		t.Errorf("run dir %s: %v, want a directory", filepath.Join(runDir, "env1"), err)
	}
}

// statusLog records OnStatus calls.
type statusLog struct {
	mu     sync.Mutex
	events []statusEvent
}

type statusEvent struct {
	ID       string
	Status   berth.DeploymentStatus
	Restarts int
	Msg      string
}

func (l *statusLog) record(id string, s berth.DeploymentStatus, restarts int, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, statusEvent{id, s, restarts, msg})
}

func (l *statusLog) snapshot() []statusEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

// waitFor waits until an event with status s and restarts n was recorded.
func (l *statusLog) waitFor(t *testing.T, s berth.DeploymentStatus, n int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("OnStatus(%s, %d)", s, n), func() bool {
		return slices.ContainsFunc(l.snapshot(), func(e statusEvent) bool { return e.Status == s && e.Restarts == n })
	})
}

// brief drops messages, for comparing sequences.
func brief(events []statusEvent) []string {
	var out []string
	for _, e := range events {
		out = append(out, fmt.Sprintf("%s/%s/%d", e.ID, e.Status, e.Restarts))
	}
	return out
}

func TestCrashRestartsOnSamePort(t *testing.T) {
	var st statusLog
	rt := newRuntime(t, func(o *process.Options) { o.OnStatus = st.record })
	inst := start(t, rt, agentSpec(t, "crash1", "1.0.0", nil))
	var first whoami
	getJSON(t, inst.URL+"/whoami", &first)

	prev := first
	for n := 1; n <= 2; n++ {
		get(t, inst.URL+"/crash")
		st.waitFor(t, berth.DeploymentRunning, n)
		var now whoami
		getJSON(t, inst.URL+"/whoami", &now)
		if now.Port != first.Port {
			t.Errorf("after restart %d the agent listens on port %s, want the same port %s", n, now.Port, first.Port)
		}
		if now.PID == prev.PID {
			t.Errorf("after restart %d the agent still has pid %d; it was not restarted", n, now.PID)
		}
		prev = now
	}
	want := []string{"crash1/starting/1", "crash1/running/1", "crash1/starting/2", "crash1/running/2"}
	if got := brief(st.snapshot()); !slices.Equal(got, want) {
		t.Errorf("OnStatus calls = %v, want %v", got, want)
	}
	if ev := st.snapshot()[0]; !strings.Contains(ev.Msg, "exit status 7") {
		t.Errorf("OnStatus(starting) message = %q, want it to name the exit status 7", ev.Msg)
	}
	if err := rt.Probe(context.Background(), "crash1"); err != nil {
		t.Errorf("Probe after restarts = %v, want nil", err)
	}
	if l := logs(t, rt, "crash1"); strings.Count(l, "agent starting") != 3 {
		t.Errorf("Logs show %d starts, want 3:\n%s", strings.Count(l, "agent starting"), l)
	}
}

func TestStopEndsSupervision(t *testing.T) {
	tests := []struct {
		name string
		// crash first, and stop while the restart waits out its backoff
		crashFirst bool
	}{
		{"while healthy", false},
		{"during restart backoff", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var st statusLog
			rt := newRuntime(t, func(o *process.Options) {
				o.OnStatus = st.record
				if tt.crashFirst {
					// Long enough that the test's Stop lands inside it.
					o.RestartBackoff = time.Hour
					o.MaxRestartBackoff = time.Hour
				}
			})
			inst := start(t, rt, agentSpec(t, "stop1", "1.0.0", nil))
			if tt.crashFirst {
				get(t, inst.URL+"/crash")
				st.waitFor(t, berth.DeploymentStarting, 1)
			}
			if err := rt.Stop(context.Background(), "stop1"); err != nil {
				t.Fatalf("Stop = %v", err)
			}
			before := st.snapshot()
			// Give a wrongly surviving supervisor time to restart (the test
			// backoff is 10ms); nothing may happen.
			time.Sleep(300 * time.Millisecond)
			if got := st.snapshot(); len(got) != len(before) {
				t.Errorf("OnStatus calls after Stop returned: %v", brief(got[len(before):]))
			}
			if answers(inst.URL) {
				t.Errorf("%s answers after Stop", inst.URL)
			}
			if ids, _ := rt.Running(context.Background()); len(ids) != 0 {
				t.Errorf("Running() after Stop = %v, want none", ids)
			}
		})
	}
}

func TestGiveUpAfterFailedRestarts(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "fail")
	var st statusLog
	var rt *process.Runtime
	removed := make(chan error, 1)
	rt = newRuntime(t, func(o *process.Options) {
		o.MaxFailedRestarts = 2
		o.OnStatus = func(id string, s berth.DeploymentStatus, n int, msg string) {
			st.record(id, s, n, msg)
			if s == berth.DeploymentFailed {
				// Documented as safe: the deployment is gone already.
				removed <- rt.Remove(context.Background(), id)
			}
		}
	})
	inst := start(t, rt, agentSpec(t, "giveup1", "1.0.0", map[string]string{"AGENT_FAIL_IF_EXISTS": marker}))
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	get(t, inst.URL+"/crash")
	select {
	case err := <-removed:
		if err != nil {
			t.Errorf("Remove from OnStatus(failed) = %v, want nil", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("no OnStatus(failed) call")
	}
	events := st.snapshot()
	want := []string{"giveup1/starting/1", "giveup1/starting/2", "giveup1/failed/2"}
	if got := brief(events); !slices.Equal(got, want) {
		t.Fatalf("OnStatus calls = %v, want %v", got, want)
	}
	if msg := events[2].Msg; !strings.Contains(msg, "gave up after 2 failed restarts") || !strings.Contains(msg, "marker file exists") {
		t.Errorf("OnStatus(failed) message = %q, want the give-up and the agent's last output", msg)
	}
	if ids, _ := rt.Running(context.Background()); len(ids) != 0 {
		t.Errorf("Running() after giving up = %v, want none", ids)
	}
	if got := berth.ErrorCode(rt.Probe(context.Background(), "giveup1")); got != berth.CodeNotFound {
		t.Errorf("Probe after giving up: code %q, want %q", got, berth.CodeNotFound)
	}
}

func TestRestartsDisabled(t *testing.T) {
	var st statusLog
	rt := newRuntime(t, func(o *process.Options) {
		o.MaxFailedRestarts = -1
		o.OnStatus = st.record
	})
	inst := start(t, rt, agentSpec(t, "norestart", "1.0.0", nil))
	get(t, inst.URL+"/crash")
	st.waitFor(t, berth.DeploymentFailed, 0)
	if got, want := brief(st.snapshot()), []string{"norestart/failed/0"}; !slices.Equal(got, want) {
		t.Errorf("OnStatus calls = %v, want %v", got, want)
	}
}

func TestStopKillsProcessGroup(t *testing.T) {
	tests := []struct {
		name string
		run  []string
		env  map[string]string
	}{
		{"agent ignores SIGTERM", []string{"./bin/agent"}, map[string]string{"AGENT_IGNORE_TERM": "1"}},
		{"agent under a shell", []string{"sh", "-c", "./bin/agent & wait"}, nil},
		{"agent under a shell ignores SIGTERM", []string{"sh", "-c", "./bin/agent & wait"}, map[string]string{"AGENT_IGNORE_TERM": "1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := newRuntime(t, func(o *process.Options) { o.StopTimeout = 200 * time.Millisecond })
			spec := agentSpec(t, "group1", "1.0.0", tt.env)
			spec.Config.Run = tt.run
			inst := start(t, rt, spec)
			var who whoami
			getJSON(t, inst.URL+"/whoami", &who)
			if err := rt.Stop(context.Background(), "group1"); err != nil {
				t.Fatalf("Stop = %v", err)
			}
			waitClosed(t, inst.URL)
			waitUntil(t, fmt.Sprintf("agent pid %d is gone", who.PID), func() bool { return gone(who.PID) })
		})
	}
}

func TestLogsOutliveDeployment(t *testing.T) {
	var runDir, logDir string
	rt := newRuntime(t, func(o *process.Options) { runDir, logDir = o.RunDir, o.LogDir })
	start(t, rt, agentSpec(t, "logs1", "4.5.6", nil))
	waitUntil(t, "both output streams are logged", func() bool {
		l := logs(t, rt, "logs1")
		return strings.Contains(l, "agent starting version=4.5.6") && strings.Contains(l, "agent stderr hello version=4.5.6")
	})
	if err := rt.Stop(context.Background(), "logs1"); err != nil {
		t.Fatalf("Stop = %v", err)
	}
	if l := logs(t, rt, "logs1"); !strings.Contains(l, "agent starting version=4.5.6") {
		t.Errorf("Logs after Stop = %q, want the agent's output", l)
	}
	if err := rt.Remove(context.Background(), "logs1"); err != nil {
		t.Fatalf("Remove = %v", err)
	}
	if _, err := os.Stat(filepath.Join(runDir, "logs1")); !os.IsNotExist(err) {
		t.Errorf("run dir after Remove: Stat = %v, want not exist", err)
	}
	if _, err := os.Stat(filepath.Join(logDir, "logs1.log")); err != nil {
		t.Errorf("log file after Remove: %v, want it kept", err)
	}
	if l := logs(t, rt, "logs1"); !strings.Contains(l, "agent starting version=4.5.6") {
		t.Errorf("Logs after Remove = %q, want the agent's output", l)
	}
}

func TestLogRotation(t *testing.T) {
	const max = 4096
	var logDir string
	rt := newRuntime(t, func(o *process.Options) { logDir, o.MaxLogBytes = o.LogDir, max })
	inst := start(t, rt, agentSpec(t, "rot1", "1.0.0", nil))
	get(t, inst.URL+"/print?n=400") // about 24 KB
	waitUntil(t, "the last printed line is logged", func() bool {
		return strings.Contains(logs(t, rt, "rot1"), "print line 000399")
	})
	for _, name := range []string{"rot1.log", "rot1.log.1"} {
		st, err := os.Stat(filepath.Join(logDir, name))
		if err != nil {
			t.Errorf("Stat(%s) = %v", name, err)
		} else if st.Size() > max {
			t.Errorf("%s is %d bytes, want at most %d", name, st.Size(), max)
		}
	}
	if l := logs(t, rt, "rot1"); strings.Contains(l, "print line 000000") || len(l) > 2*max {
		t.Errorf("Logs after rotation is %d bytes and has the first line; want only the last %d bytes or so", len(l), 2*max)
	}
}

func TestStartErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(*berth.DeploymentSpec)
		want berth.Code
	}{
		{"path in id", func(s *berth.DeploymentSpec) { s.DeploymentID = "../x" }, berth.CodeInvalid},
		{"empty id", func(s *berth.DeploymentSpec) { s.DeploymentID = "" }, berth.CodeInvalid},
		{"no run command", func(s *berth.DeploymentSpec) { s.Config.Run = nil }, berth.CodeDeployFailed},
		{"missing binary", func(s *berth.DeploymentSpec) { s.Config.Run = []string{"./bin/nope"} }, berth.CodeDeployFailed},
		{"command not in PATH", func(s *berth.DeploymentSpec) { s.Config.Run = []string{"no-such-command-berth"} }, berth.CodeDeployFailed},
		{"missing package dir", func(s *berth.DeploymentSpec) { s.Dir = filepath.Join(s.Dir, "gone") }, berth.CodeDeployFailed},
		{"exit at start", func(s *berth.DeploymentSpec) { s.Config.Env = map[string]string{"AGENT_EXIT_AT_START": "0"} }, berth.CodeTargetUnhealthy},
	}
	rt := newRuntime(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := agentSpec(t, "err1", "1.0.0", nil)
			tt.edit(&spec)
			_, err := rt.Start(context.Background(), spec)
			if got := berth.ErrorCode(err); got != tt.want {
				t.Errorf("Start() = %v (code %q), want code %q", err, got, tt.want)
			}
			if ids, _ := rt.Running(context.Background()); len(ids) != 0 {
				t.Errorf("Running() after a failed Start = %v, want none", ids)
			}
		})
	}
}

func TestExitMessage(t *testing.T) {
	rt := newRuntime(t, nil)
	_, err := rt.Start(context.Background(), agentSpec(t, "exit1", "1.0.0", map[string]string{"AGENT_EXIT_AT_START": "3"}))
	msg := berth.ErrorMessage(err)
	for _, want := range []string{"exit status 3", "agent starting version=1.0.0", "agent stderr hello", "agent failing at start: boom"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Start(exit-at-start) message = %q, want it to contain %q", msg, want)
		}
	}
}

func TestNeverHealthyIsKilled(t *testing.T) {
	rt := newRuntime(t, nil)
	spec := agentSpec(t, "slow1", "1.0.0", map[string]string{"AGENT_NO_LISTEN": "1"})
	spec.Config.ReadyTimeout = berth.Duration(300 * time.Millisecond)
	_, err := rt.Start(context.Background(), spec)
	if got := berth.ErrorCode(err); got != berth.CodeTargetUnhealthy {
		t.Fatalf("Start(never listens) = %v, want code %q", err, berth.CodeTargetUnhealthy)
	}
	if msg := berth.ErrorMessage(err); !strings.Contains(msg, "did not become healthy within 300ms") {
		t.Errorf("Start(never listens) message = %q, want it to name the ready timeout", msg)
	}
	l := logs(t, rt, "slow1")
	if !strings.Contains(l, "start failed") {
		t.Errorf("Logs = %q, want a note of the failed start", l)
	}
	pid := agentPID(t, l)
	waitUntil(t, fmt.Sprintf("agent pid %d is killed", pid), func() bool { return gone(pid) })
}

// agentPID finds the pid the test agent printed in its start line.
func agentPID(t *testing.T, logs string) int {
	t.Helper()
	_, rest, ok := strings.Cut(logs, "agent starting ")
	if ok {
		_, rest, ok = strings.Cut(rest, "pid=")
	}
	var pid int
	if !ok {
		t.Fatalf("no agent start line in logs %q", logs)
	}
	if _, err := fmt.Sscanf(rest, "%d", &pid); err != nil {
		t.Fatalf("no pid in agent start line: %v", err)
	}
	return pid
}

func TestStopDuringStart(t *testing.T) {
	rt := newRuntime(t, nil)
	spec := agentSpec(t, "stopstart", "1.0.0", map[string]string{"AGENT_UNHEALTHY": "1"})
	spec.Config.ReadyTimeout = berth.Duration(time.Hour)
	errc := make(chan error, 1)
	go func() {
		_, err := rt.Start(context.Background(), spec)
		errc <- err
	}()
	waitUntil(t, "the agent is up but unhealthy", func() bool {
		var b strings.Builder
		err := rt.Logs(context.Background(), "stopstart", &b)
		return err == nil && strings.Contains(b.String(), "agent starting")
	})
	// Probe tells a deployment that is starting from an unknown one.
	if err := rt.Probe(context.Background(), "stopstart"); berth.ErrorCode(err) != berth.CodeTargetUnhealthy {
		t.Errorf("Probe while starting = %v, want code %q", err, berth.CodeTargetUnhealthy)
	}
	if err := rt.Stop(context.Background(), "stopstart"); err != nil {
		t.Fatalf("Stop = %v", err)
	}
	select {
	case err := <-errc:
		if got := berth.ErrorCode(err); got != berth.CodeDeployFailed {
			t.Errorf("Start stopped midway = %v, want code %q", err, berth.CodeDeployFailed)
		}
	case <-time.After(waitLimit):
		t.Fatal("Start did not return after Stop")
	}
	pid := agentPID(t, logs(t, rt, "stopstart"))
	waitUntil(t, fmt.Sprintf("agent pid %d is killed", pid), func() bool { return gone(pid) })
}

func TestCloseStopsEverything(t *testing.T) {
	rt := newRuntime(t, nil)
	var urls []string
	for _, id := range []string{"close1", "close2", "close3"} {
		urls = append(urls, start(t, rt, agentSpec(t, id, "1.0.0", nil)).URL)
	}
	if err := rt.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	for _, u := range urls {
		if answers(u) {
			t.Errorf("%s answers after Close", u)
		}
	}
	_, err := rt.Start(context.Background(), agentSpec(t, "close4", "1.0.0", nil))
	if got := berth.ErrorCode(err); got != berth.CodeUnavailable {
		t.Errorf("Start after Close = %v, want code %q", err, berth.CodeUnavailable)
	}
	if err := rt.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

func TestNewNeedsDirectories(t *testing.T) {
	tests := []process.Options{
		{},
		{RunDir: t.TempDir()},
		{LogDir: t.TempDir()},
	}
	for _, opts := range tests {
		if _, err := process.New(opts); berth.ErrorCode(err) != berth.CodeInvalid {
			t.Errorf("New(%+v) = %v, want code %q", opts, err, berth.CodeInvalid)
		}
	}
}

// gone reports whether pid has exited (a zombie counts as exited: nothing
// may reap orphans in a container).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z' || s[i+2] == 'X'
	}
	return false
}

// TestAgentDiesWithServer kills -9 a server process (this test binary in
// helper mode) that started an agent, and expects the agent to die with it:
// at once through Pdeathsig when the agent is the direct child, or, when a
// shell started it, as soon as a new Runtime opens the same RunDir.
func TestAgentDiesWithServer(t *testing.T) {
	tests := []struct {
		name       string
		run        []string
		newRuntime bool
	}{
		{"direct child", []string{agentBin}, false},
		{"grandchild via shell", []string{"sh", "-c", agentBin + " & wait"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			url, pid := startHelper(t, base, tt.run)
			if tt.newRuntime {
				// The server restarts on the same directories.
				rt, err := process.New(process.Options{
					RunDir: filepath.Join(base, "run"),
					LogDir: filepath.Join(base, "log"),
					Logger: slog.New(slog.DiscardHandler),
				})
				if err != nil {
					t.Fatalf("New() = %v", err)
				}
				rt.Close()
			}
			waitClosed(t, url)
			waitUntil(t, fmt.Sprintf("orphaned agent pid %d is gone", pid), func() bool { return gone(pid) })
		})
	}
}

// startHelper runs a server (this binary in helper mode) on base that
// starts run as an agent, SIGKILLs that server, and returns the agent's URL
// and pid.
func startHelper(t *testing.T, base string, run []string) (string, int) {
	t.Helper()
	runJSON, err := json.Marshal(run)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		helperEnv+"=1",
		"HELPER_RUN="+string(runJSON),
		"HELPER_BASE="+base,
		"HELPER_PKG="+t.TempDir(),
	)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("helper printed no URL: %v", err)
	}
	url := strings.TrimSpace(line)
	var who whoami
	getJSON(t, url+"/whoami", &who)
	t.Cleanup(func() {
		if t.Failed() && !gone(who.PID) {
			syscall.Kill(who.PID, syscall.SIGKILL) // do not leak the orphan
		}
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	return url, who.PID
}

// runHelper is the server side of TestAgentDiesWithServer: start one agent,
// print its URL, and wait to be killed.
func runHelper() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	var run []string
	if err := json.Unmarshal([]byte(os.Getenv("HELPER_RUN")), &run); err != nil {
		fail(err)
	}
	base := os.Getenv("HELPER_BASE")
	rt, err := process.New(process.Options{
		RunDir: filepath.Join(base, "run"),
		LogDir: filepath.Join(base, "log"),
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		fail(err)
	}
	inst, err := rt.Start(context.Background(), berth.DeploymentSpec{
		DeploymentID: "orphan1",
		Version:      "1.0.0",
		Dir:          os.Getenv("HELPER_PKG"),
		Config:       berth.Config{Run: run},
	})
	if err != nil {
		fail(err)
	}
	fmt.Println(inst.URL)
	time.Sleep(time.Hour) // until killed
	os.Exit(1)
}

// BenchmarkStartStop measures a cold start (spawn until the health check
// passes) and stop of the test agent: the floor of a cold rollback.
func BenchmarkStartStop(b *testing.B) {
	base := b.TempDir()
	rt, err := process.New(process.Options{
		RunDir: filepath.Join(base, "run"),
		LogDir: filepath.Join(base, "log"),
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close()
	spec := berth.DeploymentSpec{DeploymentID: "bench", Version: "1.0.0", Dir: base, Config: berth.Config{Run: []string{agentBin}}}
	ctx := context.Background()
	for b.Loop() {
		if _, err := rt.Start(ctx, spec); err != nil {
			b.Fatal(err)
		}
		if err := rt.Stop(ctx, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}
