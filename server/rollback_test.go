package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/berthtest"
)

// threeVersions deploys name at 1.0.0, 1.1.0 and 1.2.0 (blue-green, so the
// earlier ones stay warm), each with its own greeting.
func threeVersions(t *testing.T, ts *testServer, token, name string) {
	t.Helper()
	ts.upload(token, echo(t, name, "1.0.0", map[string]string{"ECHO_GREETING": "one"}))
	ts.update(token, name, echo(t, name, "1.1.0", map[string]string{"ECHO_GREETING": "two"}), map[string]string{"update_strategy": "blue-green"})
	ts.update(token, name, echo(t, name, "1.2.0", map[string]string{"ECHO_GREETING": "three"}), map[string]string{"update_strategy": "blue-green"})
	if got := ts.whoami(name).Version; got != "1.2.0" {
		t.Fatalf("after three deploys the proxy serves %s, want 1.2.0", got)
	}
}

// The rollback page's three examples (curl, Python, JavaScript), as Go.
func TestRollbackPageExamples(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	threeVersions(t, ts, ts.Admin, "pager")

	check := func(t *testing.T, status int, body []byte, wantTo, wantFrom string) {
		t.Helper()
		if status != http.StatusOK {
			t.Fatalf("rollback = %d %s, want 200", status, body)
		}
		var got struct {
			Data       map[string]any `json:"data"`
			StatusCode int            `json:"status_code"`
			Message    string         `json:"message"`
		}
		mustJSON(t, body, &got)
		d := got.Data
		want := map[string]any{
			"message": "Rollback successful", "rolled_back_to": wantTo, "rolled_back_from": wantFrom,
			"status": "running", "status_code": float64(200),
		}
		for k, v := range want {
			if d[k] != v {
				t.Errorf("data.%s = %v, want %v (body %s)", k, d[k], v, body)
			}
		}
		if id, _ := d["agent_id"].(string); id == "" {
			t.Errorf("data.agent_id missing: %s", body)
		}
		for _, k := range []string{"operation_id", "cleaned_deployments", "duration_ms"} {
			if _, ok := d[k]; !ok {
				t.Errorf("data.%s missing: %s", k, body)
			}
		}
		if got.StatusCode != 200 || got.Message != "Rollback successful" {
			t.Errorf("top level = %d %q, want 200 \"Rollback successful\"", got.StatusCode, got.Message)
		}
		if v := ts.whoami("pager"); v.Version != wantTo {
			t.Errorf("proxy serves %s after rollback, want %s", v.Version, wantTo)
		}
	}

	// curl: roll back to the previous version with a reason.
	st, body := ts.rollbackRaw(ts.Admin, "pager", `{"reason": "Performance regression in 1.1.0"}`, "", nil)
	check(t, st, body, "1.1.0", "1.2.0")
	// curl: roll back to a specific version.
	ts.update(ts.Admin, "pager", echo(t, "pager", "1.3.0", nil), map[string]string{"update_strategy": "blue-green"})
	st, body = ts.rollbackRaw(ts.Admin, "pager", `{"target_version": "1.0.0", "reason": "Critical bug in 1.1.0"}`, "", nil)
	check(t, st, body, "1.0.0", "1.3.0")
	// Python: target, reason and cleanup_failed.
	st, body = ts.rollbackRaw(ts.Admin, "pager", `{"target_version": "1.1.0", "reason": "Critical bug in 1.1.0", "cleanup_failed": true}`, "", nil)
	check(t, st, body, "1.1.0", "1.0.0")
	// JavaScript: target and reason, addressed by agent id.
	id := ts.history(ts.Admin, "pager").AgentID
	st, body = ts.rollbackRaw(ts.Admin, id, `{"target_version": "1.3.0", "reason": "Critical bug in 1.1.0"}`, "", nil)
	check(t, st, body, "1.3.0", "1.1.0")
}

