package kube

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berthhq/berth"
)

// Defaults for zero RouterOptions fields.
const (
	DefaultDrainDelay   = 5 * time.Second
	DefaultRouteTimeout = 30 * time.Second
)

// Next is a router the Router passes every change on to after it moved the
// agent's Service; the server's adapter of the built-in proxy is one. It
// has the method set of the release engine's lifecycle.Router.
type Next interface {
	Route(agentName, url string) (drainPrevious func(context.Context) error)
	Unroute(agentName string)
}

// RouterOptions configures a Router.
type RouterOptions struct {
	// Next, if set, is routed too, after the Service: with the built-in
	// proxy there, /agents/<name>/ on Berth follows the active version as
	// well (it can reach the URLs when Berth runs in the cluster).
	Next Next
	// DrainDelay is how long the drain function Route returns waits after
	// a switch before the engine may stop the previous deployment: the
	// time kube-proxy on every node needs to stop sending new connections
	// to its pods (default 5s). Requests already running on them finish
	// within the pods' termination grace period.
	DrainDelay time.Duration
	// Timeout bounds the Service update Route makes before it returns
	// (default 30s); the drain function keeps trying after that.
	Timeout time.Duration
}

// Router moves an agent's traffic inside the cluster: Route points the
// agent's Service (berth-<agent>) at the pods of the deployment behind an
// instance URL, by giving it that deployment's Service's selector, and
// creates the agent Service on first use. It implements the release
// engine's lifecycle.Router.
//
// Instance URLs are per-deployment Service URLs rather than the agent
// Service's, so that the engine can health-check a new version and keep a
// standby warm through a URL of its own while the agent Service still
// selects the active one; the selector patch is then the atomic switch.
type Router struct {
	rt   *Runtime
	opts RouterOptions
	// mu serialises Route and Unroute per agent, so that a slow retry of
	// an older switch cannot undo a newer one.
	mu     sync.Mutex
	agents map[string]*sync.Mutex
}

// Router returns a Router for the agents r runs.
func (r *Runtime) Router(opts RouterOptions) *Router {
	setDefault(&opts.DrainDelay, DefaultDrainDelay)
	setDefault(&opts.Timeout, DefaultRouteTimeout)
	return &Router{rt: r, opts: opts, agents: map[string]*sync.Mutex{}}
}

