package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"log/slog"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlstore"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// loadMigrations reads the embedded migrations in version order.
func loadMigrations() ([]sqlstore.Migration, error) {
	return sqlstore.LoadMigrations(migrationFS, "migrations")
}

// migrate applies every embedded migration not yet recorded in
// schema_migrations, each in its own transaction together with its record,
// so a crash mid-way leaves the schema at a whole migration. It refuses a
// database migrated by a newer Berth, whose schema this code may misread.
func migrate(ctx context.Context, db *sql.DB) error {
	ms, err := loadMigrations()
	if err != nil {
		return &berth.Error{Code: berth.CodeInternal, Message: "sqlite: bad embedded migrations", Err: err}
	}
	const create = `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at TEXT NOT NULL
	)`
	if _, err := db.ExecContext(ctx, create); err != nil {
		return dbErr(err, "create schema_migrations")
	}
	var latest int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&latest); err != nil {
		return dbErr(err, "read schema version")
	}
	if n := len(ms); n > 0 && latest > ms[n-1].Version {
		return berth.Errorf(berth.CodeUnavailable,
			"sqlite: database schema version %d is newer than this build of Berth supports (%d)", latest, ms[n-1].Version)
	}
	for _, m := range ms {
		if err := applyMigration(ctx, db, m); err != nil {
			return err
		}
	}
	return nil
}

// applyMigration applies m unless it is already recorded. The check runs
// inside the (IMMEDIATE) transaction, so two processes opening the same
// file at once cannot both apply it.
func applyMigration(ctx context.Context, db *sql.DB, m sqlstore.Migration) error {
	action := "apply migration " + m.Name
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return dbErr(err, action)
	}
	defer tx.Rollback() // after Commit this is a harmless no-op
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = $1`, m.Version).Scan(&n); err != nil {
		return dbErr(err, action)
	}
	if n > 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
		return dbErr(err, action)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`,
		m.Version, m.Name, encTime(time.Now())); err != nil {
		return dbErr(err, action)
	}
	if err := tx.Commit(); err != nil {
		return dbErr(err, action)
	}
	slog.Debug("sqlite: applied migration", "version", m.Version, "name", m.Name)
	return nil
}
