// Package runtimetest is the acceptance suite every berth.Runtime passes:
// the process runtime runs it with real child processes, the Kubernetes
// runtime with a fake clientset. A runtime's tests call Run with a Harness
// that knows how to build the runtime and specs for three kinds of test
// agent.
package runtimetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
)

// Kind is a kind of test agent a Harness must be able to deploy.
type Kind int

// Test agent kinds.
const (
	// Healthy answers its health path with 2xx soon after it starts and
	// keeps running.
	Healthy Kind = iota
	// ExitAtStart prints something and exits with a non-zero status before
	// it ever answers.
	ExitAtStart
	// NeverHealthy keeps running but never answers its health path with
	// 2xx.
	NeverHealthy
)

func (k Kind) String() string {
	switch k {
	case Healthy:
		return "healthy"
	case ExitAtStart:
		return "exit-at-start"
	case NeverHealthy:
		return "never-healthy"
	}
	return "unknown"
}

// Harness adapts a runtime to the suite. New and Spec are required.
type Harness struct {
	// New returns a fresh runtime for one subtest. The suite closes it
	// when the subtest ends.
	New func(t *testing.T) berth.Runtime
	// Spec returns a spec for an agent of the given kind with the given
	// deployment id and version label. The suite sets Config.ReadyTimeout
	// itself; a Healthy spec's ready timeout is generous (a minute).
	Spec func(t *testing.T, kind Kind, deploymentID, version string) berth.DeploymentSpec
	// Client makes the suite's own requests to instance URLs. Nil means a
	// client that ignores proxy settings; a runtime whose URLs are not
	// reachable from the test (such as a fake cluster) supplies one whose
	// transport routes them.
	Client *http.Client
	// LogOutput, if set, is text a Healthy agent prints when it starts; the
	// suite expects it in Logs.
	LogOutput string
	// ExitOutput, if set, is text an ExitAtStart agent prints before it
	// exits; the suite expects it in the message of the failed Start.
	ExitOutput string
	// WhoamiPath, if set, is a path where a Healthy agent answers with a
	// body containing its version label; the suite uses it to check that
	// two deployments' URLs reach the right one.
	WhoamiPath string
	// ShortReadyTimeout is the ready timeout used for NeverHealthy agents
	// (default 1s).
	ShortReadyTimeout time.Duration
}

// longTimeout bounds every wait in the suite that should end much sooner.
// It is not a performance requirement: it only keeps a broken runtime from
// hanging the test binary.
const longTimeout = time.Minute

// Run runs the acceptance suite against the runtime h describes.
//
// Beyond berth.Runtime's doc comments, the suite holds a runtime to this:
// Start of a live id is CodeConflict; a Start that fails (exit before
// healthy, not healthy in time) is CodeTargetUnhealthy, an exit is reported
// at once rather than after the ready timeout, and a Start ended by its ctx
// has ctx's error in its chain; Probe, Logs of an unknown id are
// CodeNotFound; Stop and Remove are idempotent; Close stops everything.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil || h.Spec == nil {
		t.Fatal("runtimetest.Harness needs New and Spec")
	}
	if h.ShortReadyTimeout <= 0 {
		h.ShortReadyTimeout = time.Second
	}
	if h.Client == nil {
		h.Client = &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 10 * time.Second}
	}
	s := &suite{h: h}
	tests := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"StartHealthy", s.testStartHealthy},
		{"StartDuplicate", s.testStartDuplicate},
		{"Stop", s.testStop},
		{"Remove", s.testRemove},
		{"UnknownID", s.testUnknownID},
		{"ExitAtStart", s.testExitAtStart},
		{"NeverHealthy", s.testNeverHealthy},
		{"StartCanceled", s.testStartCanceled},
		{"TwoAtOnce", s.testTwoAtOnce},
		{"Logs", s.testLogs},
		{"Close", s.testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.fn)
	}
}

type suite struct{ h Harness }

// env is one subtest's runtime.
type env struct {
	rt        berth.Runtime
	closeOnce sync.Once
	closeErr  error
}

func (e *env) close() error {
	e.closeOnce.Do(func() { e.closeErr = e.rt.Close() })
	return e.closeErr
}

