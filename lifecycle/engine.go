package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/artifact"
)

// Router points an agent's traffic at a deployment. The built-in proxy
// implements it (and the Kubernetes Service will).
type Router interface {
	// Route makes url the agent's active upstream, atomically, and returns a
	// function that waits until requests still running on the previous
	// upstream have finished.
	Route(agentName, url string) (drainPrevious func(context.Context) error)
	// Unroute removes the agent's route; its requests then get 404.
	Unroute(agentName string)
}

// BuildFunc runs a package's build command in dir and returns its output.
type BuildFunc func(ctx context.Context, dir string, argv []string, env []string, timeout time.Duration, maxLog int) ([]byte, error)

// Config is the engine's policy. Zero fields take the defaults of
// DefaultConfig.
type Config struct {
	// DataDir holds packages/ (the uploaded zips) and versions/ (unpacked,
	// built version folders).
	DataDir string
	// Limits bound what an uploaded package may hold.
	Limits artifact.Limits
	// BuildTimeout bounds a package's build command.
	BuildTimeout time.Duration
	// BuildLogMax is how many bytes of build output are kept.
	BuildLogMax int
	// Grace is how long the version a rollback moved away from stays warm,
	// so that a mistaken rollback can be undone instantly.
	Grace time.Duration
	// Standby is how many earlier versions a blue-green update keeps warm.
	Standby int
	// Lease is how long an operation holds its agent's guard before it must
	// renew it; a server that dies mid-operation frees the agent after it.
	Lease time.Duration
	// IdempotencyTTL is how long Idempotency-Key answers are kept.
	IdempotencyTTL time.Duration
	// JanitorInterval is how often expired grace periods are enforced.
	JanitorInterval time.Duration
	// SharedStore says other servers use the same store (PostgreSQL with
	// several replicas). Start-up then closes only operations whose lease
	// expired, not every running one: the others may be another replica's.
	SharedStore bool
	// NoAutoRollback turns off automatic rollback. By default, when the
	// active deployment of an agent crashes and the runtime gives up
	// restarting it (reports it failed), the engine rolls the agent back
	// to its last known good version, as an auto_rollback operation by
	// the actor SystemActor.
	NoAutoRollback bool
}

// SystemActor is the actor of operations Berth starts by itself.
const SystemActor = "berth"

// DefaultConfig returns the production defaults.
func DefaultConfig() Config {
	return Config{
		Limits:          artifact.DefaultLimits(),
		BuildTimeout:    10 * time.Minute,
		BuildLogMax:     256 << 10,
		Grace:           60 * time.Second,
		Standby:         1,
		Lease:           2 * time.Minute,
		IdempotencyTTL:  24 * time.Hour,
		JanitorInterval: time.Second,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Limits == (artifact.Limits{}) {
		c.Limits = d.Limits
	}
	if c.BuildTimeout <= 0 {
		c.BuildTimeout = d.BuildTimeout
	}
	if c.BuildLogMax <= 0 {
		c.BuildLogMax = d.BuildLogMax
	}
	if c.Grace < 0 {
		c.Grace = 0
	} else if c.Grace == 0 {
		c.Grace = d.Grace
	}
	if c.Standby < 0 {
		c.Standby = 0
	}
	if c.Lease <= 0 {
		c.Lease = d.Lease
	}
	if c.IdempotencyTTL <= 0 {
		c.IdempotencyTTL = d.IdempotencyTTL
	}
	if c.JanitorInterval <= 0 {
		c.JanitorInterval = d.JanitorInterval
	}
	return c
}

// Engine executes lifecycle operations: upload, update, rollback, delete.
// Every operation on an agent holds that agent's guard in the store, so
// there is one at a time per agent, across server replicas too.
type Engine struct {
	cfg    Config
	store  berth.Store
	rt     berth.Runtime
	router Router
	build  BuildFunc
	log    *slog.Logger
	now    func() time.Time

	// bg is the context of work that outlives a request (async deploys and
	// rollbacks); closing the engine cancels it and waits for that work.
	bg       context.Context
	cancelBG context.CancelFunc
	wg       sync.WaitGroup
	// bgMu orders tryGoBG against Close, so no work is added once Close
	// waits.
	bgMu sync.Mutex
}

// New returns an engine. build may be nil if no package needs building.
func New(cfg Config, store berth.Store, rt berth.Runtime, router Router, build BuildFunc, log *slog.Logger) *Engine {
	if log == nil {
		log = slog.Default()
	}
	bg, cancel := context.WithCancel(context.Background())
	return &Engine{
		cfg:      cfg.withDefaults(),
		store:    store,
		rt:       rt,
		router:   router,
		build:    build,
		log:      log,
		now:      func() time.Time { return time.Now().UTC() },
		bg:       bg,
		cancelBG: cancel,
	}
}

// Close cancels background operations and waits for them to finish
// recording their outcome.
func (e *Engine) Close() {
	e.bgMu.Lock()
	e.cancelBG()
	e.bgMu.Unlock()
	e.wg.Wait()
}

// tryGoBG is goBG for work not started by a request (which could arrive
// while Close waits): it reports false, running nothing, once the engine
// is closing.
func (e *Engine) tryGoBG(f func(ctx context.Context)) bool {
	e.bgMu.Lock()
	defer e.bgMu.Unlock()
	if e.bg.Err() != nil {
		return false
	}
	e.goBG(f)
	return true
}

// go runs f in the background, tracked so that Close waits for it.
func (e *Engine) goBG(f func(ctx context.Context)) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		f(e.bg)
	}()
}

