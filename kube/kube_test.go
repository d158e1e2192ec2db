package kube_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/kube"
	"github.com/berthhq/berth/runtimetest"
)

// TestRuntime runs the shared acceptance suite against a fake cluster. Each
// subtest's runtime gets a namespace of its own on one fake cluster, so
// that the suite's one HTTP client reaches every subtest's Services.
func TestRuntime(t *testing.T) {
	c := newCluster(t)
	runtimetest.Run(t, runtimetest.Harness{
		New: func(t *testing.T) berth.Runtime { return c.runtime(t, nil) },
		Spec: func(t *testing.T, kind runtimetest.Kind, id, version string) berth.DeploymentSpec {
			image := map[runtimetest.Kind]string{
				runtimetest.Healthy:      imageHealthy,
				runtimetest.ExitAtStart:  imageExit,
				runtimetest.NeverHealthy: imageUnhealthy,
			}[kind]
			return spec(id, version, image)
		},
		Client:            c.httpClient(),
		LogOutput:         logCurrent,
		ExitOutput:        logPrevious,
		WhoamiPath:        whoamiPath,
		ShortReadyTimeout: 300 * time.Millisecond,
	})
}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustStart(t *testing.T, rt *kube.Runtime, s berth.DeploymentSpec) berth.Instance {
	t.Helper()
	inst, err := rt.Start(ctxFor(t), s)
	if err != nil {
		t.Fatalf("Start(%q) = %v, want success", s.DeploymentID, err)
	}
	return inst
}

func wantCode(t *testing.T, what string, err error, want berth.Code) {
	t.Helper()
	if got := berth.ErrorCode(err); got != want {
		t.Errorf("%s = %v (code %q), want code %q", what, err, got, want)
	}
}

func envOf(c corev1.Container) map[string]string {
	env := map[string]string{}
	for _, e := range c.Env {
		if _, dup := env[e.Name]; dup {
			env[e.Name] = "DUPLICATE"
			continue
		}
		env[e.Name] = e.Value
	}
	return env
}

