package lifecycle

import (
	"slices"
	"testing"
	"time"

	"github.com/berthhq/berth"
)

func at(min int) *time.Time {
	t := time.Date(2026, 1, 1, 0, min, 0, 0, time.UTC)
	return &t
}

func ver(id, label string, state berth.VersionState, activated *time.Time) berth.Version {
	return berth.Version{ID: id, AgentID: "a", Version: label, State: state, ActivatedAt: activated}
}

func TestChooseTarget(t *testing.T) {
	v100 := ver("v100", "1.0.0", berth.VersionReady, at(1))
	v110 := ver("v110", "1.1.0", berth.VersionReady, at(2))
	v120 := ver("v120", "1.2.0", berth.VersionReady, at(3))
	v110rb := ver("v110", "1.1.0", berth.VersionRolledBack, at(2))
	v130failed := ver("v130", "1.3.0", berth.VersionFailed, nil)
	v140building := ver("v140", "1.4.0", berth.VersionBuilding, nil)
	// 1.0.0 re-activated after 1.2.0 was rolled back to it: most recent.
	v100again := ver("v100", "1.0.0", berth.VersionReady, at(5))

	tests := []struct {
		name     string
		in       TargetInput
		want     string
		wantCode berth.Code
	}{
		{"no active version", TargetInput{}, "", berth.CodeNoRollbackTarget},
		{"default: previous active", TargetInput{Current: &v120, Recent: []berth.Version{v120, v110, v100}}, "1.1.0", ""},
		{"default skips current even if not first", TargetInput{Current: &v120, Recent: []berth.Version{v110, v120, v100}}, "1.1.0", ""},
		{"default after one rollback goes further back", TargetInput{Current: &v110, Recent: []berth.Version{v110, v100}}, "1.0.0", ""},
		{"default ignores rolled back and failed", TargetInput{Current: &v100again, Recent: []berth.Version{v100again, v110rb, v130failed}}, "", berth.CodeNoRollbackTarget},
		{"default ignores never activated", TargetInput{Current: &v120, Recent: []berth.Version{v120, ver("x", "1.1.5", berth.VersionReady, nil), v100}}, "1.0.0", ""},
		{"only one version", TargetInput{Current: &v100, Recent: []berth.Version{v100}}, "", berth.CodeNoRollbackTarget},
		{"explicit", TargetInput{Current: &v120, Requested: "1.0.0", Explicit: &v100, ExplicitBuilt: true}, "1.0.0", ""},
		{"explicit rolled back is allowed", TargetInput{Current: &v120, Requested: "1.1.0", Explicit: &v110rb, ExplicitBuilt: true}, "1.1.0", ""},
		{"explicit unknown", TargetInput{Current: &v120, Requested: "9.9.9"}, "", berth.CodeNotFound},
		{"explicit current", TargetInput{Current: &v120, Requested: "1.2.0", Explicit: &v120, ExplicitBuilt: true}, "", berth.CodeInvalid},
		{"explicit build failed", TargetInput{Current: &v120, Requested: "1.3.0", Explicit: &v130failed, ExplicitBuilt: false}, "", berth.CodeInvalid},
		{"explicit built but failed health may be retried", TargetInput{Current: &v120, Requested: "1.3.0", Explicit: &v130failed, ExplicitBuilt: true}, "1.3.0", ""},
		{"explicit still building", TargetInput{Current: &v120, Requested: "1.4.0", Explicit: &v140building, ExplicitBuilt: true}, "", berth.CodeInvalid},
		{"explicit with no active version", TargetInput{Requested: "1.0.0", Explicit: &v100, ExplicitBuilt: true}, "", berth.CodeNoRollbackTarget},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ChooseTarget(tt.in)
			if code := berth.ErrorCode(err); code != tt.wantCode {
				t.Fatalf("ChooseTarget() error = %v, want code %q", err, tt.wantCode)
			}
			if got.Version != tt.want {
				t.Errorf("ChooseTarget() = %q, want %q", got.Version, tt.want)
			}
		})
	}
}

func TestFailedToClean(t *testing.T) {
	removed := at(1)
	ds := []berth.Deployment{
		{ID: "run", Status: berth.DeploymentRunning},
		{ID: "fail1", Status: berth.DeploymentFailed},
		{ID: "stopped", Status: berth.DeploymentStopped},
		{ID: "fail-removed", Status: berth.DeploymentFailed, RemovedAt: removed},
		{ID: "fail2", Status: berth.DeploymentFailed},
	}
	if got, want := ids(FailedToClean(ds)), []string{"fail1", "fail2"}; !slices.Equal(got, want) {
		t.Errorf("FailedToClean() = %v, want %v", got, want)
	}
}

