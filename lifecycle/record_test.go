package lifecycle

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlite"
)

// downRuntime is a Runtime on which nothing can start or answer.
type downRuntime struct{ panicRuntime }

func (downRuntime) Start(context.Context, berth.DeploymentSpec) (berth.Instance, error) {
	return berth.Instance{}, berth.Errorf(berth.CodeTargetUnhealthy, "it exited at once")
}
func (downRuntime) Probe(context.Context, string) error {
	return berth.Errorf(berth.CodeTargetUnhealthy, "it does not answer")
}

// busyStore is a store whose Commit fails with CodeUnavailable, as SQLite's
// does while another process holds the database's lock, until unlock. With
// lockAll set the lock refuses BeginOperation, DeleteAgent and
// DeleteUnusedAgent too.
type busyStore struct {
	berth.Store
	mu      sync.Mutex
	locked  bool
	lockAll bool
	refused int // Commit calls refused
	// deleteRefused counts DeleteUnusedAgent calls refused, deleteTried
	// the DeleteUnusedAgent and DeleteAgent calls that reached the store
	// (whatever it answered).
	deleteRefused, deleteTried int
}

// busy reports whether the lock refuses a call; all says the call is one
// that only lockAll refuses.
func (s *busyStore) busy(all bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.locked && (!all || s.lockAll)
}

func (s *busyStore) Commit(ctx context.Context, c berth.Commit) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locked {
		s.refused++
		return berth.Errorf(berth.CodeUnavailable, "commit: the database is busy")
	}
	return s.Store.Commit(ctx, c)
}

func (s *busyStore) BeginOperation(ctx context.Context, op berth.Operation, leaseUntil, since time.Time) (berth.Operation, bool, error) {
	if s.busy(true) {
		return berth.Operation{}, false, berth.Errorf(berth.CodeUnavailable, "begin operation: the database is busy")
	}
	return s.Store.BeginOperation(ctx, op, leaseUntil, since)
}

func (s *busyStore) DeleteAgent(ctx context.Context, id string, op *berth.Operation) error {
	if s.busy(true) {
		return berth.Errorf(berth.CodeUnavailable, "delete agent: the database is busy")
	}
	err := s.Store.DeleteAgent(ctx, id, op)
	s.mu.Lock()
	s.deleteTried++
	s.mu.Unlock()
	return err
}

func (s *busyStore) DeleteUnusedAgent(ctx context.Context, id string) error {
	if s.busy(true) {
		s.mu.Lock()
		s.deleteRefused++
		s.mu.Unlock()
		return berth.Errorf(berth.CodeUnavailable, "delete unused agent: the database is busy")
	}
	err := s.Store.DeleteUnusedAgent(ctx, id)
	s.mu.Lock()
	s.deleteTried++
	s.mu.Unlock()
	return err
}

func (s *busyStore) unlock() {
	s.mu.Lock()
	s.locked = false
	s.mu.Unlock()
}

func (s *busyStore) refusals() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

// deletes returns how many DeleteUnusedAgent calls were refused and how
// many agent deletes reached the store.
func (s *busyStore) deletes() (refused, tried int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deleteRefused, s.deleteTried
}

func newBusyEngine(t *testing.T) (*Engine, *busyStore, berth.Agent) {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "berth.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a := seedAgent(t, st)
	bs := &busyStore{Store: st, locked: true}
	e := New(Config{DataDir: t.TempDir(), Lease: time.Hour}, bs, downRuntime{}, nopRouter{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	return e, bs, a
}

// An operation that fails while the store cannot record it is recorded
// once the store can again, which frees the agent's guard at once rather
// than when the lease (an hour here) ends.
func TestFailureRecordedWhenStoreComesBack(t *testing.T) {
	e, bs, a := newBusyEngine(t)
	defer e.Close()
	_, err := e.Rollback(t.Context(), berth.User{Username: "alice"}, a, RollbackRequest{CleanupFailed: true})
	if got := berth.ErrorCode(err); got != berth.CodeTargetUnhealthy {
		t.Fatalf("Rollback() = %v (code %q), want %q", err, got, berth.CodeTargetUnhealthy)
	}
	// While the store refuses, the operation stays running and holds the
	// guard; the engine keeps trying.
	deadline := time.Now().Add(20 * time.Second)
	for bs.refusals() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("Commit refused %d times; the engine stopped trying", bs.refusals())
		}
		time.Sleep(10 * time.Millisecond)
	}
	bs.unlock()
	var ops []berth.Operation
	for {
		ops, err = bs.ListOperations(t.Context(), a.ID, 10)
		if err != nil {
			t.Fatal(err)
		}
		if ops[0].Status != berth.OpRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the failed rollback was never recorded")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if op := ops[0]; op.Kind != berth.OpRollback || op.Status != berth.OpFailed || op.ErrorCode != berth.CodeTargetUnhealthy {
		t.Errorf("latest operation = %s/%s/%s, want rollback/failed/%s", op.Kind, op.Status, op.ErrorCode, berth.CodeTargetUnhealthy)
	}
	next := berth.Operation{ID: uuid.NewString(), AgentID: a.ID, Kind: berth.OpRollback, StartedAt: time.Now()}
	if _, _, err := bs.BeginOperation(t.Context(), next, time.Now().Add(time.Hour), time.Time{}); err != nil {
		t.Errorf("BeginOperation() once the failure is recorded = %v, want the guard free", err)
	}
	if cur, _ := bs.AgentByID(t.Context(), a.ID); cur.ActiveVersion != "1.1.0" {
		t.Errorf("active version = %s, want 1.1.0 unchanged", cur.ActiveVersion)
	}
}

// Closing the engine stops the retries of a store that stays unavailable:
// Close (which waits for background work) returns, and the operation is
// left for the next start's reconciler.
func TestCloseStopsRecordRetries(t *testing.T) {
	e, _, a := newBusyEngine(t)
	if _, err := e.Rollback(t.Context(), berth.User{Username: "alice"}, a, RollbackRequest{}); err == nil {
		t.Fatal("Rollback() = nil, want an error")
	}
	closed := make(chan struct{})
	go func() {
		e.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close() did not return while the store stayed unavailable")
	}
}