// TestStartObjects checks what Start asks the cluster for.
func TestStartObjects(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, func(o *kube.Options) { o.StopTimeout = 15 * time.Second })
	ns := rt.Namespace()
	s := spec("dep-1", "1.2.0", imageHealthy)
	s.Config.ReadyTimeout = berth.Duration(1500 * time.Millisecond)
	inst := mustStart(t, rt, s)

	d := c.deployment(t, ns, "dep-1")
	if !strings.HasPrefix(d.Name, "berth-echo-1-2-0-") {
		t.Errorf("Deployment name = %q, want berth-echo-1-2-0-<hash>", d.Name)
	}
	wantURL := "http://" + d.Name + "." + ns + ".svc.cluster.local"
	if inst.URL != wantURL {
		t.Errorf("Start URL = %q, want %q", inst.URL, wantURL)
	}
	for k, want := range map[string]string{
		kube.LabelManagedBy:    "berth",
		kube.LabelAgent:        "echo",
		kube.LabelVersion:      "1.2.0",
		kube.LabelAgentID:      s.AgentID,
		kube.LabelDeploymentID: "dep-1",
	} {
		if got := d.Labels[k]; got != want {
			t.Errorf("Deployment label %s = %q, want %q", k, got, want)
		}
		if got := d.Spec.Template.Labels[k]; got != want {
			t.Errorf("pod template label %s = %q, want %q", k, got, want)
		}
	}
	if got := *d.Spec.ProgressDeadlineSeconds; got != 2 {
		t.Errorf("progressDeadlineSeconds = %d, want 2 (1.5s rounded up)", got)
	}
	if got := *d.Spec.Replicas; got != 1 {
		t.Errorf("replicas = %d, want 1", got)
	}
	pod := d.Spec.Template.Spec
	if got := *pod.TerminationGracePeriodSeconds; got != 15 {
		t.Errorf("terminationGracePeriodSeconds = %d, want 15", got)
	}
	if *pod.AutomountServiceAccountToken || *pod.EnableServiceLinks {
		t.Errorf("automountServiceAccountToken, enableServiceLinks = %v, %v; want false, false",
			*pod.AutomountServiceAccountToken, *pod.EnableServiceLinks)
	}
	ctr := pod.Containers[0]
	if ctr.Image != imageHealthy {
		t.Errorf("image = %q, want %q", ctr.Image, imageHealthy)
	}
	if len(ctr.Ports) != 1 || ctr.Ports[0].ContainerPort != 8080 || ctr.Ports[0].Name != "http" {
		t.Errorf("ports = %+v, want one named http on 8080", ctr.Ports)
	}
	if p := ctr.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "http" {
		t.Errorf("readiness probe = %+v, want GET /healthz on port http", p)
	}
	env := envOf(ctr)
	for k, want := range map[string]string{
		"PORT":                "8080", // Berth's wins over the version's env
		"LOG_LEVEL":           "debug",
		"BERTH_AGENT_ID":      s.AgentID,
		"BERTH_AGENT_NAME":    "echo",
		"BERTH_AGENT_VERSION": "1.2.0",
		"BERTH_DEPLOYMENT_ID": "dep-1",
	} {
		if env[k] != want {
			t.Errorf("env %s = %q, want %q", k, env[k], want)
		}
	}

	svc := c.service(t, ns, d.Name)
	if svc == nil {
		t.Fatalf("no Service %s", d.Name)
	}
	if got, want := svc.Spec.Selector, map[string]string{kube.LabelManagedBy: "berth", kube.LabelDeploymentID: "dep-1"}; !equalMaps(got, want) {
		t.Errorf("Service selector = %v, want %v", got, want)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 80 || svc.Spec.Ports[0].TargetPort.String() != "http" {
		t.Errorf("Service ports = %+v, want 80 → http", svc.Spec.Ports)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestStartRejects covers specs Start refuses before touching the cluster.
func TestStartRejects(t *testing.T) {
	tests := []struct {
		name   string
		mod    func(*berth.DeploymentSpec)
		code   berth.Code
		inText string
	}{
		{"no image", func(s *berth.DeploymentSpec) { s.Config.Image = "" }, berth.CodeDeployFailed, `"image"`},
		{"blank image", func(s *berth.DeploymentSpec) { s.Config.Image = "  " }, berth.CodeDeployFailed, `"image"`},
		{"bad agent name", func(s *berth.DeploymentSpec) { s.AgentName = "Echo_1" }, berth.CodeInvalid, "agent name"},
		{"bad id", func(s *berth.DeploymentSpec) { s.DeploymentID = "../x" }, berth.CodeInvalid, "deployment id"},
		{"long id", func(s *berth.DeploymentSpec) { s.DeploymentID = strings.Repeat("a", 64) }, berth.CodeInvalid, "deployment id"},
		{"no version", func(s *berth.DeploymentSpec) { s.Version = "" }, berth.CodeInvalid, "version"},
	}
	c := newCluster(t)
	rt := c.runtime(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := spec("dep-x", "1.0.0", imageHealthy)
			tt.mod(&s)
			_, err := rt.Start(ctxFor(t), s)
			wantCode(t, "Start", err, tt.code)
			if msg := berth.ErrorMessage(err); !strings.Contains(msg, tt.inText) {
				t.Errorf("Start message = %q, want it to mention %s", msg, tt.inText)
			}
		})
	}
	list, err := c.cs.AppsV1().Deployments(rt.Namespace()).List(ctxFor(t), metav1.ListOptions{})
	if err != nil || len(list.Items) != 0 {
		t.Errorf("Deployments after rejected Starts = %d, %v; want none", len(list.Items), err)
	}
}

