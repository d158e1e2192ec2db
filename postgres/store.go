// Package postgres implements berth.Store on PostgreSQL, the metadata store
// that several `berth serve` replicas share.
//
// It has the semantics of the SQLite store (package sqlite) and passes the
// same acceptance suite (storetest); what differs is how they hold across
// processes on different machines:
//
//   - The per-agent operation guard and the active-version pointer live in
//     the agent's row. BeginOperation, RenewLease and Commit lock that row
//     (SELECT … FOR NO KEY UPDATE) before they read it, so replicas that
//     race on one agent queue on the row, one holder at a time, and a
//     Commit's fence and ExpectActive checks cannot be overtaken between
//     the check and the write.
//   - Leases are kept on the database's clock, so replicas whose clocks
//     disagree still agree on when a lease ends; see leaseExpr.
//   - Migrations run under a PostgreSQL advisory lock, so replicas starting
//     at once apply each one once.
//
// Open takes a PostgreSQL URL or DSN as understood by pgx, e.g.
// "postgres://berth:secret@db.example.com:5432/berth?sslmode=verify-full".
// Unknown query parameters are sent as session settings, so
// "search_path=team_a" keeps Berth's tables in schema team_a, and pool
// parameters such as "pool_max_conns=8" size the connection pool.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/berthhq/berth"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Store is a berth.Store backed by a PostgreSQL database. It is safe for
// concurrent use, and any number of Stores, in any number of processes, may
// share one database.
type Store struct {
	pool *pgxpool.Pool
}

var _ berth.Store = (*Store)(nil)

// Open connects to the PostgreSQL database at url and brings its schema up
// to date by applying the embedded migrations that have not been applied
// yet. A malformed url is CodeInvalid; a database that cannot be reached is
// CodeUnavailable.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx redacts the password in its parse errors.
		return nil, &berth.Error{Code: berth.CodeInvalid, Message: "postgres: invalid database URL", Err: err}
	}
	// Session defaults; settings given in the URL win.
	//
	// Every statement the store runs is written for one index and keeps
	// its plan whatever its parameters, so planning it once per connection
	// (a generic plan) is enough. Left to choose, PostgreSQL re-plans a
	// parameterized statement on every execution whenever the generic plan
	// is estimated dearer than a custom one, which for RecentlyActive or
	// ListVersions adds planning work that grows with the agent's versions.
	//
	// A replica that hangs or is cut off in the middle of a transaction
	// (rather than dying, which closes its connection) would hold its row
	// locks, and so an agent's guard, until the server noticed. The store's
	// transactions never wait on anything but the database, so a session
	// idle inside one for a minute is stuck, and the server ends it.
	for name, value := range map[string]string{
		"plan_cache_mode":                     "force_generic_plan",
		"idle_in_transaction_session_timeout": "60s",
	} {
		if _, set := cfg.ConnConfig.RuntimeParams[name]; !set {
			cfg.ConnConfig.RuntimeParams[name] = value
		}
	}
	cfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		// Times come back in UTC, as the SQLite store returns them, rather
		// than in the process's local zone.
		conn.TypeMap().RegisterType(&pgtype.Type{
			Name: "timestamptz", OID: pgtype.TimestamptzOID,
			Codec: &pgtype.TimestamptzCodec{ScanLocation: time.UTC},
		})
		return nil
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, dbErr(err, "postgres: open database")
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, unavailable(err, "postgres: cannot connect to the database")
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return &Store{pool: pool}, nil
}

// Close closes the connection pool, waiting for connections in use to be
// returned.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return unavailable(err, "postgres: cannot reach the database")
	}
	return nil
}

// inTx runs fn in one READ COMMITTED transaction and commits it, or rolls
// it back if fn or the commit fails. Row locks taken in fn (FOR NO KEY
// UPDATE) are what serialize writers; READ COMMITTED then lets each
// statement see what the writer before it committed.
func (s *Store) inTx(ctx context.Context, action string, fn func(tx pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return dbErr(err, action)
	}
	if err := fn(tx); err != nil {
		// The rollback error adds nothing: fn's error says what failed, and
		// a connection whose rollback failed is closed by pgx.
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return dbErr(err, action)
	}
	if err := tx.Commit(ctx); err != nil {
		return dbErr(err, action)
	}
	return nil
}

// execOne runs a write statement that must change exactly one row and
// returns a CodeNotFound error naming what when it changes none.
func execOne(ctx context.Context, q execer, action, what, query string, args ...any) error {
	tag, err := q.Exec(ctx, query, args...)
	if err != nil {
		return dbErr(err, action)
	}
	if tag.RowsAffected() == 0 {
		return berth.Errorf(berth.CodeNotFound, "%s not found", what)
	}
	return nil
}

