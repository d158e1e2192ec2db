package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/berthtest"
)

// portGate makes each start of a package pause after Berth chose its PORT
// and before the agent binds it, until the test opens the gate. In that
// window the test can take the port first, as another program on the host
// might: a realistic, reproducible port race with no hook in the product.
type portGate struct {
	t    *testing.T
	dir  string
	port int // of the start waiting at the gate
}

func newPortGate(t *testing.T) *portGate {
	t.Helper()
	return &portGate{t: t, dir: t.TempDir()}
}

// pkg returns a package of the echo agent (run by its absolute path, like
// light) whose every start passes through the gate.
func (g *portGate) pkg(name, version string) []byte {
	g.t.Helper()
	// Each start waits for a go file of its own port: one left for a start
	// that the runtime killed meanwhile must not let the next one through.
	script := `printf '%s' "$PORT" > "$GATE_DIR/port.tmp" && mv "$GATE_DIR/port.tmp" "$GATE_DIR/port"
while [ ! -e "$GATE_DIR/go-$PORT" ]; do sleep 0.02; done
rm -f "$GATE_DIR/go-$PORT"
exec "$AGENT_BIN"`
	card, _ := json.Marshal(map[string]any{"name": name, "version": version})
	cfg, _ := json.Marshal(map[string]any{
		"run":           []string{"sh", "-c", script},
		"env":           map[string]string{"GATE_DIR": g.dir, "AGENT_BIN": berthtest.EchoAgentBinary(g.t)},
		"ready_timeout": "10s",
	})
	return berthtest.Zip(g.t, map[string]string{"AgentCard.json": string(card), "berth.json": string(cfg)})
}

// next waits until a start announces the port Berth gave it, and returns
// that port; the start waits at the gate.
func (g *portGate) next() int {
	g.t.Helper()
	p := filepath.Join(g.dir, "port")
	var port int
	waitFor(g.t, "a start to reach the port gate", 20*time.Second, func() bool {
		b, err := os.ReadFile(p)
		if err != nil {
			return false
		}
		port, err = strconv.Atoi(string(b))
		return err == nil
	})
	if err := os.Remove(p); err != nil {
		g.t.Fatal(err)
	}
	g.port = port
	return port
}

// open lets the start waiting at the gate (the one next returned) go on to
// exec the agent.
func (g *portGate) open() {
	g.t.Helper()
	if err := os.WriteFile(filepath.Join(g.dir, "go-"+strconv.Itoa(g.port)), nil, 0o600); err != nil {
		g.t.Fatal(err)
	}
}

// pass lets the next start through with its port untouched and returns it.
func (g *portGate) pass() int {
	g.t.Helper()
	port := g.next()
	g.open()
	return port
}

// The port tests do not run in parallel with others: another server's
// runtime in this test process may be handed, by the kernel, the very port
// that a start waits at the gate with, and take it before the test can
// (which the runtime handles, but which would leave the test without its
// squatter).

// squatter is another program's HTTP server on a port Berth chose for an
// agent. It answers every request 200 with JSON, as an unrelated agent or
// service would, so a health check alone cannot tell it from the agent.
type squatter struct {
	ln      net.Listener
	srv     *http.Server
	proxied atomic.Int64 // requests that came through Berth's proxy
}

