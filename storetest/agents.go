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
	wantCode(t, s.DeleteAgent(ctx, unknown), berth.CodeNotFound, "DeleteAgent(unknown)")
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
		r.op = newOp(agentID, berth.OpRollback)
		r.op.IdempotencyKey = "k-" + agentID
		begin(t, s, r.op, now().Add(time.Hour))
		return r
	}
	gone, kept := fill(a.ID), fill(keep.ID)

	check(t, s.DeleteAgent(ctx, a.ID), "DeleteAgent")

	_, err := s.AgentByID(ctx, a.ID)
	wantCode(t, err, berth.CodeNotFound, "AgentByID(deleted)")
	_, err = s.AgentByName(ctx, a.Name)
	wantCode(t, err, berth.CodeNotFound, "AgentByName(deleted)")
	_, err = s.VersionByID(ctx, gone.v.ID)
	wantCode(t, err, berth.CodeNotFound, "VersionByID(of deleted agent)")
	_, err = s.BuildByID(ctx, gone.b.ID)
	wantCode(t, err, berth.CodeNotFound, "BuildByID(of deleted agent)")
	_, err = s.DeploymentByID(ctx, gone.d.ID)
	wantCode(t, err, berth.CodeNotFound, "DeploymentByID(of deleted agent)")
	_, err = s.OperationByID(ctx, gone.op.ID)
	wantCode(t, err, berth.CodeNotFound, "OperationByID(of deleted agent)")
	if vs, _, err := s.ListVersions(ctx, a.ID, 10, ""); err != nil || len(vs) != 0 {
		t.Errorf("ListVersions(deleted agent) = %v, %v; want empty", vs, err)
	}
	live, err := s.LiveDeployments(ctx)
	check(t, err, "LiveDeployments()")
	liveIDs := ids(live, deploymentID)
	if slices.Contains(liveIDs, gone.d.ID) || !slices.Contains(liveIDs, kept.d.ID) {
		t.Errorf("LiveDeployments() = %v, want %s and not %s", liveIDs, kept.d.ID, gone.d.ID)
	}

	// The other agent keeps everything.
	if _, err := s.VersionByID(ctx, kept.v.ID); err != nil {
		t.Errorf("VersionByID(other agent) = %v, want it kept", err)
	}
	if _, err := s.BuildByID(ctx, kept.b.ID); err != nil {
		t.Errorf("BuildByID(other agent) = %v, want it kept", err)
	}
	if op, err := s.OperationByID(ctx, kept.op.ID); err != nil || op.Status != berth.OpRunning {
		t.Errorf("OperationByID(other agent) = %+v, %v; want it kept running", op, err)
	}
	if got, err := s.AgentByID(ctx, keep.ID); err != nil || got.ActiveVersionID != kept.v.ID {
		t.Errorf("AgentByID(other agent) = %+v, %v; want active %s", got, err, kept.v.ID)
	}

	// The name is free again, and the new agent starts empty.
	again := newAgent(a.OwnerID)
	again.Name = a.Name
	check(t, s.CreateAgent(ctx, again), "CreateAgent(reused name)")
	_, err = s.HighestVersion(ctx, again.ID)
	wantCode(t, err, berth.CodeNotFound, "HighestVersion(new agent)")
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