// TestStartFailsFast covers failures that end a Start long before its
// ready timeout.
func TestStartFailsFast(t *testing.T) {
	tests := []struct {
		image  string
		code   berth.Code
		inText string
	}{
		{imageExit, berth.CodeTargetUnhealthy, "exit code 3"},
		{imageBadPull, berth.CodeDeployFailed, "ImagePullBackOff"},
		{imageStuck, berth.CodeTargetUnhealthy, "timed out progressing"},
	}
	c := newCluster(t)
	rt := c.runtime(t, nil)
	for i, tt := range tests {
		t.Run(tt.image, func(t *testing.T) {
			s := spec(fmt.Sprintf("dep-%d", i), "1.0.0", tt.image)
			s.Config.ReadyTimeout = berth.Duration(time.Hour)
			_, err := rt.Start(ctxFor(t), s)
			wantCode(t, "Start", err, tt.code)
			if errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Start = %v; it waited for a deadline", err)
			}
			if msg := berth.ErrorMessage(err); !strings.Contains(msg, tt.inText) {
				t.Errorf("Start message = %q, want it to mention %q", msg, tt.inText)
			}
			d := c.deployment(t, rt.Namespace(), s.DeploymentID)
			if *d.Spec.Replicas != 0 {
				t.Errorf("replicas after a failed Start = %d, want 0", *d.Spec.Replicas)
			}
			if got := d.Annotations[kube.AnnotationLastError]; got != berth.ErrorMessage(err) {
				t.Errorf("last-error annotation = %q, want the Start's message %q", got, berth.ErrorMessage(err))
			}
			if svc := c.service(t, rt.Namespace(), d.Name); svc != nil {
				t.Errorf("Service %s still exists after a failed Start", d.Name)
			}
			// With the pods gone, Logs still says why.
			var b strings.Builder
			if err := rt.Logs(ctxFor(t), s.DeploymentID, &b); err != nil {
				t.Fatalf("Logs = %v", err)
			}
			if !strings.Contains(b.String(), tt.inText) {
				t.Errorf("Logs = %q, want the failure %q", b.String(), tt.inText)
			}
		})
	}
}

// TestStopAndStartAgain: Stop keeps the Deployment at 0 replicas and
// deletes its Service; starting the same id again scales it back up.
func TestStopAndStartAgain(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, nil)
	ns := rt.Namespace()
	s := spec("dep-1", "1.0.0", imageHealthy)
	inst := mustStart(t, rt, s)
	if err := rt.Stop(ctxFor(t), "dep-1"); err != nil {
		t.Fatalf("Stop = %v", err)
	}
	d := c.deployment(t, ns, "dep-1")
	if *d.Spec.Replicas != 0 {
		t.Errorf("replicas after Stop = %d, want 0", *d.Spec.Replicas)
	}
	if c.service(t, ns, d.Name) != nil {
		t.Errorf("Service %s exists after Stop", d.Name)
	}
	if _, _, err := c.get(t, inst.URL+"/healthz"); err == nil {
		t.Errorf("GET %s after Stop succeeded, want an error", inst.URL)
	}
	wantCode(t, "Probe after Stop", rt.Probe(ctxFor(t), "dep-1"), berth.CodeNotFound)

	// Started again, with a changed config.
	s.Config.Env = map[string]string{"LOG_LEVEL": "info"}
	again := mustStart(t, rt, s)
	if again.URL != inst.URL {
		t.Errorf("URL after a restart = %q, want the same %q", again.URL, inst.URL)
	}
	d = c.deployment(t, ns, "dep-1")
	if *d.Spec.Replicas != 1 || envOf(d.Spec.Template.Spec.Containers[0])["LOG_LEVEL"] != "info" {
		t.Errorf("after a restart: replicas %d, LOG_LEVEL %q; want 1, info", *d.Spec.Replicas, envOf(d.Spec.Template.Spec.Containers[0])["LOG_LEVEL"])
	}
	if code, _, err := c.get(t, again.URL+"/healthz"); err != nil || code != 200 {
		t.Errorf("GET after a restart = %d, %v; want 200", code, err)
	}
	_, err := rt.Start(ctxFor(t), s)
	wantCode(t, "Start of a running deployment", err, berth.CodeConflict)
}

// TestForeignObjects: objects Berth did not make are never taken over.
func TestForeignObjects(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, nil)
	ns := rt.Namespace()
	// Learn the name the deployment will get, then give it to a stranger.
	s := spec("dep-1", "1.0.0", imageHealthy)
	mustStart(t, rt, s)
	name := c.deployment(t, ns, "dep-1").Name
	if err := rt.Remove(ctxFor(t), "dep-1"); err != nil {
		t.Fatalf("Remove = %v", err)
	}
	foreign := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": "other"}}}
	if _, err := c.cs.AppsV1().Deployments(ns).Create(ctxFor(t), foreign, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := rt.Start(ctxFor(t), s)
	wantCode(t, "Start over a foreign Deployment", err, berth.CodeConflict)
	got, err := c.cs.AppsV1().Deployments(ns).Get(ctxFor(t), name, metav1.GetOptions{})
	if err != nil || got.Labels["app"] != "other" || got.Spec.Replicas != nil {
		t.Errorf("foreign Deployment after Start = %+v, %v; want it untouched", got, err)
	}
	if ids, err := rt.Running(ctxFor(t)); err != nil || len(ids) != 0 {
		t.Errorf("Running() = %v, %v; want none (the foreign Deployment is not Berth's)", ids, err)
	}
}

