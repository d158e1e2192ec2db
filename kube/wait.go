package kube

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berthhq/berth"
)

// fatalWaiting are reasons a container waits for that will not fix
// themselves in time: the image cannot be pulled or run, or its config is
// wrong. Start gives up on them at once (CodeDeployFailed) rather than at
// the ready timeout. ErrImagePull is not among them: the kubelet retries a
// failed pull once before backing off, and a registry hiccup deserves that.
var fatalWaiting = map[string]bool{
	"ImagePullBackOff":           true,
	"InvalidImageName":           true,
	"ErrImageNeverPull":          true,
	"CreateContainerConfigError": true,
	"CreateContainerError":       true,
	"RunContainerError":          true,
}

// observation is one look at a starting deployment.
type observation struct {
	// ready: every replica is ready, as the kubelet's readiness probe sees
	// it.
	ready bool
	// fail, when set, ends the Start.
	fail *berth.Error
	// state says why it is not ready yet, for the timeout message.
	state string
	// pod is a pod whose output may explain a timeout.
	pod string
}

// waitReady polls p's Deployment and pods until the deployment is healthy,
// fails, or sctx or p's ready timeout ends. The pause between polls starts
// short, because a warm image often starts in well under a second, and
// backs off to Options.PollInterval.
func (r *Runtime) waitReady(sctx, ctx context.Context, p *plan) error {
	actx, cancel := context.WithTimeout(sctx, p.readyTimeout)
	defer cancel()
	delay := max(r.opts.PollInterval/20, time.Millisecond)
	last := observation{state: "no pod seen yet"}
	for {
		obs, err := r.observe(actx, p)
		switch {
		case err != nil && actx.Err() == nil:
			if !retriable(err) {
				return r.apiError(err, "cannot follow the start of deployment %s", p.id)
			}
			last.state = "the Kubernetes API did not answer"
		case err != nil:
			// The deadline cut the request short; handled below.
		case obs.fail != nil:
			return obs.fail
		case obs.ready && !r.opts.CheckHTTP:
			return nil
		case obs.ready:
			url := p.url + p.healthPath
			herr := r.check(actx, url)
			if herr == nil {
				return nil
			}
			obs.state = fmt.Sprintf("its pods are ready but GET %s through its Service failed: %s", url, berth.HealthReason(herr))
			last = obs
		default:
			last = obs
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
		delay = min(2*delay, r.opts.PollInterval)
	}
	if e := interruption(sctx, p.id); e != nil {
		return e
	}
	// The ready timeout: say what was last seen, and what the agent said.
	tctx, cancel2 := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel2()
	out := ""
	if last.pod != "" {
		out = describeOutput(r.tail(tctx, last.pod, false))
	}
	return berth.Errorf(berth.CodeTargetUnhealthy, "deployment %s did not become healthy within %s (%s)%s",
		p.id, p.readyTimeout, last.state, out)
}

// observe looks once at p's Deployment and, unless it is ready, its pods.
// An error is an API call that failed.
func (r *Runtime) observe(ctx context.Context, p *plan) (observation, error) {
	d, err := r.client.AppsV1().Deployments(r.opts.Namespace).Get(ctx, p.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return observation{fail: berth.Errorf(berth.CodeDeployFailed, "deployment %s was removed before it became healthy", p.id)}, nil
	}
	if err != nil {
		return observation{}, err
	}
	if !ours(d, p.id) {
		return observation{fail: berth.Errorf(berth.CodeConflict, "the Kubernetes Deployment %s was replaced while deployment %s started", p.name, p.id)}, nil
	}
	want := replicasOf(d)
	if want == 0 {
		return observation{fail: berth.Errorf(berth.CodeDeployFailed, "deployment %s was stopped before it became healthy", p.id)}, nil
	}
	st := d.Status
	// Status describes the current spec only once the controller has seen
	// it; until then it may be a previous run's.
	current := st.ObservedGeneration >= d.Generation
	if current && st.UpdatedReplicas >= want && st.ReadyReplicas >= want {
		return observation{ready: true}, nil
	}
	if current {
		if obs, failed := conditionFailure(d, p); failed {
			return obs, nil
		}
	}
	pods, err := r.pods(ctx, p.id)
	if err != nil {
		return observation{}, err
	}
	return r.diagnose(ctx, p, pods), nil
}

// conditionFailure turns the Deployment conditions that mean "this will not
// come up" into a failure.
func conditionFailure(d *appsv1.Deployment, p *plan) (observation, bool) {
	for _, c := range d.Status.Conditions {
		switch {
		case c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue:
			// The pods cannot even be created: a quota, a pod security
			// policy, a webhook said no.
			return observation{fail: berth.Errorf(berth.CodeDeployFailed, "Kubernetes cannot create the pods of deployment %s: %s",
				p.id, c.Message)}, true
		case c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded":
			return observation{fail: berth.Errorf(berth.CodeTargetUnhealthy, "deployment %s did not become healthy within %s (Kubernetes: %s)",
				p.id, p.readyTimeout, c.Message)}, true
		}
	}
	return observation{}, false
}

// diagnose reads the pods of a deployment that is not ready: a container
// that exited or cannot start fails the Start; otherwise it says what the
// pods are waiting for.
func (r *Runtime) diagnose(ctx context.Context, p *plan, pods []corev1.Pod) observation {
	if len(pods) == 0 {
		return observation{state: "no pod created yet"}
	}
	var obs observation
	for i := range pods {
		pod := &pods[i]
		for _, cs := range pod.Status.ContainerStatuses {
			if cs.Name != containerName || cs.Ready {
				continue
			}
			if t := cs.State.Terminated; t != nil {
				return observation{fail: r.exited(ctx, p, pod, t, false)}
			}
			if t := cs.LastTerminationState.Terminated; t != nil && cs.RestartCount > 0 {
				return observation{fail: r.exited(ctx, p, pod, t, true)}
			}
			if w := cs.State.Waiting; w != nil {
				if fatalWaiting[w.Reason] {
					return observation{fail: berth.Errorf(berth.CodeDeployFailed, "deployment %s cannot start its container (%s): %s",
						p.id, w.Reason, w.Message)}
				}
				obs.state = fmt.Sprintf("pod %s is waiting: %s", pod.Name, w.Reason)
			}
			if cs.State.Running != nil {
				obs.state = fmt.Sprintf("pod %s runs but its readiness probe GET %s does not pass", pod.Name, p.healthPath)
				obs.pod = pod.Name
			}
		}
		if obs.state != "" {
			continue
		}
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
				obs.state = fmt.Sprintf("pod %s cannot be scheduled: %s", pod.Name, c.Message)
			}
		}
		if obs.state == "" {
			obs.state = fmt.Sprintf("pod %s is %s", pod.Name, strings.ToLower(string(pod.Status.Phase)))
		}
	}
	return obs
}

