package storetest

import (
	"slices"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/google/uuid"
)

func testDeployments(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a := mkAgent(t, s)
	other := mkAgent(t, s)
	v1 := mkVersion(t, s, a.ID, "1.0.0", berth.VersionReady)
	v2 := mkVersion(t, s, a.ID, "1.1.0", berth.VersionBuilding)
	base := now()

	d1 := newDeployment(a.ID, v1, berth.DeploymentRunning, base)
	d1.Restarts = 2
	d2 := newDeployment(a.ID, v2, berth.DeploymentStarting, base.Add(time.Second))
	d2.StopAt = ptr(base.Add(time.Hour))
	for _, d := range []berth.Deployment{d1, d2, newDeployment(other.ID, v1, berth.DeploymentRunning, base)} {
		check(t, s.CreateDeployment(ctx, d), "CreateDeployment")
	}
	got, err := s.DeploymentByID(ctx, d2.ID)
	check(t, err, "DeploymentByID")
	if !equal(got, d2) {
		t.Errorf("DeploymentByID(%q) = %+v, want %+v", d2.ID, got, d2)
	}
	list, err := s.ListDeployments(ctx, a.ID)
	check(t, err, "ListDeployments")
	if g, w := ids(list, deploymentID), []string{d2.ID, d1.ID}; !slices.Equal(g, w) {
		t.Errorf("ListDeployments() = %v, want newest first %v", g, w)
	}

	// UpdateDeployment writes Status, URL, Error, Restarts, UpdatedAt,
	// StopAt and RemovedAt only.
	upd := d2
	upd.Status = berth.DeploymentFailed
	upd.URL = "http://127.0.0.1:50000"
	upd.Error = "health check timed out"
	upd.Restarts = 3
	upd.UpdatedAt = base.Add(time.Minute)
	upd.StopAt = nil
	upd.RemovedAt = ptr(base.Add(2 * time.Minute))
	upd.Version, upd.VersionID, upd.BuildID, upd.CreatedAt = "9.9.9", v1.ID, "other-build", base.Add(time.Hour)
	check(t, s.UpdateDeployment(ctx, upd), "UpdateDeployment")
	want := d2
	want.Status, want.URL, want.Error, want.Restarts = upd.Status, upd.URL, upd.Error, upd.Restarts
	want.UpdatedAt, want.StopAt, want.RemovedAt = upd.UpdatedAt, upd.StopAt, upd.RemovedAt
	got, err = s.DeploymentByID(ctx, d2.ID)
	check(t, err, "DeploymentByID")
	if !equal(got, want) {
		t.Errorf("after UpdateDeployment, DeploymentByID = %+v, want %+v", got, want)
	}

	wantCode(t, s.CreateDeployment(ctx, d1), berth.CodeConflict, "CreateDeployment(same id)")
	wantCode(t, s.CreateDeployment(ctx, newDeployment(uuid.NewString(), v1, berth.DeploymentStarting, base)),
		berth.CodeNotFound, "CreateDeployment(unknown agent)")
	_, err = s.DeploymentByID(ctx, uuid.NewString())
	wantCode(t, err, berth.CodeNotFound, "DeploymentByID(unknown)")
	wantCode(t, s.UpdateDeployment(ctx, newDeployment(a.ID, v1, berth.DeploymentStopped, base)),
		berth.CodeNotFound, "UpdateDeployment(unknown)")
}