// Rolling back twice from a bad 1.2.0 goes to 1.1.0 then 1.0.0, never back
// to 1.2.0; the reason is stored and the whole config comes back.
func TestRollbackDefaultTargetSequence(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	alice := ts.newUser("alice")
	threeVersions(t, ts, alice, "seq")

	r := ts.rollback(alice, "seq", `{"reason":"1.2.0 leaks memory"}`)
	if r.RolledBackFrom != "1.2.0" || r.RolledBackTo != "1.1.0" || !r.Warm {
		t.Fatalf("first rollback = %s → %s (warm %v), want 1.2.0 → 1.1.0 warm", r.RolledBackFrom, r.RolledBackTo, r.Warm)
	}
	if w := ts.whoami("seq"); w.Version != "1.1.0" || w.Greeting != "two" {
		t.Fatalf("proxy serves %s/%q, want 1.1.0/\"two\"", w.Version, w.Greeting)
	}
	r = ts.rollback(alice, "seq", `{"reason":"1.1.0 too"}`)
	if r.RolledBackFrom != "1.1.0" || r.RolledBackTo != "1.0.0" {
		t.Fatalf("second rollback = %s → %s, want 1.1.0 → 1.0.0", r.RolledBackFrom, r.RolledBackTo)
	}
	if w := ts.whoami("seq"); w.Version != "1.0.0" || w.Greeting != "one" {
		t.Fatalf("proxy serves %s/%q, want 1.0.0/\"one\" (its own config)", w.Version, w.Greeting)
	}
	// Nothing good is left behind 1.0.0.
	ts.rollbackErr(alice, "seq", "", http.StatusConflict, "no_rollback_target")

	h := ts.history(alice, "seq")
	want := map[string]string{"1.0.0": "active", "1.1.0": "rolled_back", "1.2.0": "rolled_back"}
	if got := h.statuses(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("statuses = %v, want %v", got, want)
	}
	for _, v := range h.Versions {
		if v.Version == "1.2.0" {
			ri := v.RollbackInfo
			if ri == nil || ri.Reason != "1.2.0 leaks memory" || ri.Actor != "alice" || ri.From != "1.2.0" || ri.To != "1.1.0" || ri.OperationID == "" {
				t.Errorf("1.2.0 rollback_info = %+v, want reason, actor alice, 1.2.0 → 1.1.0", ri)
			}
		}
	}
	ops := ts.operations(alice, "seq")
	if ops[0].Kind != "rollback" || ops[0].Reason != "1.1.0 too" || ops[0].Actor != "alice" || ops[0].Status != "succeeded" {
		t.Errorf("newest operation = %+v, want alice's succeeded rollback with its reason", ops[0])
	}
	// An explicit target may still name a rolled-back version.
	r = ts.rollback(alice, "seq", `{"target_version":"1.2.0"}`)
	if r.RolledBackTo != "1.2.0" {
		t.Errorf("explicit rollback to rolled-back 1.2.0 went to %s", r.RolledBackTo)
	}
}

