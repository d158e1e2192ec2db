package storetest

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/google/uuid"
)

func testAgents(t *testing.T, s berth.Store) {
	ctx := t.Context()
	owner := mkUser(t, s)
	other := mkUser(t, s)

	a := newAgent(owner.ID)
	check(t, s.CreateAgent(ctx, a), "CreateAgent")
	got, err := s.AgentByID(ctx, a.ID)
	check(t, err, "AgentByID")
	if !equal(got, a) {
		t.Errorf("AgentByID(%q) = %+v, want %+v", a.ID, got, a)
	}
	got, err = s.AgentByName(ctx, a.Name)
	check(t, err, "AgentByName")
	if !equal(got, a) {
		t.Errorf("AgentByName(%q) = %+v, want %+v", a.Name, got, a)
	}

	dupName := newAgent(owner.ID)
	dupName.Name = a.Name
	wantCode(t, s.CreateAgent(ctx, dupName), berth.CodeConflict, "CreateAgent(same name)")
	dupID := newAgent(owner.ID)
	dupID.ID = a.ID
	wantCode(t, s.CreateAgent(ctx, dupID), berth.CodeConflict, "CreateAgent(same id)")
	wantCode(t, s.CreateAgent(ctx, newAgent(uuid.NewString())), berth.CodeNotFound, "CreateAgent(unknown owner)")

	// ListAgents orders by name, whatever the creation order.
	var mine []string
	for _, prefix := range []string{"c-", "a-", "b-"} {
		x := newAgent(owner.ID)
		x.Name = prefix + x.ID
		check(t, s.CreateAgent(ctx, x), "CreateAgent")
		mine = append(mine, x.Name)
	}
	mine = append(mine, a.Name)
	slices.Sort(mine)
	theirs := newAgent(other.ID)
	check(t, s.CreateAgent(ctx, theirs), "CreateAgent")

	list, err := s.ListAgents(ctx, owner.ID)
	check(t, err, "ListAgents(owner)")
	if names := ids(list, agentName); !slices.Equal(names, mine) {
		t.Errorf("ListAgents(owner) = %v, want %v", names, mine)
	}
	all, err := s.ListAgents(ctx, "")
	check(t, err, "ListAgents(\"\")")
	names := ids(all, agentName)
	if !slices.IsSorted(names) {
		t.Errorf("ListAgents(\"\") = %v, want sorted by name", names)
	}
	for _, n := range append(mine, theirs.Name) {
		if !slices.Contains(names, n) {
			t.Errorf("ListAgents(\"\") = %v, want it to contain %q", names, n)
		}
	}
	if list, err := s.ListAgents(ctx, uuid.NewString()); err != nil || len(list) != 0 {
		t.Errorf("ListAgents(unknown owner) = %v, %v; want empty", list, err)
	}

	// UpdateAgentMeta writes the description and card, nothing else.
	upd := a
	upd.Description = "new description"
	upd.Card = json.RawMessage(`{"name":"renamed-card","version":"2.0.0"}`)
	upd.Name = "should-not-change"
	upd.OwnerID = other.ID
	check(t, s.UpdateAgentMeta(ctx, upd), "UpdateAgentMeta")
	got, err = s.AgentByID(ctx, a.ID)
	check(t, err, "AgentByID")
	want := a
	want.Description = upd.Description
	want.Card = upd.Card
	want.UpdatedAt = got.UpdatedAt // the contract leaves UpdatedAt to the store
	if !equal(got, want) {
		t.Errorf("after UpdateAgentMeta, AgentByID = %+v, want %+v", got, want)
	}

	unknown := uuid.NewString()
	_, err = s.AgentByID(ctx, unknown)
	wantCode(t, err, berth.CodeNotFound, "AgentByID(unknown)")
	_, err = s.AgentByName(ctx, "no-such-agent")
	wantCode(t, err, berth.CodeNotFound, "AgentByName(unknown)")
	wantCode(t, s.UpdateAgentMeta(ctx, newAgent(owner.ID)), berth.CodeNotFound, "UpdateAgentMeta(unknown)")
	wantCode(t, s.DeleteAgent(ctx, unknown, nil), berth.CodeNotFound, "DeleteAgent(unknown)")
}

