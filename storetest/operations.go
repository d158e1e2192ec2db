package storetest

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/google/uuid"
)

// hour is a lease that does not expire during a test.
func hour() time.Time { return time.Now().Add(time.Hour) }

// expired is a lease that has already ended.
func expired() time.Time { return time.Now().Add(-time.Minute) }

// wantOp reports an error unless the stored operation equals want.
func wantOp(t *testing.T, s berth.Store, want berth.Operation, context string) {
	t.Helper()
	got, err := s.OperationByID(t.Context(), want.ID)
	if err != nil {
		t.Errorf("%s: OperationByID(%s) = %v", context, want.ID, err)
		return
	}
	if !equal(got, want) {
		t.Errorf("%s: OperationByID(%s) = %+v, want %+v", context, want.ID, got, want)
	}
}

// wantHeld reports an error unless a new operation on agentID is refused
// because holder holds the guard.
func wantHeld(t *testing.T, s berth.Store, agentID, holder, context string) {
	t.Helper()
	probe := newOp(agentID, berth.OpUpdate)
	_, found, err := s.BeginOperation(t.Context(), probe, hour(), time.Time{})
	wantInProgress(t, err, holder, context+": BeginOperation")
	if found {
		t.Errorf("%s: BeginOperation found an existing operation, want a refusal", context)
	}
}

func testOperationGuard(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a, b, c := mkAgent(t, s), mkAgent(t, s), mkAgent(t, s)

	op1 := newOp(a.ID, berth.OpUpdate)
	op1.IdempotencyKey = "key-" + op1.ID
	op1.RequestHash = "fingerprint-" + op1.ID
	op1.FromVersion, op1.ToVersion = "1.0.0", "1.1.0"
	begin(t, s, op1, hour())
	wantOp(t, s, op1, "after BeginOperation")

	op2 := newOp(a.ID, berth.OpRollback)
	_, found, err := s.BeginOperation(ctx, op2, hour(), time.Time{})
	wantInProgress(t, err, op1.ID, "BeginOperation(second on agent)")
	if found {
		t.Errorf("BeginOperation(second on agent) found = true, want false")
	}
	_, err = s.OperationByID(ctx, op2.ID)
	wantCode(t, err, berth.CodeNotFound, "OperationByID(refused operation)")

	// The guard is per agent.
	begin(t, s, newOp(b.ID, berth.OpRollback), hour())

	_, _, err = s.BeginOperation(ctx, newOp(uuid.NewString(), berth.OpUpdate), hour(), time.Time{})
	wantCode(t, err, berth.CodeNotFound, "BeginOperation(unknown agent)")

	// A clashing ID records nothing and takes no guard.
	dup := newOp(c.ID, berth.OpUpdate)
	dup.ID = op1.ID
	_, _, err = s.BeginOperation(ctx, dup, hour(), time.Time{})
	wantCode(t, err, berth.CodeConflict, "BeginOperation(same id)")
	begin(t, s, newOp(c.ID, berth.OpUpdate), hour())
}

func testOperationLeaseExpiry(t *testing.T, s berth.Store) {
	a := mkAgent(t, s)
	op1 := newOp(a.ID, berth.OpUpdate)
	begin(t, s, op1, expired())
	// op1's lease has ended, so op2 gets in and holds the guard itself.
	op2 := newOp(a.ID, berth.OpRollback)
	begin(t, s, op2, hour())
	wantHeld(t, s, a.ID, op2.ID, "after takeover")
	wantOp(t, s, op1, "taken-over operation")
}

