package kube_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/kube"
)

// The fake cluster runs agents by image name: the tag says how the agent
// behaves.
const (
	imageHealthy   = "registry.test/agent:healthy"
	imageExit      = "registry.test/agent:exit"      // exits at start with code 3
	imageUnhealthy = "registry.test/agent:unhealthy" // runs, never ready
	imageBadPull   = "registry.test/agent:badpull"   // cannot be pulled
	imageStuck     = "registry.test/agent:stuck"     // unschedulable; the deadline passes
)

// Log lines the fake cluster returns: the current container's log, and the
// previous (crashed) container's.
const (
	logCurrent  = "agent starting"
	logPrevious = "agent failing at start: boom"
)

const whoamiPath = "/whoami"

var (
	deploymentsGVR = appsv1.SchemeGroupVersion.WithResource("deployments")
	deploymentGVK  = appsv1.SchemeGroupVersion.WithKind("Deployment")
	podsGVR        = corev1.SchemeGroupVersion.WithResource("pods")
	podGVK         = corev1.SchemeGroupVersion.WithKind("Pod")
)

// cluster is a fake Kubernetes cluster: client-go's fake clientset, a small
// controller that plays the Deployment controller and the kubelet, and an
// HTTP transport that plays cluster DNS, kube-proxy and the agents.
//
// The controller is lazy: before anything reads Deployments or pods, it
// moves every Deployment one step towards its spec (pods created, then
// running or crashed as their image says) and updates its status. Reactors
// run under the fake's lock, so each step is atomic with respect to the
// runtime's own calls, and a Start has to poll to see its pods come up.
type cluster struct {
	cs  *fake.Clientset
	seq int // pod name and creation order; guarded by the fake's lock
	// failServices, while > 0, fails that many Service writes with 503.
	failServices atomic.Int32
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{cs: fake.NewClientset()}
	for _, verb := range []string{"get", "list"} {
		for _, res := range []string{"deployments", "pods"} {
			c.cs.PrependReactor(verb, res, func(k8stesting.Action) (bool, runtime.Object, error) {
				c.step(t)
				return false, nil, nil
			})
		}
	}
	c.cs.PrependReactor("get", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "log" {
			return false, nil, nil
		}
		opts, _ := a.(k8stesting.GenericAction).GetValue().(*corev1.PodLogOptions)
		if opts != nil && opts.Previous {
			return true, &runtime.Unknown{Raw: []byte(logPrevious + "\n")}, nil
		}
		return true, &runtime.Unknown{Raw: []byte(logCurrent + "\n")}, nil
	})
	for _, verb := range []string{"create", "update"} {
		c.cs.PrependReactor(verb, "services", func(k8stesting.Action) (bool, runtime.Object, error) {
			if c.failServices.Load() > 0 {
				c.failServices.Add(-1)
				return true, nil, apierrors.NewServiceUnavailable("injected failure")
			}
			return false, nil, nil
		})
	}
	return c
}

// ns counts namespaces, so each runtime of a test gets a fresh one.
var nsSeq atomic.Int64

func newNamespace() string { return fmt.Sprintf("agents-%d", nsSeq.Add(1)) }

