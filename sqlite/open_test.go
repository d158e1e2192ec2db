package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/storetest"
)

func openTest(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open(%q) = %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// querier is what the read and write pools share for reads.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// pragma returns the value of PRAGMA name on one connection of q.
func pragma(t *testing.T, ctx context.Context, q querier, name string) string {
	t.Helper()
	var v string
	if err := q.QueryRowContext(ctx, "PRAGMA "+name).Scan(&v); err != nil {
		t.Fatalf("PRAGMA %s = %v", name, err)
	}
	return v
}

func TestOpenSettings(t *testing.T) {
	t.Setenv(BusyTimeoutEnv, "") // the default, whatever the environment says
	ctx := t.Context()
	s := openTest(t, filepath.Join(t.TempDir(), "berth.db"))
	// synchronous 2 is FULL; busy_timeout is in milliseconds.
	want := map[string]string{"journal_mode": "wal", "synchronous": "2", "foreign_keys": "1", "busy_timeout": "10000"}
	for pool, db := range map[string]querier{"write": s.write, "read": s.read} {
		for name, w := range want {
			if got := pragma(t, ctx, db, name); got != w {
				t.Errorf("%s pool: PRAGMA %s = %q, want %q", pool, name, got, w)
			}
		}
	}
	if got := pragma(t, ctx, s.read, "query_only"); got != "1" {
		t.Errorf("read pool: PRAGMA query_only = %q, want 1", got)
	}
	if got := pragma(t, ctx, s.write, "query_only"); got != "0" {
		t.Errorf("write pool: PRAGMA query_only = %q, want 0", got)
	}
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Errorf("IntegrityCheck() = %v, want nil", err)
	}
}

func TestOpenPaths(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"plain.db", "with space.db", "odd?name#1%.db"} {
		path := filepath.Join(dir, name)
		s := openTest(t, path)
		if s.Path() != path {
			t.Errorf("Open(%q).Path() = %q, want %q", path, s.Path(), path)
		}
		if _, err := os.Stat(path); err != nil {
			t.Errorf("Open(%q) did not create the file: %v", path, err)
		}
	}
	for _, path := range []string{"", ":memory:"} {
		if _, err := Open(t.Context(), path); berth.ErrorCode(err) != berth.CodeInvalid {
			t.Errorf("Open(%q) = %v, want code %q", path, err, berth.CodeInvalid)
		}
	}
	if _, err := Open(t.Context(), filepath.Join(dir, "missing-dir", "x.db")); err == nil {
		t.Errorf("Open(path in a missing directory) = nil, want an error")
	}
}

