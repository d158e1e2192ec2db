package storetest

import (
	"reflect"
	"testing"
	"time"

	"github.com/berthhq/berth"
)

// WantMigratedOperations checks, for the migration tests of each backend,
// the operations their schema-0002 fixture holds after migrating to 0003:
// op1 and op2 of agent a1 ("old-agent"), op3 of a2 ("other-agent"), all
// started at started, only op1 finished; every field kept and agent_name
// filled in from the agents.
func WantMigratedOperations(t *testing.T, s berth.Store, started time.Time) {
	t.Helper()
	want := map[string]berth.Operation{
		"op1": {ID: "op1", AgentID: "a1", AgentName: "old-agent", Kind: berth.OpUpload, Status: berth.OpSucceeded,
			Actor: "alice", Reason: "first", ToVersion: "1.0.0", IdempotencyKey: "key-1", RequestHash: "hash-1",
			Result: []byte(`{"agent_id":"a1"}`), ResultStatus: 201, DurationMS: 42},
		"op2": {ID: "op2", AgentID: "a1", AgentName: "old-agent", Kind: berth.OpRollback, Status: berth.OpFailed,
			Actor: "alice", Reason: "bad", FromVersion: "1.1.0", ToVersion: "1.0.0", ErrorCode: berth.CodeConflict, Error: "no"},
		"op3": {ID: "op3", AgentID: "a2", AgentName: "other-agent", Kind: berth.OpUpload, Status: berth.OpRunning,
			Actor: "alice", ToVersion: "1.0.0"},
	}
	for id, w := range want {
		got, err := s.OperationByID(t.Context(), id)
		if err != nil {
			t.Errorf("OperationByID(%s) after migrating = %v", id, err)
			continue
		}
		if !got.StartedAt.Equal(started) || (got.FinishedAt != nil) != (id == "op1") {
			t.Errorf("OperationByID(%s) times = %v, %v; want started %v, finished only if op1", id, got.StartedAt, got.FinishedAt, started)
		}
		got.StartedAt, got.FinishedAt = time.Time{}, nil
		if !reflect.DeepEqual(got, w) {
			t.Errorf("OperationByID(%s) after migrating = %+v, want %+v", id, got, w)
		}
	}
}
