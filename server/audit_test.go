package server_test

import (
	"fmt"
	"net/http"
	"slices"
	"testing"

	"github.com/google/uuid"
)

// operationsOf returns the kinds of ops, in order.
func operationsOf(ops []operationEntry) []string {
	kinds := make([]string, len(ops))
	for i, op := range ops {
		kinds[i] = op.Kind
	}
	return kinds
}

// TestDeletedAgentAuditTrail checks that deleting an agent keeps its
// operations, the delete closed as succeeded by whoever deleted it, and
// that only a superuser can read them afterwards, by the agent's ID.
func TestDeletedAgentAuditTrail(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	owner := ts.register("audited-owner", false)
	deleter := ts.register("audited-deleter", true)
	stranger := ts.register("audited-stranger", false)

	up := ts.upload(owner.Token, light(t, "audited", "1.0.0", nil))
	ts.update(owner.Token, "audited", light(t, "audited", "1.1.0", nil), map[string]string{"update_strategy": "blue-green"})
	if r := ts.rollback(owner.Token, "audited", `{"reason":"1.1.0 is bad"}`); r.RolledBackTo != "1.0.0" {
		t.Fatalf("rollback = %+v, want back to 1.0.0", r)
	}
	before := ts.operations(owner.Token, up.AgentID)

	st, body := ts.do("DELETE", "/api/v1/registry/agent/"+up.AgentID, deleter.Token, nil, "", nil)
	if st != http.StatusOK {
		t.Fatalf("delete = %d %s, want 200", st, body)
	}

	// A superuser reads the whole trail by the deleted agent's ID, newest
	// first, ending with the delete.
	trail := ts.operations(ts.Admin, up.AgentID)
	wantKinds := []string{"delete", "rollback", "update", "upload"}
	if got := operationsOf(trail); !slices.Equal(got, wantKinds) {
		t.Fatalf("operations of the deleted agent = %v (%+v), want %v", got, trail, wantKinds)
	}
	for _, op := range trail {
		if op.AgentName != "audited" {
			t.Errorf("operation %s of the deleted agent names agent %q, want \"audited\"", op.ID, op.AgentName)
		}
	}
	del := trail[0]
	if del.Status != "succeeded" || del.Actor != deleter.Username || del.FromVersion != "1.0.0" || del.ErrorCode != "" {
		t.Errorf("delete operation = %+v, want succeeded by %s from 1.0.0", del, deleter.Username)
	}
	// What was recorded before the delete is unchanged.
	if !slices.Equal(trail[1:], before) {
		t.Errorf("operations before the delete, read after it = %+v, want %+v", trail[1:], before)
	}
	for _, op := range trail[1:] {
		if op.Status != "succeeded" || op.Actor != owner.Username {
			t.Errorf("operation %+v, want succeeded by %s", op, owner.Username)
		}
	}
	// The deleter, a superuser too, reads it as well; limit still applies.
	st, body = ts.get("/api/v1/agents/"+up.AgentID+"/operations?limit=1", deleter.Token)
	if st != http.StatusOK {
		t.Fatalf("operations?limit=1 of the deleted agent = %d %s, want 200", st, body)
	}
	var page struct{ Data []operationEntry }
	mustJSON(t, body, &page)
	if len(page.Data) != 1 || page.Data[0].ID != del.ID {
		t.Errorf("operations?limit=1 of the deleted agent = %+v, want only the delete %s", page.Data, del.ID)
	}

	// Nobody else can: the owner's ownership went with the agent.
	for _, c := range []struct {
		who, token, ref string
	}{
		{"the owner", owner.Token, up.AgentID},
		{"another user", stranger.Token, up.AgentID},
		// By name, not even a superuser: the name may be taken again.
		{"a superuser, by name", ts.Admin, "audited"},
		{"a superuser, an ID never used", ts.Admin, uuid.NewString()},
	} {
		st, body := ts.get("/api/v1/agents/"+c.ref+"/operations", c.token)
		wantError(t, fmt.Sprintf("operations of the deleted agent as %s", c.who), st, body, http.StatusNotFound, "not_found")
	}
}
