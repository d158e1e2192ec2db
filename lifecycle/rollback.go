package lifecycle

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/berthhq/berth"
)

// RollbackRequest is a parsed rollback call.
type RollbackRequest struct {
	// Target is the version to go back to; "" means the last known good.
	Target string
	// CleanupFailed removes every failed deployment of the agent after the
	// switch.
	CleanupFailed bool
	// Reason is stored on the operation and on the version rolled back from.
	Reason string
	// DryRun answers what would happen and changes nothing.
	DryRun bool
	// Async returns as soon as the operation is started (HTTP 202).
	Async bool
	// IdempotencyKey makes a repeat return the first answer.
	IdempotencyKey string
	// kind is the operation recorded: OpRollback unless set (Berth's own
	// rollbacks are OpAutoRollback).
	kind berth.OperationKind
}

// RollbackResult is the outcome of a rollback.
type RollbackResult struct {
	AgentID     string   `json:"agent_id"`
	From        string   `json:"rolled_back_from"`
	To          string   `json:"rolled_back_to"`
	OperationID string   `json:"operation_id,omitempty"`
	Cleaned     []string `json:"cleaned_deployments"`
	DurationMS  int64    `json:"duration_ms"`
	// Duration is the server-side time of the rollback, from the request
	// to traffic moved (DurationMS is it rounded down, as the API shows it).
	Duration time.Duration `json:"-"`
	// ReadyWait is the part of Duration spent getting the target ready: a
	// probe when warm, the agent's own start when cold.
	ReadyWait time.Duration `json:"-"`
	// Warm reports whether the target was already running (a pointer swap)
	// rather than started from its artifact.
	Warm         bool   `json:"warm"`
	DeploymentID string `json:"deployment_id"`
	// Pending is set for an Async rollback that is still running.
	Pending bool `json:"-"`
	// DryRun is set when nothing was changed.
	DryRun bool `json:"-"`
}

// Rollback moves agent a back to an earlier version, health-gated: traffic
// moves only once the target answers its health check, in one transaction
// with the operation record. A failed attempt changes nothing users see.
func (e *Engine) Rollback(ctx context.Context, actor berth.User, a berth.Agent, req RollbackRequest) (RollbackResult, error) {
	start := time.Now()
	from, to, warm, deployments, decideErr := e.decideRollback(ctx, a, req.Target)
	// Without an Idempotency-Key a refused rollback records nothing. With
	// one, the operation is begun even so: a repeat must get the first
	// answer, although the first rollback changed what the default target
	// now is, and a refusal is an answer too.
	if decideErr != nil && (req.IdempotencyKey == "" || req.DryRun) {
		return RollbackResult{}, e.refusal(ctx, a.ID, decideErr)
	}
	var cleaned []berth.Deployment
	if req.CleanupFailed {
		cleaned = FailedToClean(deployments)
	}
	res := RollbackResult{AgentID: a.ID, From: from.Version, To: to.Version, Cleaned: ids(cleaned), Warm: warm.ID != ""}
	if req.DryRun {
		// The real call would be refused while another operation runs;
		// so is its rehearsal.
		if err := e.inProgress(ctx, a.ID, nil); err != nil {
			return RollbackResult{}, err
		}
		res.DryRun = true
		res.DeploymentID = warm.ID
		return res, nil
	}

	op := berth.Operation{
		AgentID:        a.ID,
		Kind:           cmp.Or(req.kind, berth.OpRollback),
		Actor:          actor.Username,
		Reason:         req.Reason,
		FromVersion:    from.Version,
		ToVersion:      to.Version,
		IdempotencyKey: req.IdempotencyKey,
		RequestHash:    rollbackHash(req),
	}
	prev, repeat, stop, err := e.begin(ctx, &op)
	if err != nil {
		return RollbackResult{}, err
	}
	if repeat {
		return replay[RollbackResult](prev)
	}
	if decideErr != nil {
		stop()
		return RollbackResult{}, e.commitFailure(ctx, berth.Commit{}, &op, decideErr)
	}
	res.OperationID = op.ID
	if req.Async {
		e.goBG(func(bg context.Context) {
			defer stop()
			_, _ = e.executeRollback(bg, actor, a, &op, req, start)
		})
		res.Pending = true
		return res, nil
	}
	defer stop()
	// The caller may hang up; the rollback still finishes and is recorded.
	return e.executeRollback(context.WithoutCancel(ctx), actor, a, &op, req, start)
}

// refusal is the answer to a rollback refused before taking the agent's
// guard. A refusal while another operation on the agent runs (its first
// upload, an update) is a verdict on a state about to change: "nothing to
// roll back to", "no such version", "1.2.0 was never built", "1.1.0 is the
// current version" may all be false a moment later. The caller is told
// about that operation instead, as a rollback that reached the guard
// would be.
func (e *Engine) refusal(ctx context.Context, agentID string, decideErr error) error {
	if err := e.inProgress(ctx, agentID, decideErr); err != nil {
		return err
	}
	return decideErr
}

