package server_test

import (
	"net/http"
	"testing"
	"time"
)

// Version labels: bumps from the highest existing version, explicit ones
// must be greater, and none is ever reused.
func TestUpdateVersionRules(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	ts.upload(ts.Admin, echo(t, "semver", "1.0.0", nil))
	pkg := echo(t, "semver", "", nil) // card without a version
	steps := []struct {
		version string
		want    string
	}{
		{"", "1.0.1"},
		{"auto", "1.0.2"},
		{"patch", "1.0.3"},
		{"minor", "1.1.0"},
		{"major", "2.0.0"},
		{"2.0.10", "2.0.10"},
	}
	for _, s := range steps {
		fields := map[string]string{}
		if s.version != "" {
			fields["version"] = s.version
		}
		if got := ts.update(ts.Admin, "semver", pkg, fields).NewVersion; got != s.want {
			t.Errorf("update(version=%q) = %s, want %s", s.version, got, s.want)
		}
	}
	refused := []struct {
		version string
		status  int
		code    string
	}{
		{"2.0.10", 409, "conflict"}, // exists
		{"2.0.9", 409, "conflict"},  // lower than the highest
		{"1.0.0", 409, "conflict"},
		{"3.0.0-rc.1", 400, "invalid"},
		{"v3", 400, "invalid"},
		{"three", 400, "invalid"},
	}
	before := ts.state(ts.Admin, "semver")
	for _, r := range refused {
		st, b := ts.updateRaw(ts.Admin, "semver", pkg, map[string]string{"version": r.version}, "?wait=true", nil)
		var e errorBody
		mustJSON(t, b, &e)
		if st != r.status || e.Code != r.code {
			t.Errorf("update(version=%q) = %d %s, want %d %s", r.version, st, b, r.status, r.code)
		}
	}
	if after := ts.state(ts.Admin, "semver"); after != before {
		t.Errorf("refused updates changed state: %+v → %+v", before, after)
	}
	// A card version above the highest is used by auto.
	if got := ts.update(ts.Admin, "semver", echo(t, "semver", "5.0.0", nil), nil).NewVersion; got != "5.0.0" {
		t.Errorf("auto with card 5.0.0 = %s, want 5.0.0", got)
	}
}

// Malformed update requests are refused and change nothing.
func TestUpdateRefusals(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	owner := ts.newUser("upd-owner")
	other := ts.newUser("upd-other")
	ts.upload(owner, echo(t, "guarded", "1.0.0", nil))
	before := ts.state(owner, "guarded")
	tests := []struct {
		name   string
		token  string
		zip    []byte
		fields map[string]string
		status int
		code   string
	}{
		{"other user", other, echo(t, "guarded", "", nil), nil, 403, "forbidden"},
		{"no token", "", echo(t, "guarded", "", nil), nil, 401, "unauthorized"},
		{"name mismatch", owner, echo(t, "someone-else", "", nil), nil, 400, "invalid"},
		{"bad strategy", owner, echo(t, "guarded", "", nil), map[string]string{"update_strategy": "canary"}, 400, "invalid"},
		{"bad cleanup_old", owner, echo(t, "guarded", "", nil), map[string]string{"cleanup_old": "sometimes"}, 400, "invalid"},
		{"unknown field", owner, echo(t, "guarded", "", nil), map[string]string{"versoin": "2.0.0"}, 422, "invalid_body"},
		{"missing file", owner, nil, map[string]string{"version": "2.0.0"}, 422, "invalid_body"},
		{"not a zip", owner, []byte("hello"), nil, 400, "invalid"},
	}
	for _, tt := range tests {
		st, b := ts.updateRaw(tt.token, "guarded", tt.zip, tt.fields, "?wait=true", nil)
		var e errorBody
		mustJSON(t, b, &e)
		if st != tt.status || e.Code != tt.code {
			t.Errorf("%s: update = %d %s, want %d %s", tt.name, st, b, tt.status, tt.code)
		}
	}
	if after := ts.state(owner, "guarded"); after != before {
		t.Errorf("refused updates changed state: %+v → %+v", before, after)
	}
	if v := ts.whoami("guarded").Version; v != "1.0.0" {
		t.Errorf("proxy serves %s, want 1.0.0", v)
	}
}