func TestWarmDeployment(t *testing.T) {
	ds := []berth.Deployment{
		{ID: "old-stopped", VersionID: "v1", Status: berth.DeploymentStopped},
		{ID: "starting", VersionID: "v1", Status: berth.DeploymentStarting},
		{ID: "warm", VersionID: "v1", Status: berth.DeploymentRunning},
		{ID: "other", VersionID: "v2", Status: berth.DeploymentRunning},
	}
	if d, ok := WarmDeployment(ds, "v1"); !ok || d.ID != "warm" {
		t.Errorf("WarmDeployment(v1) = %q, %v, want warm, true", d.ID, ok)
	}
	if d, ok := WarmDeployment(ds, "v3"); ok {
		t.Errorf("WarmDeployment(v3) = %q, true, want none", d.ID)
	}
}

func TestRollbackCommit(t *testing.T) {
	now := *at(10)
	grace := now.Add(time.Minute)
	from := ver("v2", "1.1.0", berth.VersionReady, at(2))
	to := ver("v1", "1.0.0", berth.VersionReady, at(1))
	ds := []berth.Deployment{
		{ID: "d-from", VersionID: "v2", Status: berth.DeploymentRunning},
		{ID: "d-from-old", VersionID: "v2", Status: berth.DeploymentStopped},
		{ID: "d-to", VersionID: "v1", Status: berth.DeploymentRunning, StopAt: &grace},
	}
	op := berth.Operation{ID: "op"}
	info := berth.RollbackInfo{Reason: "bad", Actor: "alice", From: "1.1.0", To: "1.0.0"}
	failed := berth.Deployment{ID: "d-failed", Status: berth.DeploymentFailed}
	hung := berth.Deployment{ID: "d-hung", VersionID: "v1", Status: berth.DeploymentFailed, Error: "failed its probe"}
	c := RollbackCommit(RollbackPlan{From: from, To: to, Target: ds[2], Cleaned: []berth.Deployment{failed},
		Failed: []berth.Deployment{failed, hung}}, ds, info, now, grace, op)

	if c.SetActive == nil || *c.SetActive != "v1" || c.ExpectActive != "v2" {
		t.Fatalf("RollbackCommit switch = %v (expect %q), want v1 (expect v2)", c.SetActive, c.ExpectActive)
	}
	byID := map[string]berth.VersionChange{}
	for _, v := range c.Versions {
		byID[v.VersionID] = v
	}
	if v := byID["v2"]; v.State != berth.VersionRolledBack || v.Rollback == nil || v.Rollback.Reason != "bad" {
		t.Errorf("from version change = %+v, want rolled_back with reason", v)
	}
	if v := byID["v1"]; v.State != berth.VersionReady || v.ActivatedAt == nil || !v.ActivatedAt.Equal(now) {
		t.Errorf("to version change = %+v, want ready activated now", v)
	}
	deps := map[string]berth.Deployment{}
	for _, d := range c.Deployments {
		if _, dup := deps[d.ID]; dup {
			t.Errorf("RollbackCommit writes deployment %s twice", d.ID)
		}
		deps[d.ID] = d
	}
	if d := deps["d-to"]; d.Status != berth.DeploymentRunning || d.StopAt != nil {
		t.Errorf("target deployment = %+v, want running with no stop time", d)
	}
	if d := deps["d-from"]; d.StopAt == nil || !d.StopAt.Equal(grace) || d.Status != berth.DeploymentRunning {
		t.Errorf("from deployment = %+v, want running until grace", d)
	}
	if _, ok := deps["d-from-old"]; ok {
		t.Errorf("stopped deployment of the from version was changed")
	}
	if d := deps["d-failed"]; d.RemovedAt == nil || d.Status != berth.DeploymentFailed {
		t.Errorf("cleaned deployment = %+v, want failed and removed", d)
	}
	if d, ok := deps["d-hung"]; !ok || d.Status != berth.DeploymentFailed || d.RemovedAt != nil {
		t.Errorf("deployment that failed on the way = %+v (recorded %v), want recorded failed, not removed", d, ok)
	}
	if c.Operation == nil || c.Operation.ID != "op" {
		t.Errorf("operation not committed with the switch")
	}
}