// exited is the failure of a container that ended before it was healthy,
// quoting its last output.
func (r *Runtime) exited(ctx context.Context, p *plan, pod *corev1.Pod, t *corev1.ContainerStateTerminated, previous bool) *berth.Error {
	how := fmt.Sprintf("exit code %d", t.ExitCode)
	if t.Signal != 0 {
		how = fmt.Sprintf("signal %d", t.Signal)
	}
	if t.Reason != "" {
		how += ", " + t.Reason
	}
	return berth.Errorf(berth.CodeTargetUnhealthy, "deployment %s exited before becoming healthy (%s)%s",
		p.id, how, describeOutput(r.tail(ctx, pod.Name, previous)))
}

// tail returns the last lines a pod's agent container printed, or nil if
// they cannot be read.
func (r *Runtime) tail(ctx context.Context, pod string, previous bool) []string {
	lines, limit := int64(tailLines), int64(tailBytes)
	b, err := r.client.CoreV1().Pods(r.opts.Namespace).GetLogs(pod, &corev1.PodLogOptions{
		Container:  containerName,
		Previous:   previous,
		TailLines:  &lines,
		LimitBytes: &limit,
	}).DoRaw(ctx)
	if err != nil {
		return nil
	}
	text := strings.TrimRight(string(b), "\n")
	if text == "" {
		return nil
	}
	return strings.Split(text, "\n")
}

// describeOutput quotes output lines for an error message.
func describeOutput(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return fmt.Sprintf("; last %d lines of output:\n%s", len(lines), strings.Join(lines, "\n"))
}

// check makes one health request.
func (r *Runtime) check(ctx context.Context, url string) error {
	return berth.CheckHealth(ctx, r.http, url)
}
