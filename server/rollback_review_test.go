package server_test

// Rollback behaviours found by an adversarial review of POST
// /api/v1/agents/{agent_id}/rollback against DESIGN.md §4 and
// nasiko/rollback-agent.txt, beyond what rollback_test.go covers: reuse of
// an Idempotency-Key, strict bodies, refusals while another operation
// runs, a standby that fails its probe, reasons stored verbatim.

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"syscall"
	"testing"

	"github.com/berthhq/berth/berthtest"
)

// twoVersions deploys name at 1.0.0 and then 1.1.0 (blue-green, so 1.0.0
// stays warm as standby).
func twoVersions(t *testing.T, ts *testServer, token, name string) {
	t.Helper()
	ts.upload(token, echo(t, name, "1.0.0", nil))
	ts.update(token, name, echo(t, name, "1.1.0", nil), map[string]string{"update_strategy": "blue-green"})
}

// refusedWith checks that a response is an error with one of the given codes.
func refusedWith(t *testing.T, what string, st int, b []byte, codes ...string) {
	t.Helper()
	var e errorBody
	mustJSON(t, b, &e)
	if st < 400 || st >= 500 || !slices.Contains(codes, e.Code) {
		t.Errorf("%s = %d %s, want a 4xx refusal with code in %v", what, st, b, codes)
	}
}

