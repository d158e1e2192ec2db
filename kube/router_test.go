package kube_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/kube"
)

// recorder is a Next that records what it is told.
type recorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *recorder) Route(agent, url string) func(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "route "+agent+" "+url)
	return func(context.Context) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.calls = append(r.calls, "drain "+agent)
		return nil
	}
}

func (r *recorder) Unroute(agent string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "unroute "+agent)
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	return c
}

// whoami asks the agent behind url which version it is.
func whoami(t *testing.T, c *cluster, url string) string {
	t.Helper()
	code, body, err := c.get(t, url+whoamiPath)
	if err != nil || code != 200 {
		t.Fatalf("GET %s%s = %d, %v; want 200", url, whoamiPath, code, err)
	}
	var v struct{ Version string }
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("GET %s%s: %v", url, whoamiPath, err)
	}
	return v.Version
}

func TestRouter(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, nil)
	next := &recorder{}
	router := rt.Router(kube.RouterOptions{Next: next, DrainDelay: time.Millisecond})
	v1 := mustStart(t, rt, spec("dep-1", "1.0.0", imageHealthy))
	v2 := mustStart(t, rt, spec("dep-2", "2.0.0", imageHealthy))
	agentURL := "http://" + kube.AgentServiceName("echo") + "." + rt.Namespace() + ".svc.cluster.local"

	steps := []struct {
		url, want string
	}{
		{v1.URL, "1.0.0"}, // creates the agent Service
		{v2.URL, "2.0.0"}, // switches it
		{v1.URL, "1.0.0"}, // and back: a rollback
		{v1.URL, "1.0.0"}, // a repeat changes nothing
	}
	for _, st := range steps {
		drain := router.Route("echo", st.url)
		if got := whoami(t, c, agentURL); got != st.want {
			t.Errorf("after Route(echo, %s): agent Service reaches %q, want %q", st.url, got, st.want)
		}
		if err := drain(ctxFor(t)); err != nil {
			t.Errorf("drain after Route(echo, %s) = %v, want nil", st.url, err)
		}
		if got, want := next.take(), []string{"route echo " + st.url, "drain echo"}; strings.Join(got, ";") != strings.Join(want, ";") {
			t.Errorf("Next calls = %q, want %q", got, want)
		}
	}
	svc := c.service(t, rt.Namespace(), kube.AgentServiceName("echo"))
	if svc.Labels[kube.LabelComponent] != kube.ComponentAgent || svc.Labels[kube.LabelAgent] != "echo" {
		t.Errorf("agent Service labels = %v, want component agent of echo", svc.Labels)
	}

	router.Unroute("echo")
	if c.service(t, rt.Namespace(), kube.AgentServiceName("echo")) != nil {
		t.Errorf("agent Service exists after Unroute")
	}
	if got := next.take(); len(got) != 1 || got[0] != "unroute echo" {
		t.Errorf("Next calls after Unroute = %q, want [unroute echo]", got)
	}
	// The deployments themselves are untouched.
	if got := whoami(t, c, v2.URL); got != "2.0.0" {
		t.Errorf("v2 after Unroute answers %q, want 2.0.0", got)
	}
}

// TestRouterRefuses: URLs that are not a deployment of the agent do not
// move its Service.
func TestRouterRefuses(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, nil)
	router := rt.Router(kube.RouterOptions{DrainDelay: time.Millisecond, Timeout: time.Second})
	v1 := mustStart(t, rt, spec("dep-1", "1.0.0", imageHealthy))
	other := spec("dep-2", "1.0.0", imageHealthy)
	other.AgentName = "other"
	v2 := mustStart(t, rt, other)
	if err := router.Route("echo", v1.URL)(ctxFor(t)); err != nil {
		t.Fatalf("Route(echo, v1) drain = %v", err)
	}
	for _, url := range []string{
		v2.URL, // another agent's deployment
		"http://127.0.0.1:8080",
		"http://berth-nope." + rt.Namespace() + ".svc.cluster.local",
		"://bad",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := router.Route("echo", url)(ctx)
		cancel()
		if err == nil {
			t.Errorf("Route(echo, %q) drain = nil, want an error", url)
		}
		agentURL := "http://" + kube.AgentServiceName("echo") + "." + rt.Namespace() + ".svc.cluster.local"
		if got := whoami(t, c, agentURL); got != "1.0.0" {
			t.Errorf("after Route(echo, %q): agent Service reaches %q, want still 1.0.0", url, got)
		}
	}
}

// TestRouterRetriesInDrain: a Service update that fails past Route's
// timeout is retried by the drain function, which the engine awaits
// before it stops the previous version.
func TestRouterRetriesInDrain(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime(t, nil)
	router := rt.Router(kube.RouterOptions{DrainDelay: time.Millisecond, Timeout: 10 * time.Millisecond})
	v1 := mustStart(t, rt, spec("dep-1", "1.0.0", imageHealthy))
	v2 := mustStart(t, rt, spec("dep-2", "2.0.0", imageHealthy))
	if err := router.Route("echo", v1.URL)(ctxFor(t)); err != nil {
		t.Fatalf("Route(echo, v1) drain = %v", err)
	}
	agentURL := "http://" + kube.AgentServiceName("echo") + "." + rt.Namespace() + ".svc.cluster.local"

	c.failServices.Store(3)
	drain := router.Route("echo", v2.URL)
	if got := whoami(t, c, agentURL); got != "1.0.0" {
		t.Fatalf("with the API failing, the agent Service reaches %q, want still 1.0.0", got)
	}
	if err := drain(ctxFor(t)); err != nil {
		t.Fatalf("drain = %v, want it to retry until the switch succeeds", err)
	}
	if got := whoami(t, c, agentURL); got != "2.0.0" {
		t.Errorf("after the drain the agent Service reaches %q, want 2.0.0", got)
	}

	// A drain whose context ends before the API recovers reports it.
	c.failServices.Store(1 << 20)
	defer c.failServices.Store(0)
	drain = router.Route("echo", v1.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := drain(ctx); err == nil || berth.ErrorCode(err) != berth.CodeUnavailable {
		t.Errorf("drain with the API down = %v, want a CodeUnavailable error", err)
	}
}
