package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migration is one numbered schema change, migrations/NNNN_name.sql.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads the embedded migrations in version order. Versions
// must be unique and positive.
func loadMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	seen := map[int]string{}
	for _, e := range entries {
		if e.IsDir() || path.Ext(e.Name()) != ".sql" {
			continue
		}
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %q: name must be NNNN_name.sql", e.Name())
		}
		if other, dup := seen[v]; dup {
			return nil, fmt.Errorf("migrations %q and %q have the same version", other, e.Name())
		}
		seen[v] = e.Name()
		b, err := migrationFS.ReadFile("migrations/" + e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms, nil
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
	if n := len(ms); n > 0 && latest > ms[n-1].version {
		return berth.Errorf(berth.CodeUnavailable,
			"sqlite: database schema version %d is newer than this build of Berth supports (%d)", latest, ms[n-1].version)
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
func applyMigration(ctx context.Context, db *sql.DB, m migration) error {
	action := "apply migration " + m.name
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return dbErr(err, action)
	}
	defer tx.Rollback() // after Commit this is a harmless no-op
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = $1`, m.version).Scan(&n); err != nil {
		return dbErr(err, action)
	}
	if n > 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return dbErr(err, action)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`,
		m.version, m.name, encTime(time.Now())); err != nil {
		return dbErr(err, action)
	}
	if err := tx.Commit(); err != nil {
		return dbErr(err, action)
	}
	slog.Debug("sqlite: applied migration", "version", m.version, "name", m.name)
	return nil
}
