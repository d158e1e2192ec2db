package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlstore"
	"github.com/berthhq/berth/storetest"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestStore(t *testing.T) {
	testURL(t)
	storetest.Run(t, func(t *testing.T) berth.Store {
		u := freshSchema(t)
		s, err := Open(t.Context(), u)
		if err != nil {
			t.Fatalf("Open() = %v", err)
		}
		return s
	})
}

func TestOpenErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tests := []struct {
		name string
		url  string
		want berth.Code
	}{
		{"malformed URL", "postgres://berth:secret@[::1/berth", berth.CodeInvalid},
		{"unknown parameter value", "postgres://127.0.0.1/berth?sslmode=sometimes", berth.CodeInvalid},
		// Port 1 on loopback refuses connections at once.
		{"nothing listening", "postgres://berth:secret@127.0.0.1:1/berth?connect_timeout=5", berth.CodeUnavailable},
	}
	for _, tc := range tests {
		s, err := Open(ctx, tc.url)
		if err == nil {
			s.Close()
		}
		if got := berth.ErrorCode(err); got != tc.want {
			t.Errorf("Open(%s) = %v, want code %q", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%s) error %q contains the password", tc.name, err)
		}
	}
}

func TestErrorCodes(t *testing.T) {
	tests := []struct {
		err  error
		want berth.Code
	}{
		{&pgconn.PgError{Code: "23505", Message: "duplicate key value violates unique constraint"}, berth.CodeConflict},
		{&pgconn.PgError{Code: "23503", Message: "violates foreign key constraint"}, berth.CodeNotFound},
		{&pgconn.ConnectError{}, berth.CodeUnavailable},
		{&pgconn.PgError{Code: "22021", Message: "invalid byte sequence for encoding"}, berth.CodeInvalid},
		{&pgconn.PgError{Code: "22P02", Message: "invalid input syntax for type json"}, berth.CodeInvalid},
		{&pgconn.PgError{Code: "53100", Message: "could not extend file"}, berth.CodeInsufficientStorage},
		{&pgconn.PgError{Code: "40P01", Message: "deadlock detected"}, berth.CodeUnavailable},
		{&pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}, berth.CodeUnavailable},
		{&pgconn.PgError{Code: "42P01", Message: "relation does not exist"}, berth.CodeInternal},
		// A message that reads like a unique violation is not one: codes,
		// not text, decide.
		{&pgconn.PgError{Code: "XX000", Message: "duplicate key value violates unique constraint"}, berth.CodeInternal},
		{fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: "23505"}), berth.CodeConflict},
		{berth.Errorf(berth.CodeOperationInProgress, "busy"), berth.CodeOperationInProgress},
		{context.Canceled, berth.CodeInternal},
		{errors.New("something else"), berth.CodeInternal},
	}
	for _, tc := range tests {
		if got := berth.ErrorCode(dbErr(tc.err, "test")); got != tc.want {
			t.Errorf("dbErr(%v) code = %q, want %q", tc.err, got, tc.want)
		}
	}
	if dbErr(nil, "test") != nil {
		t.Errorf("dbErr(nil) = non-nil, want nil")
	}
}