// runtime returns a runtime on a fresh namespace of c with fast test
// settings (mod may change them), closed when t ends.
func (c *cluster) runtime(t *testing.T, mod func(*kube.Options)) *kube.Runtime {
	t.Helper()
	opts := kube.Options{
		Client:       c.cs,
		Namespace:    newNamespace(),
		PollInterval: 20 * time.Millisecond,
		CheckHTTP:    true,
		HTTPClient:   c.httpClient(),
		Logger:       slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
	if mod != nil {
		mod(&opts)
	}
	rt, err := kube.New(opts)
	if err != nil {
		t.Fatalf("kube.New: %v", err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

// httpClient reaches Service URLs of c.
func (c *cluster) httpClient() *http.Client {
	return &http.Client{Transport: kubeProxy{c}, Timeout: 10 * time.Second}
}

// imageOf is the image of a pod template's agent container.
func imageOf(spec corev1.PodSpec) string {
	if len(spec.Containers) == 0 {
		return ""
	}
	return spec.Containers[0].Image
}

// step moves every Deployment one step towards its spec. It runs under the
// fake's lock, so it uses the tracker directly.
func (c *cluster) step(t *testing.T) {
	tr := c.cs.Tracker()
	obj, err := tr.List(deploymentsGVR, deploymentGVK, "")
	if err != nil {
		t.Errorf("fake cluster: list deployments: %v", err)
		return
	}
	deps := obj.(*appsv1.DeploymentList).Items
	obj, err = tr.List(podsGVR, podGVK, "")
	if err != nil {
		t.Errorf("fake cluster: list pods: %v", err)
		return
	}
	podsOf := map[string][]corev1.Pod{}
	for _, p := range obj.(*corev1.PodList).Items {
		key := p.Namespace + "/" + p.Labels[kube.LabelDeploymentID]
		podsOf[key] = append(podsOf[key], p)
	}
	live := map[string]bool{}
	for i := range deps {
		d := &deps[i]
		key := d.Namespace + "/" + d.Labels[kube.LabelDeploymentID]
		live[key] = true
		c.reconcile(t, d, podsOf[key])
	}
	// Garbage collection: pods of deleted Deployments go.
	for key, pods := range podsOf {
		if !live[key] {
			for _, p := range pods {
				_ = tr.Delete(podsGVR, p.Namespace, p.Name)
			}
		}
	}
}

// reconcile moves one Deployment and its pods one step.
func (c *cluster) reconcile(t *testing.T, d *appsv1.Deployment, pods []corev1.Pod) {
	tr := c.cs.Tracker()
	if len(d.Spec.Template.Spec.Containers) == 0 {
		return // not one of Berth's: nothing to run
	}
	want := 1
	if d.Spec.Replicas != nil {
		want = int(*d.Spec.Replicas)
	}
	image := imageOf(d.Spec.Template.Spec)
	var kept []corev1.Pod
	for _, p := range pods {
		// Pods of an older template, and extra pods, go away.
		if imageOf(p.Spec) != image || !maps.Equal(p.Labels, d.Spec.Template.Labels) || len(kept) >= want {
			_ = tr.Delete(podsGVR, p.Namespace, p.Name)
			continue
		}
		if p.Status.Phase == "" { // created in an earlier step: now it runs
			start(&p)
			if err := tr.Update(podsGVR, &p, p.Namespace); err != nil {
				t.Errorf("fake cluster: update pod: %v", err)
			}
		}
		kept = append(kept, p)
	}
	for len(kept) < want {
		c.seq++
		p := corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Name:              fmt.Sprintf("%s-%d", d.Name, c.seq),
				Namespace:         d.Namespace,
				Labels:            maps.Clone(d.Spec.Template.Labels),
				CreationTimestamp: metav1.NewTime(time.Unix(int64(c.seq), 0)),
			},
			Spec: *d.Spec.Template.Spec.DeepCopy(),
		}
		if err := tr.Create(podsGVR, &p, p.Namespace); err != nil {
			t.Errorf("fake cluster: create pod: %v", err)
		}
		kept = append(kept, p)
	}
	st := appsv1.DeploymentStatus{ObservedGeneration: d.Generation}
	for _, p := range kept {
		st.Replicas++
		st.UpdatedReplicas++
		if podReady(&p) {
			st.ReadyReplicas++
			st.AvailableReplicas++
		}
	}
	if image == imageStuck && want > 0 {
		st.Conditions = []appsv1.DeploymentCondition{{
			Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded",
			Message: fmt.Sprintf("ReplicaSet %q has timed out progressing.", d.Name),
		}}
	}
	if equalStatus(d.Status, st) {
		return
	}
	d.Status = st
	if err := tr.Update(deploymentsGVR, d, d.Namespace); err != nil {
		t.Errorf("fake cluster: update deployment status: %v", err)
	}
}

func equalStatus(a, b appsv1.DeploymentStatus) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// start sets a newly created pod's status as its image says.
func start(p *corev1.Pod) {
	running := corev1.ContainerStatus{Name: p.Spec.Containers[0].Name, Image: imageOf(p.Spec), Started: ptr(true),
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
	scheduled := corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}
	ready := corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse}
	p.Status.Phase = corev1.PodRunning
	switch imageOf(p.Spec) {
	case imageHealthy:
		running.Ready = true
		ready.Status = corev1.ConditionTrue
	case imageUnhealthy:
	case imageExit:
		running.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
			Message: "back-off 10s restarting failed container"}}
		running.LastTerminationState = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 3, Reason: "Error"}}
		running.RestartCount = 1
	case imageBadPull:
		p.Status.Phase = corev1.PodPending
		running.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff",
			Message: `Back-off pulling image "` + imageBadPull + `"`}}
	default: // imageStuck and anything unknown: never scheduled
		p.Status.Phase = corev1.PodPending
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
			Reason: "Unschedulable", Message: "0/3 nodes are available: 3 Insufficient cpu."}}
		return
	}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{running}
	p.Status.Conditions = []corev1.PodCondition{scheduled, ready}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func ptr[T any](v T) *T { return &v }