// Every row of the rollback error table, each leaving state unchanged.
func TestRollbackErrorTable(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	owner := ts.newUser("owner")
	other := ts.newUser("other")
	ts.upload(owner, echo(t, "errs", "1.0.0", nil))
	ts.update(owner, "errs", echo(t, "errs", "1.1.0", nil), map[string]string{"update_strategy": "blue-green"})
	// 1.2.0 fails its build: never built successfully.
	buildFail := berthtest.EchoPackage(t, berthtest.PackageOptions{Name: "errs", Version: "1.2.0", Build: []string{"sh", "-c", "echo compile error >&2; exit 1"}})
	if st, b := ts.updateRaw(owner, "errs", buildFail, nil, "?wait=true", nil); st != http.StatusUnprocessableEntity {
		t.Fatalf("update with failing build = %d %s, want 422", st, b)
	}
	// "lonely" has a single version: nothing to go back to.
	ts.upload(owner, echo(t, "lonely", "1.0.0", nil))

	before := ts.state(owner, "errs")
	opsBefore := len(ts.operations(owner, "errs"))
	tests := []struct {
		name, agent, token, body, query string
		status                          int
		code                            string
	}{
		{"no token", "errs", "", "", "", 401, "unauthorized"},
		{"bad token", "errs", "not-a-jwt", "", "", 401, "unauthorized"},
		{"not the owner", "errs", other, "", "", 403, "forbidden"},
		{"unknown agent", "nope", owner, "", "", 404, "not_found"},
		{"unknown agent id", "6f1c0000-0000-4000-8000-000000000000", owner, "", "", 404, "not_found"},
		{"unknown target", "errs", owner, `{"target_version":"9.9.9"}`, "", 404, "not_found"},
		{"target is current", "errs", owner, `{"target_version":"1.1.0"}`, "", 400, "invalid"},
		{"target never built", "errs", owner, `{"target_version":"1.2.0"}`, "", 400, "invalid"},
		{"no eligible version", "lonely", owner, "", "", 409, "no_rollback_target"},
		{"malformed JSON", "errs", owner, `{"target_version":`, "", 422, "invalid_body"},
		{"not an object", "errs", owner, `["1.0.0"]`, "", 422, "invalid_body"},
		{"wrong type", "errs", owner, `{"cleanup_failed":"yes"}`, "", 422, "invalid_body"},
		{"wrong type target", "errs", owner, `{"target_version":100}`, "", 422, "invalid_body"},
		{"unknown field (typo)", "errs", owner, `{"target_verison":"1.0.0"}`, "", 422, "invalid_body"},
		{"trailing data", "errs", owner, `{"reason":"x"} {}`, "", 422, "invalid_body"},
		{"empty target", "errs", owner, `{"target_version":""}`, "", 422, "invalid_body"},
		{"bad wait", "errs", owner, "", "?wait=maybe", 400, "invalid"},
	}
	for _, tt := range tests {
		st, b := ts.rollbackRaw(tt.token, tt.agent, tt.body, tt.query, nil)
		var e errorBody
		mustJSON(t, b, &e)
		if st != tt.status || e.Code != tt.code || e.StatusCode != tt.status || e.Message == "" || e.Detail != e.Message {
			t.Errorf("%s: rollback = %d %s, want %d %s", tt.name, st, b, tt.status, tt.code)
		}
	}
	if after := ts.state(owner, "errs"); after != before {
		t.Errorf("refused rollbacks changed state:\n before %+v\n after  %+v", before, after)
	}
	if n := len(ts.operations(owner, "errs")); n != opsBefore {
		t.Errorf("refused rollbacks recorded %d operations, want none", n-opsBefore)
	}
	if v := ts.whoami("errs").Version; v != "1.1.0" {
		t.Errorf("proxy serves %s, want 1.1.0", v)
	}
	// After all that, a good rollback works.
	if r := ts.rollback(owner, "errs", ""); r.RolledBackTo != "1.0.0" {
		t.Errorf("rollback after refusals went to %s, want 1.0.0", r.RolledBackTo)
	}
}