func (e *Engine) packagePath(agentID, label string) string {
	return filepath.Join(e.cfg.DataDir, "packages", agentID, label+".zip")
}

func (e *Engine) versionDir(agentID, label string) string {
	return filepath.Join(e.cfg.DataDir, "versions", agentID, label)
}

// PackagePath returns where version label's uploaded zip is kept.
func (e *Engine) PackagePath(agentID, label string) string { return e.packagePath(agentID, label) }

// begin starts operation op on its agent, taking the agent's guard. If the
// idempotency key names an earlier operation that op repeats, that one is
// returned with repeat=true and nothing is started; if op is another
// request reusing the key, it is refused (see sameRequest). The returned stop function ends the
// lease renewal and must be called once the operation is committed.
func (e *Engine) begin(ctx context.Context, op *berth.Operation) (prev berth.Operation, repeat bool, stop func(), err error) {
	now := e.now()
	op.ID = uuid.NewString()
	op.Status = berth.OpRunning
	op.StartedAt = now
	prev, found, err := e.store.BeginOperation(ctx, *op, now.Add(e.cfg.Lease), now.Add(-e.cfg.IdempotencyTTL))
	if err != nil {
		return berth.Operation{}, false, nil, err
	}
	if found {
		if err := sameRequest(prev, *op); err != nil {
			return berth.Operation{}, false, nil, err
		}
		return prev, true, func() {}, nil
	}
	// Renew the lease while the operation runs, so that a long build keeps
	// the guard but a dead server's guard expires.
	done := make(chan struct{})
	var once sync.Once
	go func() {
		t := time.NewTicker(e.cfg.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := e.store.RenewLease(context.WithoutCancel(ctx), op.AgentID, op.ID, e.now().Add(e.cfg.Lease)); err != nil {
					e.log.Warn("renew operation lease", "operation", op.ID, "err", err)
				}
			}
		}
	}()
	return berth.Operation{}, false, func() { once.Do(func() { close(done) }) }, nil
}

// finish fills op's closing fields from result/err.
func (e *Engine) finish(op *berth.Operation, result any, err error) {
	now := e.now()
	op.FinishedAt = &now
	op.DurationMS = now.Sub(op.StartedAt).Milliseconds()
	if err != nil {
		op.Status = berth.OpFailed
		op.ErrorCode = berth.ErrorCode(err)
		op.Error = berth.ErrorMessage(err)
		if op.ErrorCode == berth.CodeInternal {
			op.Error = err.Error()
		}
		return
	}
	op.Status = berth.OpSucceeded
	if result != nil {
		if b, mErr := json.Marshal(result); mErr == nil {
			op.Result = b
		}
	}
}

