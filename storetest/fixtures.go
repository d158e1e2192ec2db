package storetest

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/google/uuid"
)

// now returns the current time at the precision stores keep.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

func ptr[T any](v T) *T { return &v }

func newUser() berth.User {
	id := uuid.NewString()
	return berth.User{
		ID:          id,
		Username:    "user-" + id,
		Email:       id + "@example.com",
		AccessKey:   "AK" + uuid.NewString(),
		SecretHash:  "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
		IsSuperUser: false,
		CreatedAt:   now(),
	}
}

func mkUser(t *testing.T, s berth.Store) berth.User {
	t.Helper()
	u := newUser()
	check(t, s.CreateUser(t.Context(), u), "CreateUser")
	return u
}

// nameOf is the name newAgent gives the agent with ID id.
func nameOf(id string) string { return "a-" + id }

func newAgent(ownerID string) berth.Agent {
	id := uuid.NewString()
	at := now()
	return berth.Agent{
		ID:          id,
		Name:        nameOf(id),
		OwnerID:     ownerID,
		Description: "agent " + id,
		Card:        json.RawMessage(`{"name":"a-` + id + `","skills":[{"id":"echo"}]}`),
		CreatedAt:   at,
		UpdatedAt:   at,
	}
}

// mkAgent creates an agent, and a user to own it.
func mkAgent(t *testing.T, s berth.Store) berth.Agent {
	t.Helper()
	a := newAgent(mkUser(t, s).ID)
	check(t, s.CreateAgent(t.Context(), a), "CreateAgent")
	return a
}

func newVersion(agentID, label string, state berth.VersionState) berth.Version {
	return berth.Version{
		ID:      uuid.NewString(),
		AgentID: agentID,
		Version: label,
		State:   state,
		Config: berth.Config{
			Run:          []string{"sh", "-c", "exec ./agent"},
			HealthPath:   berth.DefaultHealthPath,
			Env:          map[string]string{"LABEL": label},
			ReadyTimeout: berth.Duration(30 * time.Second),
		},
		Card:      json.RawMessage(`{"name":"x","version":"` + label + `"}`),
		Digest:    "d1b2a59fbea7e20077af9f91b27e95e865061b270be03ff539ab3b73587882e8",
		BuildID:   uuid.NewString(),
		CreatedAt: now(),
	}
}

func mkVersion(t *testing.T, s berth.Store, agentID, label string, state berth.VersionState) berth.Version {
	t.Helper()
	v := newVersion(agentID, label, state)
	check(t, s.CreateVersion(t.Context(), v), fmt.Sprintf("CreateVersion(%q)", label))
	return v
}

func newBuild(agentID string, v berth.Version, created time.Time) berth.Build {
	return berth.Build{
		ID:        uuid.NewString(),
		AgentID:   agentID,
		VersionID: v.ID,
		Version:   v.Version,
		Status:    berth.BuildQueued,
		CreatedAt: created,
		UpdatedAt: created,
	}
}

func newDeployment(agentID string, v berth.Version, status berth.DeploymentStatus, created time.Time) berth.Deployment {
	return berth.Deployment{
		ID:        uuid.NewString(),
		AgentID:   agentID,
		VersionID: v.ID,
		Version:   v.Version,
		BuildID:   uuid.NewString(),
		Status:    status,
		URL:       "http://127.0.0.1:41234",
		CreatedAt: created,
		UpdatedAt: created,
	}
}

func mkDeployment(t *testing.T, s berth.Store, agentID string, v berth.Version, status berth.DeploymentStatus) berth.Deployment {
	t.Helper()
	d := newDeployment(agentID, v, status, now())
	check(t, s.CreateDeployment(t.Context(), d), "CreateDeployment")
	return d
}

// newOp returns a running operation on the agent with ID agentID, naming
// it as newAgent does.
func newOp(agentID string, kind berth.OperationKind) berth.Operation {
	return berth.Operation{
		ID:        uuid.NewString(),
		AgentID:   agentID,
		AgentName: nameOf(agentID),
		Kind:      kind,
		Status:    berth.OpRunning,
		Actor:     "alice",
		Reason:    "test",
		StartedAt: now(),
	}
}