func (rt *Router) lock(agent string) func() {
	rt.mu.Lock()
	m := rt.agents[agent]
	if m == nil {
		m = &sync.Mutex{}
		rt.agents[agent] = m
	}
	rt.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// Route points agentName's Service at the deployment whose instance URL is
// target and then routes Next. The returned function waits until the
// previous deployment may be stopped: Next's drain, and DrainDelay after an
// actual switch. If the Service could not be updated within
// RouterOptions.Timeout, the error is logged and the drain function keeps
// trying until its context ends (and returns the error if it never
// succeeds), so that the engine does not stop the version still serving.
func (rt *Router) Route(agentName, target string) func(context.Context) error {
	ctx, cancel := context.WithTimeout(context.Background(), rt.opts.Timeout)
	switched, err := rt.point(ctx, agentName, target)
	cancel()
	if err != nil {
		rt.rt.log.Error("cannot point the agent's Service at its active deployment; will retry while draining",
			"agent", agentName, "url", target, "err", err)
	}
	var drainNext func(context.Context) error
	if rt.opts.Next != nil {
		drainNext = rt.opts.Next.Route(agentName, target)
	}
	return func(ctx context.Context) error {
		if err != nil {
			if switched, err = rt.point(ctx, agentName, target); err != nil {
				return err
			}
			rt.rt.log.Info("agent's Service points at its active deployment after a retry", "agent", agentName, "url", target)
		}
		var errs []error
		if drainNext != nil {
			errs = append(errs, drainNext(ctx))
		}
		if switched {
			t := time.NewTimer(rt.opts.DrainDelay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				errs = append(errs, &berth.Error{Code: berth.CodeUnavailable,
					Message: fmt.Sprintf("draining agent %q stopped before kube-proxy settled", agentName), Err: ctx.Err()})
			}
		}
		return errors.Join(errs...)
	}
}

// point makes agent's Service select the deployment behind target,
// retrying transient failures until ctx ends. switched reports whether it
// selected another deployment before.
func (rt *Router) point(ctx context.Context, agent, target string) (switched bool, err error) {
	defer rt.lock(agent)()
	r := rt.rt
	svcs := r.client.CoreV1().Services(r.opts.Namespace)
	name, err := r.serviceName(target)
	if err != nil {
		return false, err
	}
	var selector map[string]string
	err = retry(ctx, func() error {
		svc, err := svcs.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if svc.Labels[LabelManagedBy] != ManagedBy || svc.Labels[LabelComponent] != ComponentDeployment ||
			svc.Labels[LabelAgent] != agent || len(svc.Spec.Selector) == 0 {
			return berth.Errorf(berth.CodeInvalid, "Service %s is not a deployment of agent %s", name, agent)
		}
		selector = svc.Spec.Selector
		return nil
	})
	if err != nil {
		return false, wrapRoute(r, err, "cannot read the Service behind %s", target)
	}
	want := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name:      AgentServiceName(agent),
			Namespace: r.opts.Namespace,
			Labels:    map[string]string{LabelManagedBy: ManagedBy, LabelComponent: ComponentAgent, LabelAgent: agent},
		},
		Spec: serviceSpec(maps.Clone(selector)),
	}
	err = retry(ctx, func() error {
		cur, err := svcs.Get(ctx, want.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = svcs.Create(ctx, want.DeepCopy(), metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("services"), want.Name, err) // raced: look again
			}
			return err
		}
		if err != nil {
			return err
		}
		if !isAgentService(cur, agent) {
			return berth.Errorf(berth.CodeConflict, "a Service named %s exists and is not agent %s's", want.Name, agent)
		}
		if maps.Equal(cur.Spec.Selector, selector) {
			return nil
		}
		switched = true
		cur.Spec.Selector = maps.Clone(selector)
		_, err = svcs.Update(ctx, cur, metav1.UpdateOptions{})
		return err // a conflict is retried from the Get
	})
	if err != nil {
		return false, wrapRoute(r, err, "cannot point Service %s at %s", want.Name, target)
	}
	return switched, nil
}

// isAgentService reports whether svc is agent's Service, made by Berth.
func isAgentService(svc *corev1.Service, agent string) bool {
	l := svc.Labels
	return l[LabelManagedBy] == ManagedBy && l[LabelComponent] == ComponentAgent && l[LabelAgent] == agent
}

func wrapRoute(r *Runtime, err error, format string, args ...any) error {
	var be *berth.Error
	if errors.As(err, &be) {
		return err
	}
	return r.apiError(err, format, args...)
}

// serviceName returns the name of the Service an instance URL of r
// addresses.
func (r *Runtime) serviceName(instanceURL string) (string, error) {
	u, err := url.Parse(instanceURL)
	if err != nil {
		return "", berth.Errorf(berth.CodeInvalid, "invalid instance URL %q", instanceURL)
	}
	name, rest, _ := strings.Cut(u.Hostname(), ".")
	if name == "" || rest != r.opts.Namespace+".svc."+r.opts.ClusterDomain {
		return "", berth.Errorf(berth.CodeInvalid, "%q is not the URL of a Service in namespace %s", instanceURL, r.opts.Namespace)
	}
	return name, nil
}

// Unroute deletes agentName's Service (inside the cluster the agent's name
// then no longer resolves) and unroutes Next.
func (rt *Router) Unroute(agentName string) {
	ctx, cancel := context.WithTimeout(context.Background(), rt.opts.Timeout)
	defer cancel()
	if err := rt.unpoint(ctx, agentName); err != nil {
		rt.rt.log.Error("cannot delete the agent's Service", "agent", agentName, "err", err)
	}
	if rt.opts.Next != nil {
		rt.opts.Next.Unroute(agentName)
	}
}

func (rt *Router) unpoint(ctx context.Context, agent string) error {
	defer rt.lock(agent)()
	r := rt.rt
	svcs := r.client.CoreV1().Services(r.opts.Namespace)
	name := AgentServiceName(agent)
	return retry(ctx, func() error {
		svc, err := svcs.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if !isAgentService(svc, agent) {
			return nil // not ours
		}
		err = svcs.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &svc.UID}})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}