func testCommitReleasesGuard(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a := mkAgent(t, s)
	v := mkVersion(t, s, a.ID, "1.0.0", berth.VersionBuilding)

	op1 := newOp(a.ID, berth.OpUpload)
	begin(t, s, op1, hour())
	done := finish(op1, berth.OpSucceeded)
	done.ToVersion = "1.0.0"
	done.Reason = "first upload"
	done.Result = json.RawMessage(`{"data":{"version":"1.0.0"},"status_code":200}`)
	done.ResultStatus = 200
	check(t, s.Commit(ctx, berth.Commit{AgentID: a.ID, SetActive: &v.ID, Operation: done}), "Commit(succeeded)")
	wantOp(t, s, *done, "after Commit")

	// The guard is free: a failed operation can run and be recorded.
	op2 := newOp(a.ID, berth.OpRollback)
	begin(t, s, op2, hour())
	failed := finish(op2, berth.OpFailed)
	failed.FromVersion, failed.ToVersion = "1.0.0", "0.9.0"
	failed.ErrorCode = berth.CodeTargetUnhealthy
	failed.Error = "target 0.9.0 did not become healthy"
	failed.ResultStatus = 409
	check(t, s.Commit(ctx, berth.Commit{AgentID: a.ID, Operation: failed}), "Commit(failed)")
	wantOp(t, s, *failed, "after Commit(failed)")

	begin(t, s, newOp(a.ID, berth.OpUpdate), hour())
}

func testCommitByTakenOverOperation(t *testing.T, s berth.Store) {
	a := mkAgent(t, s)
	op1 := newOp(a.ID, berth.OpUpdate)
	begin(t, s, op1, expired())
	op2 := newOp(a.ID, berth.OpRollback)
	begin(t, s, op2, hour())

	// op1 finishing late is fenced off: it writes nothing and does not
	// free the guard op2 holds.
	late := finish(op1, berth.OpSucceeded)
	v := mkVersion(t, s, a.ID, "1.0.0", berth.VersionReady)
	err := s.Commit(t.Context(), berth.Commit{AgentID: a.ID, SetActive: &v.ID, Operation: late})
	wantCode(t, err, berth.CodeConflict, "Commit(taken-over operation)")
	if got, err := s.OperationByID(t.Context(), op1.ID); err != nil || got.Status != berth.OpRunning {
		t.Errorf("late Commit wrote operation %s: status %q, %v; want it untouched", op1.ID, got.Status, err)
	}
	if got, err := s.AgentByID(t.Context(), a.ID); err != nil || got.ActiveVersionID != "" {
		t.Errorf("late Commit switched the active version to %q (%v); want nothing written", got.ActiveVersionID, err)
	}
	wantHeld(t, s, a.ID, op2.ID, "after late Commit")
}

func testRenewLease(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a := mkAgent(t, s)
	op1 := newOp(a.ID, berth.OpUpdate)
	begin(t, s, op1, expired())
	check(t, s.RenewLease(ctx, a.ID, op1.ID, hour()), "RenewLease(holder)")
	wantHeld(t, s, a.ID, op1.ID, "after RenewLease")

	wantCode(t, s.RenewLease(ctx, a.ID, uuid.NewString(), hour()), berth.CodeConflict, "RenewLease(not the holder)")
	wantCode(t, s.RenewLease(ctx, uuid.NewString(), op1.ID, hour()), berth.CodeNotFound, "RenewLease(unknown agent)")

	check(t, s.Commit(ctx, berth.Commit{AgentID: a.ID, Operation: finish(op1, berth.OpSucceeded)}), "Commit")
	wantCode(t, s.RenewLease(ctx, a.ID, op1.ID, hour()), berth.CodeConflict, "RenewLease(after Commit)")
}