// runtime returns a fresh runtime that is closed when t ends.
func (s *suite) runtime(t *testing.T) *env {
	t.Helper()
	e := &env{rt: s.h.New(t)}
	t.Cleanup(func() {
		if err := e.close(); err != nil {
			t.Errorf("Close() = %v, want nil", err)
		}
	})
	return e
}

// spec returns a spec of the given kind with a fresh deployment id.
func (s *suite) spec(t *testing.T, kind Kind, version string, ready time.Duration) berth.DeploymentSpec {
	t.Helper()
	spec := s.h.Spec(t, kind, newID(t), version)
	spec.Config.ReadyTimeout = berth.Duration(ready)
	return spec
}

// newID returns a random deployment id.
func newID(t *testing.T) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "rtt-" + hex.EncodeToString(b)
}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), longTimeout)
	t.Cleanup(cancel)
	return ctx
}

// start starts spec and fails t if that fails.
func (s *suite) start(t *testing.T, e *env, spec berth.DeploymentSpec) berth.Instance {
	t.Helper()
	inst, err := e.rt.Start(ctxFor(t), spec)
	if err != nil {
		t.Fatalf("Start(%q) = %v, want success", spec.DeploymentID, err)
	}
	if inst.URL == "" {
		t.Fatalf("Start(%q) returned an empty URL", spec.DeploymentID)
	}
	return inst
}

func (s *suite) healthy(t *testing.T, e *env, version string) (berth.DeploymentSpec, berth.Instance) {
	t.Helper()
	spec := s.spec(t, Healthy, version, longTimeout)
	return spec, s.start(t, e, spec)
}

// get makes one GET request and returns the status code and body.
func (s *suite) get(t *testing.T, url string) (int, string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxFor(t), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.h.Client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(body), err
}

func healthPath(spec berth.DeploymentSpec) string {
	if spec.Config.HealthPath != "" {
		return spec.Config.HealthPath
	}
	return berth.DefaultHealthPath
}

func (s *suite) wantAnswers(t *testing.T, spec berth.DeploymentSpec, inst berth.Instance) {
	t.Helper()
	url := inst.URL + healthPath(spec)
	code, _, err := s.get(t, url)
	if err != nil || code/100 != 2 {
		t.Errorf("GET %s = %d, %v; want 2xx", url, code, err)
	}
}

func (s *suite) wantWhoami(t *testing.T, inst berth.Instance, version string) {
	t.Helper()
	if s.h.WhoamiPath == "" {
		return
	}
	url := inst.URL + s.h.WhoamiPath
	code, body, err := s.get(t, url)
	if err != nil || code != http.StatusOK || !strings.Contains(body, version) {
		t.Errorf("GET %s = %d, %q, %v; want 200 naming version %q", url, code, body, err, version)
	}
}

func wantCode(t *testing.T, what string, err error, want berth.Code) {
	t.Helper()
	if got := berth.ErrorCode(err); got != want {
		t.Errorf("%s = %v (code %q), want code %q", what, err, got, want)
	}
}

func (s *suite) running(t *testing.T, e *env) []string {
	t.Helper()
	ids, err := e.rt.Running(ctxFor(t))
	if err != nil {
		t.Fatalf("Running() = %v", err)
	}
	return ids
}

func (s *suite) wantRunning(t *testing.T, e *env, id string, want bool) {
	t.Helper()
	ids := s.running(t, e)
	if got := slices.Contains(ids, id); got != want {
		t.Errorf("Running() = %v; contains %q = %v, want %v", ids, id, got, want)
	}
}

func (s *suite) testStartHealthy(t *testing.T) {
	e := s.runtime(t)
	spec, inst := s.healthy(t, e, "1.0.0")
	s.wantAnswers(t, spec, inst)
	s.wantWhoami(t, inst, "1.0.0")
	if err := e.rt.Probe(ctxFor(t), spec.DeploymentID); err != nil {
		t.Errorf("Probe(%q) = %v, want nil", spec.DeploymentID, err)
	}
	s.wantRunning(t, e, spec.DeploymentID, true)
}

func (s *suite) testStartDuplicate(t *testing.T) {
	e := s.runtime(t)
	spec, _ := s.healthy(t, e, "1.0.0")
	_, err := e.rt.Start(ctxFor(t), spec)
	wantCode(t, "second Start of a live deployment", err, berth.CodeConflict)
	// The first one must be unharmed.
	if err := e.rt.Probe(ctxFor(t), spec.DeploymentID); err != nil {
		t.Errorf("Probe(%q) after a rejected duplicate Start = %v, want nil", spec.DeploymentID, err)
	}
}

