//go:build unix

package postgres

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/google/uuid"
)

// Environment of the replica child process (see TestReplicaChild).
const (
	envChildURL   = "BERTH_PG_REPLICA_URL"
	envChildAgent = "BERTH_PG_REPLICA_AGENT"
	envChildLease = "BERTH_PG_REPLICA_LEASE"
)

// TestReplicaDies starts a replica in a child process that takes the
// agent's guard with a short lease and begins committing (so it also holds
// the agent's row lock), and then either kills it with SIGKILL or freezes
// it with SIGSTOP (a hung or cut-off replica, whose connection stays open).
// The surviving replica is refused while the dead one's lease runs, is not
// blocked for good by its row lock (the server drops a killed client's
// session at once, a frozen one's when idle_in_transaction_session_timeout
// ends it), and once the lease has ended, InterruptOperations(now) closes
// the dead operation and the survivor gets in; the dead operation's late
// commit, were it to arrive, is fenced off.
func TestReplicaDies(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{{"killed", syscall.SIGKILL}, {"frozen", syscall.SIGSTOP}} {
		t.Run(tc.name, func(t *testing.T) { testReplicaDies(t, tc.sig) })
	}
}

func testReplicaDies(t *testing.T, sig syscall.Signal) {
	const lease = 2 * time.Second
	ctx := t.Context()
	f := newReplicaFixture(t, 2)
	s := f.replicas[0]

	// The child's sessions are ended after a second idle in a transaction
	// (the store's default is a minute), so the frozen case is quick.
	childURL := withParam(withParam(testURL(t), "search_path", searchPath(t, s)),
		"idle_in_transaction_session_timeout", "1s")
	cmd := exec.Command(os.Args[0], "-test.run=^TestReplicaChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envChildURL+"="+childURL,
		envChildAgent+"="+f.agent.ID, envChildLease+"="+lease.String())
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the child: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var deadOp string
	var leaseUntil time.Time
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 4 && fields[0] == "holding" && fields[2] == "until" {
			nanos, err := strconv.ParseInt(fields[3], 10, 64)
			if err != nil {
				t.Fatalf("child said %q: %v", sc.Text(), err)
			}
			deadOp, leaseUntil = fields[1], time.Unix(0, nanos)
			break
		}
	}
	if deadOp == "" {
		t.Fatalf("the child did not take the guard (see its output above)")
	}
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatalf("sending %v to the child: %v", sig, err)
	}
	// A killed child is reaped now; a frozen one by the cleanup.
	if sig == syscall.SIGKILL {
		_ = cmd.Wait()
	}

	// While its lease runs, the dead replica still holds the guard. The
	// probe waits for the database to end the child's session and release
	// its row lock (a bounded wait: a lock held for good fails here).
	probeCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	probe := berth.Operation{ID: uuid.NewString(), AgentID: f.agent.ID, Kind: berth.OpRollback, StartedAt: now()}
	_, _, err = s.BeginOperation(probeCtx, probe, time.Now().Add(time.Hour), time.Time{})
	switch after := time.Now(); {
	case err == nil && after.Before(leaseUntil):
		t.Fatalf("BeginOperation() took the guard while the dead replica's lease still ran (until %v, now %v)",
			leaseUntil.Format(time.StampMicro), after.Format(time.StampMicro))
	case err == nil:
		// The lease ended before the probe ran: the machine was too slow
		// for this check, and the guard changed hands legitimately.
		t.Skipf("the %v lease ended before the first probe; cannot observe the refusal", lease)
	default:
		var be *berth.Error
		if !errors.As(err, &be) || be.Code != berth.CodeOperationInProgress || be.OperationID != deadOp {
			t.Fatalf("BeginOperation() while the dead replica's lease runs = %v, want %q naming %s",
				err, berth.CodeOperationInProgress, deadOp)
		}
	}

	// The janitor's sweep closes the dead operation once, and only once,
	// its lease has ended.
	deadline := leaseUntil.Add(time.Minute)
	for {
		closed, err := s.InterruptOperations(ctx, time.Now())
		after := time.Now()
		if err != nil {
			t.Fatalf("InterruptOperations(now) = %v", err)
		}
		if len(closed) > 0 {
			if len(closed) != 1 || closed[0].ID != deadOp || closed[0].Status != berth.OpInterrupted {
				t.Fatalf("InterruptOperations(now) = %+v, want only the dead operation %s, interrupted", closed, deadOp)
			}
			if after.Before(leaseUntil) {
				t.Fatalf("InterruptOperations(now) closed %s before its lease ended (until %v, now %v)",
					deadOp, leaseUntil.Format(time.StampMicro), after.Format(time.StampMicro))
			}
			break
		}
		if after.After(deadline) {
			t.Fatalf("InterruptOperations(now) still had not closed %s a minute after its lease ended", deadOp)
		}
		time.Sleep(50 * time.Millisecond) // polling, not a timing assertion
	}

	// The survivor gets in, through either replica, and switches.
	op := berth.Operation{ID: uuid.NewString(), AgentID: f.agent.ID, Kind: berth.OpRollback, StartedAt: now()}
	if _, _, err := f.replicas[1].BeginOperation(ctx, op, time.Now().Add(time.Hour), time.Time{}); err != nil {
		t.Fatalf("BeginOperation() after the sweep = %v, want the guard free", err)
	}
	late := berth.Operation{ID: deadOp, AgentID: f.agent.ID, Status: berth.OpSucceeded}
	v := f.versions[1]
	err = s.Commit(ctx, berth.Commit{AgentID: f.agent.ID, SetActive: &v.ID, Operation: &late})
	if berth.ErrorCode(err) != berth.CodeConflict {
		t.Errorf("Commit(the dead replica's operation) = %v, want %q", err, berth.CodeConflict)
	}
	at := now()
	op.Status, op.FinishedAt = berth.OpSucceeded, &at
	v = f.versions[0]
	err = s.Commit(ctx, berth.Commit{AgentID: f.agent.ID, SetActive: &v.ID, Operation: &op,
		Versions: []berth.VersionChange{{VersionID: v.ID, State: berth.VersionReady, ActivatedAt: &at}}})
	if err != nil {
		t.Fatalf("Commit(survivor) = %v", err)
	}
	if a := f.wantOneActive(t); a.ActiveVersionID != v.ID {
		t.Errorf("active = %q, want the survivor's %q", a.ActiveVersion, v.Version)
	}
	dead, err := s.OperationByID(ctx, deadOp)
	if err != nil || dead.Status != berth.OpInterrupted || dead.FinishedAt == nil {
		t.Errorf("OperationByID(dead) = %+v, %v; want interrupted with a finish time", dead, err)
	}
	ops, err := s.ListOperations(ctx, f.agent.ID, 10)
	if err != nil {
		t.Fatalf("ListOperations() = %v", err)
	}
	if ids := opIDs(ops); len(ops) != 2 || !slices.Contains(ids, op.ID) || !slices.Contains(ids, deadOp) {
		t.Errorf("ListOperations() = %v, want the dead operation and the survivor's (the refused probe recorded nothing)", ids)
	}
}

