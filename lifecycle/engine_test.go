package lifecycle

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlite"
)

// panicRuntime is a Runtime whose every start and probe panics, standing in
// for a bug anywhere under an operation.
type panicRuntime struct{}

func (panicRuntime) Start(context.Context, berth.DeploymentSpec) (berth.Instance, error) {
	panic("start exploded")
}
func (panicRuntime) Probe(context.Context, string) error           { panic("probe exploded") }
func (panicRuntime) Stop(context.Context, string) error            { return nil }
func (panicRuntime) Remove(context.Context, string) error          { return nil }
func (panicRuntime) Logs(context.Context, string, io.Writer) error { return nil }
func (panicRuntime) Running(context.Context) ([]string, error)     { return nil, nil }
func (panicRuntime) Close() error                                  { return nil }

type nopRouter struct{}

func (nopRouter) Route(string, string) func(context.Context) error {
	return func(context.Context) error { return nil }
}
func (nopRouter) Unroute(string) {}

// seedAgent records an agent with versions 1.0.0 (active earlier) and
// 1.1.0 (active now), both with a running deployment.
func seedAgent(t *testing.T, st berth.Store) berth.Agent {
	t.Helper()
	ctx := t.Context()
	now := time.Now().UTC()
	u := berth.User{ID: uuid.NewString(), Username: "alice", AccessKey: uuid.NewString(), SecretHash: "x", CreatedAt: now}
	a := berth.Agent{ID: uuid.NewString(), Name: "seeded", OwnerID: u.ID, CreatedAt: now, UpdatedAt: now}
	if err := st.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateAgent(ctx, a); err != nil {
		t.Fatal(err)
	}
	prev := ""
	for i, label := range []string{"1.0.0", "1.1.0"} {
		v := berth.Version{ID: uuid.NewString(), AgentID: a.ID, Version: label, State: berth.VersionBuilding, BuildID: uuid.NewString(), CreatedAt: now}
		b := berth.Build{ID: v.BuildID, AgentID: a.ID, VersionID: v.ID, Version: label, Status: berth.BuildSuccess, CreatedAt: now, UpdatedAt: now}
		d := berth.Deployment{ID: uuid.NewString(), AgentID: a.ID, VersionID: v.ID, Version: label, BuildID: b.ID,
			Status: berth.DeploymentRunning, URL: "http://127.0.0.1:1", CreatedAt: now, UpdatedAt: now}
		for _, err := range []error{st.CreateVersion(ctx, v), st.CreateBuild(ctx, b), st.CreateDeployment(ctx, d)} {
			if err != nil {
				t.Fatal(err)
			}
		}
		at := now.Add(time.Duration(i) * time.Second)
		op := berth.Operation{ID: uuid.NewString(), AgentID: a.ID, Kind: berth.OpUpdate, Status: berth.OpRunning, StartedAt: now}
		if _, _, err := st.BeginOperation(ctx, op, now.Add(time.Hour), time.Time{}); err != nil {
			t.Fatal(err)
		}
		op.Status, op.FinishedAt = berth.OpSucceeded, &at
		if err := st.Commit(ctx, berth.Commit{AgentID: a.ID, SetActive: &v.ID, ExpectActive: prev, Operation: &op,
			Versions: []berth.VersionChange{{VersionID: v.ID, State: berth.VersionReady, ActivatedAt: &at}}}); err != nil {
			t.Fatal(err)
		}
		prev = v.ID
	}
	a, err := st.AgentByID(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// A panic anywhere under a rollback records the operation as failed and
// releases the agent's guard: the agent is not locked until the lease ends.
func TestPanicReleasesGuard(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "berth.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a := seedAgent(t, st)
	e := New(Config{DataDir: t.TempDir(), Lease: time.Hour}, st, panicRuntime{}, nopRouter{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer e.Close()

	func() {
		defer func() {
			if r := recover(); r == nil {
				t.Fatal("Rollback did not panic through")
			}
		}()
		_, _ = e.Rollback(t.Context(), berth.User{Username: "alice"}, a, RollbackRequest{CleanupFailed: true})
	}()

	ops, err := st.ListOperations(t.Context(), a.ID, 10)
	if err != nil {
		t.Fatal(err)
	}
	if ops[0].Kind != berth.OpRollback || ops[0].Status != berth.OpFailed {
		t.Errorf("after a panic the rollback is %s/%s, want rollback/failed", ops[0].Kind, ops[0].Status)
	}
	// The guard is free at once, though the lease was an hour.
	next := berth.Operation{ID: uuid.NewString(), AgentID: a.ID, Kind: berth.OpRollback, StartedAt: time.Now()}
	if _, _, err := st.BeginOperation(t.Context(), next, time.Now().Add(time.Hour), time.Time{}); err != nil {
		t.Errorf("BeginOperation after a panicked rollback = %v, want the guard free", err)
	}
	if cur, _ := st.AgentByID(t.Context(), a.ID); cur.ActiveVersion != "1.1.0" {
		t.Errorf("active version = %s after a panicked rollback, want 1.1.0 unchanged", cur.ActiveVersion)
	}
}