func (s *suite) testStop(t *testing.T) {
	e := s.runtime(t)
	spec, _ := s.healthy(t, e, "1.0.0")
	id := spec.DeploymentID
	for i := range 2 { // the second Stop must be a no-op
		if err := e.rt.Stop(ctxFor(t), id); err != nil {
			t.Fatalf("Stop(%q) #%d = %v, want nil", id, i+1, err)
		}
	}
	if err := e.rt.Probe(ctxFor(t), id); err == nil {
		t.Errorf("Probe(%q) after Stop = nil, want an error", id)
	}
	s.wantRunning(t, e, id, false)
}

func (s *suite) testRemove(t *testing.T) {
	e := s.runtime(t)
	spec, _ := s.healthy(t, e, "1.0.0")
	id := spec.DeploymentID
	for i := range 2 {
		if err := e.rt.Remove(ctxFor(t), id); err != nil {
			t.Fatalf("Remove(%q) #%d = %v, want nil", id, i+1, err)
		}
	}
	wantCode(t, "Probe after Remove", e.rt.Probe(ctxFor(t), id), berth.CodeNotFound)
	s.wantRunning(t, e, id, false)
	// Stopped first, then removed: also fine.
	spec2, _ := s.healthy(t, e, "1.0.1")
	if err := e.rt.Stop(ctxFor(t), spec2.DeploymentID); err != nil {
		t.Fatalf("Stop(%q) = %v", spec2.DeploymentID, err)
	}
	if err := e.rt.Remove(ctxFor(t), spec2.DeploymentID); err != nil {
		t.Errorf("Remove(%q) after Stop = %v, want nil", spec2.DeploymentID, err)
	}
}

func (s *suite) testUnknownID(t *testing.T) {
	e := s.runtime(t)
	id := newID(t)
	ctx := ctxFor(t)
	wantCode(t, "Probe(unknown)", e.rt.Probe(ctx, id), berth.CodeNotFound)
	wantCode(t, "Logs(unknown)", e.rt.Logs(ctx, id, io.Discard), berth.CodeNotFound)
	if err := e.rt.Stop(ctx, id); err != nil {
		t.Errorf("Stop(unknown) = %v, want nil", err)
	}
	if err := e.rt.Remove(ctx, id); err != nil {
		t.Errorf("Remove(unknown) = %v, want nil", err)
	}
	if ids := s.running(t, e); len(ids) != 0 {
		t.Errorf("Running() on a fresh runtime = %v, want none", ids)
	}
}

// failedStart checks what every failed Start leaves behind: nothing.
func (s *suite) failedStart(t *testing.T, e *env, id string) {
	t.Helper()
	s.wantRunning(t, e, id, false)
	if err := e.rt.Probe(ctxFor(t), id); err == nil {
		t.Errorf("Probe(%q) after a failed Start = nil, want an error", id)
	}
	if err := e.rt.Remove(ctxFor(t), id); err != nil {
		t.Errorf("Remove(%q) after a failed Start = %v, want nil", id, err)
	}
}

func (s *suite) testExitAtStart(t *testing.T) {
	e := s.runtime(t)
	// A ready timeout far beyond the ctx deadline: a runtime that waits for
	// it instead of noticing the exit fails with ctx's error instead.
	spec := s.spec(t, ExitAtStart, "1.0.0", time.Hour)
	_, err := e.rt.Start(ctxFor(t), spec)
	wantCode(t, "Start(exit-at-start)", err, berth.CodeTargetUnhealthy)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Start(exit-at-start) = %v; it waited for the deadline instead of failing at the exit", err)
	}
	if msg := berth.ErrorMessage(err); s.h.ExitOutput != "" && !strings.Contains(msg, s.h.ExitOutput) {
		t.Errorf("Start(exit-at-start) message = %q, want it to quote the output %q", msg, s.h.ExitOutput)
	}
	s.failedStart(t, e, spec.DeploymentID)
}

