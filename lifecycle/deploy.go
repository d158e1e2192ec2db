package lifecycle

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/artifact"
)

// DeployRequest is an upload (new agent) or update (new version) call.
type DeployRequest struct {
	// ZipPath is the uploaded package, spooled to disk by the caller. The
	// engine takes ownership: it moves or deletes the file.
	ZipPath string
	// AgentName overrides the card's name on upload; it must match it.
	AgentName string
	// Version is auto/patch/minor/major/x.y.z for an update.
	Version string
	// Strategy is how an update replaces the running version.
	Strategy Strategy
	// CleanupOld stops deployments beyond the standby policy.
	CleanupOld bool
	// Description, when non-nil, replaces the agent's description.
	Description *string
	// Async returns once the version is recorded, before it is built and
	// started; otherwise the call returns when it is active or failed.
	Async bool
	// IdempotencyKey makes a repeat return the first answer.
	IdempotencyKey string
}

// DeployResult is the outcome of an upload or update.
type DeployResult struct {
	AgentID         string   `json:"agent_id"`
	AgentName       string   `json:"agent_name"`
	Version         string   `json:"version"`
	PreviousVersion string   `json:"previous_version,omitempty"`
	BuildID         string   `json:"build_id"`
	DeploymentID    string   `json:"deployment_id"`
	OperationID     string   `json:"operation_id"`
	Strategy        Strategy `json:"update_strategy,omitempty"`
	// Status is "building" while an async deploy runs, then "running".
	Status  string   `json:"status"`
	Stopped []string `json:"stopped_deployments,omitempty"`
}

// Upload creates agent from a package and deploys its first version.
func (e *Engine) Upload(ctx context.Context, actor berth.User, req DeployRequest) (DeployResult, error) {
	defer os.Remove(req.ZipPath) // gone already if it was moved into place
	pkg, err := inspectFile(req.ZipPath, e.cfg.Limits)
	if err != nil {
		return DeployResult{}, err
	}
	name := pkg.Name
	if req.AgentName != "" && req.AgentName != pkg.Name {
		return DeployResult{}, berth.Errorf(berth.CodeInvalid, "agent_name %q does not match the name %q in AgentCard.json", req.AgentName, pkg.Name)
	}
	label, err := NextVersion("", "", pkg.Version)
	if err != nil {
		return DeployResult{}, err
	}
	now := e.now()
	a := berth.Agent{
		ID:          uuid.NewString(),
		Name:        name,
		OwnerID:     actor.ID,
		Description: pkg.Description,
		Card:        pkg.Card,
		CreatedAt:   now,
		UpdatedAt:   now,
	}
	if req.Description != nil {
		a.Description = *req.Description
	}
	if err := e.store.CreateAgent(ctx, a); err != nil {
		if !isCode(err, berth.CodeConflict) {
			return DeployResult{}, err
		}
		// A retried upload finds the agent its first attempt created.
		if prev, ok := e.uploadByKey(ctx, actor, name, req.IdempotencyKey); ok {
			want := berth.Operation{Kind: berth.OpUpload, Actor: actor.Username, IdempotencyKey: req.IdempotencyKey,
				RequestHash: deployHash(berth.OpUpload, req, pkg)}
			if err := sameRequest(prev, want); err != nil {
				return DeployResult{}, err
			}
			return replay[DeployResult](prev)
		}
		return DeployResult{}, berth.Errorf(berth.CodeConflict, "agent %q already exists; deploy a new version with PUT /api/v1/agents/{agent_id}/update", name)
	}
	res, err := e.deploy(ctx, actor, a, berth.OpUpload, label, pkg, req)
	if err != nil && res.OperationID == "" {
		// The upload never began: don't leave an empty agent behind to
		// show in listings and refuse a retried upload of its name.
		e.removeUnusedAgent(context.WithoutCancel(ctx), a)
	}
	return res, err
}

