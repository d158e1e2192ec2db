package sqlite_test

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlite"
	"github.com/google/uuid"
)

// Environment of the crash child process (see TestCrashChild).
const (
	envCrashDB    = "BERTH_SQLITE_CRASH_DB"
	envCrashAgent = "BERTH_SQLITE_CRASH_AGENT"
	envCrashV1    = "BERTH_SQLITE_CRASH_V1"
	envCrashV2    = "BERTH_SQLITE_CRASH_V2"
)

// TestCrashDurability kills a process that is switching an agent's active
// version back and forth with SIGKILL, at a random point, several times,
// and checks after each kill that the database is intact, the agent has
// exactly one active version, every acknowledged switch survived, each
// switch was all-or-nothing, and no guard is left stuck.
//
// SIGKILL leaves the OS page cache intact, so this exercises atomicity and
// recovery of the WAL, not fsync (synchronous=FULL is checked by
// TestOpenSettings).
func TestCrashDurability(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "berth.db")

	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	u := berth.User{ID: uuid.NewString(), Username: "crash", AccessKey: "AK-crash", SecretHash: "x", CreatedAt: time.Now()}
	a := berth.Agent{ID: uuid.NewString(), Name: "crash", OwnerID: u.ID, CreatedAt: time.Now(), UpdatedAt: time.Now()}
	v1 := berth.Version{ID: uuid.NewString(), AgentID: a.ID, Version: "1.0.0", State: berth.VersionBuilding, CreatedAt: time.Now()}
	v2 := berth.Version{ID: uuid.NewString(), AgentID: a.ID, Version: "2.0.0", State: berth.VersionBuilding, CreatedAt: time.Now()}
	for _, err := range []error{s.CreateUser(ctx, u), s.CreateAgent(ctx, a), s.CreateVersion(ctx, v1), s.CreateVersion(ctx, v2)} {
		if err != nil {
			t.Fatalf("setting up: %v", err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}

	acked := 0 // switches acknowledged by children, over all rounds
	for round := range 3 {
		// Kill after a random number of acknowledged switches, then at
		// whatever point the child has reached when the signal lands.
		killAfter := 20 + rand.IntN(60)
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), envCrashDB+"="+path, envCrashAgent+"="+a.ID, envCrashV1+"="+v1.ID, envCrashV2+"="+v2.ID)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting the child: %v", err)
		}
		sc := bufio.NewScanner(out)
		n := 0
		for n < killAfter && sc.Scan() {
			if strings.HasPrefix(sc.Text(), "switched ") {
				n++
			}
		}
		if err := cmd.Process.Kill(); err != nil {
			t.Fatalf("killing the child: %v", err)
		}
		_ = cmd.Wait() // the child was killed; its exit status says so
		if n < killAfter {
			t.Fatalf("round %d: child stopped after %d switches, want %d (see its stderr above)", round, n, killAfter)
		}
		acked += n
		checkAfterCrash(t, path, a.ID, v1, v2, acked)
	}
}

// checkAfterCrash reopens the database and checks it; see
// TestCrashDurability.
func checkAfterCrash(t *testing.T, path, agentID string, v1, v2 berth.Version, acked int) {
	t.Helper()
	ctx := t.Context()
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatalf("reopening after the crash: %v", err)
	}
	defer s.Close()
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Fatalf("IntegrityCheck() after the crash = %v", err)
	}
	a, err := s.AgentByID(ctx, agentID)
	if err != nil {
		t.Fatalf("AgentByID() after the crash = %v", err)
	}
	ops, err := s.ListOperations(ctx, agentID, 1_000_000)
	if err != nil {
		t.Fatalf("ListOperations() after the crash = %v", err)
	}
	succeeded, running := 0, 0
	for _, op := range ops {
		switch op.Status {
		case berth.OpSucceeded:
			succeeded++
		case berth.OpRunning:
			running++
		}
	}
	// Each succeeded operation is one switch, and the first made v1
	// active: an odd count means v1 is active, an even one v2. A commit
	// that half-applied (pointer without operation, or the reverse) breaks
	// this parity.
	want := v2
	if succeeded%2 == 1 {
		want = v1
	}
	if a.ActiveVersionID != want.ID {
		t.Errorf("after the crash: active version %q, want %q after %d switches", a.ActiveVersion, want.Version, succeeded)
	}
	if succeeded < acked {
		t.Errorf("after the crash: %d switches recorded, want at least the %d acknowledged", succeeded, acked)
	}
	if running > 1 {
		t.Errorf("after the crash: %d running operations, want at most the one in flight", running)
	}
	recent, err := s.RecentlyActive(ctx, agentID, 1)
	if err != nil || len(recent) != 1 || recent[0].ID != a.ActiveVersionID {
		t.Errorf("after the crash: most recently activated = %v, %v; want the active %s", recent, err, a.ActiveVersion)
	}

	// Start-up recovery frees the guard the killed child held.
	closed, err := s.InterruptOperations(ctx, time.Time{})
	if err != nil || len(closed) != running {
		t.Errorf("InterruptOperations() after the crash = %d closed, %v; want %d", len(closed), err, running)
	}
	op := berth.Operation{ID: uuid.NewString(), AgentID: agentID, Kind: berth.OpRollback, StartedAt: time.Now()}
	if _, _, err := s.BeginOperation(ctx, op, time.Now().Add(time.Hour), time.Time{}); err != nil {
		t.Errorf("BeginOperation() after recovery = %v, want the guard free", err)
	}
	// Leave the guard free for the next round.
	done := op
	done.Status = berth.OpFailed
	if err := s.Commit(ctx, berth.Commit{AgentID: agentID, Operation: &done}); err != nil {
		t.Errorf("Commit() after recovery = %v", err)
	}
}

// TestCrashChild is the process TestCrashDurability kills: it switches the
// agent's active version between two versions until it is killed, printing
// a line after each committed switch. It is skipped in normal runs.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(envCrashDB)
	if path == "" {
		t.Skip("helper process for TestCrashDurability")
	}
	ctx := t.Context()
	agentID, v1, v2 := os.Getenv(envCrashAgent), os.Getenv(envCrashV1), os.Getenv(envCrashV2)
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	// Recover from the previous round's kill, as `berth serve` does.
	if _, err := s.InterruptOperations(ctx, time.Time{}); err != nil {
		t.Fatalf("InterruptOperations() = %v", err)
	}
	for i := 0; ; i++ {
		a, err := s.AgentByID(ctx, agentID)
		if err != nil {
			t.Fatalf("AgentByID() = %v", err)
		}
		target := v1
		if a.ActiveVersionID == v1 {
			target = v2
		}
		op := berth.Operation{ID: uuid.NewString(), AgentID: agentID, Kind: berth.OpRollback, StartedAt: time.Now()}
		if _, _, err := s.BeginOperation(ctx, op, time.Now().Add(time.Hour), time.Time{}); err != nil {
			t.Fatalf("BeginOperation() = %v", err)
		}
		at := time.Now()
		op.Status, op.FinishedAt = berth.OpSucceeded, &at
		err = s.Commit(ctx, berth.Commit{
			AgentID:      agentID,
			SetActive:    &target,
			ExpectActive: a.ActiveVersionID,
			Versions:     []berth.VersionChange{{VersionID: target, State: berth.VersionReady, ActivatedAt: &at}},
			Operation:    &op,
		})
		if err != nil {
			t.Fatalf("Commit() = %v", err)
		}
		fmt.Printf("switched %d %s\n", i, target)
	}
}