// A target that cannot start: 409 target_unhealthy, the current version
// keeps serving, the attempt is recorded, and the agent can be rolled back
// again right away.
func TestRollbackTargetUnhealthy(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", withStandby(0))
	// 1.0.0 starts only while a flag file exists (think: a dependency).
	flag := filepath.Join(t.TempDir(), "dependency-up")
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fragile := berthtest.EchoPackage(t, berthtest.PackageOptions{Name: "fragile", Version: "1.0.0",
		Run: []string{"sh", "-c", "test -f " + flag + " || { echo dependency down >&2; exit 4; }; exec ./echo-agent"}})
	ts.upload(ts.Admin, fragile)
	ts.update(ts.Admin, "fragile", echo(t, "fragile", "1.1.0", nil), map[string]string{"update_strategy": "rolling"})
	ts.update(ts.Admin, "fragile", echo(t, "fragile", "1.2.0", nil), map[string]string{"update_strategy": "rolling"})
	// Rolling updates stopped 1.0.0: rolling back to it is a cold start.
	os.Remove(flag)

	before := ts.state(ts.Admin, "fragile")
	e := ts.rollbackErr(ts.Admin, "fragile", `{"target_version":"1.0.0","reason":"try"}`, http.StatusConflict, "target_unhealthy")
	if e.OperationID == "" {
		t.Errorf("target_unhealthy error names no operation: %+v", e)
	}
	if v := ts.whoami("fragile").Version; v != "1.2.0" {
		t.Fatalf("proxy serves %s after a failed rollback, want 1.2.0", v)
	}
	after := ts.state(ts.Admin, "fragile")
	if after.Current != before.Current || after.Statuses != before.Statuses {
		t.Errorf("failed rollback changed versions: %+v → %+v", before, after)
	}
	ops := ts.operations(ts.Admin, "fragile")
	if ops[0].Kind != "rollback" || ops[0].Status != "failed" || ops[0].ErrorCode != "target_unhealthy" || ops[0].ID != e.OperationID {
		t.Errorf("newest operation = %+v, want the failed rollback attempt", ops[0])
	}
	var failedDep *deploymentEntry
	for _, d := range ts.deployments(ts.Admin, "fragile") {
		if d.Version == "1.0.0" && d.Status == "failed" {
			failedDep = &d
		}
	}
	if failedDep == nil || failedDep.Error == "" {
		t.Fatalf("the failed cold start left no failed deployment with its error")
	}
	// Immediately rollback-able again: the default target works, and cleans
	// up the failed attempt.
	r := ts.rollback(ts.Admin, "fragile", "")
	if r.RolledBackTo != "1.1.0" || !slices.Contains(r.Cleaned, failedDep.ID) {
		t.Errorf("next rollback = %+v, want → 1.1.0 cleaning %s", r, failedDep.ID)
	}
}

// cleanup_failed true removes every failed deployment (keeping its record
// and the version); false leaves them.
func TestRollbackCleanupFailed(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	ts.upload(ts.Admin, echo(t, "tidy", "1.0.0", nil))
	ts.update(ts.Admin, "tidy", echo(t, "tidy", "1.1.0", nil), map[string]string{"update_strategy": "blue-green"})
	// Two failed releases.
	for _, v := range []string{"1.2.0", "1.3.0"} {
		if st, b := ts.updateRaw(ts.Admin, "tidy", broken(t, "tidy", v), nil, "?wait=true", nil); st != http.StatusConflict {
			t.Fatalf("broken update %s = %d %s, want 409 deploy_failed", v, st, b)
		}
	}
	failed := func() (ids []string, removed int) {
		for _, d := range ts.deployments(ts.Admin, "tidy") {
			if d.Status == "failed" {
				ids = append(ids, d.ID)
				if d.RemovedAt != nil {
					removed++
				}
			}
		}
		slices.Sort(ids)
		return ids, removed
	}
	failedIDs, _ := failed()
	if len(failedIDs) != 2 {
		t.Fatalf("failed deployments = %v, want 2", failedIDs)
	}

	r := ts.rollback(ts.Admin, "tidy", `{"cleanup_failed": false}`)
	if len(r.Cleaned) != 0 {
		t.Errorf("cleanup_failed=false cleaned %v", r.Cleaned)
	}
	if _, removed := failed(); removed != 0 {
		t.Errorf("cleanup_failed=false removed %d deployments", removed)
	}

	r = ts.rollback(ts.Admin, "tidy", `{"target_version":"1.1.0"}`) // default cleanup_failed=true
	slices.Sort(r.Cleaned)
	if !slices.Equal(r.Cleaned, failedIDs) {
		t.Errorf("cleaned = %v, want %v", r.Cleaned, failedIDs)
	}
	ids, removed := failed()
	if !slices.Equal(ids, failedIDs) || removed != 2 {
		t.Errorf("after cleanup failed deployments = %v (%d removed), want records kept and both removed", ids, removed)
	}
	// The versions and their logs stay for forensics.
	if s := ts.history(ts.Admin, "tidy").statuses(); s["1.2.0"] != "failed" || s["1.3.0"] != "failed" {
		t.Errorf("statuses = %v, want 1.2.0 and 1.3.0 failed", s)
	}
	if st, b := ts.do("GET", "/api/v1/agents/tidy/logs?deployment_id="+failedIDs[0], ts.Admin, nil, "", nil); st != 200 || !strings.Contains(string(b), "boom") {
		t.Errorf("logs of a cleaned deployment = %d %q, want its output", st, b)
	}
	// Nothing left to clean.
	if r := ts.rollback(ts.Admin, "tidy", `{"target_version":"1.0.0"}`); len(r.Cleaned) != 0 {
		t.Errorf("second cleanup cleaned %v again", r.Cleaned)
	}
}