func TestCleanText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"plain line\nsecond line\n", "plain line\nsecond line\n"},
		{"héllo, 世界", "héllo, 世界"},
		{"nul\x00byte", "nul\uFFFDbyte"},
		{"bad \xff\xfe utf8", "bad \uFFFD utf8"},
		{"\x00", "\uFFFD"},
	}
	for _, tc := range tests {
		if got := cleanText(tc.in); got != tc.want {
			t.Errorf("cleanText(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestUnstorableText checks what happens to text PostgreSQL cannot store
// (NUL bytes, invalid UTF-8): process output (build logs, error messages)
// is stored with the bad bytes replaced, so the failure is still recorded;
// anything else is refused as CodeInvalid rather than failing internally.
func TestUnstorableText(t *testing.T) {
	ctx := t.Context()
	s, _ := openFresh(t)
	u := berth.User{ID: uuid.NewString(), Username: "u", AccessKey: "AK", CreatedAt: time.Now()}
	a := berth.Agent{ID: uuid.NewString(), Name: "a", OwnerID: u.ID, CreatedAt: time.Now(), UpdatedAt: time.Now()}
	v := berth.Version{ID: uuid.NewString(), AgentID: a.ID, Version: "1.0.0", State: berth.VersionBuilding, CreatedAt: time.Now()}
	for _, err := range []error{s.CreateUser(ctx, u), s.CreateAgent(ctx, a), s.CreateVersion(ctx, v)} {
		if err != nil {
			t.Fatalf("setting up: %v", err)
		}
	}

	const raw = "compiling\x00\xff\n"
	b := berth.Build{ID: uuid.NewString(), AgentID: a.ID, VersionID: v.ID, Version: v.Version,
		Status: berth.BuildFailed, Logs: raw, Error: "exit status 1: " + raw, CreatedAt: time.Now(), UpdatedAt: time.Now()}
	if err := s.CreateBuild(ctx, b); err != nil {
		t.Fatalf("CreateBuild(logs with NUL and invalid UTF-8) = %v, want it stored", err)
	}
	got, err := s.BuildByID(ctx, b.ID)
	if err != nil {
		t.Fatalf("BuildByID() = %v", err)
	}
	if want := cleanText(raw); got.Logs != want || got.Error != "exit status 1: "+want {
		t.Errorf("BuildByID() logs, error = %q, %q; want %q and the error with it", got.Logs, got.Error, want)
	}

	d := berth.Deployment{ID: uuid.NewString(), AgentID: a.ID, VersionID: v.ID, Version: v.Version,
		Status: berth.DeploymentFailed, Error: "agent said: " + raw, CreatedAt: time.Now(), UpdatedAt: time.Now()}
	if err := s.CreateDeployment(ctx, d); err != nil {
		t.Fatalf("CreateDeployment(error with NUL) = %v, want it stored", err)
	}

	bad := a
	bad.Description = "nul\x00in description"
	if err := s.UpdateAgentMeta(ctx, bad); berth.ErrorCode(err) != berth.CodeInvalid {
		t.Errorf("UpdateAgentMeta(description with NUL) = %v, want code %q", err, berth.CodeInvalid)
	}
	bad.Description, bad.Card = "", []byte(`{"not json`)
	if err := s.UpdateAgentMeta(ctx, bad); berth.ErrorCode(err) != berth.CodeInvalid {
		t.Errorf("UpdateAgentMeta(card that is not JSON) = %v, want code %q", err, berth.CodeInvalid)
	}
}

// TestJSONKeptVerbatim checks that JSON documents come back byte for byte
// (key order, spacing): an idempotent replay answers with the stored body.
func TestJSONKeptVerbatim(t *testing.T) {
	ctx := t.Context()
	s, _ := openFresh(t)
	u := berth.User{ID: uuid.NewString(), Username: "u", AccessKey: "AK", CreatedAt: time.Now()}
	a := berth.Agent{ID: uuid.NewString(), Name: "a", OwnerID: u.ID, Card: []byte(`{"z": 1,  "a": [true]}`),
		CreatedAt: time.Now(), UpdatedAt: time.Now()}
	for _, err := range []error{s.CreateUser(ctx, u), s.CreateAgent(ctx, a)} {
		if err != nil {
			t.Fatalf("setting up: %v", err)
		}
	}
	op := berth.Operation{ID: uuid.NewString(), AgentID: a.ID, Kind: berth.OpRollback, StartedAt: now()}
	if _, _, err := s.BeginOperation(ctx, op, time.Now().Add(time.Hour), time.Time{}); err != nil {
		t.Fatalf("BeginOperation() = %v", err)
	}
	op.Status, op.Result = berth.OpSucceeded, []byte(`{"status_code":200, "data" : {"b":1,"a":2}}`)
	if err := s.Commit(ctx, berth.Commit{AgentID: a.ID, Operation: &op}); err != nil {
		t.Fatalf("Commit() = %v", err)
	}
	gotA, err := s.AgentByID(ctx, a.ID)
	if err != nil || string(gotA.Card) != string(a.Card) {
		t.Errorf("AgentByID().Card = %s, %v; want %s byte for byte", gotA.Card, err, a.Card)
	}
	gotOp, err := s.OperationByID(ctx, op.ID)
	if err != nil || string(gotOp.Result) != string(op.Result) {
		t.Errorf("OperationByID().Result = %s, %v; want %s byte for byte", gotOp.Result, err, op.Result)
	}
}

func TestMigrations(t *testing.T) {
	ctx := t.Context()
	u := freshSchema(t)
	ms, err := loadMigrations()
	if err != nil || len(ms) == 0 {
		t.Fatalf("loadMigrations() = %d migrations, %v; want some", len(ms), err)
	}
	latest := ms[len(ms)-1].Version

	// Several replicas opening a new database at once apply each
	// migration once, and all of them start.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			s, err := Open(ctx, u)
			if err != nil {
				t.Errorf("concurrent Open() = %v", err)
				return
			}
			s.Close()
		})
	}
	wg.Wait()

	s := openURL(t, u)
	var n, maxV int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*), MAX(version) FROM schema_migrations`).Scan(&n, &maxV); err != nil {
		t.Fatalf("reading schema_migrations = %v", err)
	}
	if n != len(ms) || maxV != latest {
		t.Errorf("schema_migrations has %d rows up to %d, want %d up to %d", n, maxV, len(ms), latest)
	}

	// A database from a newer Berth is refused rather than misread.
	if _, err := s.db.ExecContext(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, 'future.sql')`,
		latest+1); err != nil {
		t.Fatalf("inserting a future migration = %v", err)
	}
	if s2, err := Open(ctx, u); berth.ErrorCode(err) != berth.CodeUnavailable {
		if err == nil {
			s2.Close()
		}
		t.Errorf("Open(newer schema) = %v, want code %q", err, berth.CodeUnavailable)
	}
	// The refused Open released the migration lock.
	var locked bool
	if err := s.db.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, migrationLockKey).Scan(&locked); err != nil || !locked {
		t.Errorf("pg_try_advisory_lock(migrations) after a refused Open = %v, %v; want the lock free", locked, err)
	}
	if _, err := s.db.ExecContext(ctx, `SELECT pg_advisory_unlock_all()`); err != nil {
		t.Fatal(err)
	}
}

