package postgres

import (
	"context"
	"embed"
	"errors"
	"log/slog"
	"slices"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlstore"
	"github.com/jackc/pgx/v5"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migrationLockKey is the pg_advisory_lock key migrations run under: the
// bytes of "berth" followed by 0x000001, a key no other application is
// likely to pick. Advisory locks are database-wide, so stores using
// different schemas of one database also take turns, which costs nothing.
const migrationLockKey int64 = 0x6265727468_000001

// loadMigrations reads the embedded migrations in version order.
func loadMigrations() ([]sqlstore.Migration, error) {
	return sqlstore.LoadMigrations(migrationFS, "migrations")
}

// migrate applies every embedded migration not yet recorded in
// schema_migrations, each in its own transaction together with its record,
// so a crash mid-way leaves the schema at a whole migration.
//
// It holds a session-level advisory lock on one connection throughout, so
// replicas starting at once take turns: the first applies the migrations,
// the others wait and then find nothing left to do. (CREATE TABLE IF NOT
// EXISTS alone is not enough: two sessions creating one table at once can
// both pass the check and one fail on the catalog's unique index.)
//
// It refuses a database migrated by a newer Berth, whose schema this code
// may misread.
func migrate(ctx context.Context, conn *pgx.Conn) (err error) {
	ms, err := loadMigrations()
	if err != nil {
		return &berth.Error{Code: berth.CodeInternal, Message: "postgres: bad embedded migrations", Err: err}
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrationLockKey); err != nil {
		return dbErr(err, "postgres: take the migration lock")
	}
	defer func() {
		// Unlock even if ctx ended. If that fails the session may still
		// hold the lock, which the caller's closing the connection
		// releases.
		uctx := context.WithoutCancel(ctx)
		if _, uerr := conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, migrationLockKey); uerr != nil {
			err = errors.Join(err, dbErr(uerr, "postgres: release the migration lock"))
		}
	}()

	const create = `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
	)`
	if _, err := conn.Exec(ctx, create); err != nil {
		return dbErr(err, "postgres: create schema_migrations")
	}
	rows, err := conn.Query(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return dbErr(err, "postgres: read schema version")
	}
	applied, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return dbErr(err, "postgres: read schema version")
	}
	if n, latest := len(ms), slices.Max(append(applied, 0)); n > 0 && latest > ms[n-1].Version {
		return berth.Errorf(berth.CodeUnavailable,
			"postgres: database schema version %d is newer than this build of Berth supports (%d)", latest, ms[n-1].Version)
	}
	for _, m := range ms {
		if slices.Contains(applied, m.Version) {
			continue
		}
		if err := applyMigration(ctx, conn, m); err != nil {
			return err
		}
	}
	return nil
}

// applyMigration applies m and records it in one transaction. The caller
// holds the migration lock, so nobody else applies m meanwhile.
func applyMigration(ctx context.Context, conn *pgx.Conn, m sqlstore.Migration) error {
	action := "postgres: apply migration " + m.Name
	tx, err := conn.Begin(ctx)
	if err != nil {
		return dbErr(err, action)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) // after Commit this is a harmless no-op
	// The simple protocol runs a file of several statements in one go.
	if _, err := tx.Exec(ctx, m.SQL, pgx.QueryExecModeSimpleProtocol); err != nil {
		return dbErr(err, action)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
		return dbErr(err, action)
	}
	if err := tx.Commit(ctx); err != nil {
		return dbErr(err, action)
	}
	slog.Debug("postgres: applied migration", "version", m.Version, "name", m.Name)
	return nil
}