// commitFailure records a failed operation and the given state changes,
// releasing the agent's guard, and returns cause naming the operation. It
// never gives up silently: a store error is logged; a store that is only
// unavailable for now (its database locked by another process, a failover)
// gets the record later, from the background (see recordLater); otherwise
// the lease expiry frees the agent.
func (e *Engine) commitFailure(ctx context.Context, c berth.Commit, op *berth.Operation, cause error) error {
	e.finish(op, nil, cause)
	// The commit owns a copy: a record retried later must not see the
	// caller's operation change.
	rec := *op
	c.AgentID = op.AgentID
	c.Operation = &rec
	c.SetActive = nil
	if err := e.store.Commit(context.WithoutCancel(ctx), c); err != nil {
		if isCode(err, berth.CodeUnavailable) {
			e.log.Warn("cannot record failed operation now; retrying in the background", "operation", op.ID, "agent", op.AgentID, "err", err)
			e.recordLater("record failed operation "+op.ID, func(ctx context.Context) error { return e.store.Commit(ctx, c) })
		} else {
			e.log.Error("record failed operation", "operation", op.ID, "agent", op.AgentID, "err", err)
			// Try once more with the operation alone so the guard is released.
			if err := e.store.Commit(context.WithoutCancel(ctx), berth.Commit{AgentID: op.AgentID, Operation: &rec}); err != nil {
				e.log.Error("release operation guard", "operation", op.ID, "err", err)
			}
		}
	}
	// The caller gets the caller-safe message; the audit trail keeps the cause.
	return &berth.Error{Code: op.ErrorCode, Message: berth.ErrorMessage(cause), OperationID: op.ID, Err: cause}
}

// Bounds of recordLater's pause between attempts.
const (
	recordRetryFirst = 50 * time.Millisecond
	recordRetryMax   = time.Second
)

// recordLater retries write, which just failed with CodeUnavailable, in the
// background until the store takes it. Without it, an operation that
// failed while the database was locked would stay "running" and hold its
// agent's guard until its lease ran out, refusing every operation on the
// agent long after the lock was gone. It gives up when write fails
// otherwise (say, the guard was taken over: the write is fenced), when a
// lease has passed (the janitor then closes the operation) or when the
// engine closes (the next start's reconciler does).
func (e *Engine) recordLater(what string, write func(context.Context) error) {
	deadline := time.Now().Add(e.cfg.Lease)
	e.goBG(func(bg context.Context) {
		delay := recordRetryFirst
		for attempt := 1; ; attempt++ {
			t := time.NewTimer(delay)
			select {
			case <-bg.Done():
				t.Stop()
				e.log.Warn("not recorded: the server is stopping", "what", what)
				return
			case <-t.C:
			}
			err := write(bg)
			switch {
			case err == nil:
				e.log.Info("recorded once the store was available again", "what", what, "attempts", attempt)
				return
			case !isCode(err, berth.CodeUnavailable):
				e.log.Error("not recorded", "what", what, "err", err)
				return
			case time.Now().After(deadline):
				e.log.Error("not recorded: the store stayed unavailable", "what", what, "err", err)
				return
			}
			delay = min(2*delay, recordRetryMax)
		}
	})
}

// releaseOnPanic, deferred by every operation, records a panicking
// operation as failed and releases its agent's guard before the panic goes
// on, so that no agent stays locked until the lease runs out. (If the
// operation had already committed, the fenced Commit refuses and nothing is
// written.)
func (e *Engine) releaseOnPanic(ctx context.Context, op *berth.Operation) {
	if r := recover(); r != nil {
		e.log.Error("operation panicked", "operation", op.ID, "kind", op.Kind, "agent_id", op.AgentID, "panic", r)
		_ = e.commitFailure(ctx, berth.Commit{}, op, fmt.Errorf("operation panicked: %v", r))
		panic(r)
	}
}

// replay turns an earlier operation found by idempotency key into the
// answer it gave: its result, or its error.
func replay[T any](op berth.Operation) (T, error) {
	var out T
	switch op.Status {
	case berth.OpRunning:
		return out, &berth.Error{Code: berth.CodeOperationInProgress, OperationID: op.ID,
			Message: fmt.Sprintf("operation %s with this Idempotency-Key is still running", op.ID)}
	case berth.OpSucceeded:
		if err := json.Unmarshal(op.Result, &out); err != nil {
			return out, fmt.Errorf("decode stored result of operation %s: %w", op.ID, err)
		}
		return out, nil
	}
	code := op.ErrorCode
	if code == "" {
		code = berth.CodeInternal
	}
	return out, &berth.Error{Code: code, Message: op.Error, OperationID: op.ID}
}

