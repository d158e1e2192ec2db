package lifecycle

import (
	"archive/zip"
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlite"
)

// upRuntime is a Runtime on which every deployment starts and answers.
type upRuntime struct{ healthyRuntime }

func (upRuntime) Start(context.Context, berth.DeploymentSpec) (berth.Instance, error) {
	return berth.Instance{URL: "http://127.0.0.1:1"}, nil
}

// writePackage writes a minimal package of agent name, version 1.0.0, and
// returns its path.
func writePackage(t *testing.T, name string) string {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for file, body := range map[string]string{
		"AgentCard.json": `{"name":"` + name + `","version":"1.0.0"}`,
		"berth.json":     `{"run":["./agent"]}`,
		"agent":          "#!/bin/sh\n",
	} {
		w, err := zw.Create(file)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name+".zip")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// newUploadEngine returns an engine over a fresh SQLite store wrapped in a
// busyStore (unlocked), with a user to upload as.
func newUploadEngine(t *testing.T) (*Engine, *busyStore, berth.User) {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "berth.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	u := berth.User{ID: uuid.NewString(), Username: "bob", AccessKey: uuid.NewString(), SecretHash: "x", CreatedAt: time.Now().UTC()}
	if err := st.CreateUser(t.Context(), u); err != nil {
		t.Fatal(err)
	}
	bs := &busyStore{Store: st}
	e := New(Config{DataDir: t.TempDir(), Lease: time.Hour}, bs, upRuntime{}, nopRouter{}, nil, slog.New(slog.DiscardHandler))
	t.Cleanup(e.Close)
	return e, bs, u
}

// failUploadWhileLocked locks bs (every write) and uploads agent name,
// whose operation therefore cannot begin. It returns the agent the upload
// created, which the lock keeps from being removed.
func failUploadWhileLocked(t *testing.T, e *Engine, bs *busyStore, u berth.User, name string) berth.Agent {
	t.Helper()
	bs.mu.Lock()
	bs.locked, bs.lockAll = true, true
	bs.mu.Unlock()
	_, err := e.Upload(t.Context(), u, DeployRequest{ZipPath: writePackage(t, name)})
	if got := berth.ErrorCode(err); got != berth.CodeUnavailable {
		t.Fatalf("Upload(%s) while the store is locked = %v (code %q), want %q", name, err, got, berth.CodeUnavailable)
	}
	a, err := bs.AgentByName(t.Context(), name)
	if err != nil {
		t.Fatalf("AgentByName(%s) while the store is locked = %v, want the agent still there", name, err)
	}
	if refused, _ := bs.deletes(); refused == 0 {
		t.Fatalf("Upload(%s) did not try to remove the empty agent", name)
	}
	return a
}

// An upload whose operation cannot begin because the store is locked
// leaves no agent behind once the lock is gone, so the same upload can be
// retried.
func TestFailedUploadRemovesEmptyAgent(t *testing.T) {
	e, bs, u := newUploadEngine(t)
	const name = "retry-me"
	failUploadWhileLocked(t, e, bs, u, name)
	bs.unlock()

	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := bs.AgentByName(t.Context(), name)
		if berth.ErrorCode(err) == berth.CodeNotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("AgentByName(%s) after the lock is gone = %v, want not found", name, err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	res, err := e.Upload(t.Context(), u, DeployRequest{ZipPath: writePackage(t, name)})
	if err != nil {
		t.Fatalf("Upload(%s) again = %v, want it to succeed", name, err)
	}
	if res.Version != "1.0.0" || res.Status != "running" {
		t.Errorf("Upload(%s) again = version %s, status %s; want 1.0.0, running", name, res.Version, res.Status)
	}
	a, err := bs.AgentByName(t.Context(), name)
	if err != nil || a.ActiveVersion != "1.0.0" {
		t.Errorf("AgentByName(%s) = %+v, %v; want active version 1.0.0", name, a, err)
	}
}

// The background removal of a failed upload's agent spares it if an
// operation was recorded for it meanwhile.
func TestFailedUploadSparesAgentUsedMeanwhile(t *testing.T) {
	e, bs, u := newUploadEngine(t)
	const name = "used-meanwhile"
	a := failUploadWhileLocked(t, e, bs, u, name)

	// Another server records an operation on the agent (past the lock,
	// which only this engine's view of the store has).
	op := berth.Operation{ID: uuid.NewString(), AgentID: a.ID, Kind: berth.OpUpload, Actor: "carol", StartedAt: time.Now().UTC()}
	if _, _, err := bs.Store.BeginOperation(t.Context(), op, time.Now().Add(time.Hour), time.Time{}); err != nil {
		t.Fatal(err)
	}
	bs.unlock()

	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, tried := bs.deletes(); tried > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the engine never retried removing the agent once the lock was gone")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := bs.AgentByID(t.Context(), a.ID); err != nil {
		t.Errorf("AgentByID(%s) after the retried removal = %v, want the agent kept", a.ID, err)
	}
	if got, err := bs.OperationByID(t.Context(), op.ID); err != nil || got.Status != berth.OpRunning {
		t.Errorf("OperationByID(%s) after the retried removal = %+v, %v; want it kept running", op.ID, got, err)
	}
}

// Reconcile removes agents whose upload never began (the server died
// between creating the agent and beginning the upload) and keeps every
// other agent. A lone server removes them all; replicas sharing the store
// only those older than a lease, as a younger one may be another replica's
// upload in flight.
func TestReconcileRemovesAbandonedAgents(t *testing.T) {
	const lease = time.Hour
	agents := []struct {
		name     string
		age      time.Duration
		failedOp bool // a failed upload operation is recorded
	}{
		{"old-empty", 2 * lease, false},
		{"young-empty", lease / 2, false},
		{"old-failed-upload", 2 * lease, true},
	}
	tests := []struct {
		name   string
		shared bool
		kept   []string
	}{
		{"lone server", false, []string{"old-failed-upload"}},
		{"shared store", true, []string{"young-empty", "old-failed-upload"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "berth.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			ctx := t.Context()
			seeded := seedAgent(t, st) // active, with operations
			u := berth.User{ID: uuid.NewString(), Username: "bob", AccessKey: uuid.NewString(), SecretHash: "x", CreatedAt: time.Now().UTC()}
			if err := st.CreateUser(ctx, u); err != nil {
				t.Fatal(err)
			}
			now := time.Now().UTC()
			ids := map[string]string{}
			for _, x := range agents {
				created := now.Add(-x.age)
				a := berth.Agent{ID: uuid.NewString(), Name: x.name, OwnerID: u.ID, CreatedAt: created, UpdatedAt: created}
				if err := st.CreateAgent(ctx, a); err != nil {
					t.Fatal(err)
				}
				ids[x.name] = a.ID
				if x.failedOp {
					op := berth.Operation{ID: uuid.NewString(), AgentID: a.ID, Kind: berth.OpUpload, Actor: "bob", ToVersion: "1.0.0", StartedAt: created}
					if _, _, err := st.BeginOperation(ctx, op, now.Add(lease), time.Time{}); err != nil {
						t.Fatal(err)
					}
					op.Status, op.FinishedAt, op.ErrorCode = berth.OpFailed, &created, berth.CodeBuildFailed
					if err := st.Commit(ctx, berth.Commit{AgentID: a.ID, Operation: &op}); err != nil {
						t.Fatal(err)
					}
				}
			}

			var logs bytes.Buffer
			e := New(Config{DataDir: t.TempDir(), Lease: lease, SharedStore: tt.shared}, st, upRuntime{}, nopRouter{}, nil,
				slog.New(slog.NewTextHandler(&logs, nil)))
			defer e.Close()
			if err := e.Reconcile(ctx); err != nil {
				t.Fatalf("Reconcile() = %v", err)
			}

			for _, x := range agents {
				wantKept := slices.Contains(tt.kept, x.name)
				_, err := st.AgentByID(ctx, ids[x.name])
				if kept := err == nil; kept != wantKept {
					t.Errorf("after Reconcile, AgentByID(%s) = %v; want kept: %v", x.name, err, wantKept)
				}
				logged := strings.Contains(logs.String(), "agent="+x.name+" ")
				if logged == wantKept {
					t.Errorf("Reconcile logged the removal of %s: %v, want %v; log:\n%s", x.name, logged, !wantKept, logs.String())
				}
			}
			if a, err := st.AgentByID(ctx, seeded.ID); err != nil || a.ActiveVersion != "1.1.0" {
				t.Errorf("after Reconcile, AgentByID(seeded) = %+v, %v; want it kept with 1.1.0 active", a, err)
			}
		})
	}
}