// A release that fails its health check never takes traffic: the proxy
// answers from the old version throughout.
func TestFailedUpdateNeverTakesTraffic(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	ts.upload(ts.Admin, echo(t, "steady", "1.0.0", nil))
	// Starts, never becomes healthy, and is given 2 s to try.
	never := berthtest.EchoPackage(t, berthtest.PackageOptions{Name: "steady", Version: "1.1.0", HealthPath: "/never", ReadyTimeout: "2s"})

	stop := make(chan struct{})
	var seen sync.Map
	var polls atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			w, err := berthtest.GetWhoami(context.Background(), ts.URL+"/agents/steady")
			if err != nil {
				seen.Store("error: "+err.Error(), true)
			} else {
				seen.Store(w.Version, true)
			}
			polls.Add(1)
		}
	}()
	st, b := ts.updateRaw(ts.Admin, "steady", never, nil, "?wait=true", nil)
	close(stop)
	wg.Wait()
	if st != http.StatusConflict {
		t.Fatalf("unhealthy update = %d %s, want 409", st, b)
	}
	var e errorBody
	mustJSON(t, b, &e)
	if e.Code != "deploy_failed" || !strings.Contains(e.Message, "1.0.0 keeps serving") {
		t.Errorf("error = %+v, want deploy_failed saying 1.0.0 keeps serving", e)
	}
	seen.Range(func(k, _ any) bool {
		if k != "1.0.0" {
			t.Errorf("during the failed update the proxy answered %v", k)
		}
		return true
	})
	if polls.Load() == 0 {
		t.Fatal("no requests were made during the update")
	}
	h := ts.history(ts.Admin, "steady")
	if h.CurrentVersion != "1.0.0" || h.statuses()["1.1.0"] != "failed" {
		t.Errorf("after failed update: current %s, statuses %v", h.CurrentVersion, h.statuses())
	}
}

// Concurrent rollbacks on one agent: each answers 200 or 409, and exactly
// one version is active afterwards — the one the proxy serves.
func TestConcurrentRollbacks(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	threeVersions(t, ts, ts.Admin, "race")
	targets := []string{"1.0.0", "1.1.0", "1.2.0"}
	var wg sync.WaitGroup
	results := make([]int, 12)
	codes := make([]string, 12)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf(`{"target_version":%q}`, targets[i%3])
			st, b := ts.rollbackRaw(ts.Admin, "race", body, "", nil)
			results[i] = st
			var e errorBody
			_ = json.Unmarshal(b, &e)
			codes[i] = e.Code
		}()
	}
	wg.Wait()
	ok := 0
	for i, st := range results {
		switch {
		case st == 200:
			ok++
		case st == 409 && codes[i] == "operation_in_progress":
		case st == 400 && codes[i] == "invalid":
			// Its target had become the current version by the time it ran.
		default:
			t.Errorf("concurrent rollback %d = %d %s, want 200, 409 operation_in_progress or 400 (already current)", i, st, codes[i])
		}
	}
	if ok == 0 {
		t.Error("no concurrent rollback succeeded")
	}
	h := ts.history(ts.Admin, "race")
	active := 0
	for _, v := range h.Versions {
		if v.Status == "active" {
			active++
			if v.Version != h.CurrentVersion {
				t.Errorf("active version %s is not current_version %s", v.Version, h.CurrentVersion)
			}
		}
	}
	if active != 1 {
		t.Errorf("%d active versions after concurrent rollbacks, want 1: %v", active, h.statuses())
	}
	if v := ts.whoami("race").Version; v != h.CurrentVersion {
		t.Errorf("proxy serves %s, store says %s", v, h.CurrentVersion)
	}
	for _, op := range ts.operations(ts.Admin, "race") {
		if op.Status == "running" {
			t.Errorf("operation %s still running after all requests answered", op.ID)
		}
	}
}

