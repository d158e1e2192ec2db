package server_test

import (
	"context"
	"database/sql"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/sqlite"
)

// testBusyTimeout is the SQLite busy timeout of the busy tests' servers:
// short, so that each write refused for a held lock costs little.
const testBusyTimeout = 300 * time.Millisecond

// startBusyServer starts a server whose SQLite store gives up on a lock
// after testBusyTimeout. The busy timeout is set through the environment
// (sqlite.BusyTimeoutEnv), so callers cannot run in parallel. The case is
// SQLite's own: on PostgreSQL the test is skipped.
func startBusyServer(t *testing.T) *testServer {
	t.Helper()
	if os.Getenv("BERTH_TEST_DATABASE_URL") != "" {
		t.Skip("the busy database file is the embedded SQLite store's case")
	}
	t.Setenv(sqlite.BusyTimeoutEnv, testBusyTimeout.String())
	return startServer(t, "")
}

// dbLock is another process's hold on the write lock of a server's
// berth.db: a connection of its own inside BEGIN IMMEDIATE.
type dbLock struct {
	t    *testing.T
	db   *sql.DB
	conn *sql.Conn
	once sync.Once
}

// lockDB takes the write lock of the SQLite database in dataDir.
func lockDB(t *testing.T, dataDir string) *dbLock {
	t.Helper()
	path := filepath.Join(dataDir, "berth.db")
	// A busy timeout of its own: the server may be writing at this moment.
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(context.Background(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatalf("BEGIN IMMEDIATE on %s: %v", path, err)
	}
	l := &dbLock{t: t, db: db, conn: conn}
	t.Cleanup(l.release)
	return l
}

// release gives the lock back (idempotent).
func (l *dbLock) release() {
	l.once.Do(func() {
		if _, err := l.conn.ExecContext(context.Background(), "ROLLBACK"); err != nil {
			l.t.Errorf("ROLLBACK: %v", err)
		}
		l.conn.Close()
		l.db.Close()
	})
}

// wantBusy checks that a write refused for the held lock answered 503
// unavailable saying so, after waiting the busy timeout.
func wantBusy(t *testing.T, what string, st int, body []byte, took time.Duration) {
	t.Helper()
	e := wantError(t, what+" while the database is locked", st, body, http.StatusServiceUnavailable, "unavailable")
	if !strings.Contains(e.Message, "database is busy") {
		t.Errorf("%s while the database is locked: message %q, want it to say the database is busy", what, e.Message)
	}
	if took < testBusyTimeout {
		t.Errorf("%s answered after %v, before the busy timeout %v: it did not wait for the lock", what, took, testBusyTimeout)
	}
}

// While another process holds the SQLite write lock, reads (and login) keep
// working; rollback, update, upload and register wait for the busy timeout
// and answer 503 unavailable, changing nothing: the proxy still reaches the
// same deployment, the store and the data dir hold what they held. Once the
// lock is released the same calls succeed.
func TestSQLiteBusyRefusesWrites(t *testing.T) {
	ts := startBusyServer(t)
	ts.upload(ts.Admin, light(t, "busy", "1.0.0", nil))
	ts.update(ts.Admin, "busy", light(t, "busy", "2.0.0", nil), map[string]string{"update_strategy": "blue-green"})
	serving := ts.whoami("busy")
	bob := ts.register("bob", false)
	before, opsBefore := ts.state(ts.Admin, "busy"), len(ts.operations(ts.Admin, "busy"))
	files := dataListing(t, ts.DataDir)

	lock := lockDB(t, ts.DataDir)
	for _, path := range []string{
		"/api/v1/agents/busy/versions", "/api/v1/agents/busy/deployments", "/api/v1/agents/busy/operations",
		"/api/v1/agents/busy/builds", "/api/v1/registry/agent/name/busy", "/api/v1/healthcheck",
	} {
		if st, b := ts.get(path, ts.Admin); st != http.StatusOK {
			t.Errorf("GET %s while the database is locked = %d %s, want 200", path, st, b)
		}
	}
	ts.loginOK(bob.Key, bob.Secret) // login only reads

	writes := []struct {
		name string
		call func() (int, []byte)
	}{
		{"rollback", func() (int, []byte) { return ts.rollbackRaw(ts.Admin, "busy", `{"reason":"busy"}`, "", nil) }},
		{"update", func() (int, []byte) {
			return ts.updateRaw(ts.Admin, "busy", light(t, "busy", "3.0.0", nil), nil, "?wait=true", nil)
		}},
		{"upload", func() (int, []byte) {
			return ts.uploadRaw(ts.Admin, light(t, "busy-new", "1.0.0", nil), nil, "?wait=true")
		}},
		{"register", func() (int, []byte) {
			return ts.do("POST", "/api/v1/user/register", ts.Admin,
				jsonBody(map[string]any{"username": "carol", "email": "carol@example.com"}), "application/json", nil)
		}},
	}
	for _, w := range writes {
		start := time.Now()
		st, b := w.call()
		wantBusy(t, w.name, st, b, time.Since(start))
		if got := ts.whoami("busy"); got.DeploymentID != serving.DeploymentID {
			t.Errorf("after the refused %s the proxy reaches %s (%s), want %s (%s)", w.name,
				got.Version, got.DeploymentID, serving.Version, serving.DeploymentID)
		}
	}
	if after := ts.state(ts.Admin, "busy"); after != before {
		t.Errorf("refused writes changed the agent:\nbefore %+v\nafter  %+v", before, after)
	}
	if n := len(ts.operations(ts.Admin, "busy")); n != opsBefore {
		t.Errorf("refused writes left %d operations, want %d", n, opsBefore)
	}
	if _, ok := ts.agentByName("busy-new"); ok {
		t.Errorf("the refused upload created busy-new")
	}
	if d := listingDiff(files, dataListing(t, ts.DataDir)); d != "" {
		t.Errorf("refused writes changed the data dir: %s", d)
	}

	lock.release()
	if r := ts.rollback(ts.Admin, "busy", `{"reason":"busy"}`); r.RolledBackTo != "1.0.0" {
		t.Errorf("rollback after the lock = %+v, want to 1.0.0", r)
	}
	if w := ts.whoami("busy"); w.Version != "1.0.0" {
		t.Errorf("after the rollback the proxy reaches %s, want 1.0.0", w.Version)
	}
	ts.update(ts.Admin, "busy", light(t, "busy", "3.0.0", nil), nil)
	if w := ts.whoami("busy"); w.Version != "3.0.0" {
		t.Errorf("after the update the proxy reaches %s, want 3.0.0", w.Version)
	}
	ts.upload(ts.Admin, light(t, "busy-new", "1.0.0", nil))
	ts.register("carol", false)
}

// The lock is taken in the middle of an update and of a cold rollback,
// after the new deployment started and just before the switch commits: the
// commit waits for the busy timeout, the call answers 503, the new
// deployment is stopped and the proxy never switches. Once the lock is
// released the failed attempt is recorded (and the agent's operation guard
// freed) without anyone's help, and the next operation goes through.
func TestSQLiteBusyAtCommit(t *testing.T) {
	ts := startBusyServer(t)
	gate := newPortGate(t)
	done := async(func() (int, []byte) {
		return ts.uploadRaw(ts.Admin, gate.pkg("busy-commit", "1.0.0"), nil, "?wait=true")
	})
	gate.pass()
	if a := <-done; a.status != http.StatusOK {
		t.Fatalf("upload = %d %s", a.status, a.body)
	}

	// commitBlocked runs call, takes the lock once its agent starts, lets
	// the agent become healthy and returns the answer, with the lock held.
	commitBlocked := func(what string, call func() (int, []byte)) (*dbLock, answer) {
		t.Helper()
		serving := ts.whoami("busy-commit")
		done := async(call)
		gate.next() // everything before the commit is written; the agent waits at the gate
		lock := lockDB(t, ts.DataDir)
		start := time.Now()
		gate.open()
		a := <-done
		wantBusy(t, what, a.status, a.body, time.Since(start))
		if w := ts.whoami("busy-commit"); w.DeploymentID != serving.DeploymentID {
			t.Errorf("after the %s that could not commit, the proxy reaches %s (%s), want %s (%s)", what,
				w.Version, w.DeploymentID, serving.Version, serving.DeploymentID)
		}
		if h := ts.history(ts.Admin, "busy-commit"); h.CurrentVersion != serving.Version {
			t.Errorf("after the %s that could not commit, current version = %s, want %s", what, h.CurrentVersion, serving.Version)
		}
		return lock, a
	}
	// recorded waits, once the lock is gone, until the failed attempt is
	// recorded, and checks it and its deployment of version.
	recorded := func(what, kind, version string) {
		t.Helper()
		var ops []operationEntry
		waitFor(t, "the failed "+what+" to be recorded", 10*time.Second, func() bool {
			ops = ts.operations(ts.Admin, "busy-commit")
			return ops[0].Status != "running"
		})
		if op := ops[0]; op.Kind != kind || op.Status != "failed" || op.ErrorCode != "unavailable" || op.ToVersion != version {
			t.Errorf("after the %s, latest operation = %+v, want a failed %s to %s (unavailable)", what, op, kind, version)
		}
		for _, d := range ts.deployments(ts.Admin, "busy-commit") {
			if d.Version == version && d.Status != "failed" && d.Status != "stopped" {
				t.Errorf("after the %s, deployment %s of %s is %s, want failed", what, d.ID, version, d.Status)
			}
			if d.Version == version {
				if pids := processesOf(t, d.ID); len(pids) > 0 {
					t.Errorf("after the %s, processes %v of deployment %s still run", what, pids, d.ID)
				}
			}
		}
	}

	// An update.
	lock, _ := commitBlocked("update", func() (int, []byte) {
		return ts.updateRaw(ts.Admin, "busy-commit", gate.pkg("busy-commit", "2.0.0"), nil, "?wait=true", nil)
	})
	lock.release()
	recorded("update", "update", "2.0.0")
	if st := ts.history(ts.Admin, "busy-commit").statuses(); st["2.0.0"] != "failed" || st["1.0.0"] != "active" {
		t.Errorf("version statuses = %v, want 2.0.0 failed and 1.0.0 active", st)
	}
	// The agent is free again: a rolling update stops 1.0.0, which makes
	// the rollback below a cold start.
	ts.update(ts.Admin, "busy-commit", light(t, "busy-commit", "3.0.0", nil), map[string]string{"update_strategy": "rolling"})

	// A cold rollback.
	body := `{"target_version":"1.0.0","reason":"busy"}`
	lock, _ = commitBlocked("cold rollback", func() (int, []byte) { return ts.rollbackRaw(ts.Admin, "busy-commit", body, "", nil) })
	lock.release()
	recorded("cold rollback", "rollback", "1.0.0")
	done = async(func() (int, []byte) { return ts.rollbackRaw(ts.Admin, "busy-commit", body, "", nil) })
	gate.pass()
	if a := <-done; a.status != http.StatusOK {
		t.Fatalf("rollback after the lock = %d %s, want 200", a.status, a.body)
	}
	if w := ts.whoami("busy-commit"); w.Version != "1.0.0" {
		t.Errorf("after the rollback the proxy reaches %s, want 1.0.0", w.Version)
	}
}
