package lifecycle

import (
	"testing"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/artifact"
)

func TestSameRequest(t *testing.T) {
	rb := rollbackHash(RollbackRequest{Target: "1.0.0", Reason: "bad", CleanupFailed: true})
	prev := berth.Operation{ID: "op-1", Kind: berth.OpRollback, Actor: "alice", IdempotencyKey: "k", RequestHash: rb}
	tests := []struct {
		name string
		op   berth.Operation
		want bool // a repeat
	}{
		{"the same request", berth.Operation{Kind: berth.OpRollback, Actor: "alice", RequestHash: rb}, true},
		{"another kind", berth.Operation{Kind: berth.OpUpdate, Actor: "alice", RequestHash: rb}, false},
		{"another caller", berth.Operation{Kind: berth.OpRollback, Actor: "bob", RequestHash: rb}, false},
		{"another target", berth.Operation{Kind: berth.OpRollback, Actor: "alice",
			RequestHash: rollbackHash(RollbackRequest{Target: "1.1.0", Reason: "bad", CleanupFailed: true})}, false},
		{"another reason", berth.Operation{Kind: berth.OpRollback, Actor: "alice",
			RequestHash: rollbackHash(RollbackRequest{Target: "1.0.0", Reason: "worse", CleanupFailed: true})}, false},
		{"another cleanup", berth.Operation{Kind: berth.OpRollback, Actor: "alice",
			RequestHash: rollbackHash(RollbackRequest{Target: "1.0.0", Reason: "bad"})}, false},
		{"wait and dry run do not count", berth.Operation{Kind: berth.OpRollback, Actor: "alice",
			RequestHash: rollbackHash(RollbackRequest{Target: "1.0.0", Reason: "bad", CleanupFailed: true, Async: true})}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.op.IdempotencyKey = "k"
			err := sameRequest(prev, tt.op)
			if got := err == nil; got != tt.want {
				t.Fatalf("sameRequest(%s) = %v, want a repeat: %v", tt.name, err, tt.want)
			}
			if err != nil {
				if e, ok := err.(*berth.Error); !ok || e.Code != berth.CodeConflict || e.OperationID != "op-1" {
					t.Errorf("sameRequest(%s) = %#v, want a conflict naming op-1", tt.name, err)
				}
			}
		})
	}
	// An operation recorded before fingerprints existed is compared by
	// kind and caller alone.
	old := prev
	old.RequestHash = ""
	if err := sameRequest(old, berth.Operation{Kind: berth.OpRollback, Actor: "alice", RequestHash: "x"}); err != nil {
		t.Errorf("sameRequest(unfingerprinted) = %v, want a repeat", err)
	}
}

func TestRequestHashes(t *testing.T) {
	if requestHash(berth.OpUpdate, "ab", "c") == requestHash(berth.OpUpdate, "a", "bc") {
		t.Error(`requestHash("ab","c") == requestHash("a","bc"); parts must not run together`)
	}
	pkg := artifact.Package{Digest: "d1"}
	desc := ""
	base := DeployRequest{Version: "minor", Strategy: BlueGreen}
	variants := map[string]DeployRequest{
		"version":     {Version: "major", Strategy: BlueGreen},
		"strategy":    {Version: "minor", Strategy: Rolling},
		"cleanup":     {Version: "minor", Strategy: BlueGreen, CleanupOld: true},
		"description": {Version: "minor", Strategy: BlueGreen, Description: &desc},
		"name":        {Version: "minor", Strategy: BlueGreen, AgentName: "x"},
	}
	h := deployHash(berth.OpUpdate, base, pkg)
	if deployHash(berth.OpUpdate, base, artifact.Package{Digest: "d2"}) == h {
		t.Error("deployHash ignores the package digest")
	}
	if deployHash(berth.OpUpload, base, pkg) == h {
		t.Error("deployHash ignores the kind")
	}
	for name, req := range variants {
		if deployHash(berth.OpUpdate, req, pkg) == h {
			t.Errorf("deployHash ignores the %s", name)
		}
	}
	again := base
	again.ZipPath, again.Async, again.IdempotencyKey = "/tmp/other.zip", true, "k"
	if deployHash(berth.OpUpdate, again, pkg) != h {
		t.Error("deployHash depends on the spool path, async or the key; a repeat must match")
	}
}