// testAgentActiveVersion checks that reads fill in the active version's
// label from its ID.
func testAgentActiveVersion(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a := mkAgent(t, s)
	v1 := mkVersion(t, s, a.ID, "1.0.0", berth.VersionBuilding)
	v2 := mkVersion(t, s, a.ID, "1.1.0", berth.VersionBuilding)

	for _, step := range []struct {
		v      berth.Version
		expect string
	}{{v1, ""}, {v2, v1.ID}} {
		activate(t, s, a.ID, step.v, step.expect)
		byID, err := s.AgentByID(ctx, a.ID)
		check(t, err, "AgentByID")
		byName, err := s.AgentByName(ctx, a.Name)
		check(t, err, "AgentByName")
		for call, got := range map[string]berth.Agent{"AgentByID": byID, "AgentByName": byName} {
			if got.ActiveVersionID != step.v.ID || got.ActiveVersion != step.v.Version {
				t.Errorf("%s after activating %s: active = (%q, %q), want (%q, %q)",
					call, step.v.Version, got.ActiveVersionID, got.ActiveVersion, step.v.ID, step.v.Version)
			}
		}
	}
}

// testDeleteAgentCascades checks that deleting an agent removes it, its
// versions, builds and deployments, and keeps its operations (the audit
// trail) under its ID and name, with the deleting operation closed in the
// same transaction.
func testDeleteAgentCascades(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a := mkAgent(t, s)
	keep := mkAgent(t, s)

	type rows struct {
		v  berth.Version
		b  berth.Build
		d  berth.Deployment
		op berth.Operation
	}
	fill := func(agentID string) rows {
		var r rows
		r.v = mkVersion(t, s, agentID, "1.0.0", berth.VersionReady)
		r.b = newBuild(agentID, r.v, now())
		check(t, s.CreateBuild(ctx, r.b), "CreateBuild")
		r.d = mkDeployment(t, s, agentID, r.v, berth.DeploymentRunning)
		activate(t, s, agentID, r.v, "")
		r.op = newOp(agentID, berth.OpDelete)
		// Left to the store, which takes it from the agent.
		r.op.AgentName = ""
		r.op.IdempotencyKey = "k-" + agentID
		r.op.FromVersion = r.v.Version
		begin(t, s, r.op, now().Add(time.Hour))
		r.op.AgentName = nameOf(agentID)
		return r
	}
	gone, kept := fill(a.ID), fill(keep.ID)
	before, err := s.ListOperations(ctx, a.ID, 10)
	check(t, err, "ListOperations(before delete)")

	done := finish(gone.op, berth.OpSucceeded)
	done.Result = json.RawMessage(`{"removed_deployments":["` + gone.d.ID + `"]}`)
	check(t, s.DeleteAgent(ctx, a.ID, done), "DeleteAgent")

	_, err = s.AgentByID(ctx, a.ID)
	wantCode(t, err, berth.CodeNotFound, "AgentByID(deleted)")
	_, err = s.AgentByName(ctx, a.Name)
	wantCode(t, err, berth.CodeNotFound, "AgentByName(deleted)")
	_, err = s.VersionByID(ctx, gone.v.ID)
	wantCode(t, err, berth.CodeNotFound, "VersionByID(of deleted agent)")
	_, err = s.BuildByID(ctx, gone.b.ID)
	wantCode(t, err, berth.CodeNotFound, "BuildByID(of deleted agent)")
	_, err = s.DeploymentByID(ctx, gone.d.ID)
	wantCode(t, err, berth.CodeNotFound, "DeploymentByID(of deleted agent)")
	if vs, _, err := s.ListVersions(ctx, a.ID, 10, ""); err != nil || len(vs) != 0 {
		t.Errorf("ListVersions(deleted agent) = %v, %v; want empty", vs, err)
	}
	if bs, err := s.ListBuilds(ctx, a.ID); err != nil || len(bs) != 0 {
		t.Errorf("ListBuilds(deleted agent) = %v, %v; want empty", bs, err)
	}
	if ds, err := s.ListDeployments(ctx, a.ID); err != nil || len(ds) != 0 {
		t.Errorf("ListDeployments(deleted agent) = %v, %v; want empty", ds, err)
	}
	live, err := s.LiveDeployments(ctx)
	check(t, err, "LiveDeployments()")
	liveIDs := ids(live, deploymentID)
	if slices.Contains(liveIDs, gone.d.ID) || !slices.Contains(liveIDs, kept.d.ID) {
		t.Errorf("LiveDeployments() = %v, want %s and not %s", liveIDs, kept.d.ID, gone.d.ID)
	}
	// Nothing can begin on the deleted agent.
	_, _, err = s.BeginOperation(ctx, newOp(a.ID, berth.OpUpdate), hour(), time.Time{})
	wantCode(t, err, berth.CodeNotFound, "BeginOperation(deleted agent)")

	// The trail stays, the delete closed as the caller gave it.
	wantOp(t, s, *done, "delete operation after DeleteAgent")
	after, err := s.ListOperations(ctx, a.ID, 10)
	check(t, err, "ListOperations(deleted agent)")
	if g, w := ids(after, opID), ids(before, opID); !slices.Equal(g, w) || len(g) != 2 || g[0] != gone.op.ID {
		t.Errorf("ListOperations(deleted agent) = %v, want %v (the delete first)", g, w)
	}
	for _, op := range after {
		if op.AgentID != a.ID || op.AgentName != a.Name {
			t.Errorf("operation %s (%s) of the deleted agent: agent (%q, %q), want (%q, %q)",
				op.ID, op.Kind, op.AgentID, op.AgentName, a.ID, a.Name)
		}
	}
	// The other agent keeps everything.
	if _, err := s.VersionByID(ctx, kept.v.ID); err != nil {
		t.Errorf("VersionByID(other agent) = %v, want it kept", err)
	}
	if _, err := s.BuildByID(ctx, kept.b.ID); err != nil {
		t.Errorf("BuildByID(other agent) = %v, want it kept", err)
	}
	wantOp(t, s, kept.op, "operation of the other agent")
	if got, err := s.AgentByID(ctx, keep.ID); err != nil || got.ActiveVersionID != kept.v.ID {
		t.Errorf("AgentByID(other agent) = %+v, %v; want active %s", got, err, kept.v.ID)
	}

	// The name is free again, and the new agent starts empty: the trail is
	// the old agent's, under its ID.
	again := newAgent(a.OwnerID)
	again.Name = a.Name
	check(t, s.CreateAgent(ctx, again), "CreateAgent(reused name)")
	_, err = s.HighestVersion(ctx, again.ID)
	wantCode(t, err, berth.CodeNotFound, "HighestVersion(new agent)")
	if ops, err := s.ListOperations(ctx, again.ID, 10); err != nil || len(ops) != 0 {
		t.Errorf("ListOperations(new agent with the old name) = %v, %v; want empty", ids(ops, opID), err)
	}

	// Deleting without an operation leaves a running one of the agent
	// behind, holding nothing: the next sweep closes it.
	check(t, s.DeleteAgent(ctx, keep.ID, nil), "DeleteAgent(no operation)")
	wantOp(t, s, kept.op, "running operation of an agent deleted without an operation")
	closed, err := s.InterruptOperations(ctx, time.Now())
	check(t, err, "InterruptOperations(now)")
	wantInterrupted(t, s, closed, kept.op)
}