// TestStopDuringStart: Stop ends a Start in progress.
func TestStopDuringStart(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, nil)
	s := spec("dep-1", "1.0.0", imageUnhealthy)
	s.Config.ReadyTimeout = berth.Duration(time.Hour)
	errc := make(chan error, 1)
	go func() {
		_, err := rt.Start(ctxFor(t), s)
		errc <- err
	}()
	// Wait until the Start has made its Deployment.
	for {
		ids, err := rt.Running(ctxFor(t))
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(ids, "dep-1") {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := rt.Stop(ctxFor(t), "dep-1"); err != nil {
		t.Fatalf("Stop = %v", err)
	}
	err := <-errc
	wantCode(t, "Start interrupted by Stop", err, berth.CodeDeployFailed)
	if !strings.Contains(berth.ErrorMessage(err), "stopped") {
		t.Errorf("Start message = %q, want it to say it was stopped", berth.ErrorMessage(err))
	}
	if ids, _ := rt.Running(ctxFor(t)); slices.Contains(ids, "dep-1") {
		t.Errorf("Running() = %v after Stop, want no dep-1", ids)
	}
}

// TestCloseLeavesAgentsRunning: Close does not stop agents, and a new
// runtime on the same namespace (a restarted Berth) finds and manages them.
func TestCloseLeavesAgentsRunning(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, nil)
	ns := rt.Namespace()
	inst := mustStart(t, rt, spec("dep-1", "1.0.0", imageHealthy))
	mustStart(t, rt, spec("dep-2", "1.0.1", imageHealthy))
	if err := rt.Stop(ctxFor(t), "dep-2"); err != nil {
		t.Fatal(err)
	}
	if err := rt.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if code, _, err := c.get(t, inst.URL+"/healthz"); err != nil || code != 200 {
		t.Errorf("GET %s after Close = %d, %v; want 200", inst.URL, code, err)
	}
	rt2 := c.runtime(t, func(o *kube.Options) { o.Namespace = ns })
	ids, err := rt2.Running(ctxFor(t))
	if err != nil || !slices.Equal(ids, []string{"dep-1"}) {
		t.Errorf("Running() on a new runtime = %v, %v; want [dep-1]", ids, err)
	}
	if err := rt2.Probe(ctxFor(t), "dep-1"); err != nil {
		t.Errorf("Probe(dep-1) on a new runtime = %v", err)
	}
	wantCode(t, "Probe(stopped dep-2) on a new runtime", rt2.Probe(ctxFor(t), "dep-2"), berth.CodeNotFound)
	var b strings.Builder
	if err := rt2.Logs(ctxFor(t), "dep-1", &b); err != nil || !strings.Contains(b.String(), logCurrent) {
		t.Errorf("Logs(dep-1) on a new runtime = %q, %v; want %q", b.String(), err, logCurrent)
	}
	if err := rt2.Remove(ctxFor(t), "dep-2"); err != nil {
		t.Errorf("Remove(dep-2) on a new runtime = %v", err)
	}
	list, _ := c.cs.AppsV1().Deployments(ns).List(ctxFor(t), metav1.ListOptions{})
	if len(list.Items) != 1 {
		t.Errorf("Deployments after Remove(dep-2) = %d, want 1", len(list.Items))
	}
}

// TestProbeWithoutHTTP: without CheckHTTP, Probe trusts the ready count.
func TestProbeWithoutHTTP(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, func(o *kube.Options) { o.CheckHTTP = false; o.HTTPClient = nil })
	mustStart(t, rt, spec("dep-1", "1.0.0", imageHealthy))
	if err := rt.Probe(ctxFor(t), "dep-1"); err != nil {
		t.Errorf("Probe = %v, want nil", err)
	}
	// A pod that stops being ready makes the probe fail.
	pods, err := c.cs.CoreV1().Pods(rt.Namespace()).List(ctxFor(t), metav1.ListOptions{})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("pods = %v, %v; want 1", pods, err)
	}
	// The fake controller computes the Deployment's status from its pods.
	p := pods.Items[0]
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
	if _, err := c.cs.CoreV1().Pods(rt.Namespace()).Update(ctxFor(t), &p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "Probe of an unready deployment", rt.Probe(ctxFor(t), "dep-1"), berth.CodeTargetUnhealthy)
}

