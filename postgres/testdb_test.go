package postgres

import (
	"context"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/sqlstore"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// envTestURL names the database the tests use; each test works in a schema
// of its own, created and dropped around it.
const envTestURL = "BERTH_TEST_DATABASE_URL"

// testURL returns the test database's URL, or skips the test when none is
// set.
func testURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(envTestURL)
	if u == "" {
		t.Skipf("PostgreSQL tests are disabled: set %s, e.g. run scripts/test-postgres.sh", envTestURL)
	}
	return u
}

// withParam returns the connection string base with the session setting
// name=value added, for both forms pgx accepts: a URL or key=value pairs.
func withParam(base, name, value string) string {
	if strings.HasPrefix(base, "postgres://") || strings.HasPrefix(base, "postgresql://") {
		u, err := url.Parse(base)
		if err != nil {
			return base
		}
		q := u.Query()
		q.Set(name, value)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return base + " " + name + "=" + value
}

// freshSchema creates an empty schema in the test database, drops it when
// the test ends, and returns a URL whose sessions work in it.
func freshSchema(t testing.TB) string {
	t.Helper()
	base := testURL(t)
	name := "berth_test_" + strings.ReplaceAll(uuid.NewString(), "-", "")
	admin(t, base, `CREATE SCHEMA `+name)
	t.Cleanup(func() { admin(t, base, `DROP SCHEMA `+name+` CASCADE`) })
	return withParam(base, "search_path", name)
}

// admin runs one statement on its own connection to the test database.
func admin(t testing.TB, dbURL, sql string) {
	t.Helper()
	// Not t.Context(): this also runs in cleanups, after it is canceled.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("connecting to %s: %v", envTestURL, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// openFresh opens a store on a fresh schema and closes it when the test
// ends.
func openFresh(t testing.TB) (*Store, string) {
	t.Helper()
	u := freshSchema(t)
	return openURL(t, u), u
}

// openURL opens a store on u and closes it when the test ends.
func openURL(t testing.TB, u string) *Store {
	t.Helper()
	s, err := Open(context.Background(), u)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// now is the store's clock, at the precision it keeps.
func now() time.Time { return sqlstore.Now() }
