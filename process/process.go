// Package process is Berth's embedded berth.Runtime: every deployment is a
// child process of the server listening on its own port on 127.0.0.1,
// supervised (restarted with backoff on the same port if it dies) and
// stopped with its whole process group.
//
// Each deployment's combined stdout and stderr go to LogDir/<id>.log, which
// outlives the deployment (logs are forensics). A log file that would grow
// past Options.MaxLogBytes is rotated to <id>.log.1 (replacing the previous
// generation), so one deployment keeps at most about twice that on disk.
// Per-deployment runtime files (the child's TMPDIR) live in RunDir/<id>/ and
// are deleted by Remove.
package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth"
)

// Defaults for zero Options fields.
const (
	DefaultReadyTimeout      = 30 * time.Second
	DefaultStopTimeout       = 10 * time.Second
	DefaultProbeTimeout      = 2 * time.Second
	DefaultRestartBackoff    = 250 * time.Millisecond
	DefaultMaxRestartBackoff = 30 * time.Second
	DefaultMaxFailedRestarts = 5
	DefaultMaxLogBytes       = 10 << 20
)

const (
	// firstPollDelay and maxPollDelay bound the readiness poll interval: a
	// cold rollback waits on this loop, so it starts at a few milliseconds
	// and backs off to keep a slow starter from costing CPU.
	firstPollDelay = 5 * time.Millisecond
	maxPollDelay   = 100 * time.Millisecond
)

// idRE is what a deployment id must look like: it names files and
// directories, so it must not contain a path separator or be "." or "..".
var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Options configures a Runtime. RunDir and LogDir are required; every other
// zero field takes the default named in its comment.
type Options struct {
	// RunDir holds per-deployment runtime files in RunDir/<deploymentID>/,
	// which is also the child's TMPDIR, and in RunDir/.pgids/ the process
	// group of each live deployment. When the server dies, the kernel kills
	// each deployment's direct child (Pdeathsig) but not what that child
	// started; the next New on the same RunDir kills those leftovers.
	RunDir string
	// LogDir holds LogDir/<deploymentID>.log, the captured output. Remove
	// keeps it.
	LogDir string
	// DefaultReadyTimeout bounds the wait for health when the spec's
	// Config.ReadyTimeout is 0 (default 30s).
	DefaultReadyTimeout time.Duration
	// StopTimeout is how long a stop waits after SIGTERM before SIGKILL
	// (default 10s).
	StopTimeout time.Duration
	// ProbeTimeout bounds one Probe request (default 2s).
	ProbeTimeout time.Duration
	// RestartBackoff is the delay before the first restart of a crashed
	// process (default 250ms); it doubles on each further restart up to
	// MaxRestartBackoff (default 30s), and starts over once a process has
	// stayed up for MaxRestartBackoff.
	RestartBackoff    time.Duration
	MaxRestartBackoff time.Duration
	// MaxFailedRestarts is how many restarts in a row may fail to become
	// healthy before the runtime gives up and reports DeploymentFailed
	// (default 5). A negative value disables restarts: the first crash is
	// reported as failed.
	MaxFailedRestarts int
	// MaxLogBytes caps one log file before it is rotated (default 10 MiB).
	MaxLogBytes int64
	// OnStatus, if set, is told when a running deployment changes status on
	// its own: DeploymentStarting when it died and is being restarted,
	// DeploymentRunning when a restart became healthy, DeploymentFailed when
	// the runtime gave up. Calls for one deployment are made in order from
	// its supervising goroutine, and none are made after Stop or Remove of
	// that deployment has returned. So OnStatus must not call Stop, Remove
	// or Close synchronously for a Starting or Running report (that would
	// deadlock); by the time of a Failed report the deployment is already
	// gone from the runtime, and calling Remove there is fine.
	OnStatus berth.StatusFunc
	// Logger receives the runtime's own log (default slog.Default()).
	Logger *slog.Logger
}