// kubeProxy is an http.RoundTripper that plays cluster DNS, kube-proxy and
// the agents: <service>.<namespace>.svc.cluster.local goes to a ready pod
// the Service selects, which answers as its image says.
type kubeProxy struct{ c *cluster }

func (k kubeProxy) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		req.Body.Close()
	}
	host := req.URL.Hostname()
	name, rest, _ := strings.Cut(host, ".")
	ns, ok := strings.CutSuffix(rest, ".svc.cluster.local")
	notFound := &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	if !ok {
		return nil, notFound
	}
	svc, err := k.c.cs.CoreV1().Services(ns).Get(req.Context(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, notFound
	}
	if err != nil {
		return nil, err
	}
	pods, err := k.c.cs.CoreV1().Pods(ns).List(req.Context(), metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(svc.Spec.Selector).String(),
	})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		if p := &pods.Items[i]; podReady(p) {
			return serve(p, req), nil
		}
	}
	// A Service without endpoints refuses connections.
	return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
}

// serve answers req as the agent in pod p.
func serve(p *corev1.Pod, req *http.Request) *http.Response {
	c := p.Spec.Containers[0]
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	rec := httptest.NewRecorder()
	switch req.URL.Path {
	case c.ReadinessProbe.HTTPGet.Path:
		if c.Image == imageHealthy {
			fmt.Fprintln(rec, "ok")
		} else {
			rec.WriteHeader(http.StatusServiceUnavailable)
		}
	case whoamiPath:
		json.NewEncoder(rec).Encode(map[string]string{"version": env["BERTH_AGENT_VERSION"], "pod": p.Name})
	default:
		rec.WriteHeader(http.StatusNotFound)
	}
	return rec.Result()
}

// deployment reads the Kubernetes Deployment of deployment id in ns.
func (c *cluster) deployment(t *testing.T, ns, id string) *appsv1.Deployment {
	t.Helper()
	list, err := c.cs.AppsV1().Deployments(ns).List(context.Background(), metav1.ListOptions{
		LabelSelector: kube.LabelDeploymentID + "=" + id,
	})
	if err != nil {
		t.Fatalf("list deployments: %v", err)
	}
	if len(list.Items) != 1 {
		t.Fatalf("deployments of %s = %d, want 1", id, len(list.Items))
	}
	return &list.Items[0]
}

// service reads Service name in ns, or returns nil if there is none.
func (c *cluster) service(t *testing.T, ns, name string) *corev1.Service {
	t.Helper()
	svc, err := c.cs.CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("get service %s: %v", name, err)
	}
	return svc
}

// get makes one GET through the fake cluster and returns status and body.
func (c *cluster) get(t *testing.T, url string) (int, string, error) {
	t.Helper()
	resp, err := c.httpClient().Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// spec returns a spec of agent "echo" running image.
func spec(id, version, image string) berth.DeploymentSpec {
	return berth.DeploymentSpec{
		DeploymentID: id,
		AgentID:      "6f1c2d3e-0000-4000-8000-000000000001",
		AgentName:    "echo",
		Version:      version,
		Config: berth.Config{
			Image:        image,
			HealthPath:   "/healthz",
			Env:          map[string]string{"LOG_LEVEL": "debug", "PORT": "1"},
			ReadyTimeout: berth.Duration(time.Minute),
		},
	}
}
