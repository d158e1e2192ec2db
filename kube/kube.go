// Package kube is Berth's Kubernetes berth.Runtime. Every deployment is a
// Kubernetes Deployment named berth-<agent>-<version>-<hash of its id>
// running the version's berth.json "image", with a ClusterIP Service of the
// same name whose in-cluster URL is the deployment's Instance.URL. Every
// agent has one more Service, berth-<agent>, whose selector names its active
// deployment; the Router moves it (see Router).
//
// The cluster is the runtime's only state: a Berth that restarts (or a
// second replica sharing the namespace) finds what runs by listing
// Deployments labelled app.kubernetes.io/managed-by=berth, so the runtime
// never needs to remember anything across restarts.
//
// Semantics next to the process runtime's:
//   - Start creates (or, for a stopped deployment, scales up) the
//     Deployment and waits until all its replicas are ready, as the
//     kubelet's readiness probe on health_path sees it, and, with
//     Options.CheckHTTP, until GET health_path through the Service answers
//     2xx. A container that exits (or cannot be pulled) before that fails
//     the Start at once; the Deployment is then scaled to 0 with the reason
//     in its berth.dev/last-error annotation.
//   - Stop scales the Deployment to 0 and deletes its Service; the
//     Deployment stays as the record of the deployment (its spec, labels
//     and last error) until Remove deletes it. Scaling rather than deleting
//     keeps Stop and Remove two different things, as the contract has them,
//     and deleting the Service frees its cluster IP, the one scarce thing a
//     stopped deployment would otherwise hold.
//   - Probe is "the Deployment has a ready replica" (plus a GET through the
//     Service with Options.CheckHTTP).
//   - Logs reads the pods' logs through the API; Kubernetes keeps them only
//     while the pods exist.
//   - Close does not stop agents: they belong to the cluster and keep
//     serving through their Services while Berth restarts or rolls out. It
//     ends Starts in progress (which clean up) and makes every later call
//     fail with CodeUnavailable.
//
// Kubernetes restarts crashed containers itself; with Options.OnStatus the
// runtime reports what it sees of that.
package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/berthhq/berth"
)

// Defaults for zero Options fields.
const (
	DefaultReadyTimeout   = 2 * time.Minute
	DefaultStopTimeout    = 30 * time.Second
	DefaultProbeTimeout   = 2 * time.Second
	DefaultProbePeriod    = 2 * time.Second
	DefaultPollInterval   = 500 * time.Millisecond
	DefaultContainerPort  = 8080
	DefaultClusterDomain  = "cluster.local"
	DefaultMaxLogBytes    = 10 << 20
	DefaultStatusInterval = 10 * time.Second
)

const (
	// cleanupTimeout bounds the clean-up after a failed Start, which runs
	// even when the Start's own context has ended.
	cleanupTimeout = 30 * time.Second
	// tailLines and tailBytes bound the output quoted in a failed Start's
	// message.
	tailLines = 20
	tailBytes = 4 << 10
)