// An Idempotency-Key names one request. Reusing it for a different request
// (another operation kind, another body, another caller) must not answer
// with the first request's result while doing nothing; a key used on
// another agent is a different key.
func TestRollbackIdempotencyKeyReuse(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")

	// DESIGN §4.4: "a repeat of the same key returns the first result".
	// An update is not a repeat of a rollback: replaying the update's
	// result would answer 200 "Rollback successful" with empty versions
	// and roll nothing back.
	t.Run("key of an update, then a rollback", func(t *testing.T) {
		twoVersions(t, ts, ts.Admin, "reuse-upd")
		key := http.Header{"Idempotency-Key": {"deploy-then-rollback"}}
		if st, b := ts.updateRaw(ts.Admin, "reuse-upd", echo(t, "reuse-upd", "1.2.0", nil),
			map[string]string{"update_strategy": "blue-green"}, "?wait=true", key); st != http.StatusOK {
			t.Fatalf("update with key = %d %s", st, b)
		}
		st, b := ts.rollbackRaw(ts.Admin, "reuse-upd", `{"reason":"bad 1.2.0"}`, "", key)
		if st == http.StatusOK {
			var r struct{ Data rollbackData }
			mustJSON(t, b, &r)
			cur := ts.history(ts.Admin, "reuse-upd").CurrentVersion
			if r.Data.RolledBackTo != "1.1.0" || r.Data.RolledBackFrom != "1.2.0" || cur != "1.1.0" {
				t.Errorf("rollback reusing an update's key = 200 %s and current is %s; want a real rollback 1.2.0 → 1.1.0 or a refusal", b, cur)
			}
			return
		}
		refusedWith(t, "rollback reusing an update's key", st, b, "conflict", "invalid_body")
	})

	// The same, the other way round: replaying the rollback's result would
	// answer 202 with new_version "" and deploy nothing.
	t.Run("key of a rollback, then an update", func(t *testing.T) {
		twoVersions(t, ts, ts.Admin, "reuse-rb")
		key := http.Header{"Idempotency-Key": {"rollback-then-deploy"}}
		if st, b := ts.rollbackRaw(ts.Admin, "reuse-rb", "", "", key); st != http.StatusOK {
			t.Fatalf("rollback with key = %d %s", st, b)
		}
		st, b := ts.updateRaw(ts.Admin, "reuse-rb", echo(t, "reuse-rb", "1.2.0", nil), nil, "?wait=true", key)
		if st < 300 {
			if h := ts.history(ts.Admin, "reuse-rb"); h.CurrentVersion != "1.2.0" {
				t.Errorf("update reusing a rollback's key = %d %s, current %s, versions %v; want 1.2.0 deployed or a refusal",
					st, b, h.CurrentVersion, h.statuses())
			}
			return
		}
		refusedWith(t, "update reusing a rollback's key", st, b, "conflict", "invalid_body")
	})

	// Same key, another target: replaying would tell the caller who asked
	// for 1.1.0 "rolled_back_to 1.0.0" while nothing happens.
	t.Run("same key, different body", func(t *testing.T) {
		threeVersions(t, ts, ts.Admin, "reuse-body")
		key := http.Header{"Idempotency-Key": {"body-changes"}}
		if st, b := ts.rollbackRaw(ts.Admin, "reuse-body", `{"target_version":"1.0.0"}`, "", key); st != http.StatusOK {
			t.Fatalf("first rollback = %d %s", st, b)
		}
		st, b := ts.rollbackRaw(ts.Admin, "reuse-body", `{"target_version":"1.1.0"}`, "", key)
		if st == http.StatusOK {
			var r struct{ Data rollbackData }
			mustJSON(t, b, &r)
			if r.Data.RolledBackTo != "1.1.0" {
				t.Errorf("rollback to 1.1.0 reusing the key of a rollback to 1.0.0 = 200 rolled_back_to %q; want a refusal (409/422), not another request's answer",
					r.Data.RolledBackTo)
			}
			return
		}
		refusedWith(t, "rollback with a reused key and another body", st, b, "conflict", "invalid_body")
	})

	// Like upload (TestUploadIdempotencyKey), rollback refuses another
	// caller's key with 409 conflict rather than replay the owner's answer
	// to a superuser.
	t.Run("same key, another caller", func(t *testing.T) {
		alice := ts.register("reuse-alice", false)
		twoVersions(t, ts, alice.Token, "reuse-user")
		key := http.Header{"Idempotency-Key": {"whose-key"}}
		st, b := ts.rollbackRaw(alice.Token, "reuse-user", "", "", key)
		if st != http.StatusOK {
			t.Fatalf("alice's rollback = %d %s", st, b)
		}
		var first struct{ Data rollbackData }
		mustJSON(t, b, &first)
		st, b = ts.rollbackRaw(ts.Admin, "reuse-user", `{"target_version":"1.1.0"}`, "", key)
		if st == http.StatusOK {
			var r struct{ Data rollbackData }
			mustJSON(t, b, &r)
			if r.Data.OperationID == first.Data.OperationID {
				t.Errorf("superuser's rollback with alice's key replayed alice's operation %s (%s → %s); want 409 conflict as upload answers",
					r.Data.OperationID, r.Data.RolledBackFrom, r.Data.RolledBackTo)
			}
			return
		}
		refusedWith(t, "another caller's rollback with the same key", st, b, "conflict")
	})

	// Regression: keys are per agent, so one key on two agents is two
	// rollbacks.
	t.Run("same key, two agents", func(t *testing.T) {
		key := http.Header{"Idempotency-Key": {"per-agent"}}
		var ops []string
		for _, name := range []string{"reuse-a", "reuse-b"} {
			twoVersions(t, ts, ts.Admin, name)
			st, b := ts.rollbackRaw(ts.Admin, name, "", "", key)
			var r struct{ Data rollbackData }
			mustJSON(t, b, &r)
			if st != http.StatusOK || r.Data.RolledBackTo != "1.0.0" {
				t.Fatalf("rollback of %s with a key used on another agent = %d %s, want 200 → 1.0.0", name, st, b)
			}
			if cur := ts.history(ts.Admin, name).CurrentVersion; cur != "1.0.0" {
				t.Errorf("%s current = %s, want 1.0.0", name, cur)
			}
			ops = append(ops, r.Data.OperationID)
		}
		if ops[0] == ops[1] {
			t.Errorf("both agents answered with operation %s", ops[0])
		}
	})
}

// DESIGN §4 error table: "malformed JSON, wrong field types, unknown fields
// → 422 invalid_body". encoding/json matches field names case-insensitively,
// so "CLEANUP_FAILED" (an unknown field to Nasiko's pydantic model) is
// honoured as cleanup_failed; and openapi.json types cleanup_failed as a
// plain boolean (target_version and reason are anyOf string/null), yet
// null is taken as the destructive default true.
func TestRollbackBodyStrictness(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	twoVersions(t, ts, ts.Admin, "strict")
	for _, c := range []struct {
		body   string
		status int
	}{
		{`{"CLEANUP_FAILED":false}`, http.StatusUnprocessableEntity},
		{`{"Target_Version":"1.0.0"}`, http.StatusUnprocessableEntity},
		{`{"Reason":"case"}`, http.StatusUnprocessableEntity},
		{`{"cleanup_failed":null}`, http.StatusUnprocessableEntity},
		// Regression: what the schema allows is accepted.
		{`{}`, http.StatusOK},
		{`{"target_version":null,"reason":null}`, http.StatusOK},
		{`{"target_version":"1.0.0","cleanup_failed":false,"reason":"ok"}`, http.StatusOK},
	} {
		// A dry run parses the body like a rollback and changes nothing.
		st, b := ts.rollbackRaw(ts.Admin, "strict", c.body, "?dry_run=true", nil)
		if st != c.status {
			t.Errorf("dry-run rollback with body %s = %d %s, want %d", c.body, st, b, c.status)
			continue
		}
		if c.status == http.StatusUnprocessableEntity {
			wantError(t, "rollback with body "+c.body, st, b, c.status, "invalid_body")
		}
	}
}

