package storetest

import (
	"testing"

	"github.com/berthhq/berth"
	"github.com/google/uuid"
)

func testUsers(t *testing.T, s berth.Store) {
	ctx := t.Context()
	before, err := s.CountUsers(ctx)
	check(t, err, "CountUsers()")

	u := newUser()
	u.IsSuperUser = true
	check(t, s.CreateUser(ctx, u), "CreateUser")

	got, err := s.UserByID(ctx, u.ID)
	check(t, err, "UserByID")
	if !equal(got, u) {
		t.Errorf("UserByID(%q) = %+v, want %+v", u.ID, got, u)
	}
	got, err = s.UserByAccessKey(ctx, u.AccessKey)
	check(t, err, "UserByAccessKey")
	if !equal(got, u) {
		t.Errorf("UserByAccessKey(%q) = %+v, want %+v", u.AccessKey, got, u)
	}
	plain := mkUser(t, s)
	if got, err := s.UserByID(ctx, plain.ID); err != nil || got.IsSuperUser {
		t.Errorf("UserByID(%q) = %+v, %v; want IsSuperUser false", plain.ID, got, err)
	}

	clashes := []struct {
		name   string
		mutate func(*berth.User)
	}{
		{"same id", func(x *berth.User) { x.ID = u.ID }},
		{"same username", func(x *berth.User) { x.Username = u.Username }},
		{"same access key", func(x *berth.User) { x.AccessKey = u.AccessKey }},
	}
	for _, tc := range clashes {
		x := newUser()
		tc.mutate(&x)
		wantCode(t, s.CreateUser(ctx, x), berth.CodeConflict, "CreateUser("+tc.name+")")
	}

	n, err := s.CountUsers(ctx)
	check(t, err, "CountUsers()")
	if n != before+2 {
		t.Errorf("CountUsers() = %d, want %d", n, before+2)
	}

	_, err = s.UserByID(ctx, uuid.NewString())
	wantCode(t, err, berth.CodeNotFound, "UserByID(unknown)")
	_, err = s.UserByAccessKey(ctx, "no-such-key")
	wantCode(t, err, berth.CodeNotFound, "UserByAccessKey(unknown)")
}
