package lifecycle

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlite"
)

// healthyRuntime is a Runtime whose deployments are all up: every probe
// answers.
type healthyRuntime struct{ panicRuntime }

func (healthyRuntime) Probe(context.Context, string) error { return nil }

func TestAutoRollbackOnFailedActiveDeployment(t *testing.T) {
	tests := []struct {
		name     string
		failed   string // the version whose deployment the runtime gives up on
		disabled bool
		want     string // the active version afterwards
		wantOp   bool   // an auto_rollback operation is recorded
	}{
		{"active version crash-loops", "1.1.0", false, "1.0.0", true},
		{"a standby crash-loops", "1.0.0", false, "1.1.0", false},
		{"turned off", "1.1.0", true, "1.1.0", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "berth.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			a := seedAgent(t, st)
			e := New(Config{DataDir: t.TempDir(), Lease: time.Hour, NoAutoRollback: tt.disabled}, st, healthyRuntime{}, nopRouter{}, nil,
				slog.New(slog.DiscardHandler))
			ds, err := st.ListDeployments(t.Context(), a.ID)
			if err != nil {
				t.Fatal(err)
			}
			var failed berth.Deployment
			for _, d := range ds {
				if d.Version == tt.failed {
					failed = d
				}
			}
			e.OnStatus(failed.ID, berth.DeploymentFailed, 5, "exit status 3")
			// OnStatus decides at once; the rollback itself runs in the
			// background, so wait (bounded) for its record.
			deadline := time.Now().Add(10 * time.Second)
			for tt.wantOp && time.Now().Before(deadline) {
				ops, err := st.ListOperations(t.Context(), a.ID, 1)
				if err == nil && len(ops) == 1 && ops[0].Kind == berth.OpAutoRollback && ops[0].Status != berth.OpRunning {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			e.Close()

			got, err := st.AgentByID(t.Context(), a.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.ActiveVersion != tt.want {
				t.Errorf("active version after OnStatus(%s failed) = %s, want %s", tt.failed, got.ActiveVersion, tt.want)
			}
			ops, err := st.ListOperations(t.Context(), a.ID, 1)
			if err != nil {
				t.Fatal(err)
			}
			isAuto := len(ops) == 1 && ops[0].Kind == berth.OpAutoRollback
			if isAuto != tt.wantOp {
				t.Fatalf("newest operation %+v; want an auto_rollback: %v", ops, tt.wantOp)
			}
			if tt.wantOp {
				op := ops[0]
				if op.Status != berth.OpSucceeded || op.Actor != SystemActor || !strings.Contains(op.Reason, failed.ID) || !strings.Contains(op.Reason, "exit status 3") {
					t.Errorf("auto_rollback = %+v, want succeeded, by %q, its reason naming the deployment and its error", op, SystemActor)
				}
			}
		})
	}
}