func TestMigrations(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "berth.db")
	ms, err := loadMigrations()
	if err != nil || len(ms) == 0 {
		t.Fatalf("loadMigrations() = %d migrations, %v; want some", len(ms), err)
	}
	latest := ms[len(ms)-1].Version

	// Several stores opening a new file at once apply each migration once.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			s, err := Open(ctx, path)
			if err != nil {
				t.Errorf("concurrent Open() = %v", err)
				return
			}
			s.Close()
		})
	}
	wg.Wait()

	s := openTest(t, path)
	var n, maxV int
	if err := s.read.QueryRowContext(ctx, `SELECT COUNT(*), MAX(version) FROM schema_migrations`).Scan(&n, &maxV); err != nil {
		t.Fatalf("reading schema_migrations = %v", err)
	}
	if n != len(ms) || maxV != latest {
		t.Errorf("schema_migrations has %d rows up to %d, want %d up to %d", n, maxV, len(ms), latest)
	}

	// A database from a newer Berth is refused rather than misread.
	if _, err := s.write.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, 'future.sql', '')`,
		latest+1); err != nil {
		t.Fatalf("inserting a future migration = %v", err)
	}
	s.Close()
	if _, err := Open(ctx, path); berth.ErrorCode(err) != berth.CodeUnavailable {
		t.Errorf("Open(newer schema) = %v, want code %q", err, berth.CodeUnavailable)
	}
}

// TestTwoStoresOneFile opens the file twice, as two processes would, and
// checks that the operation guard and the optimistic active-version check
// hold across them while both write at once.
func TestTwoStoresOneFile(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "berth.db")
	s1, s2 := openTest(t, path), openTest(t, path)

	u := berth.User{ID: "u1", Username: "u1", AccessKey: "AK1", CreatedAt: time.Now()}
	a := berth.Agent{ID: "a1", Name: "a1", OwnerID: u.ID, CreatedAt: time.Now(), UpdatedAt: time.Now()}
	v := berth.Version{ID: "v1", AgentID: a.ID, Version: "1.0.0", State: berth.VersionReady, CreatedAt: time.Now()}
	for _, err := range []error{s1.CreateUser(ctx, u), s1.CreateAgent(ctx, a), s2.CreateVersion(ctx, v)} {
		if err != nil {
			t.Fatalf("setting up: %v", err)
		}
	}

	op1 := berth.Operation{ID: "op1", AgentID: a.ID, Kind: berth.OpUpdate, StartedAt: time.Now()}
	if _, _, err := s1.BeginOperation(ctx, op1, time.Now().Add(time.Hour), time.Time{}); err != nil {
		t.Fatalf("s1.BeginOperation() = %v", err)
	}
	op2 := berth.Operation{ID: "op2", AgentID: a.ID, Kind: berth.OpRollback, StartedAt: time.Now()}
	_, _, err := s2.BeginOperation(ctx, op2, time.Now().Add(time.Hour), time.Time{})
	var be *berth.Error
	if !errors.As(err, &be) || be.Code != berth.CodeOperationInProgress || be.OperationID != op1.ID {
		t.Errorf("s2.BeginOperation() while s1 holds the guard = %v, want %q naming %s", err, berth.CodeOperationInProgress, op1.ID)
	}

	// Both stores write at once; the second file handle waits on the lock
	// (busy_timeout) instead of failing.
	var wg sync.WaitGroup
	for i, s := range []*Store{s1, s2} {
		wg.Go(func() {
			for j := range 20 {
				b := berth.Build{ID: fmt.Sprintf("b%d-%d", i, j), AgentID: a.ID, VersionID: v.ID, Version: v.Version,
					Status: berth.BuildQueued, CreatedAt: time.Now(), UpdatedAt: time.Now()}
				if err := s.CreateBuild(ctx, b); err != nil {
					t.Errorf("store %d: CreateBuild() = %v", i+1, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if bs, err := s1.ListBuilds(ctx, a.ID); err != nil || len(bs) != 40 {
		t.Errorf("ListBuilds() = %d builds, %v; want 40", len(bs), err)
	}

	done := op1
	done.Status = berth.OpSucceeded
	if err := s2.Commit(ctx, berth.Commit{AgentID: a.ID, SetActive: &v.ID, Operation: &done}); err != nil {
		t.Fatalf("s2.Commit(op1) = %v", err)
	}
	if got, err := s1.AgentByID(ctx, a.ID); err != nil || got.ActiveVersion != v.Version {
		t.Errorf("s1.AgentByID() = %+v, %v; want active %s written through s2", got, err, v.Version)
	}
	err = s1.Commit(ctx, berth.Commit{AgentID: a.ID, SetActive: &v.ID, ExpectActive: ""})
	if berth.ErrorCode(err) != berth.CodeConflict {
		t.Errorf("s1.Commit(stale ExpectActive) = %v, want %q", err, berth.CodeConflict)
	}
}

func TestBusyTimeoutSetting(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		env  string // BERTH_SQLITE_BUSY_TIMEOUT; "" = unset
		want string // PRAGMA busy_timeout, in ms; "" = Open fails with CodeInvalid
	}{
		{"default", Options{}, "", "10000"},
		{"option", Options{BusyTimeout: 250 * time.Millisecond}, "", "250"},
		{"environment", Options{}, "1.5s", "1500"},
		{"option wins", Options{BusyTimeout: time.Second}, "2s", "1000"},
		{"bad environment", Options{}, "soon", ""},
		{"zero environment", Options{}, "0s", ""},
		{"negative option", Options{BusyTimeout: -time.Second}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(BusyTimeoutEnv, tt.env)
			s, err := OpenOptions(t.Context(), filepath.Join(t.TempDir(), "berth.db"), tt.opts)
			if tt.want == "" {
				if berth.ErrorCode(err) != berth.CodeInvalid {
					t.Errorf("OpenOptions(%+v) with %s=%q = %v, want code %q", tt.opts, BusyTimeoutEnv, tt.env, err, berth.CodeInvalid)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenOptions(%+v) with %s=%q = %v", tt.opts, BusyTimeoutEnv, tt.env, err)
			}
			defer s.Close()
			for pool, db := range map[string]querier{"write": s.write, "read": s.read} {
				if got := pragma(t, t.Context(), db, "busy_timeout"); got != tt.want {
					t.Errorf("%s pool: PRAGMA busy_timeout = %s, want %s", pool, got, tt.want)
				}
			}
		})
	}
}

// holdWriteLock takes the database's write lock on a connection of its own,
// as another process would (BEGIN IMMEDIATE), and returns the function that
// releases it.
func holdWriteLock(t *testing.T, path string) (release func()) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(t.Context(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatalf("BEGIN IMMEDIATE = %v", err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			if _, err := conn.ExecContext(context.Background(), "ROLLBACK"); err != nil {
				t.Errorf("ROLLBACK = %v", err)
			}
			conn.Close()
			db.Close()
		})
	}
	t.Cleanup(release)
	return release
}

// While another connection holds the write lock, writes wait the busy
// timeout and then fail with CodeUnavailable, writing nothing; reads go on.
// Once the lock is released the same write succeeds.
func TestWriteLockedByAnotherProcess(t *testing.T) {
	const busy = 200 * time.Millisecond
	path := filepath.Join(t.TempDir(), "berth.db")
	s, err := OpenOptions(t.Context(), path, Options{BusyTimeout: busy})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	u := berth.User{ID: "u1", Username: "u1", AccessKey: "AK1", CreatedAt: time.Now()}
	if err := s.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	a := berth.Agent{ID: "a1", Name: "a1", OwnerID: u.ID, CreatedAt: time.Now(), UpdatedAt: time.Now()}
	op := berth.Operation{ID: "op1", AgentID: a.ID, Kind: berth.OpUpdate, StartedAt: time.Now()}

	release := holdWriteLock(t, path)
	writes := []struct {
		name string
		do   func() error
	}{
		{"CreateAgent", func() error { return s.CreateAgent(ctx, a) }},
		{"CreateUser", func() error {
			return s.CreateUser(ctx, berth.User{ID: "u2", Username: "u2", AccessKey: "AK2", CreatedAt: time.Now()})
		}},
	}
	for _, w := range writes {
		start := time.Now()
		err := w.do()
		if got := berth.ErrorCode(err); got != berth.CodeUnavailable {
			t.Errorf("%s while locked = %v (code %q), want code %q", w.name, err, got, berth.CodeUnavailable)
		}
		if msg := berth.ErrorMessage(err); !strings.Contains(msg, "the database is busy") {
			t.Errorf("%s while locked: message %q, want it to say the database is busy", w.name, msg)
		}
		if d := time.Since(start); d < busy {
			t.Errorf("%s failed after %v, before the busy timeout %v", w.name, d, busy)
		}
	}
	// Reads go on (WAL) and see nothing of the failed writes.
	if n, err := s.CountUsers(ctx); err != nil || n != 1 {
		t.Errorf("CountUsers() while locked = %d, %v; want 1, nil", n, err)
	}
	if _, err := s.AgentByID(ctx, a.ID); berth.ErrorCode(err) != berth.CodeNotFound {
		t.Errorf("AgentByID() while locked = %v, want %q", err, berth.CodeNotFound)
	}

	release()
	for _, w := range writes {
		if err := w.do(); err != nil {
			t.Errorf("%s after the lock was released = %v", w.name, err)
		}
	}
	if _, _, err := s.BeginOperation(ctx, op, time.Now().Add(time.Hour), time.Time{}); err != nil {
		t.Errorf("BeginOperation() after the lock was released = %v", err)
	}
}

// TestMigrationKeepOperations checks 0003_keep_operations.sql on a
// database at schema 0002 that holds agents and operations: the rows are
// kept, agent_name is filled in from the agents, the indexes of operations
// are there again, and from then on deleting an agent keeps its operations.
func TestMigrationKeepOperations(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "berth.db")
	ms, err := loadMigrations()
	if err != nil || len(ms) < 3 || ms[1].Version != 2 || ms[2].Name != "0003_keep_operations.sql" {
		t.Fatalf("loadMigrations() = %d migrations, %v; want 0001, 0002 and 0003_keep_operations.sql", len(ms), err)
	}

	// A database as Berth left it at schema 0002.
	db, err := sql.Open("sqlite", dsn(path, false, DefaultBusyTimeout))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE schema_migrations (
		version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[:2] {
		if err := applyMigration(ctx, db, m); err != nil {
			t.Fatalf("applyMigration(%s) = %v", m.Name, err)
		}
	}
	at := encTime(time.Date(2025, 3, 1, 12, 0, 0, 123456000, time.UTC))
	for _, q := range []string{
		`INSERT INTO users VALUES ('u1', 'alice', 'a@example.com', 'AK1', 'hash', 0, '` + at + `')`,
		`INSERT INTO agents (id, name, owner_id, description, created_at, updated_at)
			VALUES ('a1', 'old-agent', 'u1', '', '` + at + `', '` + at + `'),
			       ('a2', 'other-agent', 'u1', '', '` + at + `', '` + at + `')`,
		`INSERT INTO operations (id, agent_id, kind, status, actor, reason, from_version, to_version, error_code,
			error_message, idempotency_key, result, result_status, started_at, finished_at, duration_ms, request_hash)
			VALUES ('op1', 'a1', 'upload', 'succeeded', 'alice', 'first', '', '1.0.0', '', '', 'key-1',
				'{"agent_id":"a1"}', 201, '` + at + `', '` + at + `', 42, 'hash-1'),
			       ('op2', 'a1', 'rollback', 'failed', 'alice', 'bad', '1.1.0', '1.0.0', 'conflict', 'no',
				NULL, NULL, 0, '` + at + `', NULL, 0, ''),
			       ('op3', 'a2', 'upload', 'running', 'alice', '', '', '1.0.0', '', '', NULL, NULL, 0,
				'` + at + `', NULL, 0, '')`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s := openTest(t, path)
	started, _ := time.Parse(timeLayout, at)
	storetest.WantMigratedOperations(t, s, started)

	// Every index of operations is back.
	rows, err := s.read.QueryContext(ctx, `SELECT name FROM sqlite_master
		WHERE type = 'index' AND tbl_name = 'operations' AND sql IS NOT NULL ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	var indexes []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		indexes = append(indexes, name)
	}
	rows.Close()
	wantIndexes := "operations_agent_started operations_idempotency operations_idempotency_started operations_running"
	if got := strings.Join(indexes, " "); got != wantIndexes {
		t.Errorf("indexes of operations after migrating = %s, want %s", got, wantIndexes)
	}
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Errorf("IntegrityCheck() after migrating = %v", err)
	}

	// The foreign key is gone: deleting the agent keeps its operations.
	if err := s.DeleteAgent(ctx, "a1", nil); err != nil {
		t.Fatalf("DeleteAgent(a1) = %v", err)
	}
	ops, err := s.ListOperations(ctx, "a1", 10)
	if err != nil || len(ops) != 2 {
		t.Errorf("ListOperations(deleted a1) = %d operations, %v; want op1 and op2 kept", len(ops), err)
	}
}
