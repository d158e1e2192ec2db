package server_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// With BERTH_TEST_DATABASE_URL set (scripts/test-postgres.sh sets it), the
// test servers keep their metadata in PostgreSQL instead of SQLite: the
// harness asks freshDatabase for a database per server data directory.

// pgDatabases maps a server data directory to the database created for it,
// so that a server restarted on the same directory finds its data again.
var pgDatabases = struct {
	sync.Mutex
	byDataDir map[string]string
}{byDataDir: map[string]string{}}

// freshDatabase returns the URL of a database of its own for the server on
// dataDir, in the PostgreSQL server that baseURL points to: a new, empty,
// uniquely named database the first time it is asked for dataDir, dropped
// when the test that asked ends; the same database when asked again (a
// restart). baseURL's role must be allowed to create databases.
func freshDatabase(t testing.TB, baseURL, dataDir string) string {
	t.Helper()
	pgDatabases.Lock()
	defer pgDatabases.Unlock()
	if name, ok := pgDatabases.byDataDir[dataDir]; ok {
		return databaseURL(t, baseURL, name)
	}
	name := "berth_test_" + strings.ReplaceAll(uuid.NewString(), "-", "")
	pgAdmin(t, baseURL, `CREATE DATABASE `+name)
	pgDatabases.byDataDir[dataDir] = name
	// Registered before the server's own cleanup, so it runs after the
	// server closed its pool.
	t.Cleanup(func() {
		pgDatabases.Lock()
		delete(pgDatabases.byDataDir, dataDir)
		pgDatabases.Unlock()
		dropDatabase(t, baseURL, name)
	})
	return databaseURL(t, baseURL, name)
}

// databaseURL returns baseURL with its database replaced by name, for both
// forms pgx accepts: a URL or key=value pairs.
func databaseURL(t testing.TB, baseURL, name string) string {
	t.Helper()
	if !strings.HasPrefix(baseURL, "postgres://") && !strings.HasPrefix(baseURL, "postgresql://") {
		// In key=value form a later key wins.
		return baseURL + " dbname=" + name
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		t.Fatalf("BERTH_TEST_DATABASE_URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// dropDatabase drops the database name. Autovacuum may still be working
// in a database the test just filled, which DROP DATABASE waits a few
// seconds for and then refuses (object_in_use); that is retried. (WITH
// (FORCE) would need the right to signal autovacuum, which a test role
// does not have.)
func dropDatabase(t testing.TB, baseURL, name string) {
	t.Helper()
	const objectInUse = "55006"
	var err error
	for range 5 {
		err = pgExec(baseURL, `DROP DATABASE IF EXISTS `+name)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != objectInUse {
			break
		}
	}
	if err != nil {
		t.Errorf("DROP DATABASE %s: %v", name, err)
	}
}

// pgAdmin runs one statement on a connection of its own to baseURL's
// database and fails the test if it fails.
func pgAdmin(t testing.TB, baseURL, sql string) {
	t.Helper()
	if err := pgExec(baseURL, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// pgExec runs one statement on a connection of its own to baseURL's
// database.
func pgExec(baseURL, sql string) error {
	// Not a test's context: this also runs in cleanups, after it ended.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, baseURL)
	if err != nil {
		return fmt.Errorf("connecting to BERTH_TEST_DATABASE_URL: %w", err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}