// TestLogsSeveralPods: Logs names each pod.
func TestLogsSeveralPods(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, func(o *kube.Options) { o.Replicas = 2 })
	mustStart(t, rt, spec("dep-1", "1.0.0", imageHealthy))
	var b strings.Builder
	if err := rt.Logs(ctxFor(t), "dep-1", &b); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(b.String(), "[berth] pod "); got != 2 {
		t.Errorf("Logs = %q; names %d pods, want 2", b.String(), got)
	}
	if got := strings.Count(b.String(), logCurrent); got != 2 {
		t.Errorf("Logs = %q; has %d pod logs, want 2", b.String(), got)
	}
}

// TestClosedRuntime: every call fails with CodeUnavailable after Close.
func TestClosedRuntime(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, nil)
	rt.Close()
	ctx := ctxFor(t)
	_, err := rt.Start(ctx, spec("dep-1", "1.0.0", imageHealthy))
	wantCode(t, "Start", err, berth.CodeUnavailable)
	wantCode(t, "Probe", rt.Probe(ctx, "dep-1"), berth.CodeUnavailable)
	wantCode(t, "Stop", rt.Stop(ctx, "dep-1"), berth.CodeUnavailable)
	wantCode(t, "Remove", rt.Remove(ctx, "dep-1"), berth.CodeUnavailable)
	wantCode(t, "Logs", rt.Logs(ctx, "dep-1", io.Discard), berth.CodeUnavailable)
	_, err = rt.Running(ctx)
	wantCode(t, "Running", err, berth.CodeUnavailable)
}

// TestConcurrentStartsOfOneID: one wins, the other is a conflict.
func TestConcurrentStartsOfOneID(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, nil)
	s := spec("dep-1", "1.0.0", imageHealthy)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { _, errs[i] = rt.Start(ctxFor(t), s) })
	}
	wg.Wait()
	ok, conflict := 0, 0
	for _, err := range errs {
		switch berth.ErrorCode(err) {
		case "":
			ok++
		case berth.CodeConflict:
			conflict++
		default:
			t.Errorf("concurrent Start = %v, want success or conflict", err)
		}
	}
	if ok != 1 || conflict != 1 {
		t.Errorf("concurrent Starts: %d succeeded, %d conflicted; want 1 and 1", ok, conflict)
	}
	if err := rt.Probe(ctxFor(t), "dep-1"); err != nil {
		t.Errorf("Probe after concurrent Starts = %v", err)
	}
}

func TestNewRejects(t *testing.T) {
	c := newCluster(t)
	tests := []struct {
		name string
		opts kube.Options
	}{
		{"no client", kube.Options{Namespace: "agents"}},
		{"no namespace", kube.Options{Client: c.cs}},
		{"bad namespace", kube.Options{Client: c.cs, Namespace: "Agents_1"}},
	}
	for _, tt := range tests {
		if _, err := kube.New(tt.opts); berth.ErrorCode(err) != berth.CodeInvalid {
			t.Errorf("New(%s) = %v, want CodeInvalid", tt.name, err)
		}
	}
}

