package storetest

import (
	"slices"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/google/uuid"
)

func testBuilds(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a := mkAgent(t, s)
	other := mkAgent(t, s)
	v1 := mkVersion(t, s, a.ID, "1.0.0", berth.VersionBuilding)
	v2 := mkVersion(t, s, a.ID, "1.1.0", berth.VersionBuilding)
	base := now()

	b1 := newBuild(a.ID, v1, base)
	b2 := newBuild(a.ID, v2, base.Add(time.Second))
	b2.Status, b2.Logs = berth.BuildBuilding, "step 1\n"
	for _, b := range []berth.Build{b2, b1, newBuild(other.ID, v1, base)} {
		check(t, s.CreateBuild(ctx, b), "CreateBuild")
	}
	got, err := s.BuildByID(ctx, b2.ID)
	check(t, err, "BuildByID")
	if !equal(got, b2) {
		t.Errorf("BuildByID(%q) = %+v, want %+v", b2.ID, got, b2)
	}

	list, err := s.ListBuilds(ctx, a.ID)
	check(t, err, "ListBuilds")
	if g, w := ids(list, buildID), []string{b2.ID, b1.ID}; !slices.Equal(g, w) {
		t.Errorf("ListBuilds() = %v, want newest first %v", g, w)
	}

	// UpdateBuild writes Status, Logs, Error, UpdatedAt and FinishedAt only.
	upd := b1
	upd.Status = berth.BuildFailed
	upd.Logs = "step 1\nstep 2: exit status 1\n"
	upd.Error = "build command failed"
	upd.UpdatedAt = base.Add(time.Minute)
	upd.FinishedAt = ptr(base.Add(time.Minute))
	upd.Version, upd.VersionID, upd.CreatedAt = "9.9.9", uuid.NewString(), base.Add(time.Hour)
	check(t, s.UpdateBuild(ctx, upd), "UpdateBuild")
	want := b1
	want.Status, want.Logs, want.Error, want.UpdatedAt, want.FinishedAt = upd.Status, upd.Logs, upd.Error, upd.UpdatedAt, upd.FinishedAt
	got, err = s.BuildByID(ctx, b1.ID)
	check(t, err, "BuildByID")
	if !equal(got, want) {
		t.Errorf("after UpdateBuild, BuildByID = %+v, want %+v", got, want)
	}

	wantCode(t, s.CreateBuild(ctx, b1), berth.CodeConflict, "CreateBuild(same id)")
	wantCode(t, s.CreateBuild(ctx, newBuild(uuid.NewString(), v1, base)), berth.CodeNotFound, "CreateBuild(unknown agent)")
	_, err = s.BuildByID(ctx, uuid.NewString())
	wantCode(t, err, berth.CodeNotFound, "BuildByID(unknown)")
	wantCode(t, s.UpdateBuild(ctx, newBuild(a.ID, v1, base)), berth.CodeNotFound, "UpdateBuild(unknown)")
}
