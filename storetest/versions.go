package storetest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/google/uuid"
)

func testVersions(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a := mkAgent(t, s)
	other := mkAgent(t, s)

	v := newVersion(a.ID, "1.2.3", berth.VersionRolledBack)
	v.Config.Build = []string{"go", "build", "./..."}
	v.Config.Image = "registry.example.com/team/agent:1.2.3"
	activated := now().Add(-time.Minute)
	v.ActivatedAt = &activated
	v.Rollback = &berth.RollbackInfo{
		OperationID: uuid.NewString(), Reason: "5xx spike", Actor: "alice",
		From: "1.2.3", To: "1.2.2", At: now(),
	}
	check(t, s.CreateVersion(ctx, v), "CreateVersion")

	got, err := s.VersionByID(ctx, v.ID)
	check(t, err, "VersionByID")
	if !equal(got, v) {
		t.Errorf("VersionByID(%q) = %+v, want %+v", v.ID, got, v)
	}
	got, err = s.VersionByLabel(ctx, a.ID, v.Version)
	check(t, err, "VersionByLabel")
	if !equal(got, v) {
		t.Errorf("VersionByLabel(%q) = %+v, want %+v", v.Version, got, v)
	}
	// A version with the optional fields unset reads back with them unset.
	bare := newVersion(a.ID, "1.2.4", berth.VersionBuilding)
	bare.Card, bare.Config = nil, berth.Config{}
	check(t, s.CreateVersion(ctx, bare), "CreateVersion(bare)")
	if got, err := s.VersionByID(ctx, bare.ID); err != nil || !equal(got, bare) {
		t.Errorf("VersionByID(bare) = %+v, %v; want %+v", got, err, bare)
	}

	// A label is never reused within an agent (in any state), but other
	// agents have their own labels.
	wantCode(t, s.CreateVersion(ctx, newVersion(a.ID, "1.2.3", berth.VersionBuilding)),
		berth.CodeConflict, "CreateVersion(same label)")
	dupID := newVersion(a.ID, "9.0.0", berth.VersionBuilding)
	dupID.ID = v.ID
	wantCode(t, s.CreateVersion(ctx, dupID), berth.CodeConflict, "CreateVersion(same id)")
	mkVersion(t, s, other.ID, "1.2.3", berth.VersionBuilding)
	wantCode(t, s.CreateVersion(ctx, newVersion(uuid.NewString(), "1.0.0", berth.VersionBuilding)),
		berth.CodeNotFound, "CreateVersion(unknown agent)")

	_, err = s.VersionByID(ctx, uuid.NewString())
	wantCode(t, err, berth.CodeNotFound, "VersionByID(unknown)")
	_, err = s.VersionByLabel(ctx, a.ID, "7.7.7")
	wantCode(t, err, berth.CodeNotFound, "VersionByLabel(unknown label)")
	_, err = s.VersionByLabel(ctx, uuid.NewString(), "1.2.3")
	wantCode(t, err, berth.CodeNotFound, "VersionByLabel(unknown agent)")
}

// testVersionLabels checks that only plain MAJOR.MINOR.PATCH labels are
// stored: the store orders by their numbers.
func testVersionLabels(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a := mkAgent(t, s)
	for _, label := range []string{"", "1", "1.2", "v1.2.3", "1.2.3-rc.1", "1.2.3+build.5", "01.2.3", "1.2.x", "latest", " 1.2.3"} {
		wantCode(t, s.CreateVersion(ctx, newVersion(a.ID, label, berth.VersionBuilding)),
			berth.CodeInvalid, fmt.Sprintf("CreateVersion(%q)", label))
	}
	for _, label := range []string{"0.0.0", "0.0.1", "1.2.3", "123.456.789"} {
		check(t, s.CreateVersion(ctx, newVersion(a.ID, label, berth.VersionBuilding)), fmt.Sprintf("CreateVersion(%q)", label))
	}
}