// Runtime runs deployments as supervised child processes. It implements
// berth.Runtime and is safe for concurrent use.
type Runtime struct {
	opts   Options
	log    *slog.Logger
	client *http.Client

	// listen opens the probe listeners that pick ports (net.Listen; tests
	// replace it to run out of ports).
	listen func(network, address string) (net.Listener, error)

	mu     sync.Mutex
	deps   map[string]*deployment
	ports  map[int]string // ports held by live deployments, also across restarts
	closed bool
}

var _ berth.Runtime = (*Runtime)(nil)

// deployment is the runtime's record of one deployment, from Start until it
// is stopped, fails to start, or is given up on.
type deployment struct {
	id           string
	spec         berth.DeploymentSpec
	dir          string   // absolute working directory
	path         string   // resolved executable
	argv         []string // as given in the spec
	env          []string
	port         int
	url          string
	healthURL    string
	readyTimeout time.Duration
	runDir       string
	sink         *logSink
	log          *slog.Logger

	stopOnce sync.Once
	stop     chan struct{} // closed to ask for a stop
	done     chan struct{} // closed once nothing of it runs and it left the map

	// running is set once Start succeeded: the deployment is supervised.
	running atomic.Bool
	mu      sync.Mutex
	cur     *proc // the live process; nil while restarting
}

