// Package sqlite implements berth.Store on an embedded SQLite database, the
// metadata store of a single `berth serve`.
//
// The database runs in WAL mode with synchronous=FULL, so a transaction that
// Commit reports as committed survives a crash or power loss, and a crash at
// any moment leaves the last committed state. Writes go through a pool of
// exactly one connection whose transactions begin IMMEDIATE (taking the write
// lock up front), so concurrent writers queue in Go instead of deadlocking on
// lock upgrades or spinning on SQLITE_BUSY; reads use a separate read-only
// pool and never wait for writers.
//
// When another process holds the database's write lock (a second `berth`
// on the same file by mistake, the sqlite3 shell in a transaction, a
// migration tool), a write waits up to the busy timeout (Options.BusyTimeout,
// or the BERTH_SQLITE_BUSY_TIMEOUT environment variable, default 10s) and
// then fails with CodeUnavailable; reads go on meanwhile (WAL).
//
// The store's SQL and logic are package sqlstore's, shared with the
// PostgreSQL store; what is SQLite's own lives here: the DSN and its
// PRAGMAs, the migrations, driver error codes and the TEXT encoding of times
// (dialect.go).
package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlstore"
	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

// DefaultBusyTimeout is how long a connection waits for a lock held by
// another process (another `berth` on the same file, a backup tool) before
// failing with CodeUnavailable. Within this process writers queue on the
// single write connection instead.
const DefaultBusyTimeout = 10 * time.Second

// BusyTimeoutEnv is the environment variable that sets the busy timeout
// (a Go duration such as "500ms" or "30s") when Options.BusyTimeout is zero.
const BusyTimeoutEnv = "BERTH_SQLITE_BUSY_TIMEOUT"

// Options tunes OpenOptions. The zero value gives Open's defaults.
type Options struct {
	// BusyTimeout bounds the wait for a lock another process holds; zero
	// means $BERTH_SQLITE_BUSY_TIMEOUT if set, else DefaultBusyTimeout.
	// SQLite counts it in milliseconds.
	BusyTimeout time.Duration
}

// busyTimeout resolves o.BusyTimeout.
func (o Options) busyTimeout() (time.Duration, error) {
	if o.BusyTimeout < 0 {
		return 0, berth.Errorf(berth.CodeInvalid, "sqlite: busy timeout %s is negative", o.BusyTimeout)
	}
	if o.BusyTimeout > 0 {
		return max(o.BusyTimeout, time.Millisecond), nil
	}
	v, ok := os.LookupEnv(BusyTimeoutEnv)
	if !ok || v == "" {
		return DefaultBusyTimeout, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, berth.Errorf(berth.CodeInvalid, "sqlite: %s=%q is not a positive duration (such as 500ms or 30s)", BusyTimeoutEnv, v)
	}
	return max(d, time.Millisecond), nil
}

// Store is a berth.Store backed by one SQLite database file. It is safe for
// concurrent use.
type Store struct {
	*sqlstore.Store
	write *sql.DB // exactly one connection; every write goes through it
	read  *sql.DB // read-only connections for lookups and lists
	path  string
}

var _ berth.Store = (*Store)(nil)

// Open opens the SQLite database at path, creating the file if it does not
// exist, and brings its schema up to date by applying the embedded
// migrations that have not been applied yet. path must name a file (an
// in-memory database cannot be shared by the read and write pools).
func Open(ctx context.Context, path string) (*Store, error) {
	return OpenOptions(ctx, path, Options{})
}