// removeUnusedAgent removes agent a, created by an upload whose operation
// never began, unless an operation was recorded for it after all (a begin
// that reported failure but committed, say). The usual reason the begin
// failed is that the store was unavailable, and then so is the delete: it
// is retried in the background until the store takes it, and if that never
// happens (the server stops, or the store stays unavailable for a lease)
// the next start's Reconcile removes the agent (see removeAbandoned).
func (e *Engine) removeUnusedAgent(ctx context.Context, a berth.Agent) {
	// leftAlone reports, and logs, a refusal that means the agent is not
	// empty after all, or is gone already: nothing more to do.
	leftAlone := func(err error) bool {
		if isCode(err, berth.CodeConflict) || isCode(err, berth.CodeNotFound) {
			e.log.Info("agent of a failed upload was used or removed meanwhile; leaving it", "agent_id", a.ID, "agent", a.Name, "err", err)
			return true
		}
		return false
	}
	err := e.store.DeleteUnusedAgent(ctx, a.ID)
	switch {
	case err == nil, leftAlone(err):
	case isCode(err, berth.CodeUnavailable):
		e.log.Warn("cannot remove the empty agent of a failed upload now; retrying in the background", "agent_id", a.ID, "agent", a.Name, "err", err)
		e.recordLater("removal of empty agent "+a.ID, func(ctx context.Context) error {
			if err := e.store.DeleteUnusedAgent(ctx, a.ID); err != nil && !leftAlone(err) {
				return err
			}
			return nil
		})
	default:
		e.log.Error("remove the empty agent of a failed upload", "agent_id", a.ID, "agent", a.Name, "err", err)
	}
}

// uploadByKey finds the upload of agent name that actor made with
// idempotency key key, within the idempotency window.
func (e *Engine) uploadByKey(ctx context.Context, actor berth.User, name, key string) (berth.Operation, bool) {
	if key == "" {
		return berth.Operation{}, false
	}
	a, err := e.store.AgentByName(ctx, name)
	if err != nil || a.OwnerID != actor.ID {
		return berth.Operation{}, false
	}
	// The upload is the agent's first operation, so it is among the
	// oldest; agents retried with a key are young, so a page suffices.
	ops, err := e.store.ListOperations(ctx, a.ID, 1000)
	if err != nil {
		return berth.Operation{}, false
	}
	since := e.now().Add(-e.cfg.IdempotencyTTL)
	for _, op := range ops {
		if op.Kind == berth.OpUpload && op.IdempotencyKey == key && op.StartedAt.After(since) {
			return op, true
		}
	}
	return berth.Operation{}, false
}

// Update deploys a new version of agent a.
func (e *Engine) Update(ctx context.Context, actor berth.User, a berth.Agent, req DeployRequest) (DeployResult, error) {
	defer os.Remove(req.ZipPath)
	pkg, err := inspectFile(req.ZipPath, e.cfg.Limits)
	if err != nil {
		return DeployResult{}, err
	}
	if pkg.Name != a.Name {
		return DeployResult{}, berth.Errorf(berth.CodeInvalid, "package is for agent %q (AgentCard.json name), not %q", pkg.Name, a.Name)
	}
	highest := ""
	if h, err := e.store.HighestVersion(ctx, a.ID); err == nil {
		highest = h.Version
	} else if !isCode(err, berth.CodeNotFound) {
		return DeployResult{}, err
	}
	label, err := NextVersion(highest, req.Version, pkg.Version)
	if err != nil {
		return DeployResult{}, err
	}
	return e.deploy(ctx, actor, a, berth.OpUpdate, label, pkg, req)
}