// New returns a Runtime that keeps its files under opts.RunDir and
// opts.LogDir, creating them if needed. Only one Runtime may use a RunDir at
// a time: New kills processes that a previous Runtime on the same RunDir
// left behind when its server died (see Options.RunDir).
func New(opts Options) (*Runtime, error) {
	if opts.RunDir == "" || opts.LogDir == "" {
		return nil, berth.Errorf(berth.CodeInvalid, "process runtime needs a run directory and a log directory")
	}
	for _, p := range []*string{&opts.RunDir, &opts.LogDir} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, &berth.Error{Code: berth.CodeInternal, Message: "cannot resolve runtime directory", Err: err}
		}
		// Children get paths under these (TMPDIR), so they must not depend
		// on the server's working directory.
		*p = abs
		if err := os.MkdirAll(abs, 0o750); err != nil {
			return nil, &berth.Error{Code: berth.CodeInternal, Message: "cannot create runtime directory", Err: err}
		}
	}
	setDefault(&opts.DefaultReadyTimeout, DefaultReadyTimeout)
	setDefault(&opts.StopTimeout, DefaultStopTimeout)
	setDefault(&opts.ProbeTimeout, DefaultProbeTimeout)
	setDefault(&opts.RestartBackoff, DefaultRestartBackoff)
	setDefault(&opts.MaxRestartBackoff, DefaultMaxRestartBackoff)
	opts.MaxRestartBackoff = max(opts.MaxRestartBackoff, opts.RestartBackoff)
	setDefault(&opts.MaxFailedRestarts, DefaultMaxFailedRestarts)
	setDefault(&opts.MaxLogBytes, DefaultMaxLogBytes)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	transport := &http.Transport{
		// Agents are on loopback: never go through an HTTP proxy from the
		// server's environment.
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	r := &Runtime{
		opts: opts,
		log:  opts.Logger,
		client: &http.Client{
			Transport: transport,
			// Healthy means 2xx from the health path itself; a redirect
			// elsewhere is not followed and so does not count.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		listen: net.Listen,
		deps:   make(map[string]*deployment),
		ports:  make(map[int]string),
	}
	r.killStale()
	return r, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// checkID rejects deployment ids that cannot safely name files.
func checkID(id string) error {
	if !idRE.MatchString(id) {
		return berth.Errorf(berth.CodeInvalid, "invalid deployment id %q", id)
	}
	return nil
}

func (r *Runtime) logPath(id string) string { return filepath.Join(r.opts.LogDir, id+".log") }
func (r *Runtime) runPath(id string) string { return filepath.Join(r.opts.RunDir, id) }

// Start launches spec on a free port of 127.0.0.1 and returns once its
// health path answers 2xx. A process that exits first fails at once, one
// that is not healthy within the ready timeout is killed; both are
// CodeTargetUnhealthy and quote its last output lines. A command that
// cannot be run at all is CodeDeployFailed, as is a start canceled by ctx
// or by Stop. Starting an id that is already live is CodeConflict. A failed
// Start leaves nothing running (its log and run directory stay).
//
// The port is chosen before the child binds it, so another process on the
// host can take it in between. Where the runtime can see who listens (on
// Linux, through /proc) a health answer counts only if it comes from the
// deployment's own processes: a port found taken by another process is
// given up and the start tried again on a fresh port, up to 3 ports in all
// within the ready timeout. No free port at all, or every port tried being
// taken, is CodeUnavailable: the host, not the version, is at fault.
func (r *Runtime) Start(ctx context.Context, spec berth.DeploymentSpec) (berth.Instance, error) {
	d, err := r.prepare(spec)
	if err != nil {
		return berth.Instance{}, err
	}
	// The log is open before d is visible to other calls (Logs reads
	// d.sink); a Start that loses the race for the id closes it unused.
	d.sink, err = openLogSink(r.logPath(d.id), r.opts.MaxLogBytes)
	if err != nil {
		return berth.Instance{}, &berth.Error{Code: berth.CodeInternal, Message: "cannot open log file", Err: err}
	}
	if err := r.register(d); err != nil {
		d.sink.Close()
		return berth.Instance{}, err
	}
	inst, err := r.start(ctx, d)
	if err != nil {
		r.finish(d)
		return berth.Instance{}, err
	}
	return inst, nil
}

// prepare validates spec and works out everything about the child except
// its port.
func (r *Runtime) prepare(spec berth.DeploymentSpec) (*deployment, error) {
	id := spec.DeploymentID
	if err := checkID(id); err != nil {
		return nil, err
	}
	if len(spec.Config.Run) == 0 {
		return nil, berth.Errorf(berth.CodeDeployFailed, "deployment %s has no run command", id)
	}
	if spec.Dir == "" {
		return nil, berth.Errorf(berth.CodeInvalid, "deployment %s has no package directory", id)
	}
	dir, err := filepath.Abs(spec.Dir)
	if err != nil {
		return nil, &berth.Error{Code: berth.CodeInvalid, Message: "invalid package directory", Err: err}
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, &berth.Error{Code: berth.CodeDeployFailed, Message: fmt.Sprintf("package directory of deployment %s is missing", id), Err: err}
	}
	readyTimeout := time.Duration(spec.Config.ReadyTimeout)
	if readyTimeout <= 0 {
		readyTimeout = r.opts.DefaultReadyTimeout
	}
	return &deployment{
		id:           id,
		spec:         spec,
		dir:          dir,
		argv:         slices.Clone(spec.Config.Run),
		readyTimeout: readyTimeout,
		runDir:       r.runPath(id),
		log:          r.log.With("deployment", id, "agent", spec.AgentName, "version", spec.Version),
		stop:         make(chan struct{}),
		done:         make(chan struct{}),
	}, nil
}

// register claims d's id and a port for it.
func (r *Runtime) register(d *deployment) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return berth.Errorf(berth.CodeUnavailable, "process runtime is closed")
	}
	if _, ok := r.deps[d.id]; ok {
		return berth.Errorf(berth.CodeConflict, "deployment %s is already running", d.id)
	}
	if err := r.assignPort(d); err != nil {
		return err
	}
	r.deps[d.id] = d
	return nil
}

// assignPort gives d a free port (releasing the one it had, if any) and
// sets its URLs. r.mu must be held.
func (r *Runtime) assignPort(d *deployment) error {
	port, err := r.freePort()
	if err != nil {
		return &berth.Error{Code: berth.CodeUnavailable,
			Message: fmt.Sprintf("no free port on 127.0.0.1 for deployment %s: the host is out of ports or file descriptors", d.id),
			Err:     err}
	}
	if d.port != 0 && r.ports[d.port] == d.id {
		delete(r.ports, d.port)
	}
	d.port = port
	d.url = "http://127.0.0.1:" + strconv.Itoa(port)
	hp := d.spec.Config.HealthPath
	if hp == "" {
		hp = berth.DefaultHealthPath
	}
	if hp[0] != '/' {
		hp = "/" + hp
	}
	d.healthURL = d.url + hp
	r.ports[port] = d.id
	return nil
}