// OnStatus is the runtime's callback for deployments that crash, restart or
// give up on their own; it records the new status.
func (e *Engine) OnStatus(deploymentID string, status berth.DeploymentStatus, restarts int, msg string) {
	ctx := context.Background()
	d, err := e.store.DeploymentByID(ctx, deploymentID)
	if err != nil {
		e.log.Warn("status of unknown deployment", "deployment", deploymentID, "status", status, "err", err)
		return
	}
	if !d.Status.Live() {
		return // stopped or failed on purpose; the runtime is late
	}
	d.Status, d.Restarts, d.UpdatedAt = status, restarts, e.now()
	if msg != "" {
		d.Error = msg
	}
	if err := e.store.UpdateDeployment(ctx, d); err != nil {
		e.log.Error("record deployment status", "deployment", deploymentID, "err", err)
	}
	// A deployment back to running after a restart is good news; a
	// crash or giving up is not.
	level := slog.LevelWarn
	if status == berth.DeploymentRunning {
		level = slog.LevelInfo
	}
	e.log.Log(ctx, level, "deployment status changed", "deployment", deploymentID, "agent", d.AgentID, "version", d.Version,
		"status", status, "restarts", restarts, "msg", msg)
	if status != berth.DeploymentFailed || e.cfg.NoAutoRollback {
		return
	}
	// Only the active version's deployment matters: without it the agent
	// is down until someone notices. A standby that fails just stops.
	a, err := e.store.AgentByID(ctx, d.AgentID)
	if err != nil {
		e.log.Error("auto-rollback: read agent", "agent_id", d.AgentID, "err", err)
		return
	}
	if a.ActiveVersionID == d.VersionID {
		e.tryGoBG(func(bg context.Context) { e.autoRollback(bg, a, d) })
	}
}

// autoRollback rolls agent a back to its last known good version because
// d, the active version's deployment, failed for good. It goes through
// Rollback like any rollback (the agent's guard, a fresh decision under
// it, the health gate, one commit), so it cannot race an operation a user
// started meanwhile.
func (e *Engine) autoRollback(ctx context.Context, a berth.Agent, d berth.Deployment) {
	reason := fmt.Sprintf("automatic: deployment %s of %s crashed and did not come back after %d restarts: %s",
		d.ID, d.Version, d.Restarts, d.Error)
	res, err := e.Rollback(ctx, berth.User{Username: SystemActor}, a, RollbackRequest{Reason: reason, kind: berth.OpAutoRollback})
	if err != nil {
		e.log.Error("auto-rollback failed; the agent has no healthy deployment", "agent", a.Name, "version", d.Version,
			"deployment", d.ID, "err", err)
		return
	}
	e.log.Warn("auto-rollback", "agent", a.Name, "from", res.From, "to", res.To, "operation", res.OperationID)
}

// spec builds the runtime spec of a deployment of version v of agent a.
func (e *Engine) spec(a berth.Agent, v berth.Version, deploymentID string) berth.DeploymentSpec {
	return berth.DeploymentSpec{
		DeploymentID: deploymentID,
		AgentID:      a.ID,
		AgentName:    a.Name,
		Version:      v.Version,
		Dir:          e.versionDir(a.ID, v.Version),
		Config:       v.Config,
	}
}

// isCode reports whether err carries code c.
func isCode(err error, c berth.Code) bool {
	var be *berth.Error
	return errors.As(err, &be) && be.Code == c
}

// removeAll removes paths, logging failures (cleanup is best effort: the
// data they hold is no longer referenced).
func (e *Engine) removeAll(paths ...string) {
	for _, p := range paths {
		if err := os.RemoveAll(p); err != nil {
			e.log.Warn("remove files", "path", p, "err", err)
		}
	}
}

func (e *Engine) versionDirRoot(agentID string) string {
	return filepath.Join(e.cfg.DataDir, "versions", agentID)
}

func (e *Engine) packageDirRoot(agentID string) string {
	return filepath.Join(e.cfg.DataDir, "packages", agentID)
}