// Options configures a Runtime. Client and Namespace are required; every
// other zero field takes the default named in its comment.
type Options struct {
	// Client talks to the cluster: a clientset from Connect, or a fake one
	// in tests.
	Client kubernetes.Interface
	// Namespace holds every Deployment and Service the runtime manages.
	// Berth assumes it is the only Berth managing it.
	Namespace string
	// DefaultReadyTimeout bounds Start when the spec's Config.ReadyTimeout
	// is 0 (default 2m: a cold node may have to pull the image). It is
	// also the Deployment's progressDeadlineSeconds.
	DefaultReadyTimeout time.Duration
	// StopTimeout is the pods' termination grace period (default 30s).
	StopTimeout time.Duration
	// ProbeTimeout bounds one health request: the kubelet's readiness
	// probe and Probe's own GET (default 2s).
	ProbeTimeout time.Duration
	// ProbePeriod is how often the kubelet runs the readiness probe
	// (default 2s); it bounds how fast a started pod is seen ready.
	ProbePeriod time.Duration
	// PollInterval is the longest pause between two readiness checks of a
	// Start; checks start 20 times faster and back off to it (default
	// 500ms).
	PollInterval time.Duration
	// Replicas is how many pods each deployment runs (default 1). Start
	// waits for all of them.
	Replicas int32
	// ContainerPort is the port agents listen on, given to them as PORT
	// (default 8080).
	ContainerPort int32
	// ClusterDomain is the cluster's DNS domain, for Service URLs (default
	// cluster.local).
	ClusterDomain string
	// CheckHTTP makes Start and Probe also GET the health path through the
	// deployment's Service. Only a Berth that can reach Service addresses
	// (one running in the cluster) can use it; with it, Start returns only
	// once the Service routes to a ready pod, so the built-in proxy can use
	// the URL at once.
	CheckHTTP bool
	// HTTPClient makes the CheckHTTP requests (default: a client that
	// ignores proxy settings). Redirects are never followed.
	HTTPClient *http.Client
	// MaxLogBytes caps what Logs reads from one container (default 10 MiB).
	MaxLogBytes int64
	// OnStatus, if set, is told when a running deployment changes on its
	// own, as seen every StatusInterval (default 10s):
	// DeploymentStarting when none of its pods is ready any more (a crash
	// Kubernetes is restarting), DeploymentRunning when one is again, each
	// with its containers' restart count. A deployment is watched from the
	// first time it is seen running; Kubernetes never gives up restarting,
	// so DeploymentFailed is never reported. No call is made for a
	// deployment after Stop or Remove of it has returned, and calls are
	// made from one goroutine, so OnStatus must not call Stop or Remove
	// synchronously.
	OnStatus       berth.StatusFunc
	StatusInterval time.Duration
	// Logger receives the runtime's own log (default slog.Default()).
	Logger *slog.Logger
}

// Runtime runs deployments as Kubernetes Deployments. It implements
// berth.Runtime and is safe for concurrent use.
type Runtime struct {
	opts   Options
	client kubernetes.Interface
	http   *http.Client
	log    *slog.Logger

	mu     sync.Mutex
	closed bool
	starts map[string]*startRec // Starts in progress in this process
	names  map[string]string    // deployment id → Deployment name, as learned

	// statusMu is held (read) by Stop and Remove and (write) by a status
	// check, so that no status is reported for a deployment after Stop or
	// Remove of it returned.
	statusMu   sync.RWMutex
	seen       map[string]seen // guarded by statusMu
	stopStatus context.CancelFunc
	statusDone chan struct{}
}

var _ berth.Runtime = (*Runtime)(nil)