// DESIGN §4.4: "a concurrent update/rollback on the same agent gets 409
// naming the operation in progress". That holds for every rollback while
// an update runs: one whose target is the version being deployed, or the
// version about to stop being current (refusing them as "never built" or
// "is the current version" would be verdicts on a state about to change),
// and a dry run (the real call would get 409).
func TestRollbackDuringUpdateIsOperationInProgress(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	twoVersions(t, ts, ts.Admin, "midway")
	slow := berthtest.EchoPackage(t, berthtest.PackageOptions{Name: "midway", Version: "1.2.0",
		Run: []string{"sh", "-c", "sleep 4; exec ./echo-agent"}})
	st, b := ts.updateRaw(ts.Admin, "midway", slow, map[string]string{"update_strategy": "blue-green"}, "", nil) // async
	if st != http.StatusAccepted {
		t.Fatalf("async update = %d %s, want 202", st, b)
	}
	var up struct{ Data deployResult }
	mustJSON(t, b, &up)
	for _, c := range []struct{ name, body, query string }{
		{"target is the version being deployed", `{"target_version":"1.2.0"}`, ""},
		{"target is the version being replaced", `{"target_version":"1.1.0"}`, ""},
		{"dry run", ``, "?dry_run=true"},
		// Regression: a target that is fine otherwise already gets 409.
		{"target is an earlier version", `{"target_version":"1.0.0"}`, ""},
	} {
		st, b := ts.rollbackRaw(ts.Admin, "midway", c.body, c.query, nil)
		var e errorBody
		mustJSON(t, b, &e)
		if st != http.StatusConflict || e.Code != "operation_in_progress" || e.OperationID != up.Data.OperationID {
			t.Errorf("%s, while update %s runs: rollback = %d %s, want 409 operation_in_progress naming the update",
				c.name, up.Data.OperationID, st, b)
		}
	}
	if cur := ts.history(ts.Admin, "midway").CurrentVersion; cur != "1.1.0" {
		t.Errorf("current = %s while the update runs, want 1.1.0", cur)
	}
}

// DESIGN §4.2: a standby is switched to "after a health probe", otherwise
// the target starts cold. A standby that fails its probe (here: the process
// is hung) is recorded failed and stopped, not left "running" for good with
// two deployments of the active version shown as active.
func TestRollbackHungStandbyIsNotLeftRunning(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	twoVersions(t, ts, ts.Admin, "hung")
	var standby deploymentEntry
	for _, d := range ts.deployments(ts.Admin, "hung") {
		if d.Version == "1.0.0" && d.Status == "running" {
			standby = d
		}
	}
	if standby.ID == "" || standby.ServiceURL == nil {
		t.Fatalf("no running 1.0.0 standby: %+v", ts.deployments(ts.Admin, "hung"))
	}
	w, err := berthtest.GetWhoami(context.Background(), *standby.ServiceURL)
	if err != nil || w.PID == 0 {
		t.Fatalf("whoami of the standby = %+v, %v", w, err)
	}
	if err := syscall.Kill(w.PID, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP standby: %v", err)
	}
	// Runs before the server's own cleanup (LIFO), so shutdown is quick.
	t.Cleanup(func() { _ = syscall.Kill(w.PID, syscall.SIGCONT) })

	r := ts.rollback(ts.Admin, "hung", `{"reason":"1.1.0 is bad"}`)
	if r.RolledBackTo != "1.0.0" || r.Warm {
		t.Fatalf("rollback past a hung standby = %+v, want a cold start of 1.0.0", r)
	}
	if v := ts.whoami("hung").Version; v != "1.0.0" {
		t.Fatalf("proxy serves %s, want 1.0.0", v)
	}
	active := 0
	for _, d := range ts.deployments(ts.Admin, "hung") {
		if d.Active {
			active++
		}
		if d.ID == standby.ID && (d.Status == "running" || d.Status == "starting") {
			t.Errorf("the standby that failed its probe is still %q after the rollback: %+v; want it stopped or failed (and then cleaned)", d.Status, d)
		}
	}
	if active != 1 {
		t.Errorf("%d deployments are marked active after the rollback, want 1", active)
	}
}