// Rolling stops the previous version; blue-green keeps it warm as standby,
// and cleanup_old keeps only the configured number of standbys.
func TestUpdateStrategies(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", withStandby(1))
	ts.upload(ts.Admin, echo(t, "strat", "1.0.0", nil))
	liveVersions := func() map[string]bool {
		m := map[string]bool{}
		for _, d := range ts.deployments(ts.Admin, "strat") {
			if d.Status == "running" || d.Status == "starting" {
				m[d.Version] = true
			}
		}
		return m
	}
	ts.update(ts.Admin, "strat", echo(t, "strat", "1.1.0", nil), map[string]string{"update_strategy": "blue-green"})
	if s := ts.history(ts.Admin, "strat").statuses(); s["1.0.0"] != "standby" || s["1.1.0"] != "active" {
		t.Errorf("after blue-green: %v, want 1.0.0 standby, 1.1.0 active", s)
	}
	ts.update(ts.Admin, "strat", echo(t, "strat", "1.2.0", nil), map[string]string{"update_strategy": "blue-green"})
	// Standby policy 1: 1.1.0 stays warm, 1.0.0 is stopped.
	waitFor(t, "1.0.0 to stop", 10*time.Second, func() bool { return !liveVersions()["1.0.0"] })
	if s := ts.history(ts.Admin, "strat").statuses(); s["1.0.0"] != "inactive" || s["1.1.0"] != "standby" {
		t.Errorf("after second blue-green: %v, want 1.0.0 inactive, 1.1.0 standby", s)
	}
	ts.update(ts.Admin, "strat", echo(t, "strat", "1.3.0", nil), map[string]string{"update_strategy": "rolling"})
	waitFor(t, "1.2.0 to stop after a rolling update", 10*time.Second, func() bool { return !liveVersions()["1.2.0"] })
	if v := ts.whoami("strat").Version; v != "1.3.0" {
		t.Errorf("proxy serves %s, want 1.3.0", v)
	}
	// cleanup_old=false leaves earlier standbys running.
	ts.update(ts.Admin, "strat", echo(t, "strat", "1.4.0", nil), map[string]string{"update_strategy": "blue-green"})
	ts.update(ts.Admin, "strat", echo(t, "strat", "1.5.0", nil), map[string]string{"update_strategy": "blue-green", "cleanup_old": "false"})
	if lv := liveVersions(); !lv["1.3.0"] || !lv["1.4.0"] || !lv["1.5.0"] {
		t.Errorf("with cleanup_old=false live versions = %v, want 1.3.0, 1.4.0 and 1.5.0", lv)
	}
}

// A repeated update with the same Idempotency-Key deploys once.
func TestUpdateIdempotencyKey(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	ts.upload(ts.Admin, echo(t, "once", "1.0.0", nil))
	h := http.Header{"Idempotency-Key": {"deploy-42"}}
	pkg := echo(t, "once", "", nil)
	var answers []deployResult
	for range 2 {
		st, b := ts.updateRaw(ts.Admin, "once", pkg, nil, "?wait=true", h)
		if st != http.StatusOK {
			t.Fatalf("update = %d %s", st, b)
		}
		var r struct{ Data deployResult }
		mustJSON(t, b, &r)
		answers = append(answers, r.Data)
	}
	if answers[0].OperationID != answers[1].OperationID || answers[0].NewVersion != answers[1].NewVersion {
		t.Errorf("repeat answered %+v, first %+v", answers[1], answers[0])
	}
	if n := len(ts.history(ts.Admin, "once").Versions); n != 2 {
		t.Errorf("%d versions after a repeated update, want 2", n)
	}
}