// testDeleteAgentFenced checks that DeleteAgent with an operation that does
// not hold the agent's guard (never took it, or lost it to another after
// its lease expired) deletes nothing and writes nothing.
func testDeleteAgentFenced(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a, other := mkAgent(t, s), mkAgent(t, s)
	v := mkVersion(t, s, a.ID, "1.0.0", berth.VersionReady)
	activate(t, s, a.ID, v, "")
	d := mkDeployment(t, s, a.ID, v, berth.DeploymentRunning)

	late := newOp(a.ID, berth.OpDelete)
	begin(t, s, late, expired())
	holder := newOp(a.ID, berth.OpRollback)
	begin(t, s, holder, hour())
	otherOp := newOp(other.ID, berth.OpDelete)
	begin(t, s, otherOp, hour())

	for _, tc := range []struct {
		name string
		op   berth.Operation
		want berth.Code
	}{
		{"guard taken over", late, berth.CodeConflict},
		{"never began", newOp(a.ID, berth.OpDelete), berth.CodeConflict},
		{"another agent's operation", otherOp, berth.CodeInvalid},
	} {
		call := fmt.Sprintf("DeleteAgent(%s)", tc.name)
		wantCode(t, s.DeleteAgent(ctx, a.ID, finish(tc.op, berth.OpSucceeded)), tc.want, call)
		if got, err := s.AgentByID(ctx, a.ID); err != nil || got.ActiveVersionID != v.ID {
			t.Errorf("after %s: AgentByID = %+v, %v; want it kept, active %s", call, got, err, v.ID)
		}
		if _, err := s.VersionByID(ctx, v.ID); err != nil {
			t.Errorf("after %s: VersionByID = %v, want it kept", call, err)
		}
		if _, err := s.DeploymentByID(ctx, d.ID); err != nil {
			t.Errorf("after %s: DeploymentByID = %v, want it kept", call, err)
		}
		wantOp(t, s, late, "after "+call)
		wantOp(t, s, otherOp, "after "+call)
		wantHeld(t, s, a.ID, holder.ID, "after "+call)
	}
}