func squat(t *testing.T, port int) *squatter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("take port %d: %v", port, err)
	}
	s := &squatter{ln: ln}
	s.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Forwarded-Prefix") != "" {
			s.proxied.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"name":"squatter","version":"squatter-%d"}`, port)
	})}
	go s.srv.Serve(ln)
	t.Cleanup(s.close)
	return s
}

func (s *squatter) close() { s.srv.Close() }

// answer is the outcome of an API call made in the background.
type answer struct {
	status int
	body   []byte
}

// async runs call in the background; the result arrives on the channel.
func async(call func() (int, []byte)) <-chan answer {
	c := make(chan answer, 1)
	go func() {
		st, b := call()
		c <- answer{st, b}
	}()
	return c
}

// squatEvery takes the port of each of the next n starts at the gate,
// checking meanwhile that agent's traffic still reaches version serving
// through the proxy. It returns the squatters, in order.
func (ts *testServer) squatEvery(t *testing.T, gate *portGate, n int, agent, serving string) []*squatter {
	t.Helper()
	var ss []*squatter
	for range n {
		port := gate.next()
		ss = append(ss, squat(t, port))
		if w := ts.whoami(agent); w.Version != serving {
			t.Errorf("during the start, %s answers through the proxy as %q, want %s", agent, w.Version, serving)
		}
		gate.open()
	}
	return ss
}

// processesOf returns the pids of live processes that belong to the given
// deployment (they carry its BERTH_DEPLOYMENT_ID), or skips the check
// where there is no /proc to look in.
func processesOf(t *testing.T, deploymentID string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Logf("cannot list processes (%v); not checking that deployment %s left none", err, deploymentID)
		return nil
	}
	marker := []byte("BERTH_DEPLOYMENT_ID=" + deploymentID)
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(kv, marker) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// checkPortFailure checks what a start that ran out of ports leaves: the
// answer is 503 unavailable naming the cause and every port tried, the
// serving version is untouched, no squatter ever got a proxied request, the
// attempt is recorded as failed with its deployment, and none of its
// processes runs.
func (ts *testServer) checkPortFailure(t *testing.T, what string, a answer, ss []*squatter, agent string, serving berthtest.Whoami, kind, version string) {
	t.Helper()
	e := wantError(t, what, a.status, a.body, http.StatusServiceUnavailable, "unavailable")
	if !strings.Contains(e.Message, "another process") {
		t.Errorf("%s message = %q, want it to name the cause (ports taken by another process)", what, e.Message)
	}
	for _, s := range ss {
		port := s.ln.Addr().(*net.TCPAddr).Port
		if !strings.Contains(e.Message, strconv.Itoa(port)) {
			t.Errorf("%s message = %q, want it to name port %d", what, e.Message, port)
		}
		if n := s.proxied.Load(); n != 0 {
			t.Errorf("the process squatting port %d got %d requests through the proxy, want 0", port, n)
		}
	}
	if w := ts.whoami(agent); w.Version != serving.Version || w.DeploymentID != serving.DeploymentID {
		t.Errorf("after %s, the proxy reaches %s (deployment %s), want %s (deployment %s) still", what,
			w.Version, w.DeploymentID, serving.Version, serving.DeploymentID)
	}
	h := ts.history(ts.Admin, agent)
	if h.CurrentVersion != serving.Version {
		t.Errorf("after %s, current version = %s, want %s", what, h.CurrentVersion, serving.Version)
	}
	ops := ts.operations(ts.Admin, agent)
	if op := ops[0]; op.Kind != kind || op.Status != "failed" || op.ErrorCode != "unavailable" || op.ToVersion != version {
		t.Errorf("after %s, latest operation = %+v, want a failed %s to %s with error_code unavailable", what, op, kind, version)
	}
	var failed []deploymentEntry
	for _, d := range ts.deployments(ts.Admin, agent) {
		if d.Version == version && d.Status == "failed" {
			failed = append(failed, d)
		}
		if d.Version == version && d.Status != "failed" && d.Status != "stopped" {
			t.Errorf("after %s, deployment %s of %s is %s", what, d.ID, version, d.Status)
		}
	}
	if len(failed) == 0 {
		t.Fatalf("after %s, no failed deployment of %s is recorded", what, version)
	}
	d := failed[0] // newest first
	if !strings.Contains(d.Error, "another process") {
		t.Errorf("failed deployment's error = %q, want it to name the cause", d.Error)
	}
	if pids := processesOf(t, d.ID); len(pids) > 0 {
		t.Errorf("after %s, processes %v of the failed deployment %s still run", what, pids, d.ID)
	}
}

// An update whose new version cannot get a port, because another program
// takes each port Berth chooses before the agent binds it, fails with 503
// naming the cause; the current version keeps serving and never shares its
// traffic with the squatters. A port taken once is simply replaced, and once
// ports are free again updates go through.
func TestPortTakenDuringUpdate(t *testing.T) {
	ts := startServer(t, "")
	ts.upload(ts.Admin, light(t, "squat-update", "1.0.0", nil))
	serving := ts.whoami("squat-update")
	gate := newPortGate(t)

	// Every port the start tries is taken: 3 of them.
	done := async(func() (int, []byte) {
		return ts.updateRaw(ts.Admin, "squat-update", gate.pkg("squat-update", "2.0.0"), nil, "?wait=true", nil)
	})
	ss := ts.squatEvery(t, gate, 3, "squat-update", "1.0.0")
	ts.checkPortFailure(t, "update with every port taken", <-done, ss, "squat-update", serving, "update", "2.0.0")
	if st := ts.history(ts.Admin, "squat-update").statuses(); st["2.0.0"] != "failed" || st["1.0.0"] != "active" {
		t.Errorf("version statuses = %v, want 2.0.0 failed and 1.0.0 active", st)
	}
	for _, s := range ss {
		s.close()
	}

	// One port taken: the start moves to a fresh one and succeeds.
	done = async(func() (int, []byte) {
		return ts.updateRaw(ts.Admin, "squat-update", gate.pkg("squat-update", "3.0.0"), nil, "?wait=true", nil)
	})
	s := ts.squatEvery(t, gate, 1, "squat-update", "1.0.0")[0]
	gate.pass()
	if a := <-done; a.status != http.StatusOK {
		t.Fatalf("update with one port taken = %d %s, want 200 on another port", a.status, a.body)
	}
	if w := ts.whoami("squat-update"); w.Version != "3.0.0" {
		t.Errorf("after the update the proxy reaches %q, want 3.0.0", w.Version)
	}
	if n := s.proxied.Load(); n != 0 {
		t.Errorf("the squatter got %d requests through the proxy, want 0", n)
	}
}

// A cold rollback whose target cannot get a port fails with 503 naming the
// cause and changes nothing users see; once a port is free the same
// rollback succeeds and cleans up the failed attempt.
func TestPortTakenDuringColdRollback(t *testing.T) {
	ts := startServer(t, "")
	gate := newPortGate(t)
	done := async(func() (int, []byte) {
		return ts.uploadRaw(ts.Admin, gate.pkg("squat-back", "1.0.0"), nil, "?wait=true")
	})
	gate.pass()
	if a := <-done; a.status != http.StatusOK {
		t.Fatalf("upload = %d %s", a.status, a.body)
	}
	// A rolling update stops 1.0.0, so going back to it is a cold start.
	ts.update(ts.Admin, "squat-back", light(t, "squat-back", "2.0.0", nil), map[string]string{"update_strategy": "rolling"})
	serving := ts.whoami("squat-back")

	done = async(func() (int, []byte) {
		return ts.rollbackRaw(ts.Admin, "squat-back", `{"target_version":"1.0.0","reason":"ports"}`, "", nil)
	})
	ss := ts.squatEvery(t, gate, 3, "squat-back", "2.0.0")
	ts.checkPortFailure(t, "cold rollback with every port taken", <-done, ss, "squat-back", serving, "rollback", "1.0.0")
	if st := ts.history(ts.Admin, "squat-back").statuses(); st["2.0.0"] != "active" || st["1.0.0"] == "active" {
		t.Errorf("version statuses = %v, want 2.0.0 still active", st)
	}
	for _, s := range ss {
		s.close()
	}

	// Ports are free again: the same rollback goes through.
	done = async(func() (int, []byte) {
		return ts.rollbackRaw(ts.Admin, "squat-back", `{"target_version":"1.0.0","reason":"ports"}`, "", nil)
	})
	gate.pass()
	a := <-done
	if a.status != http.StatusOK {
		t.Fatalf("rollback once ports are free = %d %s, want 200", a.status, a.body)
	}
	var r struct{ Data rollbackData }
	mustJSON(t, a.body, &r)
	if w := ts.whoami("squat-back"); w.Version != "1.0.0" {
		t.Errorf("after the rollback the proxy reaches %q, want 1.0.0", w.Version)
	}
	if len(r.Data.Cleaned) != 1 {
		t.Errorf("rollback cleaned %v, want the one failed deployment of the earlier attempt", r.Data.Cleaned)
	}
}