// movePort gives d a fresh port after another process took its own.
func (r *Runtime) movePort(d *deployment) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.assignPort(d)
}

// freePort asks the kernel for a free loopback port, skipping ports our own
// deployments hold while they restart. r.mu must be held. The port is free
// when we close the probe listener; the child binds it moments later (a
// child that loses that race exits and fails its start).
func (r *Runtime) freePort() (int, error) {
	for range 32 {
		l, err := r.listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if _, taken := r.ports[port]; !taken {
			return port, nil
		}
	}
	return 0, errors.New("kernel kept offering ports in use by other deployments")
}

// start runs d's first process and waits for it to become healthy, moving
// to a fresh port when another process took d's (see Start).
func (r *Runtime) start(ctx context.Context, d *deployment) (berth.Instance, error) {
	if err := os.MkdirAll(d.runDir, 0o700); err != nil {
		return berth.Instance{}, &berth.Error{Code: berth.CodeInternal, Message: "cannot create run directory", Err: err}
	}
	r.setEnv(d)
	path, err := resolveCommand(d.argv[0], d.dir, envValue(d.env, "PATH"))
	if err != nil {
		d.sink.Notef("cannot run %q: %s", d.argv[0], reason(err))
		return berth.Instance{}, commandError(berth.CodeDeployFailed, "run", d.argv, err)
	}
	d.path = path

	// One ready timeout bounds the whole start, however many ports it takes.
	deadline := time.Now().Add(d.readyTimeout)
	var tried []int
	var p *proc
	for {
		p, err = r.spawn(d, 0)
		if err != nil {
			return berth.Instance{}, err
		}
		err = r.waitReady(ctx, d, p, deadline)
		if err == nil {
			break
		}
		p.kill()
		tried = append(tried, d.port)
		if errors.Is(err, errPortTaken) {
			if len(tried) == maxPortAttempts {
				err = portsTakenError(d, tried)
			} else if time.Now().Before(deadline) {
				d.sink.Notef("%s; trying another port", berth.ErrorMessage(err))
				d.log.Warn("deployment port taken by another process; trying another port", "port", d.port)
				if err = r.movePort(d); err == nil {
					r.setEnv(d)
					continue
				}
			}
		}
		d.sink.Notef("start failed: %s", berth.ErrorMessage(err))
		d.log.Warn("deployment failed to start", "err", err)
		return berth.Instance{}, err
	}
	d.mu.Lock()
	d.cur = p
	d.mu.Unlock()
	d.running.Store(true)
	d.log.Info("deployment running", "url", d.url, "pid", p.pid)
	go r.supervise(d, p)
	return berth.Instance{URL: d.url}, nil
}

// setEnv sets d's child environment for its current port.
func (r *Runtime) setEnv(d *deployment) {
	d.env = childEnv(d.runDir, d.spec.Config.Env, map[string]string{
		"PORT":                strconv.Itoa(d.port),
		"BERTH_AGENT_ID":      d.spec.AgentID,
		"BERTH_AGENT_NAME":    d.spec.AgentName,
		"BERTH_AGENT_VERSION": d.spec.Version,
		"BERTH_DEPLOYMENT_ID": d.id,
	})
}

// spawn starts one process for d; attempt counts restarts, for the log.
func (r *Runtime) spawn(d *deployment, attempt int) (*proc, error) {
	p, err := startProc(d.path, d.argv, d.dir, d.env, d.sink)
	if err != nil {
		d.sink.Notef("cannot start %q: %s", d.argv[0], reason(err))
		return nil, commandError(berth.CodeDeployFailed, "run", d.argv, err)
	}
	r.recordGroup(d, p.pid)
	d.sink.Notef("started pid %d on port %d (restart %d)", p.pid, d.port, attempt)
	return p, nil
}

