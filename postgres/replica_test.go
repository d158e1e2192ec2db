package postgres

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/google/uuid"
)

// replicaFixture is one agent, with a version per worker, in a database
// that two Stores (two pools: two `berth serve` replicas) share.
type replicaFixture struct {
	replicas [2]*Store
	agent    berth.Agent
	versions []berth.Version
}

func newReplicaFixture(t *testing.T, nVersions int) replicaFixture {
	t.Helper()
	ctx := t.Context()
	u := freshSchema(t)
	f := replicaFixture{replicas: [2]*Store{openURL(t, u), openURL(t, u)}}
	s := f.replicas[0]
	owner := berth.User{ID: uuid.NewString(), Username: "owner", AccessKey: "AK-owner", CreatedAt: now()}
	f.agent = berth.Agent{ID: uuid.NewString(), Name: "raced", OwnerID: owner.ID, CreatedAt: now(), UpdatedAt: now()}
	if err := errors.Join(s.CreateUser(ctx, owner), s.CreateAgent(ctx, f.agent)); err != nil {
		t.Fatalf("setting up: %v", err)
	}
	for i := range nVersions {
		v := berth.Version{ID: uuid.NewString(), AgentID: f.agent.ID, Version: fmt.Sprintf("1.%d.0", i),
			State: berth.VersionBuilding, CreatedAt: now()}
		// Created through the other replica: both see one database.
		if err := f.replicas[1].CreateVersion(ctx, v); err != nil {
			t.Fatalf("CreateVersion() = %v", err)
		}
		f.versions = append(f.versions, v)
	}
	return f
}

// wantOneActive checks that the agent has exactly one active version, and
// that it is the one most recently activated.
func (f replicaFixture) wantOneActive(t *testing.T) berth.Agent {
	t.Helper()
	ctx := t.Context()
	for i, s := range f.replicas {
		a, err := s.AgentByID(ctx, f.agent.ID)
		if err != nil {
			t.Fatalf("replica %d: AgentByID() = %v", i, err)
		}
		recent, err := s.RecentlyActive(ctx, f.agent.ID, 1)
		if err != nil {
			t.Fatalf("replica %d: RecentlyActive() = %v", i, err)
		}
		if a.ActiveVersionID == "" || len(recent) != 1 || recent[0].ID != a.ActiveVersionID {
			t.Errorf("replica %d: active = %q, most recently activated = %v; want one version, the same",
				i, a.ActiveVersion, recent)
		}
	}
	a, _ := f.replicas[0].AgentByID(ctx, f.agent.ID)
	return a
}