func (s *suite) testNeverHealthy(t *testing.T) {
	e := s.runtime(t)
	spec := s.spec(t, NeverHealthy, "1.0.0", s.h.ShortReadyTimeout)
	_, err := e.rt.Start(ctxFor(t), spec)
	wantCode(t, "Start(never-healthy)", err, berth.CodeTargetUnhealthy)
	s.failedStart(t, e, spec.DeploymentID)
	// The same id can be started again once the failure is cleaned up.
	again := s.h.Spec(t, Healthy, spec.DeploymentID, "1.0.0")
	again.Config.ReadyTimeout = berth.Duration(longTimeout)
	s.start(t, e, again)
}

func (s *suite) testStartCanceled(t *testing.T) {
	e := s.runtime(t)
	spec := s.spec(t, NeverHealthy, "1.0.0", time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), s.h.ShortReadyTimeout)
	defer cancel()
	_, err := e.rt.Start(ctx, spec)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Start with a %s ctx deadline = %v, want context.DeadlineExceeded in the chain", s.h.ShortReadyTimeout, err)
	}
	s.failedStart(t, e, spec.DeploymentID)
}

func (s *suite) testTwoAtOnce(t *testing.T) {
	e := s.runtime(t)
	specs := []berth.DeploymentSpec{
		s.spec(t, Healthy, "1.0.0", longTimeout),
		s.spec(t, Healthy, "2.0.0", longTimeout),
	}
	insts := make([]berth.Instance, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, spec := range specs {
		wg.Go(func() { insts[i], errs[i] = e.rt.Start(ctxFor(t), spec) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Start(%q) = %v, want success", specs[i].DeploymentID, err)
		}
	}
	if insts[0].URL == insts[1].URL {
		t.Fatalf("two deployments share URL %q", insts[0].URL)
	}
	for i, spec := range specs {
		s.wantAnswers(t, spec, insts[i])
		s.wantWhoami(t, insts[i], spec.Version)
		if err := e.rt.Probe(ctxFor(t), spec.DeploymentID); err != nil {
			t.Errorf("Probe(%q) = %v, want nil", spec.DeploymentID, err)
		}
	}
	ids := s.running(t, e)
	if !slices.Contains(ids, specs[0].DeploymentID) || !slices.Contains(ids, specs[1].DeploymentID) {
		t.Errorf("Running() = %v, want both %q and %q", ids, specs[0].DeploymentID, specs[1].DeploymentID)
	}
	// Stopping one leaves the other alone.
	if err := e.rt.Stop(ctxFor(t), specs[0].DeploymentID); err != nil {
		t.Fatalf("Stop(%q) = %v", specs[0].DeploymentID, err)
	}
	if err := e.rt.Probe(ctxFor(t), specs[1].DeploymentID); err != nil {
		t.Errorf("Probe(%q) after stopping the other = %v, want nil", specs[1].DeploymentID, err)
	}
	s.wantWhoami(t, insts[1], specs[1].Version)
}

func (s *suite) testLogs(t *testing.T) {
	e := s.runtime(t)
	spec, _ := s.healthy(t, e, "1.0.0")
	var logs string
	// Output reaches the logs asynchronously; wait for it, within bounds.
	deadline := time.Now().Add(longTimeout)
	for {
		var b strings.Builder
		err := e.rt.Logs(ctxFor(t), spec.DeploymentID, &b)
		if err != nil {
			t.Fatalf("Logs(%q) = %v, want nil", spec.DeploymentID, err)
		}
		logs = b.String()
		if s.h.LogOutput == "" || strings.Contains(logs, s.h.LogOutput) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s.h.LogOutput != "" && !strings.Contains(logs, s.h.LogOutput) {
		t.Errorf("Logs(%q) = %q, want it to contain %q", spec.DeploymentID, logs, s.h.LogOutput)
	}
}

func (s *suite) testClose(t *testing.T) {
	e := s.runtime(t)
	a, _ := s.healthy(t, e, "1.0.0")
	b, _ := s.healthy(t, e, "1.0.1")
	if err := e.close(); err != nil {
		t.Fatalf("Close() = %v, want nil", err)
	}
	for _, id := range []string{a.DeploymentID, b.DeploymentID} {
		if err := e.rt.Probe(ctxFor(t), id); err == nil {
			t.Errorf("Probe(%q) after Close = nil, want an error", id)
		}
	}
	if _, err := e.rt.Start(ctxFor(t), s.spec(t, Healthy, "1.0.2", longTimeout)); err == nil {
		t.Errorf("Start after Close = nil error, want one")
	}
}