// inProgress returns the operation_in_progress error naming the operation
// running on the agent, with cause (if any) in its message, or nil when
// none runs.
func (e *Engine) inProgress(ctx context.Context, agentID string, cause error) error {
	// Only the newest operation can be running: it holds the agent's
	// guard, and no other can begin while it does.
	ops, err := e.store.ListOperations(ctx, agentID, 1)
	if err != nil || len(ops) == 0 || ops[0].Status != berth.OpRunning {
		return nil
	}
	op := ops[0]
	msg := fmt.Sprintf("%s operation %s is in progress on this agent; try again when it has finished", op.Kind, op.ID)
	if cause != nil {
		msg += " (" + berth.ErrorMessage(cause) + ")"
	}
	return &berth.Error{Code: berth.CodeOperationInProgress, OperationID: op.ID, Message: msg, Err: cause}
}

// decideRollback reads what the decision needs and chooses the target.
func (e *Engine) decideRollback(ctx context.Context, a berth.Agent, requested string) (from, to berth.Version, warm berth.Deployment, ds []berth.Deployment, err error) {
	in := TargetInput{Requested: requested}
	if a.ActiveVersionID != "" {
		cur, err := e.store.VersionByID(ctx, a.ActiveVersionID)
		if err != nil {
			return from, to, warm, nil, err
		}
		in.Current = &cur
	}
	if requested != "" {
		v, err := e.store.VersionByLabel(ctx, a.ID, requested)
		switch {
		case err == nil:
			in.Explicit = &v
			if v.BuildID != "" {
				b, err := e.store.BuildByID(ctx, v.BuildID)
				if err != nil {
					return from, to, warm, nil, err
				}
				in.ExplicitBuilt = b.Status == berth.BuildSuccess
			}
		case !isCode(err, berth.CodeNotFound):
			return from, to, warm, nil, err
		}
	} else {
		// The current version is always the most recently activated, so
		// three rows always include the answer.
		recent, err := e.store.RecentlyActive(ctx, a.ID, 3)
		if err != nil {
			return from, to, warm, nil, err
		}
		in.Recent = recent
	}
	to, err = ChooseTarget(in)
	if err != nil {
		return from, to, warm, nil, err
	}
	ds, err = e.store.CurrentDeployments(ctx, a.ID)
	if err != nil {
		return from, to, warm, nil, err
	}
	warm, _ = WarmDeployment(ds, to.ID)
	return *in.Current, to, warm, ds, nil
}

// executeRollback runs a started rollback operation to its end and commits
// the outcome.
func (e *Engine) executeRollback(ctx context.Context, actor berth.User, a berth.Agent, op *berth.Operation, req RollbackRequest, start time.Time) (RollbackResult, error) {
	defer e.releaseOnPanic(ctx, op)
	// Decide again under the guard: another operation may have changed the
	// agent between the first decision and taking the guard.
	cur, err := e.store.AgentByID(ctx, a.ID)
	if err != nil {
		return RollbackResult{}, e.commitFailure(ctx, berth.Commit{}, op, err)
	}
	a = cur
	from, to, warm, ds, err := e.decideRollback(ctx, a, req.Target)
	if err != nil {
		return RollbackResult{}, e.commitFailure(ctx, berth.Commit{}, op, err)
	}
	op.FromVersion, op.ToVersion = from.Version, to.Version

	readyStart := time.Now()
	target, url, fails, err := e.readyTarget(ctx, a, to, warm, req.CleanupFailed)
	readyWait := time.Since(readyStart)
	if err != nil {
		// The current version keeps serving: nothing about it changed. The
		// attempt and any deployment that failed are recorded.
		err = e.commitFailure(ctx, berth.Commit{Deployments: fails}, op, err)
		e.log.Warn("rollback failed", "actor", actor.Username, "agent", a.Name, "from", from.Version, "to", to.Version,
			"reason", req.Reason, "operation", op.ID, "err", err, "duration", time.Since(start))
		return RollbackResult{}, err
	}

	// Cleanup is planned from the state read under the guard; failed
	// deployments made by this very attempt are included.
	ds = append(ds, fails...)
	var cleaned []berth.Deployment
	if req.CleanupFailed {
		cleaned = FailedToClean(ds)
	}
	now := e.now()
	res := RollbackResult{
		AgentID:      a.ID,
		From:         from.Version,
		To:           to.Version,
		OperationID:  op.ID,
		Cleaned:      ids(cleaned),
		Warm:         warm.ID != "" && warm.ID == target.ID,
		DeploymentID: target.ID,
		ReadyWait:    readyWait,
	}
	res.DurationMS = time.Since(start).Milliseconds()
	e.finish(op, res, nil)
	info := berth.RollbackInfo{OperationID: op.ID, Reason: req.Reason, Actor: actor.Username, From: from.Version, To: to.Version, At: now}
	target.URL = url
	c := RollbackCommit(RollbackPlan{From: from, To: to, Target: target, Cleaned: cleaned, Failed: fails}, ds, info, now, now.Add(e.cfg.Grace), *op)
	if err := e.store.Commit(ctx, c); err != nil {
		err = &berth.Error{Code: berth.ErrorCode(err),
			Message: "rollback to " + to.Version + " could not be committed; " + from.Version + " keeps serving: " + berth.ErrorMessage(err), Err: err}
		// Traffic has not moved. A target we started just for this would
		// otherwise run unrecorded.
		if !res.Warm {
			_ = e.rt.Stop(ctx, target.ID)
			target.Status, target.Error = berth.DeploymentFailed, "rollback could not be committed"
			return RollbackResult{}, e.commitFailure(ctx, berth.Commit{Deployments: []berth.Deployment{target}}, op, err)
		}
		return RollbackResult{}, e.commitFailure(ctx, berth.Commit{}, op, err)
	}
	// The store now says the target is active; move traffic. In-flight
	// requests finish on the old deployment, which stays warm for Grace.
	e.router.Route(a.Name, url)
	for _, d := range cleaned {
		if d.ID == warm.ID && !res.Warm {
			continue // a standby that failed its probe: readyTarget stops it
		}
		if err := e.rt.Remove(ctx, d.ID); err != nil {
			e.log.Warn("remove failed deployment", "deployment", d.ID, "err", err)
		}
	}
	res.Duration = time.Since(start)
	res.DurationMS = res.Duration.Milliseconds()
	e.log.Info("rollback",
		"actor", actor.Username, "agent", a.Name, "agent_id", a.ID, "from", from.Version, "to", to.Version,
		"reason", req.Reason, "warm", res.Warm, "cleaned", len(cleaned), "operation", op.ID,
		"duration", res.Duration)
	return res, nil
}