// setPod makes the pods of deployment id in ns ready or not, with the
// given restart count; the fake controller derives the Deployment's status
// from them.
func setPod(t *testing.T, c *cluster, ns, id string, ready bool, restarts int32) {
	t.Helper()
	pods, err := c.cs.CoreV1().Pods(ns).List(ctxFor(t), metav1.ListOptions{LabelSelector: kube.LabelDeploymentID + "=" + id})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("pods of %s = %v, %v", id, pods, err)
	}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	for _, p := range pods.Items {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}
		p.Status.ContainerStatuses[0].Ready = ready
		p.Status.ContainerStatuses[0].RestartCount = restarts
		if _, err := c.cs.CoreV1().Pods(ns).Update(ctxFor(t), &p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStatusReports: a running deployment whose pods stop being ready is
// reported starting, and running again when they recover; nothing is
// reported for a deployment after Stop returned, or at all after Close.
func TestStatusReports(t *testing.T) {
	type report struct {
		id       string
		status   berth.DeploymentStatus
		restarts int
	}
	reports := make(chan report, 256)
	var stopped1, closed atomic.Bool
	c := newCluster(t)
	rt := c.runtime(t, func(o *kube.Options) {
		o.StatusInterval = 5 * time.Millisecond
		o.OnStatus = func(id string, s berth.DeploymentStatus, n int, _ string) {
			if closed.Load() || (id == "dep-1" && stopped1.Load()) {
				t.Errorf("OnStatus(%s, %s, %d) after Stop or Close returned", id, s, n)
			}
			reports <- report{id, s, n}
		}
	})
	ns := rt.Namespace()
	mustStart(t, rt, spec("dep-1", "1.0.0", imageHealthy))
	mustStart(t, rt, spec("dep-2", "1.0.1", imageHealthy))
	// waitFor consumes reports until want. The status check may see the
	// pod and the Deployment at different moments (a restart counted while
	// the Deployment still looks ready), as on a real cluster, so other
	// reports of the same deployment may come first.
	waitFor := func(want report) {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for {
			select {
			case r := <-reports:
				if r == want {
					return
				}
				if r.id != want.id {
					t.Errorf("report %+v while waiting for %+v", r, want)
				}
			case <-timeout:
				t.Fatalf("no report %+v", want)
			}
		}
	}
	setPod(t, c, ns, "dep-1", false, 2)
	waitFor(report{"dep-1", berth.DeploymentStarting, 2})
	setPod(t, c, ns, "dep-1", true, 2)
	waitFor(report{"dep-1", berth.DeploymentRunning, 2})
	if err := rt.Stop(ctxFor(t), "dep-1"); err != nil {
		t.Fatal(err)
	}
	stopped1.Store(true)
	setPod(t, c, ns, "dep-2", false, 1)
	waitFor(report{"dep-2", berth.DeploymentStarting, 1})
	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}
	closed.Store(true)
}

// TestProbeThroughService: with CheckHTTP, a deployment whose pods are
// ready but whose Service does not answer fails its probe.
func TestProbeThroughService(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, nil)
	mustStart(t, rt, spec("dep-1", "1.0.0", imageHealthy))
	name := c.deployment(t, rt.Namespace(), "dep-1").Name
	if err := c.cs.CoreV1().Services(rt.Namespace()).Delete(ctxFor(t), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err := rt.Probe(ctxFor(t), "dep-1")
	wantCode(t, "Probe without a Service", err, berth.CodeTargetUnhealthy)
	if msg := berth.ErrorMessage(err); !strings.Contains(msg, "cannot resolve") {
		t.Errorf("Probe message = %q, want it to say the name does not resolve", msg)
	}
}

// TestServiceRepair: Start repairs its own Service if it was changed, and
// refuses to take over a Service that is not its deployment's.
func TestServiceRepair(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, nil)
	ns := rt.Namespace()
	s := spec("dep-1", "1.0.0", imageHealthy)
	mustStart(t, rt, s)
	name := c.deployment(t, ns, "dep-1").Name
	if err := rt.Stop(ctxFor(t), "dep-1"); err != nil {
		t.Fatal(err)
	}

	// Its own Service, with a selector someone broke.
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{
			kube.LabelManagedBy: "berth", kube.LabelDeploymentID: "dep-1", kube.LabelComponent: kube.ComponentDeployment}},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "nothing"}},
	}
	if _, err := c.cs.CoreV1().Services(ns).Create(ctxFor(t), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	inst := mustStart(t, rt, s)
	if code, _, err := c.get(t, inst.URL+"/healthz"); err != nil || code != 200 {
		t.Errorf("GET through the repaired Service = %d, %v; want 200", code, err)
	}

	// A stranger's Service by that name.
	if err := rt.Stop(ctxFor(t), "dep-1"); err != nil {
		t.Fatal(err)
	}
	svc.Labels = map[string]string{"app": "other"}
	if _, err := c.cs.CoreV1().Services(ns).Create(ctxFor(t), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := rt.Start(ctxFor(t), s)
	wantCode(t, "Start over a foreign Service", err, berth.CodeConflict)
	if got := c.service(t, ns, name); got == nil || got.Labels["app"] != "other" {
		t.Errorf("foreign Service after Start = %+v, want it untouched", got)
	}
	if d := c.deployment(t, ns, "dep-1"); *d.Spec.Replicas != 0 {
		t.Errorf("replicas after a Start that failed on its Service = %d, want 0", *d.Spec.Replicas)
	}
}