func testIdempotency(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a, b := mkAgent(t, s), mkAgent(t, s)
	t0 := now()
	const key = "retry-me"
	repeat := func(agentID string) berth.Operation {
		op := newOp(agentID, berth.OpRollback)
		op.IdempotencyKey = key
		return op
	}

	op1 := repeat(a.ID)
	op1.StartedAt = t0.Add(-10 * time.Minute)
	begin(t, s, op1, hour())

	// A repeat while op1 still runs gets op1, not a conflict, and records
	// nothing and takes no guard.
	rep := repeat(a.ID)
	got, found, err := s.BeginOperation(ctx, rep, hour(), t0.Add(-time.Hour))
	check(t, err, "BeginOperation(repeat while running)")
	if !found || got.ID != op1.ID {
		t.Errorf("BeginOperation(repeat while running) = %s, %v; want %s, true", got.ID, found, op1.ID)
	}
	_, err = s.OperationByID(ctx, rep.ID)
	wantCode(t, err, berth.CodeNotFound, "OperationByID(repeat)")
	wantHeld(t, s, a.ID, op1.ID, "after repeat")

	// Once op1 finished, a repeat gets its result.
	done := finish(op1, berth.OpSucceeded)
	done.Result = json.RawMessage(`{"data":{"message":"Rollback successful"},"status_code":200}`)
	done.ResultStatus = 200
	check(t, s.Commit(ctx, berth.Commit{AgentID: a.ID, Operation: done}), "Commit")
	got, found, err = s.BeginOperation(ctx, repeat(a.ID), hour(), t0.Add(-time.Hour))
	check(t, err, "BeginOperation(repeat after finish)")
	if !found || !equal(got, *done) {
		t.Errorf("BeginOperation(repeat after finish) = %+v, %v; want %+v, true", got, found, *done)
	}

	// Keys only count for operations started after since: op1 is too old.
	rep3 := repeat(a.ID)
	rep3.StartedAt = t0
	_, found, err = s.BeginOperation(ctx, rep3, hour(), t0.Add(-5*time.Minute))
	check(t, err, "BeginOperation(key older than since)")
	if found {
		t.Errorf("BeginOperation(key older than since) found = true, want a new operation")
	}
	wantOp(t, s, rep3, "new operation with a reused key")

	// Keys are per agent.
	_, found, err = s.BeginOperation(ctx, repeat(b.ID), hour(), t0.Add(-time.Hour))
	check(t, err, "BeginOperation(same key, other agent)")
	if found {
		t.Errorf("BeginOperation(same key, other agent) found = true, want a new operation")
	}

	// Forgetting keys older than t0-5m drops op1's key only.
	check(t, s.DeleteIdempotencyKeysBefore(ctx, t0.Add(-5*time.Minute)), "DeleteIdempotencyKeysBefore")
	forgotten := *done
	forgotten.IdempotencyKey = ""
	wantOp(t, s, forgotten, "after DeleteIdempotencyKeysBefore")
	wantOp(t, s, rep3, "after DeleteIdempotencyKeysBefore")
	got, found, err = s.BeginOperation(ctx, repeat(a.ID), hour(), t0.Add(-time.Hour))
	check(t, err, "BeginOperation(repeat after forgetting)")
	if !found || got.ID != rep3.ID {
		t.Errorf("BeginOperation(repeat after forgetting) = %s, %v; want %s, true", got.ID, found, rep3.ID)
	}
}

// switchFixture is an agent whose v1 is active and whose v2 (with a
// starting deployment) is about to replace it, under a running operation.
type switchFixture struct {
	agent  berth.Agent
	v1, v2 berth.Version // as stored before the switch
	d2     berth.Deployment
	op     berth.Operation
}

func newSwitchFixture(t *testing.T, s berth.Store) switchFixture {
	t.Helper()
	ctx := t.Context()
	var f switchFixture
	f.agent = mkAgent(t, s)
	v1 := mkVersion(t, s, f.agent.ID, "1.0.0", berth.VersionBuilding)
	f.v2 = mkVersion(t, s, f.agent.ID, "1.1.0", berth.VersionBuilding)
	f.d2 = mkDeployment(t, s, f.agent.ID, f.v2, berth.DeploymentStarting)
	activate(t, s, f.agent.ID, v1, "")
	var err error
	f.v1, err = s.VersionByID(ctx, v1.ID)
	check(t, err, "VersionByID")
	f.op = newOp(f.agent.ID, berth.OpUpdate)
	f.op.FromVersion, f.op.ToVersion = "1.0.0", "1.1.0"
	begin(t, s, f.op, hour())
	return f
}