// A rollback while an update runs gets 409 naming the update.
func TestRollbackWhileUpdating(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	ts.upload(ts.Admin, echo(t, "busy", "1.0.0", nil))
	ts.update(ts.Admin, "busy", echo(t, "busy", "1.1.0", nil), nil)
	slow := berthtest.EchoPackage(t, berthtest.PackageOptions{Name: "busy", Version: "1.2.0", Run: []string{"sh", "-c", "sleep 3; exec ./echo-agent"}})
	st, b := ts.updateRaw(ts.Admin, "busy", slow, nil, "", nil) // async
	if st != http.StatusAccepted {
		t.Fatalf("async update = %d %s, want 202", st, b)
	}
	var up struct{ Data deployResult }
	mustJSON(t, b, &up)
	e := ts.rollbackErr(ts.Admin, "busy", "", http.StatusConflict, "operation_in_progress")
	if e.OperationID != up.Data.OperationID {
		t.Errorf("409 names operation %q, want the update's %q", e.OperationID, up.Data.OperationID)
	}
	// Once the update lands, rollback works again.
	waitFor(t, "update to finish", 30*time.Second, func() bool { return ts.history(ts.Admin, "busy").CurrentVersion == "1.2.0" })
	if r := ts.rollback(ts.Admin, "busy", ""); r.RolledBackTo != "1.1.0" {
		t.Errorf("rollback after the update = %+v, want → 1.1.0", r)
	}
}

// A rollback while the agent's first upload is still starting gets 409
// naming the upload, not "nothing to roll back to": the state is about to
// change.
func TestRollbackWhileFirstUploadRuns(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	slow := berthtest.EchoPackage(t, berthtest.PackageOptions{Name: "fresh", Version: "1.0.0", Run: []string{"sh", "-c", "sleep 3; exec ./echo-agent"}})
	st, b := ts.uploadRaw(ts.Admin, slow, nil, "") // async
	if st != http.StatusAccepted {
		t.Fatalf("async upload = %d %s, want 202", st, b)
	}
	var up struct{ Data deployResult }
	mustJSON(t, b, &up)
	e := ts.rollbackErr(ts.Admin, "fresh", "", http.StatusConflict, "operation_in_progress")
	if e.OperationID != up.Data.OperationID {
		t.Errorf("409 names operation %q, want the upload's %q", e.OperationID, up.Data.OperationID)
	}
	// Once the upload has landed there really is nothing to roll back to.
	waitFor(t, "upload to finish", 30*time.Second, func() bool { return ts.history(ts.Admin, "fresh").CurrentVersion == "1.0.0" })
	ts.rollbackErr(ts.Admin, "fresh", "", http.StatusConflict, "no_rollback_target")
}