// testDeleteUnusedAgent checks that DeleteUnusedAgent removes only an agent
// no operation was ever recorded for, and leaves one that has operations
// exactly as it was.
func testDeleteUnusedAgent(t *testing.T, s berth.Store) {
	ctx := t.Context()
	owner := mkUser(t, s)

	tests := []struct {
		name string
		// setup records the agent (if any) and returns the ID to delete.
		setup func(t *testing.T) string
		want  berth.Code // "" for removed
	}{
		{"no operations", func(t *testing.T) string {
			a := newAgent(owner.ID)
			check(t, s.CreateAgent(ctx, a), "CreateAgent")
			return a.ID
		}, ""},
		{"a running operation", func(t *testing.T) string {
			a := newAgent(owner.ID)
			check(t, s.CreateAgent(ctx, a), "CreateAgent")
			begin(t, s, newOp(a.ID, berth.OpUpload), hour())
			return a.ID
		}, berth.CodeConflict},
		{"a finished operation", func(t *testing.T) string {
			a := newAgent(owner.ID)
			check(t, s.CreateAgent(ctx, a), "CreateAgent")
			op := newOp(a.ID, berth.OpUpload)
			begin(t, s, op, hour())
			check(t, s.Commit(ctx, berth.Commit{AgentID: a.ID, Operation: finish(op, berth.OpFailed)}), "Commit")
			return a.ID
		}, berth.CodeConflict},
		{"unknown agent", func(t *testing.T) string { return uuid.NewString() }, berth.CodeNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := tt.setup(t)
			before, beforeErr := s.AgentByID(ctx, id)
			ops, err := s.ListOperations(ctx, id, 10)
			check(t, err, "ListOperations")

			err = s.DeleteUnusedAgent(ctx, id)
			if tt.want == "" {
				check(t, err, fmt.Sprintf("DeleteUnusedAgent(%s)", id))
				_, err := s.AgentByID(ctx, id)
				wantCode(t, err, berth.CodeNotFound, "AgentByID(deleted unused agent)")
				return
			}
			wantCode(t, err, tt.want, fmt.Sprintf("DeleteUnusedAgent(%s)", id))
			if beforeErr != nil {
				return // there was nothing to keep
			}
			// Refused: the agent and its operations are untouched.
			after, err := s.AgentByID(ctx, id)
			check(t, err, "AgentByID(after refused DeleteUnusedAgent)")
			if !equal(after, before) {
				t.Errorf("AgentByID(%s) after refused DeleteUnusedAgent = %+v, want %+v", id, after, before)
			}
			opsAfter, err := s.ListOperations(ctx, id, 10)
			check(t, err, "ListOperations")
			if !equal(opsAfter, ops) {
				t.Errorf("ListOperations(%s) after refused DeleteUnusedAgent = %+v, want %+v", id, opsAfter, ops)
			}
		})
	}
}