// OpenOptions is Open with options.
func OpenOptions(ctx context.Context, path string, opts Options) (*Store, error) {
	busy, err := opts.busyTimeout()
	if err != nil {
		return nil, err
	}
	if path == "" || path == ":memory:" {
		return nil, berth.Errorf(berth.CodeInvalid, "sqlite: a database file path is required")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &berth.Error{Code: berth.CodeInvalid, Message: fmt.Sprintf("sqlite: bad database path %q", path), Err: err}
	}

	write, err := sql.Open("sqlite", dsn(abs, false, busy))
	if err != nil {
		return nil, dbErr(err, "open database")
	}
	// One writer: SQLite allows one write transaction at a time anyway, and
	// queueing for the connection in database/sql honours ctx and costs
	// nothing, where queueing on the file lock means sleeping and retrying.
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	write.SetConnMaxLifetime(0)
	write.SetConnMaxIdleTime(0)

	// Switching a new file to WAL takes an exclusive lock for which SQLite
	// does not always wait, so stores opening one new file at once can see
	// SQLITE_BUSY here; the loser retries briefly.
	for attempt := 0; ; attempt++ {
		err := write.PingContext(ctx)
		if err != nil {
			err = dbErr(err, "open database")
		} else {
			err = migrate(ctx, write)
		}
		if err == nil {
			break
		}
		if !isBusy(err) || attempt == 20 || ctx.Err() != nil {
			write.Close()
			return nil, err
		}
		time.Sleep(time.Duration(attempt+1) * 10 * time.Millisecond)
	}

	read, err := sql.Open("sqlite", dsn(abs, true, busy))
	if err != nil {
		write.Close()
		return nil, dbErr(err, "open database")
	}
	n := max(4, runtime.GOMAXPROCS(0))
	read.SetMaxOpenConns(n)
	read.SetMaxIdleConns(n)
	if err := read.PingContext(ctx); err != nil {
		read.Close()
		write.Close()
		return nil, dbErr(err, "open database")
	}
	return &Store{Store: sqlstore.New(dialect{}, write, read), write: write, read: read, path: abs}, nil
}

// isBusy reports whether err is SQLite's SQLITE_BUSY or SQLITE_LOCKED.
func isBusy(err error) bool {
	code, _, ok := dialect{}.ClassifyError(err)
	return ok && code == berth.CodeUnavailable
}

// dsn returns the modernc.org/sqlite data source name for the database file
// at the absolute path abs, whose connections wait up to busy for a lock. The "file:" URI form keeps a path containing '?'
// or '#' intact; SQLite ignores the driver's "_" parameters.
func dsn(abs string, readOnly bool, busy time.Duration) string {
	q := url.Values{}
	q.Set("_busy_timeout", strconv.FormatInt(busy.Milliseconds(), 10))
	q.Set("_foreign_keys", "1")
	// synchronous=FULL fsyncs the WAL on every commit: without it a power
	// loss could undo an acknowledged active-version switch. It is set on
	// readers too because whichever connection closes last checkpoints.
	q.Set("_synchronous", "FULL")
	if readOnly {
		q.Set("_query_only", "1")
	} else {
		// WAL is persistent in the file; readers inherit it.
		q.Set("_journal_mode", "WAL")
		// BEGIN IMMEDIATE: a write transaction takes the write lock when it
		// starts, never upgrades a read lock mid-way (which can fail with
		// SQLITE_BUSY no timeout can cure).
		q.Set("_txlock", "immediate")
	}
	return "file:" + (&url.URL{Path: abs}).EscapedPath() + "?" + q.Encode()
}

// Path returns the absolute path of the database file.
func (s *Store) Path() string { return s.path }

// IntegrityCheck runs PRAGMA integrity_check and returns an error unless
// SQLite reports the database intact.
func (s *Store) IntegrityCheck(ctx context.Context) error {
	rows, err := s.read.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return dbErr(err, "check database integrity")
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return dbErr(err, "check database integrity")
		}
		if line != "ok" {
			problems = append(problems, line)
		}
	}
	if err := rows.Err(); err != nil {
		return dbErr(err, "check database integrity")
	}
	if len(problems) > 0 {
		return &berth.Error{Code: berth.CodeInternal, Message: "database integrity check failed",
			Err: fmt.Errorf("integrity_check: %q", problems)}
	}
	return nil
}

// dbErr turns an error from database/sql or the driver into a *berth.Error
// (see dialect.ClassifyError). An error that already is a *berth.Error is
// returned as is.
func dbErr(err error, action string) error { return sqlstore.Error(dialect{}, err, action) }