func testVersionSemverOrder(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a := mkAgent(t, s)
	_, err := s.HighestVersion(ctx, a.ID)
	wantCode(t, err, berth.CodeNotFound, "HighestVersion(no versions)")

	// Created out of order; text order would put "1.9.0" after "1.10.0"
	// and "10.0.0" before "2.0.0".
	for _, label := range []string{"1.9.0", "1.10.0", "0.1.0", "1.2.3", "2.0.0", "1.10.1", "0.10.0", "0.9.9"} {
		mkVersion(t, s, a.ID, label, berth.VersionReady)
	}
	top := mkVersion(t, s, a.ID, "10.0.0", berth.VersionFailed)
	want := []string{"10.0.0", "2.0.0", "1.10.1", "1.10.0", "1.9.0", "1.2.3", "0.10.0", "0.9.9", "0.1.0"}

	vs, next, err := s.ListVersions(ctx, a.ID, 100, "")
	check(t, err, "ListVersions")
	if got := ids(vs, versionLabel); !slices.Equal(got, want) || next != "" {
		t.Errorf("ListVersions(limit 100) = %v, %q; want %v, \"\"", got, next, want)
	}
	// HighestVersion looks at every state.
	h, err := s.HighestVersion(ctx, a.ID)
	check(t, err, "HighestVersion")
	if h.ID != top.ID {
		t.Errorf("HighestVersion() = %s, want %s", h.Version, top.Version)
	}
}

func testVersionPagination(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a := mkAgent(t, s)
	other := mkAgent(t, s)
	const n = 55 // more than the default page size of 50
	var want []string
	for i := range n {
		// Labels spread over all three parts, created in a scrambled order.
		j := (i * 31) % n
		label := fmt.Sprintf("%d.%d.%d", j/25, (j/5)%5*3, j%5*11)
		mkVersion(t, s, a.ID, label, berth.VersionReady)
		want = append(want, label)
	}
	// Labels of another agent that interleave with a's must not leak in.
	mkVersion(t, s, other.ID, "1.3.11", berth.VersionReady)
	mkVersion(t, s, other.ID, "99.0.0", berth.VersionReady)

	all, next, err := s.ListVersions(ctx, a.ID, 1000, "")
	check(t, err, "ListVersions(limit 1000)")
	if len(all) != n || next != "" {
		t.Fatalf("ListVersions(limit 1000) = %d versions, next %q; want %d, \"\"", len(all), next, n)
	}
	order := ids(all, versionLabel)
	if !slices.IsSortedFunc(all, func(x, y berth.Version) int { return -compareLabels(x.Version, y.Version) }) {
		t.Fatalf("ListVersions(limit 1000) = %v, want newest semver first", order)
	}
	slices.SortFunc(want, func(x, y string) int { return -compareLabels(x, y) })
	if !slices.Equal(order, want) {
		t.Fatalf("ListVersions(limit 1000) = %v, want %v", order, want)
	}

	for _, limit := range []int{1, 7, 11, 50, 54, 55, 56} {
		var got []string
		cursor, pages := "", 0
		for {
			page, next, err := s.ListVersions(ctx, a.ID, limit, cursor)
			check(t, err, fmt.Sprintf("ListVersions(limit %d, cursor %q)", limit, cursor))
			if len(page) == 0 || len(page) > limit {
				t.Fatalf("ListVersions(limit %d, cursor %q) returned %d versions, want 1..%d", limit, cursor, len(page), limit)
			}
			got = append(got, ids(page, versionLabel)...)
			pages++
			if next == "" {
				break
			}
			if next != page[len(page)-1].Version {
				t.Fatalf("ListVersions(limit %d) next cursor = %q, want the last label %q", limit, next, page[len(page)-1].Version)
			}
			if pages > n {
				t.Fatalf("ListVersions(limit %d) did not end after %d pages", limit, pages)
			}
			cursor = next
		}
		if !slices.Equal(got, want) {
			t.Errorf("ListVersions pages of %d = %v, want %v", limit, got, want)
		}
		if wantPages := (n + limit - 1) / limit; pages != wantPages {
			t.Errorf("ListVersions(limit %d) took %d pages, want %d", limit, pages, wantPages)
		}
	}

	// limit <= 0 means a page of 50.
	for _, limit := range []int{0, -1} {
		page, next, err := s.ListVersions(ctx, a.ID, limit, "")
		check(t, err, fmt.Sprintf("ListVersions(limit %d)", limit))
		if len(page) != 50 || next != want[49] {
			t.Errorf("ListVersions(limit %d) = %d versions, next %q; want 50, %q", limit, len(page), next, want[49])
		}
	}

	_, _, err = s.ListVersions(ctx, a.ID, 10, "not-a-label")
	wantCode(t, err, berth.CodeInvalid, "ListVersions(cursor \"not-a-label\")")
}