func TestRetire(t *testing.T) {
	versions := map[string]berth.Version{
		"v1": {ID: "v1", Version: "1.0.0"}, "v2": {ID: "v2", Version: "1.1.0"},
		"v3": {ID: "v3", Version: "1.2.0"}, "v4": {ID: "v4", Version: "1.3.0"},
	}
	grace := at(5)
	live := func(id, v string) berth.Deployment {
		return berth.Deployment{ID: id, VersionID: v, Status: berth.DeploymentRunning}
	}
	ds := []berth.Deployment{live("d1", "v1"), live("d2", "v2"), live("d3", "v3"), live("d4", "v4")}
	withGrace := append(slices.Clone(ds), berth.Deployment{ID: "dg", VersionID: "v1", Status: berth.DeploymentRunning, StopAt: grace})
	tests := []struct {
		name     string
		ds       []berth.Deployment
		strategy Strategy
		cleanup  bool
		standby  int
		want     []string
	}{
		{"rolling stops previous and extras", ds, Rolling, true, 1, []string{"d1", "d3"}},
		{"rolling standby 0", ds, Rolling, true, 0, []string{"d1", "d2", "d3"}},
		{"rolling without cleanup stops only previous", ds, Rolling, false, 1, []string{"d3"}},
		{"blue-green keeps previous as the one standby", ds, BlueGreen, true, 1, []string{"d1", "d2"}},
		{"blue-green standby 2", ds, BlueGreen, true, 2, []string{"d1"}},
		{"blue-green without cleanup stops nothing", ds, BlueGreen, false, 1, nil},
		{"grace-period deployments are left to expire", withGrace, BlueGreen, true, 1, []string{"d1", "d2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// v4 just became active; v3 was active before.
			got := ids(Retire(tt.ds, versions, "v4", "v3", tt.strategy, tt.cleanup, tt.standby))
			slices.Sort(got)
			if !slices.Equal(got, tt.want) && !(len(got) == 0 && len(tt.want) == 0) {
				t.Errorf("Retire(%s, cleanup=%v, standby=%d) = %v, want %v", tt.strategy, tt.cleanup, tt.standby, got, tt.want)
			}
		})
	}
}

func TestNextVersion(t *testing.T) {
	tests := []struct {
		highest, requested, card string
		want                     string
		wantCode                 berth.Code
	}{
		{"", "", "", "1.0.0", ""},
		{"", "", "0.3.0", "0.3.0", ""},
		{"", "2.0.0", "", "2.0.0", ""},
		{"1.2.3", "", "", "1.2.4", ""},
		{"1.2.3", "auto", "1.0.0", "1.2.4", ""},
		{"1.2.3", "auto", "1.5.0", "1.5.0", ""},
		{"1.2.3", "patch", "9.0.0", "1.2.4", ""},
		{"1.2.3", "minor", "", "1.3.0", ""},
		{"1.2.3", "major", "", "2.0.0", ""},
		{"1.9.0", "1.10.0", "", "1.10.0", ""},
		{"1.2.3", "1.2.3", "", "", berth.CodeConflict},
		{"1.2.3", "1.0.0", "", "", berth.CodeConflict},
		{"1.2.3", "1.3.0-beta.1", "", "", berth.CodeInvalid},
		{"1.2.3", "v2", "", "", berth.CodeInvalid},
		{"1.2.3", "banana", "", "", berth.CodeInvalid},
		{"1.2.3", "1.3", "", "", berth.CodeInvalid},
	}
	for _, tt := range tests {
		got, err := NextVersion(tt.highest, tt.requested, tt.card)
		if code := berth.ErrorCode(err); code != tt.wantCode || got != tt.want {
			t.Errorf("NextVersion(%q, %q, %q) = %q, %v; want %q, code %q", tt.highest, tt.requested, tt.card, got, err, tt.want, tt.wantCode)
		}
	}
}

func TestParseStrategy(t *testing.T) {
	for in, want := range map[string]Strategy{"": Rolling, "rolling": Rolling, "blue-green": BlueGreen} {
		if got, err := ParseStrategy(in); err != nil || got != want {
			t.Errorf("ParseStrategy(%q) = %q, %v, want %q", in, got, err, want)
		}
	}
	if _, err := ParseStrategy("canary"); berth.ErrorCode(err) != berth.CodeInvalid {
		t.Errorf("ParseStrategy(canary) error = %v, want invalid", err)
	}
}