// waitReady polls d's health URL until it answers 2xx from p's processes.
// It gives up at once when p exits, Stop is called, ctx ends or another
// process is found listening on d's port (an error wrapping errPortTaken),
// and otherwise at deadline.
func (r *Runtime) waitReady(ctx context.Context, d *deployment, p *proc, deadline time.Time) error {
	actx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	// An exit or a Stop must interrupt a health request in flight, not only
	// the pause between requests.
	watchDone := make(chan struct{})
	defer close(watchDone)
	go func() {
		select {
		case <-p.exited:
			cancel()
		case <-d.stop:
			cancel()
		case <-watchDone:
		}
	}()

	delay := firstPollDelay
	var lastErr error
	for {
		if lastErr = r.check(actx, d.healthURL); lastErr == nil {
			// The answer may have come from whoever took the port before
			// the agent could bind it: traffic must never go there.
			if r.whoListens(d, p.pid) == holderOther {
				return portTakenError(d, "")
			}
			return nil
		}
		if actx.Err() != nil {
			break
		}
		t := time.NewTimer(delay)
		select {
		case <-actx.Done():
		case <-t.C:
		}
		t.Stop()
		if actx.Err() != nil {
			break
		}
		delay = min(2*delay, maxPollDelay)
	}

	// Several causes can fire together; the most telling one wins.
	switch {
	case p.hasExited():
		p.reap()
		// An agent that cannot bind its port usually exits: say why when
		// another process holds that port.
		if r.whoListens(d, p.pid) == holderOther {
			return portTakenError(d, describeOutput(p.tail))
		}
		return berth.Errorf(berth.CodeTargetUnhealthy, "deployment %s exited before becoming healthy (%s)%s",
			d.id, p.exitStatus(), describeOutput(p.tail))
	case isClosed(d.stop):
		return berth.Errorf(berth.CodeDeployFailed, "deployment %s was stopped before it became healthy", d.id)
	case ctx.Err() != nil:
		return &berth.Error{Code: berth.CodeDeployFailed, Message: fmt.Sprintf("start of deployment %s was canceled", d.id), Err: ctx.Err()}
	case r.whoListens(d, p.pid) == holderOther:
		// An agent that keeps retrying its bind never exits, and a
		// process that took the port may not speak HTTP.
		return portTakenError(d, describeOutput(p.tail))
	default:
		e := berth.Errorf(berth.CodeTargetUnhealthy, "deployment %s did not become healthy within %s (GET %s: %s)%s",
			d.id, d.readyTimeout, d.healthURL, berth.HealthReason(lastErr), describeOutput(p.tail))
		// The last request was most likely cut off by the ready timeout;
		// keeping that context error would make this look like a canceled
		// start to errors.Is.
		if !errors.Is(lastErr, context.DeadlineExceeded) && !errors.Is(lastErr, context.Canceled) {
			e.Err = lastErr
		}
		return e
	}
}

// check makes one health request.
func (r *Runtime) check(ctx context.Context, url string) error {
	return berth.CheckHealth(ctx, r.client, url)
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// lookup returns the live deployment id, or nil.
func (r *Runtime) lookup(id string) *deployment {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.deps[id]
}

// finish forgets d, frees its port and closes its log, then signals done.
// It is called exactly once, by whoever owns d's process at the end: a
// failed Start, or the supervisor.
func (r *Runtime) finish(d *deployment) {
	r.mu.Lock()
	if r.deps[d.id] == d {
		delete(r.deps, d.id)
	}
	if r.ports[d.port] == d.id {
		delete(r.ports, d.port)
	}
	r.mu.Unlock()
	d.running.Store(false)
	d.mu.Lock()
	d.cur = nil
	d.mu.Unlock()
	r.forgetGroup(d)
	d.sink.Close()
	close(d.done)
}

// requestStop asks d's owner to stop it.
func (d *deployment) requestStop() { d.stopOnce.Do(func() { close(d.stop) }) }

// Probe makes one request to the health path of a running deployment. An
// unknown id is CodeNotFound; a deployment that is not answering 2xx
// (including one being started or restarted) is CodeTargetUnhealthy.
func (r *Runtime) Probe(ctx context.Context, deploymentID string) error {
	if err := checkID(deploymentID); err != nil {
		return err
	}
	d := r.lookup(deploymentID)
	if d == nil {
		return berth.Errorf(berth.CodeNotFound, "deployment %s is not running", deploymentID)
	}
	if !d.running.Load() {
		return berth.Errorf(berth.CodeTargetUnhealthy, "deployment %s is still starting", deploymentID)
	}
	d.mu.Lock()
	cur := d.cur
	d.mu.Unlock()
	if cur == nil {
		return berth.Errorf(berth.CodeTargetUnhealthy, "deployment %s is restarting", deploymentID)
	}
	pctx, cancel := context.WithTimeout(ctx, r.opts.ProbeTimeout)
	defer cancel()
	if err := r.check(pctx, d.healthURL); err != nil {
		return &berth.Error{
			Code:    berth.CodeTargetUnhealthy,
			Message: fmt.Sprintf("deployment %s health check failed (GET %s: %s)", deploymentID, d.healthURL, berth.HealthReason(err)),
			Err:     err,
		}
	}
	return nil
}

// Stop stops a deployment: SIGTERM to its process group, then SIGKILL after
// StopTimeout. It ends supervision (nothing is restarted) and returns once
// the process is gone. Stopping an unknown or already stopped deployment is
// not an error. If ctx ends first Stop returns CodeUnavailable; the stop
// still completes in the background.
func (r *Runtime) Stop(ctx context.Context, deploymentID string) error {
	if err := checkID(deploymentID); err != nil {
		return err
	}
	d := r.lookup(deploymentID)
	if d == nil {
		return nil
	}
	d.requestStop()
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
		return &berth.Error{
			Code:    berth.CodeUnavailable,
			Message: fmt.Sprintf("deployment %s is still stopping", deploymentID),
			Err:     ctx.Err(),
		}
	}
}