// deploy records version label of agent a, then builds, starts and
// activates it (in the background when req.Async).
func (e *Engine) deploy(ctx context.Context, actor berth.User, a berth.Agent, kind berth.OperationKind, label string, pkg artifact.Package, req DeployRequest) (DeployResult, error) {
	op := berth.Operation{AgentID: a.ID, Kind: kind, Actor: actor.Username, ToVersion: label, FromVersion: a.ActiveVersion,
		IdempotencyKey: req.IdempotencyKey, RequestHash: deployHash(kind, req, pkg)}
	prev, repeat, stop, err := e.begin(ctx, &op)
	if err != nil {
		return DeployResult{}, err
	}
	if repeat {
		return replay[DeployResult](prev)
	}
	// From here on every path closes op.
	now := e.now()
	v := berth.Version{
		ID:        uuid.NewString(),
		AgentID:   a.ID,
		Version:   label,
		State:     berth.VersionBuilding,
		Config:    pkg.Config,
		Card:      pkg.Card,
		Digest:    pkg.Digest,
		BuildID:   uuid.NewString(),
		CreatedAt: now,
	}
	b := berth.Build{ID: v.BuildID, AgentID: a.ID, VersionID: v.ID, Version: label, Status: berth.BuildQueued, CreatedAt: now, UpdatedAt: now}
	d := berth.Deployment{ID: uuid.NewString(), AgentID: a.ID, VersionID: v.ID, Version: label, BuildID: b.ID, Status: berth.DeploymentStarting, CreatedAt: now, UpdatedAt: now}
	res := DeployResult{
		AgentID: a.ID, AgentName: a.Name, Version: label, PreviousVersion: a.ActiveVersion,
		BuildID: b.ID, DeploymentID: d.ID, OperationID: op.ID, Status: "building",
	}
	if kind == berth.OpUpdate {
		res.Strategy = req.Strategy
	}
	if err := e.record(ctx, a, v, b, d, req); err != nil {
		stop()
		// Nothing half-written stays: the files go, and whatever records
		// were made say failed (if the version itself was never recorded,
		// the commit falls back to closing the operation alone).
		e.removeAll(e.packagePath(a.ID, v.Version), e.versionDir(a.ID, v.Version))
		now := e.now()
		b.Status, b.Error, b.UpdatedAt, b.FinishedAt = berth.BuildFailed, berth.ErrorMessage(err), now, &now
		if uErr := e.store.UpdateBuild(context.WithoutCancel(ctx), b); uErr != nil && !isCode(uErr, berth.CodeNotFound) {
			e.log.Warn("record build", "build", b.ID, "err", uErr)
		}
		d.Status, d.Error, d.UpdatedAt = berth.DeploymentFailed, berth.ErrorMessage(err), now
		c := berth.Commit{Versions: []berth.VersionChange{{VersionID: v.ID, State: berth.VersionFailed}}, Deployments: []berth.Deployment{d}}
		return res, e.commitFailure(ctx, c, &op, err)
	}
	if req.Async {
		e.goBG(func(bg context.Context) {
			defer stop()
			_, _ = e.rollout(bg, actor, a, v, b, d, &op, req, res)
		})
		return res, nil
	}
	defer stop()
	return e.rollout(context.WithoutCancel(ctx), actor, a, v, b, d, &op, req, res)
}

// record writes the new version's records and files.
func (e *Engine) record(ctx context.Context, a berth.Agent, v berth.Version, b berth.Build, d berth.Deployment, req DeployRequest) error {
	if err := e.store.CreateVersion(ctx, v); err != nil {
		if isCode(err, berth.CodeConflict) {
			return berth.Errorf(berth.CodeConflict, "version %s of %s already exists; versions are immutable", v.Version, a.Name)
		}
		return err
	}
	if err := e.store.CreateBuild(ctx, b); err != nil {
		return err
	}
	if err := e.store.CreateDeployment(ctx, d); err != nil {
		return err
	}
	if req.Description != nil && *req.Description != a.Description {
		a.Description = *req.Description
		if err := e.store.UpdateAgentMeta(ctx, a); err != nil {
			return err
		}
	}
	// Keep the package (immutable, for rollback and download) and unpack it.
	pkgPath := e.packagePath(a.ID, v.Version)
	if err := os.MkdirAll(filepath.Dir(pkgPath), 0o755); err != nil {
		return berth.StorageError(err)
	}
	if err := moveDurably(req.ZipPath, pkgPath); err != nil {
		return berth.StorageError(err)
	}
	dir := e.versionDir(a.ID, v.Version)
	// A directory left by an attempt that crashed before recording its
	// version cannot belong to a live version (labels are never reused).
	e.removeAll(dir)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return berth.StorageError(err)
	}
	f, err := os.Open(pkgPath)
	if err != nil {
		return berth.StorageError(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return berth.StorageError(err)
	}
	if err := artifact.Unpack(f, st.Size(), dir, e.cfg.Limits); err != nil {
		return err
	}
	return nil
}

