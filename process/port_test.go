package process_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/process"
)

// gate drives the test agent's AGENT_PORT_GATE: each start of the agent
// stops after it learned its port and before it listens, until the test
// opens the gate, so that the test can take the port first as another
// program on the host might.
type gate struct {
	t    *testing.T
	dir  string
	port int // of the start waiting at the gate
}

func newGate(t *testing.T) *gate { return &gate{t: t, dir: t.TempDir()} }

func (g *gate) env() map[string]string { return map[string]string{"AGENT_PORT_GATE": g.dir} }

// next waits for a start to reach the gate and returns its port.
func (g *gate) next() int {
	g.t.Helper()
	var port int
	waitUntil(g.t, "a start reaches the port gate", func() bool {
		b, err := os.ReadFile(filepath.Join(g.dir, "port"))
		if err != nil {
			return false
		}
		port, err = strconv.Atoi(string(b))
		return err == nil
	})
	if err := os.Remove(filepath.Join(g.dir, "port")); err != nil {
		g.t.Fatal(err)
	}
	g.port = port
	return port
}

// open lets the start at the gate (the one next returned) go on and listen.
// Each start waits for a file of its own port, so one left for a start the
// runtime killed meanwhile cannot let the next one through.
func (g *gate) open() {
	g.t.Helper()
	if err := os.WriteFile(filepath.Join(g.dir, "go-"+strconv.Itoa(g.port)), nil, 0o600); err != nil {
		g.t.Fatal(err)
	}
}

// squatKinds are the programs that may take an agent's port: one that
// answers every request 200 (so a health check alone would pass) and one
// that accepts connections and never answers.
var squatKinds = []struct {
	name  string
	serve func(net.Listener)
}{
	{"answers 200", func(ln net.Listener) {
		http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, `{"squatter":true}`)
		}))
	}},
	{"never answers", func(ln net.Listener) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}},
}

// takePort listens on 127.0.0.1:port and serves with serve until the test
// ends.
func takePort(t *testing.T, port int, serve func(net.Listener)) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("take port %d: %v", port, err)
	}
	t.Cleanup(func() { ln.Close() })
	go serve(ln)
}

func portOf(t *testing.T, rawURL string) int {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("no port in %q", rawURL)
	}
	return port
}

func skipWithoutProc(t *testing.T) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("telling who listens on a port needs Linux's /proc")
	}
}

type startResult struct {
	inst berth.Instance
	err  error
}

func startAsync(rt *process.Runtime, spec berth.DeploymentSpec) <-chan startResult {
	c := make(chan startResult, 1)
	go func() {
		inst, err := rt.Start(context.Background(), spec)
		c <- startResult{inst, err}
	}()
	return c
}

// A port taken by another program between the runtime choosing it and the
// agent binding it is given up for a fresh one: the start succeeds, on
// another port, with the agent itself answering.
func TestStartMovesOffTakenPort(t *testing.T) {
	skipWithoutProc(t)
	for _, kind := range squatKinds {
		t.Run(kind.name, func(t *testing.T) {
			rt := newRuntime(t, nil)
			g := newGate(t)
			done := startAsync(rt, agentSpec(t, "moved1", "1.0.0", g.env()))
			taken := g.next()
			takePort(t, taken, kind.serve)
			g.open()
			second := g.next()
			g.open()
			res := <-done
			if res.err != nil {
				t.Fatalf("Start() with its first port taken = %v, want success on another port", res.err)
			}
			if got := portOf(t, res.inst.URL); got != second || got == taken {
				t.Errorf("Start() URL %s, want port %d (not the taken %d)", res.inst.URL, second, taken)
			}
			var w whoami
			getJSON(t, res.inst.URL+"/whoami", &w)
			if w.Version != "1.0.0" || w.Port != strconv.Itoa(second) {
				t.Errorf("whoami at %s = %+v, want the agent 1.0.0 on port %d", res.inst.URL, w, second)
			}
			if l := logs(t, rt, "moved1"); !strings.Contains(l, fmt.Sprintf("port %d of 127.0.0.1", taken)) || !strings.Contains(l, "trying another port") {
				t.Errorf("Logs = %q, want a note that port %d was taken and another tried", l, taken)
			}
		})
	}
}