// A repeat with the same Idempotency-Key returns the first answer and does
// nothing again.
func TestRollbackIdempotencyKey(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	threeVersions(t, ts, ts.Admin, "idem")
	h := http.Header{"Idempotency-Key": {"key-1"}}
	st1, b1 := ts.rollbackRaw(ts.Admin, "idem", `{"reason":"once"}`, "", h)
	st2, b2 := ts.rollbackRaw(ts.Admin, "idem", `{"reason":"once"}`, "", h)
	if st1 != 200 || st2 != 200 {
		t.Fatalf("rollbacks = %d, %d, want 200 twice", st1, st2)
	}
	var r1, r2 struct{ Data rollbackData }
	mustJSON(t, b1, &r1)
	mustJSON(t, b2, &r2)
	if r1.Data.OperationID != r2.Data.OperationID || r1.Data.RolledBackTo != r2.Data.RolledBackTo || r2.Data.RolledBackTo != "1.1.0" {
		t.Errorf("repeat answered %+v, first %+v; want the same answer", r2.Data, r1.Data)
	}
	if v := ts.history(ts.Admin, "idem").CurrentVersion; v != "1.1.0" {
		t.Errorf("current = %s after a repeated rollback, want 1.1.0 (not rolled back twice)", v)
	}
	n := 0
	for _, op := range ts.operations(ts.Admin, "idem") {
		if op.Kind == "rollback" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d rollback operations recorded, want 1", n)
	}
	// A new key is a new rollback; it leaves nothing good to go back to,
	// and its repeat still gets the first answer, not no_rollback_target.
	h2 := http.Header{"Idempotency-Key": {"key-2"}}
	for i := range 2 {
		st, b := ts.rollbackRaw(ts.Admin, "idem", "", "", h2)
		var r struct{ Data rollbackData }
		mustJSON(t, b, &r)
		if st != 200 || r.Data.RolledBackTo != "1.0.0" {
			t.Errorf("rollback %d with key-2 = %d %s, want 200 → 1.0.0", i, st, b)
		}
	}
	// A refusal with a key is an answer too, and is repeated as such.
	h3 := http.Header{"Idempotency-Key": {"key-3"}}
	for i := range 2 {
		st, b := ts.rollbackRaw(ts.Admin, "idem", "", "", h3)
		var e errorBody
		mustJSON(t, b, &e)
		if st != 409 || e.Code != "no_rollback_target" {
			t.Errorf("refused rollback %d with key-3 = %d %s, want 409 no_rollback_target", i, st, b)
		}
	}
}

// ?wait=false answers 202 with the operation, which is then readable.
func TestRollbackAsync(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	threeVersions(t, ts, ts.Admin, "later")
	st, b := ts.rollbackRaw(ts.Admin, "later", `{"reason":"async"}`, "?wait=false", nil)
	if st != http.StatusAccepted {
		t.Fatalf("async rollback = %d %s, want 202", st, b)
	}
	var r struct{ Data rollbackData }
	mustJSON(t, b, &r)
	if r.Data.OperationID == "" {
		t.Fatalf("async rollback names no operation: %s", b)
	}
	waitFor(t, "operation to succeed", 20*time.Second, func() bool {
		st, b := ts.do("GET", "/api/v1/agents/later/operations/"+r.Data.OperationID, ts.Admin, nil, "", nil)
		var op struct{ Data operationEntry }
		_ = json.Unmarshal(b, &op)
		return st == 200 && op.Data.Status == "succeeded"
	})
	if v := ts.whoami("later").Version; v != "1.1.0" {
		t.Errorf("proxy serves %s, want 1.1.0", v)
	}
}

// ?dry_run=true says what would happen and changes nothing.
func TestRollbackDryRun(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	threeVersions(t, ts, ts.Admin, "dry")
	if st, b := ts.updateRaw(ts.Admin, "dry", broken(t, "dry", "1.3.0"), nil, "?wait=true", nil); st != http.StatusConflict {
		t.Fatalf("broken update = %d %s", st, b)
	}
	before := ts.state(ts.Admin, "dry")
	ops := len(ts.operations(ts.Admin, "dry"))
	st, b := ts.rollbackRaw(ts.Admin, "dry", "", "?dry_run=true", nil)
	if st != 200 {
		t.Fatalf("dry run = %d %s", st, b)
	}
	var r struct{ Data rollbackData }
	mustJSON(t, b, &r)
	if r.Data.RolledBackTo != "1.1.0" || r.Data.RolledBackFrom != "1.2.0" || len(r.Data.WouldClean) != 1 || !r.Data.Warm {
		t.Errorf("dry run = %+v, want 1.2.0 → 1.1.0, warm, one deployment to clean", r.Data)
	}
	if after := ts.state(ts.Admin, "dry"); after != before {
		t.Errorf("dry run changed state: %+v → %+v", before, after)
	}
	if n := len(ts.operations(ts.Admin, "dry")); n != ops {
		t.Errorf("dry run recorded an operation")
	}
}