// rollout builds, starts and health-checks version v, then makes it active
// in one commit. On any failure the version and its deployment are marked
// failed and the current version keeps serving.
func (e *Engine) rollout(ctx context.Context, actor berth.User, a berth.Agent, v berth.Version, b berth.Build, d berth.Deployment, op *berth.Operation, req DeployRequest, res DeployResult) (DeployResult, error) {
	defer e.releaseOnPanic(ctx, op)
	start := time.Now()
	fail := func(err error) (DeployResult, error) {
		now := e.now()
		if b.Status != berth.BuildSuccess && b.Status != berth.BuildFailed {
			b.Status = berth.BuildFailed
			b.Error = berth.ErrorMessage(err)
			b.FinishedAt = &now
		}
		b.UpdatedAt = now
		d.Status, d.UpdatedAt = berth.DeploymentFailed, now
		if d.Error == "" {
			d.Error = berth.ErrorMessage(err)
		}
		c := berth.Commit{
			Versions:    []berth.VersionChange{{VersionID: v.ID, State: berth.VersionFailed}},
			Deployments: []berth.Deployment{d},
		}
		if err := e.store.UpdateBuild(context.WithoutCancel(ctx), b); err != nil {
			e.log.Error("record build", "build", b.ID, "err", err)
			if isCode(err, berth.CodeUnavailable) {
				e.recordLater("record build "+b.ID, func(ctx context.Context) error { return e.store.UpdateBuild(ctx, b) })
			}
		}
		err = e.commitFailure(ctx, c, op, err)
		e.log.Warn("deploy failed; current version keeps serving", "actor", actor.Username, "agent", a.Name,
			"version", v.Version, "current", a.ActiveVersion, "operation", op.ID, "err", err, "duration", time.Since(start))
		return res, err
	}

	// Build.
	dir := e.versionDir(a.ID, v.Version)
	b.Status, b.UpdatedAt = berth.BuildBuilding, e.now()
	if err := e.store.UpdateBuild(ctx, b); err != nil {
		return fail(err)
	}
	if len(v.Config.Build) > 0 {
		if e.build == nil {
			return fail(berth.Errorf(berth.CodeBuildFailed, "this server cannot run build commands"))
		}
		logs, err := e.build(ctx, dir, v.Config.Build, buildEnv(v.Config), e.cfg.BuildTimeout, e.cfg.BuildLogMax)
		b.Logs = string(logs)
		if err != nil {
			now := e.now()
			b.Status, b.Error, b.FinishedAt = berth.BuildFailed, berth.ErrorMessage(err), &now
			d.Error = "build failed"
			return fail(err)
		}
	}
	now := e.now()
	b.Status, b.FinishedAt, b.UpdatedAt = berth.BuildSuccess, &now, now
	if err := e.store.UpdateBuild(ctx, b); err != nil {
		return fail(err)
	}

	// Start and health-gate.
	inst, err := e.rt.Start(ctx, e.spec(a, v, d.ID))
	if err != nil {
		d.Error = berth.ErrorMessage(err)
		return fail(&berth.Error{Code: startFailureCode(err, berth.CodeDeployFailed),
			Message: "version " + v.Version + " failed to start; " + currentNote(a) + ": " + berth.ErrorMessage(err), Err: err})
	}
	d.URL = inst.URL

	// Decide what stops, then switch in one commit.
	ds, err := e.store.CurrentDeployments(ctx, a.ID)
	if err != nil {
		_ = e.rt.Stop(ctx, d.ID)
		return fail(err)
	}
	versions := map[string]berth.Version{v.ID: v}
	for _, x := range ds {
		if _, ok := versions[x.VersionID]; !ok && x.Status.Live() {
			if xv, err := e.store.VersionByID(ctx, x.VersionID); err == nil {
				versions[x.VersionID] = xv
			}
		}
	}
	retire := Retire(ds, versions, v.ID, a.ActiveVersionID, req.Strategy, req.CleanupOld, e.cfg.Standby)
	now = e.now()
	d.Status, d.UpdatedAt = berth.DeploymentRunning, now
	res.Status = "running"
	res.Stopped = ids(retire)
	e.finish(op, res, nil)
	id := v.ID
	c := berth.Commit{
		AgentID:      a.ID,
		SetActive:    &id,
		ExpectActive: a.ActiveVersionID,
		Versions:     []berth.VersionChange{{VersionID: v.ID, State: berth.VersionReady, ActivatedAt: &now}},
		Deployments:  []berth.Deployment{d},
		Operation:    op,
	}
	for _, x := range retire {
		x.Status, x.UpdatedAt, x.StopAt = berth.DeploymentStopped, now, nil
		c.Deployments = append(c.Deployments, x)
	}
	if err := e.store.Commit(ctx, c); err != nil {
		// Traffic has not moved: stop what would otherwise run unrecorded.
		_ = e.rt.Stop(ctx, d.ID)
		return fail(&berth.Error{Code: berth.ErrorCode(err),
			Message: "version " + v.Version + " started but could not be made active; " + currentNote(a) + ": " + berth.ErrorMessage(err), Err: err})
	}
	drain := e.router.Route(a.Name, inst.URL)
	e.log.Info("deployed", "actor", actor.Username, "agent", a.Name, "version", v.Version, "previous", a.ActiveVersion,
		"strategy", req.Strategy, "operation", op.ID, "duration", time.Since(start))
	if len(retire) > 0 {
		// Stop what the new version replaced once its requests drained;
		// the store already says they are stopped.
		stopRetired := func(bg context.Context) {
			dctx, cancel := context.WithTimeout(bg, 30*time.Second)
			defer cancel()
			if err := drain(dctx); err != nil {
				e.log.Warn("drain previous version", "agent", a.Name, "err", err)
			}
			for _, x := range retire {
				if err := e.rt.Stop(context.WithoutCancel(bg), x.ID); err != nil {
					e.log.Warn("stop retired deployment", "deployment", x.ID, "err", err)
				}
			}
		}
		e.goBG(stopRetired)
	}
	return res, nil
}