// readyTarget returns a healthy deployment of version to: the warm one if
// it still answers its probe, or a new one started cold from the version's
// artifact and config. fails holds deployments that failed on the way. A
// standby that failed its probe is among them, and is stopped (removed,
// with cleanup) in the background: it may be hung, and a graceful stop of
// a hung process takes the whole stop timeout, which the rollback must not
// wait for.
func (e *Engine) readyTarget(ctx context.Context, a berth.Agent, to berth.Version, warm berth.Deployment, cleanup bool) (d berth.Deployment, url string, fails []berth.Deployment, err error) {
	if warm.ID != "" {
		perr := e.rt.Probe(ctx, warm.ID)
		if perr == nil {
			return warm, warm.URL, nil, nil
		}
		e.log.Warn("standby failed its probe; starting the target cold", "deployment", warm.ID, "err", perr)
		bad := warm
		bad.Status, bad.UpdatedAt = berth.DeploymentFailed, e.now()
		bad.Error = "failed its health probe when a rollback switched to it: " + berth.ErrorMessage(perr)
		fails = append(fails, bad)
		e.goBG(func(bg context.Context) {
			stop := e.rt.Stop
			if cleanup {
				stop = e.rt.Remove
			}
			if err := stop(bg, bad.ID); err != nil {
				e.log.Warn("stop standby that failed its probe", "deployment", bad.ID, "err", err)
			}
		})
	}
	now := e.now()
	d = berth.Deployment{
		ID:        uuid.NewString(),
		AgentID:   a.ID,
		VersionID: to.ID,
		Version:   to.Version,
		BuildID:   to.BuildID,
		Status:    berth.DeploymentStarting,
		CreatedAt: now,
		UpdatedAt: now,
	}
	// Record the deployment before starting it, so that a crash mid-start
	// leaves a record the reconciler can close.
	if err := e.store.CreateDeployment(ctx, d); err != nil {
		return d, "", fails, err
	}
	inst, err := e.rt.Start(ctx, e.spec(a, to, d.ID))
	if err != nil {
		d.Status, d.Error, d.UpdatedAt = berth.DeploymentFailed, berth.ErrorMessage(err), e.now()
		if !isCode(err, berth.CodeTargetUnhealthy) {
			err = &berth.Error{Code: startFailureCode(err, berth.CodeTargetUnhealthy),
				Message: "target version " + to.Version + " could not start; the current version keeps serving: " + berth.ErrorMessage(err), Err: err}
		} else {
			err = &berth.Error{Code: berth.CodeTargetUnhealthy, Message: "target version " + to.Version + " failed its health check; the current version keeps serving: " + berth.ErrorMessage(err), Err: err}
		}
		return d, "", append(fails, d), err
	}
	d.URL = inst.URL
	return d, inst.URL, fails, nil
}

func ids(ds []berth.Deployment) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}
