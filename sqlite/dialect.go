package sqlite

import (
	"errors"
	"fmt"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlstore"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// dialect is SQLite's sqlstore.Dialect.
type dialect struct{}

var _ sqlstore.Dialect = dialect{}

// ClassifyError maps modernc.org/sqlite's extended result codes: unique and
// primary-key clashes are CodeConflict, foreign-key violations CodeNotFound
// (the referenced record does not exist) and lock timeouts CodeUnavailable.
func (dialect) ClassifyError(err error) (berth.Code, string, bool) {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return "", "", false
	}
	code := se.Code()
	switch {
	case code == sqlite3.SQLITE_CONSTRAINT_UNIQUE || code == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return berth.CodeConflict, "it already exists", true
	case code == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
		return berth.CodeNotFound, "a record it refers to does not exist", true
	case code&0xff == sqlite3.SQLITE_BUSY || code&0xff == sqlite3.SQLITE_LOCKED:
		return berth.CodeUnavailable, "the database is busy (another process or connection holds its lock); try again", true
	}
	return "", "", false
}

// timeLayout encodes instants as fixed-width UTC text with microseconds.
// Fixed width and a single zone make text order equal time order, so
// comparisons and ORDER BY work on the column directly and are served by
// indexes. Microseconds match PostgreSQL's precision, so both stores round
// trip the same values.
const timeLayout = "2006-01-02T15:04:05.000000Z"

// encTime encodes t (Format truncates to microseconds).
func encTime(t time.Time) string { return t.UTC().Format(timeLayout) }

// Time encodes t as TEXT in timeLayout.
func (dialect) Time(t time.Time) any { return encTime(t) }

// ScanTime parses a TEXT time column.
func (dialect) ScanTime(src any) (time.Time, error) {
	switch v := src.(type) {
	case string:
		return time.Parse(timeLayout, v)
	case []byte:
		return time.Parse(timeLayout, string(v))
	default:
		return time.Time{}, fmt.Errorf("time column: want TEXT, got %T", src)
	}
}

// Text returns s unchanged: SQLite's TEXT stores any bytes.
func (dialect) Text(s string) string { return s }

// LockClause is empty: write transactions begin IMMEDIATE on the single
// write connection, so each holds the database's write lock from its first
// statement and nothing it reads can change before it commits.
func (dialect) LockClause() string { return "" }

// LeaseExpr is the parameter itself: one server owns the database file, so
// leases run on its clock.
func (dialect) LeaseExpr(n int) string { return fmt.Sprintf("$%d", n) }

// LeaseArg encodes t like any other time.
func (dialect) LeaseArg(t time.Time) any { return encTime(t) }
