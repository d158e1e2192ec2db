// Package postgres implements berth.Store on PostgreSQL, the metadata store
// that several `berth serve` replicas share.
//
// The store's SQL and logic are package sqlstore's, shared with the SQLite
// store (package sqlite), and it passes the same acceptance suite
// (storetest). What is PostgreSQL's own (dialect.go, migrate.go) is how
// they hold across processes on different machines:
//
//   - The per-agent operation guard and the active-version pointer live in
//     the agent's row. BeginOperation, RenewLease and Commit lock that row
//     (SELECT … FOR NO KEY UPDATE) before they read it, so replicas that
//     race on one agent queue on the row, one holder at a time, and a
//     Commit's fence and ExpectActive checks cannot be overtaken between
//     the check and the write.
//   - Leases are kept on the database's clock, so replicas whose clocks
//     disagree still agree on when a lease ends; see dialect.LeaseExpr.
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
	"database/sql"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlstore"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// Store is a berth.Store backed by a PostgreSQL database. It is safe for
// concurrent use, and any number of Stores, in any number of processes, may
// share one database.
type Store struct {
	*sqlstore.Store
	db *sql.DB
}

var _ berth.Store = (*Store)(nil)

// Open connects to the PostgreSQL database at url and brings its schema up
// to date by applying the embedded migrations that have not been applied
// yet. A malformed url is CodeInvalid; a database that cannot be reached is
// CodeUnavailable.
func Open(ctx context.Context, url string) (*Store, error) {
	// pgxpool's parser takes the pool_* parameters out of the URL (pgx's
	// would send them to the server as settings); they size database/sql's
	// pool below.
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

	// Migrations run on a connection of their own, which also tells a
	// database that cannot be reached from a bad one before any pool
	// exists.
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig.Copy())
	if err != nil {
		return nil, unavailable(err, "postgres: cannot connect to the database")
	}
	err = migrate(ctx, conn)
	// Closing the connection also releases the migration lock, should
	// unlocking have failed.
	_ = conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return nil, err
	}

	// database/sql keeps pgx's connections (and their statement caches);
	// its pool is sized as pgxpool would size it. Idle connections are kept
	// up to the maximum: database/sql's default of two would close and
	// reopen connections under load.
	db := stdlib.OpenDB(*cfg.ConnConfig)
	db.SetMaxOpenConns(int(cfg.MaxConns))
	db.SetMaxIdleConns(int(cfg.MaxConns))
	db.SetConnMaxLifetime(cfg.MaxConnLifetime)
	db.SetConnMaxIdleTime(cfg.MaxConnIdleTime)
	return &Store{Store: sqlstore.New(dialect{}, db, db), db: db}, nil
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return unavailable(err, "postgres: cannot reach the database")
	}
	return nil
}

// dbErr turns an error from database/sql or pgx into a *berth.Error (see
// dialect.ClassifyError). An error that already is a *berth.Error is
// returned as is.
func dbErr(err error, action string) error { return sqlstore.Error(dialect{}, err, action) }

// unavailable wraps err as CodeUnavailable; message is what the caller
// sees.
func unavailable(err error, message string) error {
	return &berth.Error{Code: berth.CodeUnavailable, Message: message, Err: err}
}
