package lifecycle

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/berthhq/berth"
)

// Reconcile makes the runtime match the store. It is called once at
// start-up: operations a crash interrupted are closed as interrupted, their
// half-made versions, builds and deployments are marked failed, agents
// whose upload never began are removed, and every agent's active version
// (and its warm standbys) is started and routed.
func (e *Engine) Reconcile(ctx context.Context) error {
	// A lone server knows every running operation died with it; replicas
	// sharing the store only know that of operations whose lease expired.
	var before time.Time
	if e.cfg.SharedStore {
		before = e.now()
	}
	interrupted, err := e.store.InterruptOperations(ctx, before)
	if err != nil {
		return err
	}
	e.closeInterrupted(ctx, interrupted, "interrupted by a server restart")
	agents, err := e.store.ListAgents(ctx, "")
	if err != nil {
		return err
	}
	running, err := e.rt.Running(ctx)
	if err != nil {
		return err
	}
	isRunning := map[string]bool{}
	for _, id := range running {
		isRunning[id] = true
	}
	// Agents come back concurrently, a few at a time, so one slow agent
	// does not hold up the rest.
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, a := range agents {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := e.reconcileAgent(ctx, a, isRunning); err != nil {
				e.log.Error("reconcile agent", "agent", a.Name, "err", err)
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// closeInterrupted marks the version an interrupted upload or update was
// making as failed, with its unfinished build and deployment: it never
// became active, and its label stays used (labels are never reused).
func (e *Engine) closeInterrupted(ctx context.Context, ops []berth.Operation, why string) {
	for _, op := range ops {
		e.log.Warn("operation interrupted", "operation", op.ID, "kind", op.Kind, "agent_id", op.AgentID,
			"from", op.FromVersion, "to", op.ToVersion, "why", why)
		if (op.Kind != berth.OpUpload && op.Kind != berth.OpUpdate) || op.ToVersion == "" {
			continue
		}
		v, err := e.store.VersionByLabel(ctx, op.AgentID, op.ToVersion)
		if err != nil || v.State != berth.VersionBuilding {
			continue // never recorded, or it got further than building
		}
		a, err := e.store.AgentByID(ctx, op.AgentID)
		if err != nil || a.ActiveVersionID == v.ID {
			continue
		}
		now := e.now()
		c := berth.Commit{AgentID: op.AgentID, Versions: []berth.VersionChange{{VersionID: v.ID, State: berth.VersionFailed}}}
		if ds, err := e.store.DeploymentsOfVersions(ctx, op.AgentID, []string{v.ID}); err == nil {
			for _, d := range ds {
				if d.VersionID == v.ID && d.Status.Live() {
					d.Status, d.Error, d.UpdatedAt = berth.DeploymentFailed, why, now
					c.Deployments = append(c.Deployments, d)
				}
			}
		}
		if err := e.store.Commit(ctx, c); err != nil {
			e.log.Error("mark interrupted version failed", "agent_id", op.AgentID, "version", v.Version, "err", err)
		}
	}
}

func (e *Engine) reconcileAgent(ctx context.Context, a berth.Agent, isRunning map[string]bool) error {
	now := e.now()
	if e.removeAbandoned(ctx, a, now) {
		return nil
	}
	builds, err := e.store.ListBuilds(ctx, a.ID)
	if err != nil {
		return err
	}
	ds, err := e.store.ListDeployments(ctx, a.ID)
	if err != nil {
		return err
	}
	var c berth.Commit
	c.AgentID = a.ID
	// A build that never finished belongs to a version that never became
	// active: both failed.
	for _, b := range builds {
		if b.Status == berth.BuildQueued || b.Status == berth.BuildBuilding {
			b.Status, b.Error, b.UpdatedAt, b.FinishedAt = berth.BuildFailed, "interrupted by a server restart", now, &now
			if err := e.store.UpdateBuild(ctx, b); err != nil {
				return err
			}
			if b.VersionID != a.ActiveVersionID {
				c.Versions = append(c.Versions, berth.VersionChange{VersionID: b.VersionID, State: berth.VersionFailed})
			}
		}
	}
	var activeDep *berth.Deployment
	var toStart []berth.Deployment
	for i := range ds {
		d := ds[i]
		if d.RemovedAt != nil {
			_ = e.rt.Remove(ctx, d.ID) // finish a cleanup the crash cut short
			continue
		}
		if !d.Status.Live() {
			if isRunning[d.ID] {
				_ = e.rt.Stop(ctx, d.ID)
			}
			continue
		}
		switch {
		case d.VersionID == a.ActiveVersionID && d.Status == berth.DeploymentRunning && activeDep == nil:
			activeDep = &ds[i]
		case d.Status == berth.DeploymentStarting && d.VersionID != a.ActiveVersionID:
			// A deploy or cold rollback the crash interrupted: it never took traffic.
			d.Status, d.Error, d.UpdatedAt = berth.DeploymentFailed, "interrupted by a server restart", now
			c.Deployments = append(c.Deployments, d)
			if isRunning[d.ID] {
				_ = e.rt.Stop(ctx, d.ID)
			}
		case d.StopAt != nil && !d.StopAt.After(now):
			d.Status, d.StopAt, d.UpdatedAt = berth.DeploymentStopped, nil, now
			c.Deployments = append(c.Deployments, d)
			if isRunning[d.ID] {
				_ = e.rt.Stop(ctx, d.ID)
			}
		default:
			toStart = append(toStart, d) // a warm standby (or a second active one)
		}
	}
	if len(c.Versions) > 0 || len(c.Deployments) > 0 {
		if err := e.store.Commit(ctx, c); err != nil {
			return err
		}
	}
	if a.ActiveVersionID == "" {
		return nil
	}
	v, err := e.store.VersionByID(ctx, a.ActiveVersionID)
	if err != nil {
		return err
	}
	// The active version first: it is what users are waiting for.
	if activeDep == nil {
		d := berth.Deployment{ID: uuid.NewString(), AgentID: a.ID, VersionID: v.ID, Version: v.Version, BuildID: v.BuildID,
			Status: berth.DeploymentStarting, CreatedAt: now, UpdatedAt: now}
		if err := e.store.CreateDeployment(ctx, d); err != nil {
			return err
		}
		activeDep = &d
	}
	if err := e.bringUp(ctx, a, v, *activeDep, isRunning, true); err != nil {
		return err
	}
	for _, d := range toStart {
		sv := v
		if d.VersionID != v.ID {
			if sv, err = e.store.VersionByID(ctx, d.VersionID); err != nil {
				return err
			}
		}
		if err := e.bringUp(ctx, a, sv, d, isRunning, false); err != nil {
			e.log.Warn("standby did not come back", "agent", a.Name, "version", sv.Version, "err", err)
		}
	}
	return nil
}

// removeAbandoned removes agent a if its upload never began: the server
// died (or the store refused) between creating the agent and recording the
// upload operation, every agent's first write after its row. It reports
// whether a is gone. A lone server, reconciling before it serves, knows
// every such agent is abandoned (as it knows every running operation died
// with it); replicas sharing the store only remove agents older than a
// lease, since a younger one may be an upload in flight on another
// replica. The store makes the final check, so an operation recorded
// meanwhile keeps the agent.
func (e *Engine) removeAbandoned(ctx context.Context, a berth.Agent, now time.Time) bool {
	if a.ActiveVersionID != "" || (e.cfg.SharedStore && !a.CreatedAt.Before(now.Add(-e.cfg.Lease))) {
		return false
	}
	// An agent with an active version had operations; so, usually, has one
	// without (a failed upload), which this read tells cheaply, before
	// asking for a write.
	ops, err := e.store.ListOperations(ctx, a.ID, 1)
	if err != nil {
		e.log.Warn("check for an abandoned upload", "agent_id", a.ID, "agent", a.Name, "err", err)
		return false
	}
	if len(ops) > 0 {
		return false
	}
	switch err := e.store.DeleteUnusedAgent(ctx, a.ID); {
	case err == nil:
		e.log.Warn("removed agent whose upload never began", "agent_id", a.ID, "agent", a.Name, "created", a.CreatedAt)
		return true
	case isCode(err, berth.CodeNotFound):
		return true // removed meanwhile, by the failed upload's own retry
	case isCode(err, berth.CodeConflict):
		return false // an operation began meanwhile
	default:
		e.log.Warn("remove agent whose upload never began", "agent_id", a.ID, "agent", a.Name, "err", err)
		return false
	}
}

// bringUp starts deployment d of version v unless the runtime still runs
// it, records its status and, for the active one, routes traffic to it.
func (e *Engine) bringUp(ctx context.Context, a berth.Agent, v berth.Version, d berth.Deployment, isRunning map[string]bool, active bool) error {
	url := d.URL
	if !isRunning[d.ID] || e.rt.Probe(ctx, d.ID) != nil {
		_ = e.rt.Stop(ctx, d.ID)
		inst, err := e.rt.Start(ctx, e.spec(a, v, d.ID))
		if err != nil {
			d.Status, d.Error, d.UpdatedAt = berth.DeploymentFailed, berth.ErrorMessage(err), e.now()
			if uErr := e.store.UpdateDeployment(ctx, d); uErr != nil {
				return uErr
			}
			return err
		}
		url = inst.URL
	}
	d.URL, d.Status, d.UpdatedAt = url, berth.DeploymentRunning, e.now()
	if err := e.store.UpdateDeployment(ctx, d); err != nil {
		return err
	}
	if active {
		e.router.Route(a.Name, url)
		e.log.Info("agent restored", "agent", a.Name, "version", v.Version, "deployment", d.ID)
	}
	return nil
}

// Run enforces time-based policy until ctx ends: deployments whose rollback
// grace period is over are stopped, guards of operations whose server died
// are released, and old idempotency keys are forgotten.
func (e *Engine) Run(ctx context.Context) {
	t := time.NewTicker(e.cfg.JanitorInterval)
	defer t.Stop()
	lastSweep := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		e.expireGrace(ctx)
		if time.Since(lastSweep) > time.Minute {
			lastSweep = time.Now()
			if ops, err := e.store.InterruptOperations(ctx, e.now()); err != nil {
				e.log.Warn("release expired guards", "err", err)
			} else {
				e.closeInterrupted(ctx, ops, "its server stopped renewing the operation lease")
			}
			if err := e.store.DeleteIdempotencyKeysBefore(ctx, e.now().Add(-e.cfg.IdempotencyTTL)); err != nil {
				e.log.Warn("forget idempotency keys", "err", err)
			}
		}
	}
}

// expireGrace stops deployments whose grace period is over. Each agent's
// stop is an operation of its own (kind cleanup) so it never races a
// rollback that wants the same deployment back; an agent busy with another
// operation is retried on the next tick.
func (e *Engine) expireGrace(ctx context.Context) {
	live, err := e.store.LiveDeployments(ctx)
	if err != nil {
		e.log.Warn("list live deployments", "err", err)
		return
	}
	now := e.now()
	due := map[string][]berth.Deployment{}
	for _, d := range live {
		if d.StopAt != nil && !d.StopAt.After(now) {
			due[d.AgentID] = append(due[d.AgentID], d)
		}
	}
	for agentID, ds := range due {
		op := berth.Operation{AgentID: agentID, Kind: berth.OpCleanup, Actor: "berth", Reason: "rollback grace period ended"}
		_, _, stop, err := e.begin(ctx, &op)
		if err != nil {
			continue // busy; next tick
		}
		// Re-read under the guard: a rollback may have taken one back.
		var stopNow []berth.Deployment
		for _, d := range ds {
			cur, err := e.store.DeploymentByID(ctx, d.ID)
			if err != nil || cur.StopAt == nil || cur.StopAt.After(now) || !cur.Status.Live() {
				continue
			}
			cur.Status, cur.StopAt, cur.UpdatedAt = berth.DeploymentStopped, nil, now
			stopNow = append(stopNow, cur)
			op.FromVersion = cur.Version
		}
		e.finish(&op, map[string]any{"stopped_deployments": ids(stopNow)}, nil)
		err = e.store.Commit(ctx, berth.Commit{AgentID: agentID, Deployments: stopNow, Operation: &op})
		stop()
		if err != nil {
			e.log.Warn("record grace expiry", "agent_id", agentID, "err", err)
			continue
		}
		for _, d := range stopNow {
			if err := e.rt.Stop(ctx, d.ID); err != nil {
				e.log.Warn("stop deployment after grace period", "deployment", d.ID, "err", err)
			}
			e.log.Info("grace period over; stopped", "agent_id", agentID, "version", d.Version, "deployment", d.ID)
		}
	}
}

// Delete stops everything agent a runs and removes it, its versions and
// their files. Its operations stay, the delete among them, as its audit
// trail.
func (e *Engine) Delete(ctx context.Context, actor berth.User, a berth.Agent) error {
	op := berth.Operation{AgentID: a.ID, Kind: berth.OpDelete, Actor: actor.Username, FromVersion: a.ActiveVersion}
	_, _, stop, err := e.begin(ctx, &op)
	if err != nil {
		return err
	}
	defer stop()
	ctx = context.WithoutCancel(ctx)
	defer e.releaseOnPanic(ctx, &op)
	e.router.Unroute(a.Name)
	ds, err := e.store.ListDeployments(ctx, a.ID)
	if err != nil {
		return e.commitFailure(ctx, berth.Commit{}, &op, err)
	}
	var wg sync.WaitGroup
	for _, d := range ds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.rt.Remove(ctx, d.ID); err != nil {
				e.log.Warn("remove deployment of deleted agent", "deployment", d.ID, "err", err)
			}
		}()
	}
	wg.Wait()
	// The delete operation is closed in the transaction that removes the
	// agent: the record outlives the agent as the end of its audit trail.
	// The store gets a copy: if the delete fails, commitFailure records op
	// as failed, without the result of a success that did not happen.
	done := op
	e.finish(&done, map[string]any{"removed_deployments": ids(ds)}, nil)
	if err := e.store.DeleteAgent(ctx, a.ID, &done); err != nil {
		return e.commitFailure(ctx, berth.Commit{}, &op, err)
	}
	e.removeAll(e.versionDirRoot(a.ID), e.packageDirRoot(a.ID))
	e.log.Info("agent deleted", "actor", actor.Username, "agent", a.Name, "agent_id", a.ID, "deployments", len(ds))
	return nil
}
