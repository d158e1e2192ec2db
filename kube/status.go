package kube

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/berthhq/berth"
)

// seen is what was last reported (or first seen) of one deployment.
type seen struct {
	status   berth.DeploymentStatus
	restarts int
}

// watchStatus checks every StatusInterval until ctx ends.
func (r *Runtime) watchStatus(ctx context.Context) {
	defer close(r.statusDone)
	t := time.NewTicker(r.opts.StatusInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.checkStatus(ctx)
	}
}

// started baselines a deployment whose Start succeeded.
func (r *Runtime) started(id string) {
	if r.opts.OnStatus == nil {
		return
	}
	r.statusMu.Lock()
	r.seen[id] = seen{status: berth.DeploymentRunning}
	r.statusMu.Unlock()
}

// checkStatus compares every running deployment with what was last seen of
// it and reports changes. One not seen before (a restarted Berth finding
// it) is only baselined: the reconciler is about to probe it anyway.
func (r *Runtime) checkStatus(ctx context.Context) {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	last := r.seen
	r.mu.Lock()
	starting := make(map[string]bool, len(r.starts))
	for id := range r.starts {
		starting[id] = true
	}
	r.mu.Unlock()

	sel := metav1.ListOptions{LabelSelector: labels.SelectorFromSet(map[string]string{LabelManagedBy: ManagedBy}).String()}
	deps, err := r.client.AppsV1().Deployments(r.opts.Namespace).List(ctx, sel)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("status check: cannot list deployments", "err", err)
		}
		return
	}
	pods, err := r.client.CoreV1().Pods(r.opts.Namespace).List(ctx, sel)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("status check: cannot list pods", "err", err)
		}
		return
	}
	restartsOf := map[string]int{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp == nil {
			restartsOf[p.Labels[LabelDeploymentID]] += int(restarts(p))
		}
	}
	running := map[string]bool{}
	for i := range deps.Items {
		d := &deps.Items[i]
		id := d.Labels[LabelDeploymentID]
		if id == "" || replicasOf(d) == 0 || starting[id] {
			continue
		}
		running[id] = true
		now := seen{status: berth.DeploymentRunning, restarts: restartsOf[id]}
		if d.Status.ReadyReplicas < 1 {
			now.status = berth.DeploymentStarting
		}
		prev, ok := last[id]
		// Counts are per pod and start over when a pod is replaced; what
		// was reported never goes down.
		if ok && now.restarts < prev.restarts {
			now.restarts = prev.restarts
		}
		last[id] = now
		if !ok || prev == now {
			continue
		}
		msg := ""
		if now.status == berth.DeploymentStarting {
			msg = "no pod is ready; Kubernetes is restarting it"
		}
		r.log.Warn("deployment status changed", "deployment", id, "status", now.status, "restarts", now.restarts)
		r.opts.OnStatus(id, now.status, now.restarts, msg)
	}
	// Stopped, removed or being started again: start over when seen next.
	for id := range last {
		if !running[id] {
			delete(last, id)
		}
	}
}