// DESIGN §4: reason is "free text, stored on the operation and on the
// version it rolled back from". Non-ASCII, markup, tabs and newlines
// round-trip verbatim on both stores; control characters such as NUL
// (valid JSON "\u0000", which PostgreSQL's TEXT cannot hold) are refused
// with 422 on both, rather than stored on one and refused on the other.
func TestRollbackReasonIsStoredVerbatim(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	threeVersions(t, ts, ts.Admin, "verbatim")
	st, b := ts.rollbackRaw(ts.Admin, "verbatim", `{"reason":"nul\u0000byte"}`, "", nil)
	wantError(t, "rollback with a NUL in its reason", st, b, http.StatusUnprocessableEntity, "invalid_body")
	reasons := []string{"回滚：p99 ↑ 3× 🚨 <b>&amp;</b>\n\"quoted\"\ttabbed", "second\r\nline"}
	for _, r := range reasons {
		st, b := ts.rollbackRaw(ts.Admin, "verbatim", reasonBody(t, r), "", nil)
		if st != http.StatusOK {
			t.Errorf("rollback with reason %q = %d %s, want 200", r, st, b)
		}
	}
	var got []string
	for _, op := range ts.operations(ts.Admin, "verbatim") {
		if op.Kind == "rollback" {
			got = append(got, op.Reason)
		}
	}
	if len(got) != 2 || got[1] != reasons[0] || got[0] != reasons[1] {
		t.Errorf("rollback reasons in the audit trail = %q, want %q then %q (the refused one not recorded)", got, reasons[0], reasons[1])
	}
	for _, v := range ts.history(ts.Admin, "verbatim").Versions {
		want := map[string]string{"1.2.0": reasons[0], "1.1.0": reasons[1]}[v.Version]
		if want == "" {
			continue
		}
		if v.RollbackInfo == nil || v.RollbackInfo.Reason != want {
			t.Errorf("version %s rollback_info = %+v, want reason %q", v.Version, v.RollbackInfo, want)
		}
	}
}

// reasonBody is a rollback body carrying reason.
func reasonBody(t *testing.T, reason string) string {
	t.Helper()
	b, err := json.Marshal(map[string]string{"reason": reason})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Descriptions, like rollback reasons, are text a user typed: control
// characters are refused with 422 on every store (PostgreSQL cannot hold a
// NUL), and nothing is created.
func TestDescriptionWithControlCharactersIsRefused(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	st, b := ts.uploadRaw(ts.Admin, echo(t, "described", "1.0.0", nil), map[string]string{"description": "nul\x00here"}, "?wait=true")
	wantError(t, "upload with a NUL in its description", st, b, http.StatusUnprocessableEntity, "invalid_body")
	st, b = ts.do("POST", "/api/v1/registry", ts.Admin, jsonBody(map[string]any{"name": "listed", "description": "bell\u0007"}), "application/json", nil)
	wantError(t, "registry entry with a control character in its description", st, b, http.StatusUnprocessableEntity, "invalid_body")
	for _, name := range []string{"described", "listed"} {
		if st, _ := ts.get("/api/v1/agents/"+name+"/versions", ts.Admin); st != http.StatusNotFound {
			t.Errorf("agent %s after a refused create = %d, want 404 (nothing created)", name, st)
		}
	}
	// Tabs and newlines are text.
	ts.upload(ts.Admin, echo(t, "multiline", "1.0.0", nil))
	if st, b := ts.updateRaw(ts.Admin, "multiline", echo(t, "multiline", "1.1.0", nil),
		map[string]string{"description": "line one\n\tline two"}, "?wait=true", nil); st != http.StatusOK {
		t.Errorf("update with a multi-line description = %d %s, want 200", st, b)
	}
}