// commit returns the commit switching from v1 to v2.
func (f switchFixture) commit(expect string) berth.Commit {
	at := now()
	d2 := f.d2
	d2.Status, d2.UpdatedAt = berth.DeploymentRunning, at
	return berth.Commit{
		AgentID:      f.agent.ID,
		SetActive:    &f.v2.ID,
		ExpectActive: expect,
		Versions: []berth.VersionChange{
			{VersionID: f.v2.ID, State: berth.VersionReady, ActivatedAt: &at},
			{VersionID: f.v1.ID, State: berth.VersionRolledBack, Rollback: &berth.RollbackInfo{
				OperationID: f.op.ID, Reason: "bad release", Actor: "alice", From: "1.0.0", To: "1.1.0", At: at}},
		},
		Deployments: []berth.Deployment{d2},
		Operation:   finish(f.op, berth.OpSucceeded),
	}
}

// wantUnchanged reports an error unless nothing of f changed since setup.
func (f switchFixture) wantUnchanged(t *testing.T, s berth.Store, context string) {
	t.Helper()
	ctx := t.Context()
	a, err := s.AgentByID(ctx, f.agent.ID)
	check(t, err, "AgentByID")
	if a.ActiveVersionID != f.v1.ID {
		t.Errorf("%s: active version = %q, want %q", context, a.ActiveVersion, f.v1.Version)
	}
	for _, v := range []berth.Version{f.v1, f.v2} {
		if got, err := s.VersionByID(ctx, v.ID); err != nil || !equal(got, v) {
			t.Errorf("%s: VersionByID(%s) = %+v, %v; want unchanged %+v", context, v.Version, got, err, v)
		}
	}
	if got, err := s.DeploymentByID(ctx, f.d2.ID); err != nil || !equal(got, f.d2) {
		t.Errorf("%s: DeploymentByID = %+v, %v; want unchanged %+v", context, got, err, f.d2)
	}
	wantOp(t, s, f.op, context)
	wantHeld(t, s, f.agent.ID, f.op.ID, context)
}

func testCommitStaleExpectActive(t *testing.T, s berth.Store) {
	ctx := t.Context()
	f := newSwitchFixture(t, s)

	// The caller believes there is no active version yet: the commit must
	// fail and write nothing at all.
	wantCode(t, s.Commit(ctx, f.commit("")), berth.CodeConflict, "Commit(stale ExpectActive)")
	f.wantUnchanged(t, s, "after stale Commit")
	wantCode(t, s.Commit(ctx, f.commit(f.v2.ID)), berth.CodeConflict, "Commit(wrong ExpectActive)")
	f.wantUnchanged(t, s, "after wrong Commit")

	// With the right expectation everything is applied.
	c := f.commit(f.v1.ID)
	check(t, s.Commit(ctx, c), "Commit(current ExpectActive)")
	a, err := s.AgentByID(ctx, f.agent.ID)
	check(t, err, "AgentByID")
	if a.ActiveVersionID != f.v2.ID || a.ActiveVersion != f.v2.Version {
		t.Errorf("after Commit, active = (%q, %q), want (%q, %q)", a.ActiveVersionID, a.ActiveVersion, f.v2.ID, f.v2.Version)
	}
	wantV2 := f.v2
	wantV2.State, wantV2.ActivatedAt = berth.VersionReady, c.Versions[0].ActivatedAt
	wantV1 := f.v1 // ActivatedAt stays: the change leaves it nil
	wantV1.State, wantV1.Rollback = berth.VersionRolledBack, c.Versions[1].Rollback
	for _, want := range []berth.Version{wantV1, wantV2} {
		if got, err := s.VersionByID(ctx, want.ID); err != nil || !equal(got, want) {
			t.Errorf("after Commit, VersionByID(%s) = %+v, %v; want %+v", want.Version, got, err, want)
		}
	}
	if got, err := s.DeploymentByID(ctx, f.d2.ID); err != nil || !equal(got, c.Deployments[0]) {
		t.Errorf("after Commit, DeploymentByID = %+v, %v; want %+v", got, err, c.Deployments[0])
	}
	wantOp(t, s, *c.Operation, "after Commit")
	begin(t, s, newOp(f.agent.ID, berth.OpRollback), hour())
}