// TestReplicasRace has workers on two replicas race to take the agent's
// guard and switch the active version to their own version, each commit
// going through either replica. The guard must admit one holder at a time
// across both pools, so no commit (whose ExpectActive was read while
// holding the guard) conflicts, and at the end exactly one version is
// active.
func TestReplicasRace(t *testing.T) {
	const (
		workers  = 6
		switches = 5 // successful switches per worker
		attempts = 100000
	)
	ctx := t.Context()
	f := newReplicaFixture(t, workers)
	var (
		holders   atomic.Int32 // workers that believe they hold the guard
		refusals  atomic.Int32
		committed atomic.Int32
	)
	worker := func(w int) error {
		v := f.versions[w]
		mine, other := f.replicas[w%2], f.replicas[(w+1)%2]
		done := 0
		for i := range attempts {
			if done == switches {
				return nil
			}
			op := berth.Operation{ID: uuid.NewString(), AgentID: f.agent.ID, Kind: berth.OpUpdate, StartedAt: now()}
			_, _, err := mine.BeginOperation(ctx, op, time.Now().Add(time.Hour), time.Time{})
			if berth.ErrorCode(err) == berth.CodeOperationInProgress {
				refusals.Add(1)
				// Back off so the holder makes progress; not a timing
				// assertion.
				time.Sleep(time.Millisecond)
				continue
			}
			if err != nil {
				return fmt.Errorf("BeginOperation() = %v", err)
			}
			if n := holders.Add(1); n != 1 {
				return fmt.Errorf("%d workers hold the guard at once", n)
			}
			// Read through the other replica: it sees what this one did.
			cur, err := other.AgentByID(ctx, f.agent.ID)
			if err != nil {
				return fmt.Errorf("AgentByID() = %v", err)
			}
			at := now()
			holders.Add(-1) // once Commit releases the guard another may enter
			done2 := op
			done2.Status, done2.FinishedAt = berth.OpSucceeded, &at
			// Alternate the replica that commits: the guard is in the
			// database, not in the replica that took it.
			committer := mine
			if i%2 == 1 {
				committer = other
			}
			err = committer.Commit(ctx, berth.Commit{
				AgentID:      f.agent.ID,
				SetActive:    &v.ID,
				ExpectActive: cur.ActiveVersionID,
				Versions:     []berth.VersionChange{{VersionID: v.ID, State: berth.VersionReady, ActivatedAt: &at}},
				Operation:    &done2,
			})
			if err != nil {
				return fmt.Errorf("Commit(expect %q) while holding the guard = %v", cur.ActiveVersion, err)
			}
			committed.Add(1)
			done++
		}
		return errors.New("gave up waiting for the guard")
	}

	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			if err := worker(w); err != nil {
				errs <- fmt.Errorf("worker %d: %w", w, err)
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
	t.Logf("%d commits, %d refusals", committed.Load(), refusals.Load())
	f.wantOneActive(t)
	ops, err := f.replicas[1].ListOperations(ctx, f.agent.ID, 1000)
	if err != nil {
		t.Fatalf("ListOperations() = %v", err)
	}
	for _, op := range ops {
		if op.Status != berth.OpSucceeded {
			t.Errorf("operation %s has status %q, want every recorded operation succeeded", op.ID, op.Status)
		}
	}
	if want := workers * switches; len(ops) != want || int(committed.Load()) != want {
		t.Errorf("operations = %d, commits = %d; want %d", len(ops), committed.Load(), want)
	}
}

// TestReplicasExpectActive races two replicas' commits without the guard,
// both expecting the same active version: the agent's row lock makes the
// check and the switch one step, so exactly one commit per round wins and
// the other is refused (a lost update otherwise).
func TestReplicasExpectActive(t *testing.T) {
	const rounds = 30
	ctx := t.Context()
	f := newReplicaFixture(t, 3)
	expect := ""
	for round := range rounds {
		// Each replica switches to a version of its own that is not the
		// active one, so whichever commits second finds it changed.
		var targets []berth.Version
		for _, v := range f.versions {
			if v.ID != expect {
				targets = append(targets, v)
			}
		}
		var (
			start sync.WaitGroup
			wg    sync.WaitGroup
			errs  [2]error
		)
		start.Add(1)
		for i, s := range f.replicas {
			wg.Go(func() {
				start.Wait()
				v := targets[i]
				at := now()
				errs[i] = s.Commit(ctx, berth.Commit{AgentID: f.agent.ID, SetActive: &v.ID, ExpectActive: expect,
					Versions: []berth.VersionChange{{VersionID: v.ID, State: berth.VersionReady, ActivatedAt: &at}}})
			})
		}
		start.Done()
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch berth.ErrorCode(err) {
			case "":
				if won >= 0 {
					t.Fatalf("round %d: both replicas switched from %q; want one refused", round, expect)
				}
				won = i
			case berth.CodeConflict:
			default:
				t.Fatalf("round %d: replica %d Commit() = %v, want success or %q", round, i, err, berth.CodeConflict)
			}
		}
		if won < 0 {
			t.Fatalf("round %d: both replicas were refused switching from %q (%v); want one to win", round, expect, errs)
		}
		a := f.wantOneActive(t)
		if a.ActiveVersionID != targets[won].ID {
			t.Fatalf("round %d: active = %q, want the winner's %q", round, a.ActiveVersion, targets[won].Version)
		}
		expect = a.ActiveVersionID
	}
}