// startRec is a Start in progress, so that Stop and Close can end it.
type startRec struct {
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// Causes of a Start's context ending early.
var (
	errStopped = errors.New("deployment stopped")
	errClosed  = errors.New("kubernetes runtime closed")
)

// New returns a Runtime managing opts.Namespace through opts.Client. It
// makes no API call: a cluster that cannot be reached shows up in the
// first operation.
func New(opts Options) (*Runtime, error) {
	if opts.Client == nil {
		return nil, berth.Errorf(berth.CodeInvalid, "kubernetes runtime needs a client")
	}
	if opts.Namespace == "" || dnsPart(opts.Namespace) != opts.Namespace || len(opts.Namespace) > maxNameLen {
		return nil, berth.Errorf(berth.CodeInvalid, "invalid kubernetes namespace %q", opts.Namespace)
	}
	setDefault(&opts.DefaultReadyTimeout, DefaultReadyTimeout)
	setDefault(&opts.StopTimeout, DefaultStopTimeout)
	setDefault(&opts.ProbeTimeout, DefaultProbeTimeout)
	setDefault(&opts.ProbePeriod, DefaultProbePeriod)
	setDefault(&opts.PollInterval, DefaultPollInterval)
	setDefault(&opts.Replicas, 1)
	setDefault(&opts.ContainerPort, DefaultContainerPort)
	setDefault(&opts.ClusterDomain, DefaultClusterDomain)
	setDefault(&opts.MaxLogBytes, DefaultMaxLogBytes)
	setDefault(&opts.StatusInterval, DefaultStatusInterval)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	var hc http.Client
	if opts.HTTPClient != nil {
		hc = *opts.HTTPClient
	} else {
		hc.Transport = &http.Transport{
			// Service addresses are inside the cluster: never go through
			// an HTTP proxy from Berth's environment.
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		}
	}
	// Healthy means 2xx from the health path itself, not from wherever it
	// redirects.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	r := &Runtime{
		opts:       opts,
		client:     opts.Client,
		http:       &hc,
		log:        opts.Logger.With("namespace", opts.Namespace),
		starts:     make(map[string]*startRec),
		names:      make(map[string]string),
		seen:       make(map[string]seen),
		statusDone: make(chan struct{}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.stopStatus = cancel
	if opts.OnStatus != nil {
		go r.watchStatus(ctx)
	} else {
		close(r.statusDone)
	}
	return r, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Namespace returns the namespace the runtime manages.
func (r *Runtime) Namespace() string { return r.opts.Namespace }

// usable fails once the runtime is closed and for ids that cannot be a
// label value (every lookup selects on the id label).
func (r *Runtime) usable(id string) error {
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return berth.Errorf(berth.CodeUnavailable, "kubernetes runtime is closed")
	}
	if !validLabelValue(id) {
		return berth.Errorf(berth.CodeInvalid, "invalid deployment id %q", id)
	}
	return nil
}

// Start runs spec as a Kubernetes Deployment and returns once it is
// healthy (see the package comment), with the URL of its Service. A spec
// without an image, or whose container cannot be created (bad image, a
// config the API server rejects), is CodeDeployFailed; a container that
// exits before it is healthy, or that is not healthy within the ready
// timeout, is CodeTargetUnhealthy. A start ended by ctx is CodeDeployFailed
// with ctx's error in the chain, one ended by Stop CodeDeployFailed. Starting
// a deployment that runs (replicas > 0) is CodeConflict; starting a stopped
// one scales it up again with spec's config. A failed Start leaves the
// Deployment scaled to 0.
func (r *Runtime) Start(ctx context.Context, spec berth.DeploymentSpec) (berth.Instance, error) {
	p, err := r.plan(spec)
	if err != nil {
		return berth.Instance{}, err
	}
	sctx, rec, err := r.register(ctx, p.id)
	if err != nil {
		return berth.Instance{}, err
	}
	defer r.unregister(p.id, rec)
	log := r.log.With("deployment", p.id, "agent", spec.AgentName, "version", spec.Version, "name", p.name)
	claimed, err := r.start(sctx, ctx, p)
	if err != nil {
		if claimed {
			r.abandon(p, err)
		}
		log.Warn("deployment failed to start", "err", err)
		return berth.Instance{}, err
	}
	r.started(p.id)
	log.Info("deployment running", "url", p.url)
	return berth.Instance{URL: p.url}, nil
}

// plan validates spec and builds the objects for it.
func (r *Runtime) plan(spec berth.DeploymentSpec) (*plan, error) {
	id := spec.DeploymentID
	if err := r.usable(id); err != nil {
		return nil, err
	}
	if !berth.ValidName(spec.AgentName) {
		return nil, berth.Errorf(berth.CodeInvalid, "invalid agent name %q", spec.AgentName)
	}
	if spec.Version == "" {
		return nil, berth.Errorf(berth.CodeInvalid, "deployment %s has no version label", id)
	}
	if strings.TrimSpace(spec.Config.Image) == "" {
		return nil, berth.Errorf(berth.CodeDeployFailed,
			"version %s of %s has no image: the Kubernetes runtime runs the container image named by \"image\" in berth.json",
			spec.Version, spec.AgentName)
	}
	readyTimeout := time.Duration(spec.Config.ReadyTimeout)
	if readyTimeout <= 0 {
		readyTimeout = r.opts.DefaultReadyTimeout
	}
	hp := spec.Config.HealthPath
	if hp == "" {
		hp = berth.DefaultHealthPath
	}
	if hp[0] != '/' {
		hp = "/" + hp
	}
	p := &plan{
		spec:         spec,
		id:           id,
		name:         deploymentName(spec.AgentName, spec.Version, id),
		healthPath:   hp,
		readyTimeout: readyTimeout,
	}
	p.url = r.serviceURL(p.name)
	p.dep = r.deployment(p)
	return p, nil
}

// register records a Start of id in progress; its context ends with the
// caller's, or early when Stop or Close cancel it.
func (r *Runtime) register(ctx context.Context, id string) (context.Context, *startRec, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, nil, berth.Errorf(berth.CodeUnavailable, "kubernetes runtime is closed")
	}
	if _, ok := r.starts[id]; ok {
		return nil, nil, berth.Errorf(berth.CodeConflict, "deployment %s is already starting", id)
	}
	sctx, cancel := context.WithCancelCause(ctx)
	rec := &startRec{cancel: cancel, done: make(chan struct{})}
	r.starts[id] = rec
	return sctx, rec, nil
}

func (r *Runtime) unregister(id string, rec *startRec) {
	r.mu.Lock()
	if r.starts[id] == rec {
		delete(r.starts, id)
	}
	r.mu.Unlock()
	rec.cancel(nil)
	close(rec.done)
}

// start claims p's Deployment, makes its Service and waits for health.
// claimed reports whether the Deployment was created or scaled up, so that
// a failure must scale it back down.
func (r *Runtime) start(sctx, ctx context.Context, p *plan) (claimed bool, err error) {
	dep, err := r.claim(sctx, p)
	if err != nil {
		return false, r.startError(sctx, ctx, p, err)
	}
	r.remember(p.id, p.name)
	if err := r.ensureService(sctx, p, dep); err != nil {
		return true, r.startError(sctx, ctx, p, err)
	}
	return true, r.waitReady(sctx, ctx, p)
}

// startError prefers the reason a Start's context ended (a Stop, Close or
// the caller's deadline) over the API error it caused.
func (r *Runtime) startError(sctx, ctx context.Context, p *plan, err error) error {
	if e := interruption(sctx, p.id); e != nil {
		return e
	}
	return err
}

// interruption explains why a Start's context ended, or returns nil if it
// has not.
func interruption(sctx context.Context, id string) *berth.Error {
	if sctx.Err() == nil {
		return nil
	}
	cause := context.Cause(sctx)
	switch {
	case errors.Is(cause, errStopped):
		return berth.Errorf(berth.CodeDeployFailed, "deployment %s was stopped before it became healthy", id)
	case errors.Is(cause, errClosed):
		return berth.Errorf(berth.CodeUnavailable, "the kubernetes runtime closed before deployment %s became healthy", id)
	}
	return &berth.Error{Code: berth.CodeDeployFailed, Message: fmt.Sprintf("start of deployment %s was canceled", id), Err: cause}
}

// claim creates p's Deployment or, if a stopped one of the same deployment
// exists, gives it p's template and scales it up. Anything else by that
// name is a conflict.
func (r *Runtime) claim(ctx context.Context, p *plan) (*appsv1.Deployment, error) {
	deps := r.client.AppsV1().Deployments(r.opts.Namespace)
	for range 3 {
		d, err := deps.Create(ctx, p.dep.DeepCopy(), metav1.CreateOptions{})
		if err == nil {
			return d, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, r.apiError(err, "cannot create the Kubernetes Deployment of deployment %s", p.id)
		}
		cur, err := deps.Get(ctx, p.name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue // deleted in between: create it again
		}
		if err != nil {
			return nil, r.apiError(err, "cannot read the Kubernetes Deployment of deployment %s", p.id)
		}
		if !ours(cur, p.id) {
			return nil, berth.Errorf(berth.CodeConflict, "a Kubernetes Deployment named %s exists and is not deployment %s", p.name, p.id)
		}
		if replicasOf(cur) > 0 {
			return nil, berth.Errorf(berth.CodeConflict, "deployment %s is already running", p.id)
		}
		// A stopped or failed deployment started again: it runs the spec
		// it is given now.
		cur.Spec.Template = p.dep.Spec.Template
		cur.Spec.Replicas = p.dep.Spec.Replicas
		cur.Spec.ProgressDeadlineSeconds = p.dep.Spec.ProgressDeadlineSeconds
		cur.Spec.RevisionHistoryLimit = p.dep.Spec.RevisionHistoryLimit
		if cur.Labels == nil {
			cur.Labels = map[string]string{}
		}
		maps.Copy(cur.Labels, p.dep.Labels)
		if cur.Annotations == nil {
			cur.Annotations = map[string]string{}
		}
		maps.Copy(cur.Annotations, p.dep.Annotations)
		delete(cur.Annotations, AnnotationLastError)
		d, err = deps.Update(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			continue // someone else changed it: look again
		}
		if err != nil {
			return nil, r.apiError(err, "cannot scale up the Kubernetes Deployment of deployment %s", p.id)
		}
		return d, nil
	}
	return nil, berth.Errorf(berth.CodeConflict, "the Kubernetes Deployment of deployment %s kept changing while it was being started", p.id)
}

// ensureService creates p's Service, or repairs an existing one of the
// same deployment.
func (r *Runtime) ensureService(ctx context.Context, p *plan, owner *appsv1.Deployment) error {
	svcs := r.client.CoreV1().Services(r.opts.Namespace)
	want := r.service(p, owner)
	for range 3 {
		_, err := svcs.Create(ctx, want.DeepCopy(), metav1.CreateOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return r.apiError(err, "cannot create the Kubernetes Service of deployment %s", p.id)
		}
		cur, err := svcs.Get(ctx, p.name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return r.apiError(err, "cannot read the Kubernetes Service of deployment %s", p.id)
		}
		if !ours(cur, p.id) || cur.Labels[LabelComponent] != ComponentDeployment {
			return berth.Errorf(berth.CodeConflict, "a Kubernetes Service named %s exists and is not deployment %s's", p.name, p.id)
		}
		if maps.Equal(cur.Spec.Selector, want.Spec.Selector) && slices.Equal(cur.Spec.Ports, want.Spec.Ports) {
			return nil
		}
		cur.Spec.Selector, cur.Spec.Ports = want.Spec.Selector, want.Spec.Ports
		_, err = svcs.Update(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return r.apiError(err, "cannot update the Kubernetes Service of deployment %s", p.id)
		}
		return nil
	}
	return berth.Errorf(berth.CodeConflict, "the Kubernetes Service of deployment %s kept changing while it was being started", p.id)
}

// abandon undoes a failed Start: the Deployment is scaled to 0 with the
// failure recorded on it, and its Service deleted. It runs to completion
// (within cleanupTimeout) even if the Start's context has ended.
func (r *Runtime) abandon(p *plan, cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	msg := berth.ErrorMessage(cause)
	if len(msg) > tailBytes {
		msg = msg[:tailBytes] + "…"
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{AnnotationLastError: msg}},
		"spec":     map[string]any{"replicas": 0},
	})
	if err != nil {
		r.log.Error("encode scale-down patch", "deployment", p.id, "err", err)
		return
	}
	err = retry(ctx, func() error {
		_, err := r.client.AppsV1().Deployments(r.opts.Namespace).Patch(ctx, p.name, types.MergePatchType, patch, metav1.PatchOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
	if err != nil {
		r.log.Error("cannot scale down a deployment that failed to start; it may still run", "deployment", p.id, "name", p.name, "err", err)
	}
	if err := r.deleteService(ctx, p.name, p.id); err != nil {
		r.log.Warn("cannot delete the service of a deployment that failed to start", "deployment", p.id, "name", p.name, "err", err)
	}
}

// retry runs fn until it succeeds, fails for good or ctx ends, backing off
// between attempts.
func retry(ctx context.Context, fn func() error) error {
	delay := 50 * time.Millisecond
	for {
		err := fn()
		if err == nil || !retriable(err) {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// deleteService deletes Service name if it is deployment id's.
func (r *Runtime) deleteService(ctx context.Context, name, id string) error {
	svcs := r.client.CoreV1().Services(r.opts.Namespace)
	svc, err := svcs.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !ours(svc, id) || svc.Labels[LabelComponent] != ComponentDeployment {
		return nil // not ours to delete
	}
	err = svcs.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &svc.UID}})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (r *Runtime) remember(id, name string) {
	r.mu.Lock()
	r.names[id] = name
	r.mu.Unlock()
}

func (r *Runtime) forget(id string) {
	r.mu.Lock()
	delete(r.names, id)
	r.mu.Unlock()
}

// locate returns deployment id's Kubernetes Deployment, or nil if there is
// none. Its name is remembered from Start; after a restart it is found by
// its id label once.
func (r *Runtime) locate(ctx context.Context, id string) (*appsv1.Deployment, error) {
	deps := r.client.AppsV1().Deployments(r.opts.Namespace)
	r.mu.Lock()
	name := r.names[id]
	r.mu.Unlock()
	if name != "" {
		d, err := deps.Get(ctx, name, metav1.GetOptions{})
		switch {
		case err == nil && ours(d, id):
			return d, nil
		case err != nil && !apierrors.IsNotFound(err):
			return nil, err
		}
		r.forget(id)
	}
	list, err := deps.List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(selectorFor(id)).String()})
	if err != nil {
		return nil, err
	}
	if len(list.Items) == 0 {
		return nil, nil
	}
	slices.SortFunc(list.Items, func(a, b appsv1.Deployment) int { return strings.Compare(a.Name, b.Name) })
	if len(list.Items) > 1 {
		r.log.Warn("several Kubernetes Deployments carry one deployment id; using the first", "deployment", id, "name", list.Items[0].Name)
	}
	d := &list.Items[0]
	r.remember(id, d.Name)
	return d, nil
}

// Probe checks once that a running deployment has a ready pod and, with
// Options.CheckHTTP, that its health path answers 2xx through its Service.
// An unknown or stopped deployment is CodeNotFound, one without a ready pod
// CodeTargetUnhealthy.
func (r *Runtime) Probe(ctx context.Context, deploymentID string) error {
	if err := r.usable(deploymentID); err != nil {
		return err
	}
	d, err := r.locate(ctx, deploymentID)
	if err != nil {
		return r.apiError(err, "cannot look up deployment %s", deploymentID)
	}
	if d == nil || replicasOf(d) == 0 {
		return berth.Errorf(berth.CodeNotFound, "deployment %s is not running", deploymentID)
	}
	if d.Status.ReadyReplicas < 1 {
		return berth.Errorf(berth.CodeTargetUnhealthy, "deployment %s has no ready pod (%d of %d ready)",
			deploymentID, d.Status.ReadyReplicas, replicasOf(d))
	}
	if !r.opts.CheckHTTP {
		return nil
	}
	url := r.serviceURL(d.Name) + healthPathOf(d)
	pctx, cancel := context.WithTimeout(ctx, r.opts.ProbeTimeout)
	defer cancel()
	if err := r.check(pctx, url); err != nil {
		return &berth.Error{
			Code:    berth.CodeTargetUnhealthy,
			Message: fmt.Sprintf("deployment %s health check failed (GET %s: %s)", deploymentID, url, berth.HealthReason(err)),
			Err:     err,
		}
	}
	return nil
}

// healthPathOf reads the health path back from a Deployment's readiness
// probe.
func healthPathOf(d *appsv1.Deployment) string {
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == containerName && c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil {
			return c.ReadinessProbe.HTTPGet.Path
		}
	}
	return berth.DefaultHealthPath
}

