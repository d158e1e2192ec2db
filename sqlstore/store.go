// Package sqlstore implements berth.Store over database/sql, parameterised
// by a Dialect. It holds everything the SQLite and PostgreSQL stores share:
// the SQL (written once, with $n placeholders, row-value comparisons and
// partial indexes that both databases understand), the scanning of rows
// into berth types, Commit, the operation guard's decision logic and
// pagination.
//
// A backend (packages sqlite and postgres) opens the database, applies its
// own migrations and hands the connection pools to New together with its
// Dialect: how its driver's errors map to berth codes, how it encodes times,
// how a transaction locks an agent's row and which clock leases run on.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/berthhq/berth"
)

// Dialect is what differs between the databases a Store runs on.
type Dialect interface {
	// ClassifyError maps an error from the driver to a berth code and a
	// short reason for the message ("it already exists"). ok is false for
	// an error it does not recognise, which becomes CodeInternal.
	ClassifyError(err error) (code berth.Code, reason string, ok bool)

	// Time encodes t as a query argument for a time column.
	Time(t time.Time) any
	// ScanTime decodes a non-NULL time column value as the driver hands it
	// to a sql.Scanner. The result is in UTC.
	ScanTime(src any) (time.Time, error)

	// Text makes text captured from processes (build logs, error messages
	// that quote an agent's output) storable, replacing what the database
	// cannot hold. Text the database can store is returned unchanged.
	Text(s string) string

	// LockClause is appended to the SELECT that reads an agent's guard and
	// active version inside a write transaction, to lock the row until the
	// transaction ends ("" when the transaction already excludes every
	// other writer).
	LockClause() string
	// LeaseExpr is the SQL for a lease end (or the current instant on the
	// lease clock) given LeaseArg of it as the parameter $n.
	LeaseExpr(n int) string
	// LeaseArg is the argument LeaseExpr takes for t, an instant on this
	// process's clock. It is computed just before the statement runs.
	LeaseArg(t time.Time) any
}

// Store is a berth.Store over database/sql. It is safe for concurrent use.
type Store struct {
	d     Dialect
	write *sql.DB // write transactions and statements
	read  *sql.DB // lookups and lists; may be write
}

var _ berth.Store = (*Store)(nil)

// New returns a Store that writes through write and reads through read (which
// may be the same pool), speaking d. The schema must be migrated already.
// The Store owns both pools: Close closes them.
func New(d Dialect, write, read *sql.DB) *Store {
	return &Store{d: d, write: write, read: read}
}

// Close closes the connection pools.
func (s *Store) Close() error {
	if s.read == s.write {
		return s.write.Close()
	}
	return errors.Join(s.read.Close(), s.write.Close())
}

// inTx runs fn in one write transaction and commits it, or rolls it back if
// fn or the commit fails. How writers are serialised is the backend's: its
// write pool may begin transactions that take the database's write lock
// (SQLite), or fn locks rows with Dialect.LockClause (PostgreSQL).
func (s *Store) inTx(ctx context.Context, action string, fn func(tx *sql.Tx) error) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr(err, action)
	}
	if err := fn(tx); err != nil {
		// The rollback error adds nothing: fn's error says what failed, and
		// a transaction whose rollback failed is discarded with its
		// connection.
		_ = tx.Rollback()
		return s.dbErr(err, action)
	}
	if err := tx.Commit(); err != nil {
		return s.dbErr(err, action)
	}
	return nil
}

// execOne runs a write statement that must change exactly one row and
// returns a CodeNotFound error naming what when it changes none.
func (s *Store) execOne(ctx context.Context, q execer, action, what, query string, args ...any) error {
	res, err := q.ExecContext(ctx, query, args...)
	if err != nil {
		return s.dbErr(err, action)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return s.dbErr(err, action)
	}
	if n == 0 {
		return berth.Errorf(berth.CodeNotFound, "%s not found", what)
	}
	return nil
}

// execer is what *sql.DB and *sql.Tx share for writes.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Error turns an error from database/sql or d's driver into a *berth.Error
// whose message begins with action, classified by d; what d does not
// recognise is CodeInternal. An error that already is a *berth.Error is
// returned as is, and nil as nil.
func Error(d Dialect, err error, action string) error {
	if err == nil {
		return nil
	}
	var be *berth.Error
	if errors.As(err, &be) {
		return err
	}
	if code, reason, ok := d.ClassifyError(err); ok {
		return &berth.Error{Code: code, Message: action + ": " + reason, Err: err}
	}
	return &berth.Error{Code: berth.CodeInternal, Message: action + " failed", Err: err}
}

func (s *Store) dbErr(err error, action string) error { return Error(s.d, err, action) }

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

// notFound maps sql.ErrNoRows to CodeNotFound naming what, and any other
// error through dbErr.
func (s *Store) notFound(err error, action, format string, args ...any) error {
	if errors.Is(err, sql.ErrNoRows) {
		return berth.Errorf(berth.CodeNotFound, format, args...)
	}
	return s.dbErr(err, action)
}

// scanner is what *sql.Row and *sql.Rows share.
type scanner interface{ Scan(dest ...any) error }

// collect scans every row with scan and closes rows.
func collect[T any](s *Store, rows *sql.Rows, action string, scan func(scanner) (T, error)) ([]T, error) {
	defer rows.Close()
	// Empty, not nil: callers encode lists as JSON arrays.
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, s.dbErr(err, action)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, s.dbErr(err, action)
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