func testCommitAllOrNothing(t *testing.T, s berth.Store) {
	ctx := t.Context()
	f := newSwitchFixture(t, s)
	other := mkAgent(t, s)
	otherV := mkVersion(t, s, other.ID, "1.0.0", berth.VersionReady)
	otherD := mkDeployment(t, s, other.ID, otherV, berth.DeploymentRunning)

	tests := []struct {
		name   string
		mutate func(*berth.Commit)
		code   berth.Code // "" accepts any error
	}{
		{"unknown version change", func(c *berth.Commit) {
			c.Versions = append(c.Versions, berth.VersionChange{VersionID: uuid.NewString(), State: berth.VersionReady})
		}, berth.CodeNotFound},
		{"unknown deployment", func(c *berth.Commit) {
			c.Deployments = append(c.Deployments, newDeployment(f.agent.ID, f.v2, berth.DeploymentRunning, now()))
		}, berth.CodeNotFound},
		// An unknown operation cannot hold the guard: fenced off.
		{"unknown operation", func(c *berth.Commit) {
			c.Operation = finish(newOp(f.agent.ID, berth.OpUpdate), berth.OpSucceeded)
		}, berth.CodeConflict},
		{"unknown active version", func(c *berth.Commit) { c.SetActive = ptr(uuid.NewString()) }, berth.CodeNotFound},
		{"unknown agent", func(c *berth.Commit) { c.AgentID = uuid.NewString() }, berth.CodeNotFound},
		{"active version of another agent", func(c *berth.Commit) { c.SetActive = &otherV.ID }, ""},
		{"version change of another agent", func(c *berth.Commit) {
			c.Versions = append(c.Versions, berth.VersionChange{VersionID: otherV.ID, State: berth.VersionFailed})
		}, ""},
		{"deployment of another agent", func(c *berth.Commit) {
			d := otherD
			d.Status = berth.DeploymentStopped
			c.Deployments = append(c.Deployments, d)
		}, ""},
	}
	for _, tc := range tests {
		c := f.commit(f.v1.ID)
		tc.mutate(&c)
		err := s.Commit(ctx, c)
		if tc.code != "" {
			wantCode(t, err, tc.code, "Commit("+tc.name+")")
		} else if err == nil {
			t.Errorf("Commit(%s) = nil, want an error", tc.name)
		}
		f.wantUnchanged(t, s, "after Commit("+tc.name+")")
		if got, err := s.VersionByID(ctx, otherV.ID); err != nil || !equal(got, otherV) {
			t.Errorf("after Commit(%s), other agent's version = %+v, %v; want unchanged", tc.name, got, err)
		}
		if got, err := s.DeploymentByID(ctx, otherD.ID); err != nil || !equal(got, otherD) {
			t.Errorf("after Commit(%s), other agent's deployment = %+v, %v; want unchanged", tc.name, got, err)
		}
		if a, err := s.AgentByID(ctx, other.ID); err != nil || a.ActiveVersionID != "" {
			t.Errorf("after Commit(%s), other agent = %+v, %v; want no active version", tc.name, a, err)
		}
	}
}

func testListOperations(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a, b := mkAgent(t, s), mkAgent(t, s)
	base := now()
	var newestFirst []string
	for i := range 3 {
		op := newOp(a.ID, berth.OpUpdate)
		op.StartedAt = base.Add(time.Duration(i) * time.Second)
		begin(t, s, op, hour())
		check(t, s.Commit(ctx, berth.Commit{AgentID: a.ID, Operation: finish(op, berth.OpSucceeded)}), "Commit")
		newestFirst = append([]string{op.ID}, newestFirst...)
	}
	begin(t, s, newOp(b.ID, berth.OpUpdate), hour())

	for _, tc := range []struct {
		limit int
		want  []string
	}{{10, newestFirst}, {2, newestFirst[:2]}, {0, newestFirst}} {
		got, err := s.ListOperations(ctx, a.ID, tc.limit)
		check(t, err, "ListOperations")
		if g := ids(got, opID); !slices.Equal(g, tc.want) {
			t.Errorf("ListOperations(limit %d) = %v, want %v", tc.limit, g, tc.want)
		}
	}
}