func opIDs(ops []berth.Operation) []string {
	out := make([]string, len(ops))
	for i, op := range ops {
		out[i] = op.ID
	}
	return out
}

// searchPath returns the schema s works in.
func searchPath(t *testing.T, s *Store) string {
	t.Helper()
	var schema string
	if err := s.db.QueryRowContext(t.Context(), `SELECT current_schema()`).Scan(&schema); err != nil {
		t.Fatalf("current_schema() = %v", err)
	}
	return schema
}

// TestReplicaChild is the replica TestReplicaDies kills: it takes the
// agent's guard with a short lease, prints "holding <op> until <unix
// nanos>", locks the agent's row as a Commit would, and waits to be
// killed. It is skipped in normal runs.
func TestReplicaChild(t *testing.T) {
	u := os.Getenv(envChildURL)
	if u == "" {
		t.Skip("helper process for TestReplicaDies")
	}
	ctx := context.Background()
	lease, err := time.ParseDuration(os.Getenv(envChildLease))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, u)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	agentID := os.Getenv(envChildAgent)
	op := berth.Operation{ID: uuid.NewString(), AgentID: agentID, Kind: berth.OpUpdate, StartedAt: now()}
	leaseUntil := time.Now().Add(lease)
	if _, _, err := s.BeginOperation(ctx, op, leaseUntil, time.Time{}); err != nil {
		t.Fatalf("BeginOperation() = %v", err)
	}
	// Die in the middle of a commit: the transaction holds the agent's row
	// lock when the process goes.
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var one int
	if err := tx.QueryRowContext(ctx, `SELECT 1 FROM agents WHERE id = $1 FOR NO KEY UPDATE`, agentID).Scan(&one); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("holding %s until %d\n", op.ID, leaseUntil.UnixNano())
	time.Sleep(10 * time.Minute) // until killed
}