// TestQueryPlans checks that the queries the Store contract requires to be
// index-served (and the hot lookups) use their index and do not sort. The
// tables are nearly empty, where a sequential scan is cheapest, so the
// planner is told to avoid those.
func TestQueryPlans(t *testing.T) {
	ctx := t.Context()
	s, _ := openFresh(t)
	for _, tc := range sqlstore.PlannedQueries(dialect{}) {
		plan, err := explain(ctx, s, tc.Query, tc.Args...)
		if err != nil {
			t.Fatalf("%s: EXPLAIN = %v", tc.Name, err)
		}
		t.Logf("%s:\n%s", tc.Name, plan)
		if !strings.Contains(plan, " using "+tc.Index+" on ") {
			t.Errorf("%s: plan\n%s\nwant it to use index %s", tc.Name, plan, tc.Index)
		}
		if strings.Contains(plan, "Sort") && !tc.Sorts {
			t.Errorf("%s: plan\n%s\nsorts, want index order", tc.Name, plan)
		}
	}
}

// explain returns the plan the store's sessions run query with: the generic
// plan of the prepared statement (see Open), with sequential scans and
// bitmap scans (which lose index order) discouraged. The arguments only
// give the parameters their types.
func explain(ctx context.Context, s *Store, query string, args ...any) (string, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return "", err
	}
	defer tx.Rollback()
	for _, set := range []string{`SET LOCAL enable_seqscan = off`, `SET LOCAL enable_bitmapscan = off`,
		`SET LOCAL plan_cache_mode = force_generic_plan`} {
		if _, err := tx.ExecContext(ctx, set); err != nil {
			return "", err
		}
	}
	// A prepared statement outlives the transaction: deallocate it.
	if _, err := tx.ExecContext(ctx, `PREPARE plan_probe AS `+query); err != nil {
		return "", err
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `DEALLOCATE plan_probe`)
	lits := make([]string, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case string:
			lits[i] = "'" + strings.ReplaceAll(v, "'", "''") + "'"
		case time.Time:
			lits[i] = "'" + v.Format(time.RFC3339Nano) + "'"
		default:
			lits[i] = fmt.Sprint(v)
		}
	}
	exec := `EXPLAIN EXECUTE plan_probe`
	if len(lits) > 0 {
		exec += `(` + strings.Join(lits, ", ") + `)`
	}
	rows, err := tx.QueryContext(ctx, exec)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return "", err
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n"), rows.Err()
}