// Remove stops a deployment and deletes RunDir/<id>. Its log files are
// kept. Removing something already gone is not an error.
func (r *Runtime) Remove(ctx context.Context, deploymentID string) error {
	if err := r.Stop(ctx, deploymentID); err != nil {
		return err
	}
	if err := os.RemoveAll(r.runPath(deploymentID)); err != nil {
		return &berth.Error{Code: berth.CodeInternal, Message: fmt.Sprintf("cannot remove files of deployment %s", deploymentID), Err: err}
	}
	return nil
}

// Logs writes the deployment's captured output (the rotated generation
// first, if any) to w. It works after Stop and Remove; an id that never
// logged anything is CodeNotFound.
func (r *Runtime) Logs(ctx context.Context, deploymentID string, w io.Writer) error {
	if err := checkID(deploymentID); err != nil {
		return err
	}
	var mu *sync.Mutex
	if d := r.lookup(deploymentID); d != nil {
		mu = &d.sink.mu
	}
	files, err := openLogs(r.logPath(deploymentID), mu)
	if err != nil {
		return &berth.Error{Code: berth.CodeInternal, Message: fmt.Sprintf("cannot read logs of deployment %s", deploymentID), Err: err}
	}
	if len(files) == 0 {
		return berth.Errorf(berth.CodeNotFound, "no logs for deployment %s", deploymentID)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, f := range files {
		if _, err := io.Copy(w, ctxReader{ctx, f}); err != nil {
			if ctx.Err() != nil {
				return &berth.Error{Code: berth.CodeUnavailable, Message: "log copy canceled", Err: err}
			}
			return &berth.Error{Code: berth.CodeInternal, Message: fmt.Sprintf("cannot copy logs of deployment %s", deploymentID), Err: err}
		}
	}
	return nil
}

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Running lists, sorted, the deployments this runtime supervises now: those
// whose Start succeeded and that have not been stopped or given up on
// (including ones between a crash and their restart).
func (r *Runtime) Running(ctx context.Context) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, 0, len(r.deps))
	for id, d := range r.deps {
		if d.running.Load() {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// Close stops every deployment concurrently and waits for them. Later
// Starts fail with CodeUnavailable. Close is idempotent.
func (r *Runtime) Close() error {
	r.mu.Lock()
	r.closed = true
	deps := make([]*deployment, 0, len(r.deps))
	for _, d := range r.deps {
		deps = append(deps, d)
	}
	r.mu.Unlock()
	for _, d := range deps {
		d.requestStop()
	}
	for _, d := range deps {
		<-d.done
	}
	r.client.CloseIdleConnections()
	return nil
}