// interruptStart ends a Start of id in progress in this process, if any,
// and waits for it to clean up.
func (r *Runtime) interruptStart(ctx context.Context, id string, cause error) error {
	r.mu.Lock()
	rec := r.starts[id]
	r.mu.Unlock()
	if rec == nil {
		return nil
	}
	rec.cancel(cause)
	select {
	case <-rec.done:
		return nil
	case <-ctx.Done():
		return &berth.Error{Code: berth.CodeUnavailable, Message: fmt.Sprintf("deployment %s is still stopping", id), Err: ctx.Err()}
	}
}

// Stop scales a deployment's Deployment to 0 and deletes its Service; the
// Deployment stays until Remove. A Start of it in progress ends with
// CodeDeployFailed. Stop does not wait for the pods to finish terminating:
// the kubelet gives them Options.StopTimeout. Stopping an unknown or
// stopped deployment is not an error.
func (r *Runtime) Stop(ctx context.Context, deploymentID string) error {
	d, release, err := r.settle(ctx, deploymentID)
	if err != nil {
		return err
	}
	defer release()
	if d == nil {
		return nil
	}
	if replicasOf(d) != 0 {
		err := retry(ctx, func() error {
			_, err := r.client.AppsV1().Deployments(r.opts.Namespace).Patch(ctx, d.Name, types.MergePatchType,
				[]byte(`{"spec":{"replicas":0}}`), metav1.PatchOptions{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return err
		})
		if err != nil {
			return r.apiError(err, "cannot scale down deployment %s", deploymentID)
		}
	}
	if err := r.deleteService(ctx, d.Name, deploymentID); err != nil {
		return r.apiError(err, "cannot delete the Service of deployment %s", deploymentID)
	}
	r.log.Info("deployment stopped", "deployment", deploymentID, "name", d.Name)
	return nil
}

// settle begins a Stop or Remove of deploymentID: it ends a Start of it in
// progress and finds its Deployment (nil if there is none), holding
// statusMu for reading until release is called.
func (r *Runtime) settle(ctx context.Context, deploymentID string) (d *appsv1.Deployment, release func(), err error) {
	if err := r.usable(deploymentID); err != nil {
		return nil, nil, err
	}
	if err := r.interruptStart(ctx, deploymentID, errStopped); err != nil {
		return nil, nil, err
	}
	r.statusMu.RLock()
	d, err = r.locate(ctx, deploymentID)
	if err != nil {
		r.statusMu.RUnlock()
		return nil, nil, r.apiError(err, "cannot look up deployment %s", deploymentID)
	}
	return d, r.statusMu.RUnlock, nil
}

// Remove deletes a deployment's Deployment (and with it its pods) and its
// Service. Removing something already gone is not an error.
func (r *Runtime) Remove(ctx context.Context, deploymentID string) error {
	d, release, err := r.settle(ctx, deploymentID)
	if err != nil {
		return err
	}
	defer release()
	if d == nil {
		// A Service can outlive its Deployment if a Remove was cut short
		// on a cluster without garbage collection of owned objects.
		return r.removeServices(ctx, deploymentID)
	}
	if err := r.deleteService(ctx, d.Name, deploymentID); err != nil {
		return r.apiError(err, "cannot delete the Service of deployment %s", deploymentID)
	}
	policy := metav1.DeletePropagationBackground
	err = r.client.AppsV1().Deployments(r.opts.Namespace).Delete(ctx, d.Name, metav1.DeleteOptions{
		PropagationPolicy: &policy,
		Preconditions:     &metav1.Preconditions{UID: &d.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) {
		return r.apiError(err, "cannot delete deployment %s", deploymentID)
	}
	r.forget(deploymentID)
	r.log.Info("deployment removed", "deployment", deploymentID, "name", d.Name)
	return nil
}

// removeServices deletes every per-deployment Service of deployment id.
func (r *Runtime) removeServices(ctx context.Context, id string) error {
	sel := selectorFor(id)
	sel[LabelComponent] = ComponentDeployment
	list, err := r.client.CoreV1().Services(r.opts.Namespace).List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(sel).String()})
	if err != nil {
		return r.apiError(err, "cannot look up the Services of deployment %s", id)
	}
	for _, svc := range list.Items {
		if err := r.deleteService(ctx, svc.Name, id); err != nil {
			return r.apiError(err, "cannot delete the Service of deployment %s", id)
		}
	}
	return nil
}

// Logs writes the output of a deployment's pods, oldest pod first (for a
// restarted container, the previous instance's output before the current
// one's). Kubernetes keeps logs only while pods exist, so for a stopped
// deployment Logs writes the reason of its last failed start, if any, and
// a note. An unknown deployment is CodeNotFound.
func (r *Runtime) Logs(ctx context.Context, deploymentID string, w io.Writer) error {
	if err := r.usable(deploymentID); err != nil {
		return err
	}
	d, err := r.locate(ctx, deploymentID)
	if err != nil {
		return r.apiError(err, "cannot look up deployment %s", deploymentID)
	}
	if d == nil {
		return berth.Errorf(berth.CodeNotFound, "no logs for deployment %s", deploymentID)
	}
	pods, err := r.pods(ctx, deploymentID)
	if err != nil {
		return r.apiError(err, "cannot list the pods of deployment %s", deploymentID)
	}
	if len(pods) == 0 {
		if msg := d.Annotations[AnnotationLastError]; msg != "" {
			if _, err := fmt.Fprintf(w, "[berth] last start failed: %s\n", msg); err != nil {
				return &berth.Error{Code: berth.CodeUnavailable, Message: "log copy failed", Err: err}
			}
		}
		_, err := fmt.Fprintf(w, "[berth] deployment %s has no pods now; Kubernetes keeps logs only while their pod exists\n", deploymentID)
		if err != nil {
			return &berth.Error{Code: berth.CodeUnavailable, Message: "log copy failed", Err: err}
		}
		return nil
	}
	for _, pod := range pods {
		if len(pods) > 1 {
			if _, err := fmt.Fprintf(w, "[berth] pod %s\n", pod.Name); err != nil {
				return &berth.Error{Code: berth.CodeUnavailable, Message: "log copy failed", Err: err}
			}
		}
		if restarts(&pod) > 0 {
			if err := r.copyLogs(ctx, w, pod.Name, true); err != nil {
				return err
			}
		}
		if err := r.copyLogs(ctx, w, pod.Name, false); err != nil {
			return err
		}
	}
	return nil
}

// copyLogs copies one container's log to w. A container whose log cannot be
// read (it has not started yet, say) gets a note instead; only a failure to
// write, or ctx ending, is an error.
func (r *Runtime) copyLogs(ctx context.Context, w io.Writer, pod string, previous bool) error {
	limit := r.opts.MaxLogBytes
	rc, err := r.client.CoreV1().Pods(r.opts.Namespace).GetLogs(pod, &corev1.PodLogOptions{
		Container:  containerName,
		Previous:   previous,
		LimitBytes: &limit,
	}).Stream(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return &berth.Error{Code: berth.CodeUnavailable, Message: "log copy canceled", Err: err}
		}
		which := "current"
		if previous {
			which = "previous"
		}
		_, werr := fmt.Fprintf(w, "[berth] no %s log of pod %s: %s\n", which, pod, apiReason(err))
		if werr != nil {
			return &berth.Error{Code: berth.CodeUnavailable, Message: "log copy failed", Err: werr}
		}
		return nil
	}
	defer rc.Close()
	if _, err := io.Copy(w, rc); err != nil {
		if ctx.Err() != nil {
			return &berth.Error{Code: berth.CodeUnavailable, Message: "log copy canceled", Err: err}
		}
		return &berth.Error{Code: berth.CodeUnavailable, Message: fmt.Sprintf("cannot copy the log of pod %s", pod), Err: err}
	}
	return nil
}

// apiReason shortens an API error for a note in the logs.
func apiReason(err error) string {
	var se apierrors.APIStatus
	if errors.As(err, &se) && se.Status().Message != "" {
		return se.Status().Message
	}
	return "the API server did not answer"
}

// pods lists the pods of deployment id that are not being deleted, oldest
// first.
func (r *Runtime) pods(ctx context.Context, id string) ([]corev1.Pod, error) {
	list, err := r.client.CoreV1().Pods(r.opts.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(selectorFor(id)).String(),
	})
	if err != nil {
		return nil, err
	}
	pods := slices.DeleteFunc(list.Items, func(p corev1.Pod) bool { return p.DeletionTimestamp != nil })
	slices.SortFunc(pods, func(a, b corev1.Pod) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return pods, nil
}

// restarts is how often a pod's agent container has restarted.
func restarts(p *corev1.Pod) int32 {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == containerName {
			return cs.RestartCount
		}
	}
	return 0
}