// compareLabels compares two MAJOR.MINOR.PATCH labels numerically.
func compareLabels(x, y string) int {
	var a, b [3]int
	fmt.Sscanf(x, "%d.%d.%d", &a[0], &a[1], &a[2])
	fmt.Sscanf(y, "%d.%d.%d", &b[0], &b[1], &b[2])
	return slices.Compare(a[:], b[:])
}

func testRecentlyActive(t *testing.T, s berth.Store) {
	ctx := t.Context()
	a := mkAgent(t, s)
	other := mkAgent(t, s)
	base := now()
	at := func(d time.Duration) *time.Time { return ptr(base.Add(d)) }

	mk := func(agentID, label string, state berth.VersionState, activated *time.Time) berth.Version {
		v := newVersion(agentID, label, state)
		v.ActivatedAt = activated
		check(t, s.CreateVersion(ctx, v), "CreateVersion("+label+")")
		return v
	}
	// v1 and v2 are one microsecond apart: ordering must keep that
	// precision.
	v1 := mk(a.ID, "1.0.0", berth.VersionReady, at(time.Microsecond))
	v2 := mk(a.ID, "1.1.0", berth.VersionReady, at(2*time.Microsecond))
	mk(a.ID, "1.2.0", berth.VersionRolledBack, at(3*time.Microsecond))
	mk(a.ID, "1.3.0", berth.VersionFailed, nil)
	mk(a.ID, "1.4.0", berth.VersionReady, nil) // ready but never active
	mk(a.ID, "1.5.0", berth.VersionBuilding, nil)
	old := mk(a.ID, "2.0.0", berth.VersionReady, at(-time.Hour))
	mk(other.ID, "3.0.0", berth.VersionReady, at(time.Hour))

	want := func(call string, limit int, wantVs ...berth.Version) {
		t.Helper()
		got, err := s.RecentlyActive(ctx, a.ID, limit)
		check(t, err, call)
		if g, w := ids(got, versionLabel), ids(wantVs, versionLabel); !slices.Equal(g, w) {
			t.Errorf("%s = %v, want %v", call, g, w)
		}
	}
	want("RecentlyActive(10)", 10, v2, v1, old)
	want("RecentlyActive(2)", 2, v2, v1)

	// Activating the old version moves it to the front; rolling back from
	// v2 takes it out.
	err := s.Commit(ctx, berth.Commit{AgentID: a.ID, Versions: []berth.VersionChange{
		{VersionID: old.ID, State: berth.VersionReady, ActivatedAt: at(time.Minute)},
		{VersionID: v2.ID, State: berth.VersionRolledBack},
	}})
	check(t, err, "Commit(version changes)")
	want("RecentlyActive(10) after changes", 10, old, v1)

	if got, err := s.RecentlyActive(ctx, uuid.NewString(), 10); err != nil || len(got) != 0 {
		t.Errorf("RecentlyActive(unknown agent) = %v, %v; want empty", got, err)
	}
}