// When every port a start tries is taken, it fails with CodeUnavailable
// naming the cause and the ports, and leaves nothing running.
func TestStartGivesUpWhenPortsKeepBeingTaken(t *testing.T) {
	skipWithoutProc(t)
	rt := newRuntime(t, nil)
	g := newGate(t)
	done := startAsync(rt, agentSpec(t, "taken1", "1.0.0", g.env()))
	var ports []int
	for range 3 {
		p := g.next()
		ports = append(ports, p)
		takePort(t, p, squatKinds[0].serve)
		g.open()
	}
	res := <-done
	if got := berth.ErrorCode(res.err); got != berth.CodeUnavailable {
		t.Fatalf("Start() with every port taken = %v (code %q), want code %q", res.err, got, berth.CodeUnavailable)
	}
	msg := berth.ErrorMessage(res.err)
	if !strings.Contains(msg, "another process took each of the 3 ports") {
		t.Errorf("Start() message = %q, want it to name the cause", msg)
	}
	for _, p := range ports {
		if !strings.Contains(msg, strconv.Itoa(p)) {
			t.Errorf("Start() message = %q, want it to name port %d", msg, p)
		}
	}
	if ids, _ := rt.Running(context.Background()); len(ids) != 0 {
		t.Errorf("Running() after the failed Start = %v, want none", ids)
	}
	// Three processes were started, one per port, and all are gone (each
	// failed to bind its taken port, or was killed).
	var pids []int
	for _, line := range strings.Split(logs(t, rt, "taken1"), "\n") {
		if _, rest, ok := strings.Cut(line, "] started pid "); ok {
			var pid int
			if _, err := fmt.Sscanf(rest, "%d", &pid); err != nil {
				t.Fatalf("bad log line %q", line)
			}
			pids = append(pids, pid)
		}
	}
	if len(pids) != 3 {
		t.Errorf("Logs show %d processes started (%v), want 3", len(pids), pids)
	}
	for _, pid := range pids {
		waitUntil(t, fmt.Sprintf("agent pid %d is gone", pid), func() bool { return gone(pid) })
	}
}

// A restart never adopts a process that took the deployment's port while
// the agent was down: the restart fails, naming the cause, and the runtime
// gives up instead of reporting the deployment running.
func TestRestartDoesNotAdoptPortTaker(t *testing.T) {
	skipWithoutProc(t)
	var st statusLog
	rt := newRuntime(t, func(o *process.Options) {
		o.MaxFailedRestarts = 1
		o.OnStatus = st.record
	})
	g := newGate(t)
	done := startAsync(rt, agentSpec(t, "retaken1", "1.0.0", g.env()))
	port := g.next()
	g.open()
	res := <-done
	if res.err != nil {
		t.Fatalf("Start() = %v", res.err)
	}
	get(t, res.inst.URL+"/crash")
	if p := g.next(); p != port {
		t.Fatalf("restart on port %d, want the same port %d", p, port)
	}
	takePort(t, port, squatKinds[0].serve)
	g.open()
	st.waitFor(t, berth.DeploymentFailed, 1)
	events := st.snapshot()
	for _, e := range events {
		if e.Status == berth.DeploymentRunning {
			t.Errorf("OnStatus(running) after the port was taken: %+v", e)
		}
	}
	if msg := events[len(events)-1].Msg; !strings.Contains(msg, "in use by another process") {
		t.Errorf("OnStatus(failed) message = %q, want it to name the taken port", msg)
	}
}

// With no free port at all, a start fails at once with CodeUnavailable and
// starts nothing; once ports are available again starts work.
func TestStartWithNoFreePort(t *testing.T) {
	rt := newRuntime(t, nil)
	process.SetListen(rt, func(network, address string) (net.Listener, error) {
		return nil, &net.OpError{Op: "listen", Net: network, Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}
	})
	_, err := rt.Start(context.Background(), agentSpec(t, "noport1", "1.0.0", nil))
	if got := berth.ErrorCode(err); got != berth.CodeUnavailable {
		t.Fatalf("Start() without a free port = %v (code %q), want code %q", err, got, berth.CodeUnavailable)
	}
	if msg := berth.ErrorMessage(err); !strings.Contains(msg, "no free port") {
		t.Errorf("Start() message = %q, want it to name the cause", msg)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("Start() = %v, want the OS error kept for the logs", err)
	}
	if ids, _ := rt.Running(context.Background()); len(ids) != 0 {
		t.Errorf("Running() = %v, want none", ids)
	}

	process.SetListen(rt, net.Listen)
	inst := start(t, rt, agentSpec(t, "noport1", "1.0.0", nil))
	var w whoami
	getJSON(t, inst.URL+"/whoami", &w)
	if w.Version != "1.0.0" {
		t.Errorf("whoami = %+v after ports came back, want the agent", w)
	}
}