// execer is what the pool and a transaction share for writes.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// querier is what the pool and a transaction share for reads.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// SQLSTATE codes (https://www.postgresql.org/docs/current/errcodes-appendix.html)
// that map to a code other than CodeInternal.
const (
	sqlstateUniqueViolation     = "23505"
	sqlstateForeignKeyViolation = "23503"
	sqlstateSerialization       = "40001"
	sqlstateDeadlock            = "40P01"
	sqlstateLockNotAvailable    = "55P03"
	sqlstateDiskFull            = "53100"
	sqlstateOutOfMemory         = "53200"
	sqlstateTooManyConnections  = "53300"
	sqlstateAdminShutdown       = "57P01"
	sqlstateCrashShutdown       = "57P02"
	sqlstateCannotConnectNow    = "57P03"
	sqlstateReadOnlyTx          = "25006"
)

// dbErr turns an error from pgx into a *berth.Error, by SQLSTATE: unique
// violations become CodeConflict, foreign-key violations CodeNotFound (the
// referenced record does not exist), data exceptions (class 22, e.g. a
// value PostgreSQL cannot store) CodeInvalid, a full disk
// CodeInsufficientStorage, lock contention, connection loss and a server
// shutting down or in recovery CodeUnavailable, and everything else
// CodeInternal. An error that already is a *berth.Error is returned as is.
func dbErr(err error, action string) error {
	if err == nil {
		return nil
	}
	var be *berth.Error
	if errors.As(err, &be) {
		return err
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case sqlstateUniqueViolation:
			return &berth.Error{Code: berth.CodeConflict, Message: action + ": it already exists", Err: err}
		case sqlstateForeignKeyViolation:
			return &berth.Error{Code: berth.CodeNotFound, Message: action + ": a record it refers to does not exist", Err: err}
		case sqlstateDiskFull:
			return &berth.Error{Code: berth.CodeInsufficientStorage, Message: action + ": the database is out of disk space", Err: err}
		case sqlstateSerialization, sqlstateDeadlock, sqlstateLockNotAvailable, sqlstateOutOfMemory,
			sqlstateTooManyConnections, sqlstateAdminShutdown, sqlstateCrashShutdown, sqlstateCannotConnectNow,
			sqlstateReadOnlyTx:
			return &berth.Error{Code: berth.CodeUnavailable, Message: action + ": the database is busy or unavailable", Err: err}
		}
		if pgerrClass(pe.Code) == "22" {
			return &berth.Error{Code: berth.CodeInvalid, Message: action + ": a value cannot be stored", Err: err}
		}
		return &berth.Error{Code: berth.CodeInternal, Message: action + " failed", Err: err}
	}
	// Not reaching the server, or losing the connection, is the database
	// being unavailable; the caller's own cancellation or deadline is not.
	var (
		ce *pgconn.ConnectError
		ne net.Error
	)
	if errors.As(err, &ce) ||
		errors.As(err, &ne) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return unavailable(err, action+": the database is unavailable")
	}
	return &berth.Error{Code: berth.CodeInternal, Message: action + " failed", Err: err}
}

// pgerrClass returns the class (first two characters) of a SQLSTATE.
func pgerrClass(code string) string {
	if len(code) < 2 {
		return ""
	}
	return code[:2]
}

// unavailable wraps err as CodeUnavailable; message is what the caller
// sees.
func unavailable(err error, message string) error {
	return &berth.Error{Code: berth.CodeUnavailable, Message: message, Err: err}
}

// conflict re-labels a CodeConflict error with a more specific message.
func conflict(err error, format string, args ...any) error {
	var be *berth.Error
	if errors.As(err, &be) && be.Code == berth.CodeConflict {
		return &berth.Error{Code: berth.CodeConflict, Message: fmt.Sprintf(format, args...), Err: be.Err}
	}
	return err
}

// missingRef re-labels a foreign-key CodeNotFound error with a more specific
// message.
func missingRef(err error, format string, args ...any) error {
	var be *berth.Error
	if errors.As(err, &be) && be.Code == berth.CodeNotFound && be.Err != nil {
		return &berth.Error{Code: berth.CodeNotFound, Message: fmt.Sprintf(format, args...), Err: be.Err}
	}
	return err
}

// notFound maps pgx.ErrNoRows to CodeNotFound naming what, and any other
// error through dbErr.
func notFound(err error, action, format string, args ...any) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return berth.Errorf(berth.CodeNotFound, format, args...)
	}
	return dbErr(err, action)
}

// collect scans every row with scan and closes rows.
func collect[T any](rows pgx.Rows, action string, scan func(pgx.Row) (T, error)) ([]T, error) {
	defer rows.Close()
	// Empty, not nil: callers encode lists as JSON arrays.
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, dbErr(err, action)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr(err, action)
	}
	return out, nil
}

// defaultLimit is the page size used when a caller passes limit <= 0.
const defaultLimit = 50

func pageSize(limit int) int {
	if limit <= 0 {
		return defaultLimit
	}
	return limit
}
