package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/berthhq/berth"
)

// The store benchmarks, shared by every backend: each backend's
// BenchmarkX calls BenchX with a function that opens a store as durable
// as production's.

// benchAgent opens a store with a user and an agent.
func benchAgent(b *testing.B, open func(b *testing.B) berth.Store) (berth.Store, berth.Agent) {
	b.Helper()
	ctx := b.Context()
	s := open(b)
	b.Cleanup(func() { s.Close() })
	u := berth.User{ID: uuid.NewString(), Username: "bench", AccessKey: "AK-bench", CreatedAt: time.Now()}
	a := berth.Agent{ID: uuid.NewString(), Name: "bench", OwnerID: u.ID, CreatedAt: time.Now(), UpdatedAt: time.Now()}
	if err := s.CreateUser(ctx, u); err != nil {
		b.Fatal(err)
	}
	if err := s.CreateAgent(ctx, a); err != nil {
		b.Fatal(err)
	}
	return s, a
}

// BenchCommitSwitch measures one active-version switch: a Commit that
// checks and moves the active pointer and marks the target activated, with
// (begin+commit) and without the operation record and guard around it. Each
// commit is a durable (fsynced) transaction.
func BenchCommitSwitch(b *testing.B, open func(b *testing.B) berth.Store) {
	for _, withOp := range []bool{false, true} {
		name := "commit"
		if withOp {
			name = "begin+commit"
		}
		b.Run(name, func(b *testing.B) {
			ctx := b.Context()
			s, a := benchAgent(b, open)
			var vs [2]string
			for i := range vs {
				v := berth.Version{ID: uuid.NewString(), AgentID: a.ID, Version: fmt.Sprintf("1.%d.0", i),
					State: berth.VersionReady, CreatedAt: time.Now()}
				if err := s.CreateVersion(ctx, v); err != nil {
					b.Fatal(err)
				}
				vs[i] = v.ID
			}
			active := ""
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				target := vs[i%2]
				i++
				at := time.Now()
				c := berth.Commit{
					AgentID:      a.ID,
					SetActive:    &target,
					ExpectActive: active,
					Versions:     []berth.VersionChange{{VersionID: target, State: berth.VersionReady, ActivatedAt: &at}},
				}
				if withOp {
					op := berth.Operation{ID: uuid.NewString(), AgentID: a.ID, Kind: berth.OpRollback, StartedAt: at}
					if _, _, err := s.BeginOperation(ctx, op, at.Add(time.Minute), time.Time{}); err != nil {
						b.Fatal(err)
					}
					op.Status, op.FinishedAt = berth.OpSucceeded, &at
					c.Operation = &op
				}
				if err := s.Commit(ctx, c); err != nil {
					b.Fatal(err)
				}
				active = target
			}
		})
	}
}

// BenchRecentlyActive measures the "last known good" lookup for an
// agent with few and with many versions; served from an index, its cost
// should not grow with the count.
func BenchRecentlyActive(b *testing.B, open func(b *testing.B) berth.Store) {
	for _, n := range []int{10, 5000} {
		b.Run(fmt.Sprintf("versions=%d", n), func(b *testing.B) {
			ctx := b.Context()
			s, a := benchAgent(b, open)
			base := time.Now().Add(-time.Duration(n) * time.Minute)
			for i := range n {
				v := berth.Version{ID: uuid.NewString(), AgentID: a.ID, Version: fmt.Sprintf("%d.%d.0", i/100, i%100),
					State: berth.VersionReady, CreatedAt: base}
				switch i % 4 {
				case 0: // never active
				case 1:
					v.State = berth.VersionRolledBack
					fallthrough
				default:
					at := base.Add(time.Duration(i) * time.Minute)
					v.ActivatedAt = &at
				}
				if err := s.CreateVersion(ctx, v); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				vs, err := s.RecentlyActive(ctx, a.ID, 3)
				if err != nil || len(vs) != 3 {
					b.Fatalf("RecentlyActive() = %d versions, %v; want 3", len(vs), err)
				}
			}
		})
	}
}