// TestMigrationKeepOperations checks 0003_keep_operations.sql on a
// database at schema 0002 that holds agents and operations: the rows are
// kept, agent_name is filled in from the agents, the foreign key to agents
// is gone, and from then on deleting an agent keeps its operations.
func TestMigrationKeepOperations(t *testing.T) {
	ctx := t.Context()
	u := freshSchema(t)
	ms, err := loadMigrations()
	if err != nil || len(ms) < 3 || ms[1].Version != 2 || ms[2].Name != "0003_keep_operations.sql" {
		t.Fatalf("loadMigrations() = %d migrations, %v; want 0001, 0002 and 0003_keep_operations.sql", len(ms), err)
	}

	// A database as Berth left it at schema 0002.
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `CREATE TABLE schema_migrations (
		version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[:2] {
		if err := applyMigration(ctx, conn, m); err != nil {
			t.Fatalf("applyMigration(%s) = %v", m.Name, err)
		}
	}
	at := time.Date(2025, 3, 1, 12, 0, 0, 123456000, time.UTC)
	for _, q := range []string{
		`INSERT INTO users VALUES ('u1', 'alice', 'a@example.com', 'AK1', 'hash', false, $1)`,
		`INSERT INTO agents (id, name, owner_id, description, created_at, updated_at)
			VALUES ('a1', 'old-agent', 'u1', '', $1, $1), ('a2', 'other-agent', 'u1', '', $1, $1)`,
		`INSERT INTO operations (id, agent_id, kind, status, actor, reason, from_version, to_version, error_code,
			error_message, idempotency_key, result, result_status, started_at, finished_at, duration_ms, request_hash)
			VALUES ('op1', 'a1', 'upload', 'succeeded', 'alice', 'first', '', '1.0.0', '', '', 'key-1',
				'{"agent_id":"a1"}', 201, $1, $1, 42, 'hash-1'),
			       ('op2', 'a1', 'rollback', 'failed', 'alice', 'bad', '1.1.0', '1.0.0', 'conflict', 'no',
				NULL, NULL, 0, $1, NULL, 0, ''),
			       ('op3', 'a2', 'upload', 'running', 'alice', '', '', '1.0.0', '', '', NULL, NULL, 0, $1, NULL, 0, '')`,
	} {
		if _, err := conn.Exec(ctx, q, at); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	s := openURL(t, u)
	storetest.WantMigratedOperations(t, s, at)

	var fks int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM pg_constraint
		WHERE conrelid = 'operations'::regclass AND contype = 'f'`).Scan(&fks); err != nil || fks != 0 {
		t.Errorf("foreign keys of operations after migrating = %d, %v; want none", fks, err)
	}
	// Deleting the agent keeps its operations.
	if err := s.DeleteAgent(ctx, "a1", nil); err != nil {
		t.Fatalf("DeleteAgent(a1) = %v", err)
	}
	ops, err := s.ListOperations(ctx, "a1", 10)
	if err != nil || len(ops) != 2 {
		t.Errorf("ListOperations(deleted a1) = %d operations, %v; want op1 and op2 kept", len(ops), err)
	}
}
