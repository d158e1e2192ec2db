package storetest

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth"
)

// testConcurrentSwitches races workers that each repeatedly take the
// agent's guard and switch the active version to their own version. The
// guard must admit one holder at a time, so every commit's ExpectActive
// (read while holding the guard) is current and no commit conflicts; at the
// end exactly one version is active and it is the last one activated.
func testConcurrentSwitches(t *testing.T, s berth.Store) {
	const (
		workers  = 6
		switches = 4 // successful switches per worker
		attempts = 100000
	)
	ctx := t.Context()
	a := mkAgent(t, s)
	versions := make([]berth.Version, workers)
	for i := range versions {
		versions[i] = mkVersion(t, s, a.ID, fmt.Sprintf("1.%d.0", i), berth.VersionBuilding)
	}

	var (
		holders   atomic.Int32 // workers that believe they hold the guard
		committed atomic.Int32
		wg        sync.WaitGroup
	)
	worker := func(v berth.Version) error {
		done := 0
		for range attempts {
			if done == switches {
				return nil
			}
			op := newOp(a.ID, berth.OpUpdate)
			_, _, err := s.BeginOperation(ctx, op, time.Now().Add(time.Hour), time.Time{})
			if berth.ErrorCode(err) == berth.CodeOperationInProgress {
				// Let the holder make progress; this is not a timing
				// assertion, only back-off.
				time.Sleep(time.Millisecond)
				continue
			}
			if err != nil {
				return fmt.Errorf("BeginOperation = %v", err)
			}
			if n := holders.Add(1); n != 1 {
				return fmt.Errorf("%d workers hold the guard at once", n)
			}
			cur, err := s.AgentByID(ctx, a.ID)
			if err != nil {
				return fmt.Errorf("AgentByID = %v", err)
			}
			at := now()
			// Leave before committing: once Commit releases the guard
			// another worker may enter at once.
			holders.Add(-1)
			err = s.Commit(ctx, berth.Commit{
				AgentID:      a.ID,
				SetActive:    &v.ID,
				ExpectActive: cur.ActiveVersionID,
				Versions:     []berth.VersionChange{{VersionID: v.ID, State: berth.VersionReady, ActivatedAt: &at}},
				Operation:    finish(op, berth.OpSucceeded),
			})
			if err != nil {
				return fmt.Errorf("Commit(expect %q) while holding the guard = %v", cur.ActiveVersion, err)
			}
			committed.Add(1)
			done++
		}
		return errors.New("gave up waiting for the guard")
	}
	errs := make(chan error, workers)
	for _, v := range versions {
		wg.Go(func() {
			if err := worker(v); err != nil {
				errs <- fmt.Errorf("worker %s: %w", v.Version, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}

	got, err := s.AgentByID(ctx, a.ID)
	check(t, err, "AgentByID")
	recent, err := s.RecentlyActive(ctx, a.ID, 1)
	check(t, err, "RecentlyActive")
	if got.ActiveVersionID == "" || len(recent) != 1 || recent[0].ID != got.ActiveVersionID {
		t.Errorf("after the race, active = %q and the most recently activated = %v; want the same single version",
			got.ActiveVersion, ids(recent, versionLabel))
	}
	ops, err := s.ListOperations(ctx, a.ID, 1000)
	check(t, err, "ListOperations")
	succeeded := 0
	for _, op := range ops {
		switch op.Status {
		case berth.OpSucceeded:
			succeeded++
		default:
			t.Errorf("operation %s has status %q, want every recorded operation succeeded", op.ID, op.Status)
		}
	}
	if want := workers * switches; succeeded != want || int(committed.Load()) != want {
		t.Errorf("succeeded operations = %d, commits = %d; want %d", succeeded, committed.Load(), want)
	}
	begin(t, s, newOp(a.ID, berth.OpRollback), time.Now().Add(time.Hour))
}

// testDeleteUnusedAgentRace races DeleteUnusedAgent against BeginOperation
// on fresh agents. Exactly one may win each race: either the agent is
// deleted and the operation refused (CodeNotFound), or the operation is
// recorded and the delete refused (CodeConflict). Both succeeding would
// mean the delete took the just-recorded operation with it.
func testDeleteUnusedAgentRace(t *testing.T, s berth.Store) {
	const agents = 40
	ctx := t.Context()
	owner := mkUser(t, s)
	for i := range agents {
		a := newAgent(owner.ID)
		check(t, s.CreateAgent(ctx, a), "CreateAgent")
		op := newOp(a.ID, berth.OpUpload)
		var beginErr, deleteErr error
		start := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			<-start
			_, _, beginErr = s.BeginOperation(ctx, op, time.Now().Add(time.Hour), time.Time{})
		})
		wg.Go(func() {
			<-start
			deleteErr = s.DeleteUnusedAgent(ctx, a.ID)
		})
		close(start)
		wg.Wait()

		_, agentErr := s.AgentByID(ctx, a.ID)
		_, opErr := s.OperationByID(ctx, op.ID)
		switch {
		case beginErr == nil && berth.ErrorCode(deleteErr) == berth.CodeConflict:
			if agentErr != nil || opErr != nil {
				t.Errorf("race %d: operation won, but AgentByID = %v, OperationByID = %v; want both kept", i, agentErr, opErr)
			}
		case deleteErr == nil && berth.ErrorCode(beginErr) == berth.CodeNotFound:
			if berth.ErrorCode(agentErr) != berth.CodeNotFound || berth.ErrorCode(opErr) != berth.CodeNotFound {
				t.Errorf("race %d: delete won, but AgentByID = %v, OperationByID = %v; want both not found", i, agentErr, opErr)
			}
		default:
			t.Errorf("race %d: BeginOperation = %v, DeleteUnusedAgent = %v; want exactly one to succeed, the other refused", i, beginErr, deleteErr)
		}
	}
}