// begin starts op with a lease ending at leaseUntil and fails the test
// unless it was recorded.
func begin(t *testing.T, s berth.Store, op berth.Operation, leaseUntil time.Time) {
	t.Helper()
	_, found, err := s.BeginOperation(t.Context(), op, leaseUntil, time.Time{})
	check(t, err, fmt.Sprintf("BeginOperation(%s)", op.ID))
	if found {
		t.Fatalf("BeginOperation(%s) found an existing operation, want a new one", op.ID)
	}
}

// finish returns op as succeeded, as a lifecycle decision would write it.
func finish(op berth.Operation, status berth.OperationStatus) *berth.Operation {
	at := now()
	op.Status = status
	op.FinishedAt = &at
	op.DurationMS = at.Sub(op.StartedAt).Milliseconds()
	return &op
}

// activate commits v as the agent's active version, expecting expect, with
// an operation of its own.
func activate(t *testing.T, s berth.Store, agentID string, v berth.Version, expect string) {
	t.Helper()
	op := newOp(agentID, berth.OpUpdate)
	begin(t, s, op, time.Now().Add(time.Hour))
	at := now()
	err := s.Commit(t.Context(), berth.Commit{
		AgentID:      agentID,
		SetActive:    &v.ID,
		ExpectActive: expect,
		Versions:     []berth.VersionChange{{VersionID: v.ID, State: berth.VersionReady, ActivatedAt: &at}},
		Operation:    finish(op, berth.OpSucceeded),
	})
	check(t, err, fmt.Sprintf("Commit(activate %s)", v.Version))
}

// equal reports whether got and want are equal once normalized: times
// compared as instants, JSON documents by value, and empty slices and maps
// equal to nil ones.
func equal(got, want any) bool {
	return reflect.DeepEqual(normalize(got), normalize(want))
}

var (
	timeType = reflect.TypeFor[time.Time]()
	rawType  = reflect.TypeFor[json.RawMessage]()
)

// normalize returns a normalized deep copy of v; see equal.
func normalize(v any) any {
	rv := reflect.New(reflect.TypeOf(v)).Elem()
	rv.Set(reflect.ValueOf(v))
	normalizeValue(rv)
	return rv.Interface()
}

func normalizeValue(v reflect.Value) {
	switch v.Type() {
	case timeType:
		v.Set(reflect.ValueOf(v.Interface().(time.Time).UTC()))
		return
	case rawType:
		v.Set(reflect.ValueOf(canonicalJSON(v.Interface().(json.RawMessage))))
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if f := v.Field(i); f.CanSet() {
				normalizeValue(f)
			}
		}
	case reflect.Pointer:
		if !v.IsNil() {
			c := reflect.New(v.Type().Elem())
			c.Elem().Set(v.Elem())
			normalizeValue(c.Elem())
			v.Set(c)
		}
	case reflect.Slice:
		if v.Len() == 0 {
			v.Set(reflect.Zero(v.Type()))
			return
		}
		c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		reflect.Copy(c, v)
		for i := range c.Len() {
			normalizeValue(c.Index(i))
		}
		v.Set(c)
	case reflect.Map:
		if v.Len() == 0 {
			v.Set(reflect.Zero(v.Type()))
		}
	}
}

// canonicalJSON re-encodes a JSON document with sorted keys and no
// insignificant space; empty stays nil and invalid JSON is kept as is.
func canonicalJSON(m json.RawMessage) json.RawMessage {
	if len(m) == 0 {
		return nil
	}
	var v any
	if err := json.Unmarshal(m, &v); err != nil {
		return m
	}
	b, err := json.Marshal(v)
	if err != nil {
		return m
	}
	return b
}

// ids returns the IDs of xs, in order.
func ids[T any](xs []T, id func(T) string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = id(x)
	}
	return out
}

func versionID(v berth.Version) string       { return v.ID }
func versionLabel(v berth.Version) string    { return v.Version }
func buildID(b berth.Build) string           { return b.ID }
func deploymentID(d berth.Deployment) string { return d.ID }
func opID(op berth.Operation) string         { return op.ID }
func agentName(a berth.Agent) string         { return a.Name }