// The version rolled back from stays warm for the grace period (so undoing
// is instant), then stops.
func TestRollbackGracePeriod(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", withGrace(1500*time.Millisecond))
	threeVersions(t, ts, ts.Admin, "grace")
	ts.rollback(ts.Admin, "grace", `{"reason":"oops"}`)
	// Undo at once: warm.
	if r := ts.rollback(ts.Admin, "grace", `{"target_version":"1.2.0","reason":"undo"}`); !r.Warm {
		t.Errorf("undo within the grace period was not warm: %+v", r)
	}
	ts.rollback(ts.Admin, "grace", `{"target_version":"1.1.0"}`)
	live := func(version string) bool {
		for _, d := range ts.deployments(ts.Admin, "grace") {
			if d.Version == version && (d.Status == "running" || d.Status == "starting") {
				return true
			}
		}
		return false
	}
	if !live("1.2.0") {
		t.Fatal("1.2.0 stopped right after the rollback; want it warm for the grace period")
	}
	waitFor(t, "1.2.0 to stop after the grace period", 15*time.Second, func() bool { return !live("1.2.0") })
	if s := ts.history(ts.Admin, "grace").statuses()["1.2.0"]; s != "rolled_back" {
		t.Errorf("1.2.0 status = %s, want rolled_back", s)
	}
	// Going back now is a cold start, and still works.
	if r := ts.rollback(ts.Admin, "grace", `{"target_version":"1.2.0"}`); r.Warm {
		t.Errorf("rollback after the grace period was warm; want a cold start")
	}
	if v := ts.whoami("grace").Version; v != "1.2.0" {
		t.Errorf("proxy serves %s, want 1.2.0", v)
	}
}

// Zero failed requests through the proxy while rolling back and forth.
func TestRollbackUnderLoad(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	ts.upload(ts.Admin, echo(t, "loaded", "1.0.0", nil))
	ts.update(ts.Admin, "loaded", echo(t, "loaded", "1.1.0", nil), map[string]string{"update_strategy": "blue-green"})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var okN, failN atomic.Int64
	var bad sync.Map
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				w, err := berthtest.GetWhoami(context.Background(), ts.URL+"/agents/loaded")
				switch {
				case err != nil:
					failN.Add(1)
					bad.Store(err.Error(), true)
				case w.Version != "1.0.0" && w.Version != "1.1.0":
					failN.Add(1)
					bad.Store("version "+w.Version, true)
				default:
					okN.Add(1)
				}
			}
		}()
	}
	rollbacks := 0
	for ctx.Err() == nil {
		target := []string{"1.0.0", "1.1.0"}[rollbacks%2]
		if st, b := ts.rollbackRaw(ts.Admin, "loaded", fmt.Sprintf(`{"target_version":%q}`, target), "", nil); st != 200 {
			t.Errorf("rollback to %s = %d %s", target, st, b)
			break
		}
		rollbacks++
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	bad.Range(func(k, _ any) bool { t.Errorf("failed request: %v", k); return true })
	if failN.Load() != 0 || okN.Load() == 0 || rollbacks < 5 {
		t.Errorf("%d ok, %d failed requests over %d rollbacks; want 0 failed", okN.Load(), failN.Load(), rollbacks)
	}
	t.Logf("%d requests, %d rollbacks, 0 failed", okN.Load(), rollbacks)
}