// Running lists, sorted, the deployments whose Kubernetes Deployment
// wants pods (replicas > 0), including ones still starting: after a
// restart of Berth that is what still runs.
func (r *Runtime) Running(ctx context.Context) ([]string, error) {
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return nil, berth.Errorf(berth.CodeUnavailable, "kubernetes runtime is closed")
	}
	list, err := r.client.AppsV1().Deployments(r.opts.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(map[string]string{LabelManagedBy: ManagedBy}).String(),
	})
	if err != nil {
		return nil, r.apiError(err, "cannot list deployments")
	}
	ids := make([]string, 0, len(list.Items))
	for i := range list.Items {
		d := &list.Items[i]
		if id := d.Labels[LabelDeploymentID]; id != "" && replicasOf(d) > 0 {
			ids = append(ids, id)
			r.remember(id, d.Name)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// Close ends Starts in progress (each scales its Deployment back down) and
// waits for them, and stops status reports; later calls fail with
// CodeUnavailable. Deployments that
// run keep running: they are the cluster's, and a restarted Berth finds
// them with Running. Close is idempotent.
func (r *Runtime) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	recs := slices.Collect(maps.Values(r.starts))
	r.mu.Unlock()
	for _, rec := range recs {
		rec.cancel(errClosed)
	}
	for _, rec := range recs {
		<-rec.done
	}
	r.stopStatus()
	<-r.statusDone
	r.http.CloseIdleConnections()
	return nil
}