// wantInterrupted reports an error unless closed and the store show op as
// interrupted, with a finish time.
func wantInterrupted(t *testing.T, s berth.Store, closed []berth.Operation, op berth.Operation) {
	t.Helper()
	i := slices.IndexFunc(closed, func(c berth.Operation) bool { return c.ID == op.ID })
	if i < 0 {
		t.Errorf("InterruptOperations() = %v, want it to include %s", ids(closed, opID), op.ID)
		return
	}
	stored, err := s.OperationByID(t.Context(), op.ID)
	check(t, err, "OperationByID")
	for what, got := range map[string]berth.Operation{"returned": closed[i], "stored": stored} {
		if got.Status != berth.OpInterrupted || got.FinishedAt == nil {
			t.Errorf("%s operation %s: status %q, finished %v; want interrupted with a finish time", what, op.ID, got.Status, got.FinishedAt)
		}
		if got.Kind != op.Kind || got.AgentID != op.AgentID || !got.StartedAt.Equal(op.StartedAt) {
			t.Errorf("%s operation %s = %+v, want the fields of %+v", what, op.ID, got, op)
		}
	}
}

func testInterruptAllOperations(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a, b, c := mkAgent(t, s), mkAgent(t, s), mkAgent(t, s)
	opA := newOp(a.ID, berth.OpUpdate)
	begin(t, s, opA, hour())
	opB := newOp(b.ID, berth.OpRollback)
	begin(t, s, opB, expired())
	opC := newOp(c.ID, berth.OpUpdate)
	begin(t, s, opC, hour())
	doneC := finish(opC, berth.OpSucceeded)
	check(t, s.Commit(ctx, berth.Commit{AgentID: c.ID, Operation: doneC}), "Commit")

	// The zero time means every running operation, lease or not.
	closed, err := s.InterruptOperations(ctx, time.Time{})
	check(t, err, "InterruptOperations(zero)")
	wantInterrupted(t, s, closed, opA)
	wantInterrupted(t, s, closed, opB)
	if slices.ContainsFunc(closed, func(op berth.Operation) bool { return op.ID == opC.ID }) {
		t.Errorf("InterruptOperations(zero) = %v, want the finished %s left out", ids(closed, opID), opC.ID)
	}
	wantOp(t, s, *doneC, "finished operation after InterruptOperations")

	again, err := s.InterruptOperations(ctx, time.Time{})
	check(t, err, "InterruptOperations(zero) again")
	if len(again) != 0 {
		t.Errorf("InterruptOperations(zero) again = %v, want nothing left to close", ids(again, opID))
	}
	// Every guard is free.
	begin(t, s, newOp(a.ID, berth.OpUpdate), hour())
	begin(t, s, newOp(b.ID, berth.OpUpdate), hour())
}

func testInterruptExpiredOperations(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a, b, c := mkAgent(t, s), mkAgent(t, s), mkAgent(t, s)
	opA := newOp(a.ID, berth.OpUpdate) // lease expired
	begin(t, s, opA, expired())
	opB := newOp(b.ID, berth.OpUpdate) // lease current
	begin(t, s, opB, hour())
	opC1 := newOp(c.ID, berth.OpUpdate) // lease expired, guard taken over
	begin(t, s, opC1, expired())
	opC2 := newOp(c.ID, berth.OpRollback)
	begin(t, s, opC2, hour())

	closed, err := s.InterruptOperations(ctx, time.Now())
	check(t, err, "InterruptOperations(now)")
	wantInterrupted(t, s, closed, opA)
	wantInterrupted(t, s, closed, opC1)
	for _, op := range []berth.Operation{opB, opC2} {
		if slices.ContainsFunc(closed, func(x berth.Operation) bool { return x.ID == op.ID }) {
			t.Errorf("InterruptOperations(now) = %v, want %s (current lease) left running", ids(closed, opID), op.ID)
		}
		wantOp(t, s, op, "operation with a current lease")
	}

	begin(t, s, newOp(a.ID, berth.OpUpdate), hour())
	wantHeld(t, s, b.ID, opB.ID, "agent with a current lease")
	wantHeld(t, s, c.ID, opC2.ID, "agent whose guard was taken over")
}