// startFailureCode is the code of an operation whose deployment could not
// start with err: def (the version is at fault), except when the runtime
// said it could not run anything right now (no free port, shutting down),
// which stays CodeUnavailable so that the caller knows to retry later.
func startFailureCode(err error, def berth.Code) berth.Code {
	if isCode(err, berth.CodeUnavailable) {
		return berth.CodeUnavailable
	}
	return def
}

func currentNote(a berth.Agent) string {
	if a.ActiveVersion == "" {
		return "the agent has no version serving yet"
	}
	return "version " + a.ActiveVersion + " keeps serving"
}

// buildEnv is the environment of a build command: enough of the server's to
// find toolchains and their caches, plus the version's own env.
func buildEnv(c berth.Config) []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "GOPATH", "GOCACHE", "GOMODCACHE", "GOPROXY", "GOFLAGS", "GOTOOLCHAIN", "LANG"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	for k, v := range c.Env {
		env = append(env, k+"="+v)
	}
	return env
}

// inspectFile validates the package at path.
func inspectFile(path string, lim artifact.Limits) (artifact.Package, error) {
	f, err := os.Open(path)
	if err != nil {
		return artifact.Package{}, berth.StorageError(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return artifact.Package{}, berth.StorageError(err)
	}
	return artifact.Inspect(f, st.Size(), lim)
}

// moveDurably renames src to dst, copying across file systems, and syncs the
// result so that a recorded version never points at a missing package.
func moveDurably(src, dst string) error {
	if err := os.Rename(src, dst); err != nil {
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		tmp := dst + ".tmp"
		out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			os.Remove(tmp)
			return err
		}
		if err := out.Close(); err != nil {
			os.Remove(tmp)
			return err
		}
		if err := os.Rename(tmp, dst); err != nil {
			return err
		}
	}
	f, err := os.Open(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(dst)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