func testLiveDeployments(t *testing.T, s berth.Store) {
	ctx := t.Context()
	var live, dead []string
	for range 2 {
		a := mkAgent(t, s)
		v := mkVersion(t, s, a.ID, "1.0.0", berth.VersionReady)
		for _, st := range []berth.DeploymentStatus{berth.DeploymentStarting, berth.DeploymentRunning,
			berth.DeploymentFailed, berth.DeploymentStopped} {
			d := mkDeployment(t, s, a.ID, v, st)
			if st.Live() {
				live = append(live, d.ID)
			} else {
				dead = append(dead, d.ID)
			}
		}
	}
	liveIDs := func() []string {
		t.Helper()
		got, err := s.LiveDeployments(ctx)
		check(t, err, "LiveDeployments()")
		for _, d := range got {
			if !d.Status.Live() {
				t.Errorf("LiveDeployments() includes %s in status %q", d.ID, d.Status)
			}
		}
		return ids(got, deploymentID)
	}
	got := liveIDs()
	for _, id := range live {
		if !slices.Contains(got, id) {
			t.Errorf("LiveDeployments() = %v, want it to include %s", got, id)
		}
	}
	for _, id := range dead {
		if slices.Contains(got, id) {
			t.Errorf("LiveDeployments() = %v, want it to exclude %s", got, id)
		}
	}

	// Stopping a live deployment takes it off the list.
	d, err := s.DeploymentByID(ctx, live[0])
	check(t, err, "DeploymentByID")
	d.Status = berth.DeploymentStopped
	check(t, s.UpdateDeployment(ctx, d), "UpdateDeployment")
	got = liveIDs()
	if slices.Contains(got, d.ID) {
		t.Errorf("after stopping %s, LiveDeployments() = %v, want it excluded", d.ID, got)
	}
	for _, id := range live[1:] {
		if !slices.Contains(got, id) {
			t.Errorf("after stopping %s, LiveDeployments() = %v, want it to include %s", d.ID, got, id)
		}
	}
}

func testCurrentDeployments(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a, other := mkAgent(t, s), mkAgent(t, s)
	v1 := mkVersion(t, s, a.ID, "1.0.0", berth.VersionReady)
	v2 := mkVersion(t, s, a.ID, "1.1.0", berth.VersionReady)
	v3 := mkVersion(t, s, a.ID, "1.2.0", berth.VersionFailed)
	base := now()
	mk := func(v berth.Version, st berth.DeploymentStatus, off time.Duration, removed bool) berth.Deployment {
		d := newDeployment(a.ID, v, st, base.Add(off))
		if removed {
			d.RemovedAt = ptr(base)
		}
		check(t, s.CreateDeployment(ctx, d), "CreateDeployment")
		return d
	}
	stopped := mk(v1, berth.DeploymentStopped, 0, false)
	running := mk(v1, berth.DeploymentRunning, time.Second, false)
	starting := mk(v2, berth.DeploymentStarting, 2*time.Second, false)
	failed := mk(v3, berth.DeploymentFailed, 3*time.Second, false)
	cleaned := mk(v3, berth.DeploymentFailed, 4*time.Second, true)
	check(t, s.CreateDeployment(ctx, newDeployment(other.ID, mkVersion(t, s, other.ID, "1.0.0", berth.VersionReady), berth.DeploymentRunning, base)), "CreateDeployment(other)")

	got, err := s.CurrentDeployments(ctx, a.ID)
	check(t, err, "CurrentDeployments")
	if g, w := ids(got, deploymentID), []string{failed.ID, starting.ID, running.ID}; !slices.Equal(g, w) {
		t.Errorf("CurrentDeployments() = %v, want live and uncleaned failed, newest first %v", g, w)
	}

	got, err = s.DeploymentsOfVersions(ctx, a.ID, []string{v1.ID, v3.ID})
	check(t, err, "DeploymentsOfVersions")
	if g, w := ids(got, deploymentID), []string{cleaned.ID, failed.ID, running.ID, stopped.ID}; !slices.Equal(g, w) {
		t.Errorf("DeploymentsOfVersions(1.0.0, 1.2.0) = %v, want %v", g, w)
	}
	if got, err := s.DeploymentsOfVersions(ctx, other.ID, []string{v1.ID}); err != nil || len(got) != 0 {
		t.Errorf("DeploymentsOfVersions(another agent's view) = %v, %v; want none", got, err)
	}
	if got, err := s.DeploymentsOfVersions(ctx, a.ID, nil); err != nil || len(got) != 0 {
		t.Errorf("DeploymentsOfVersions(no versions) = %v, %v; want none", got, err)
	}
}
