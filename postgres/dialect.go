package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlstore"
	"github.com/jackc/pgx/v5/pgconn"
)

// dialect is PostgreSQL's sqlstore.Dialect.
type dialect struct{}

var _ sqlstore.Dialect = dialect{}

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

// ClassifyError maps pgx's errors by SQLSTATE: unique violations are
// CodeConflict, foreign-key violations CodeNotFound (the referenced record
// does not exist), data exceptions (class 22, e.g. a value PostgreSQL
// cannot store) CodeInvalid, a full disk CodeInsufficientStorage, and lock
// contention, connection loss and a server shutting down or in recovery
// CodeUnavailable.
func (dialect) ClassifyError(err error) (berth.Code, string, bool) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case sqlstateUniqueViolation:
			return berth.CodeConflict, "it already exists", true
		case sqlstateForeignKeyViolation:
			return berth.CodeNotFound, "a record it refers to does not exist", true
		case sqlstateDiskFull:
			return berth.CodeInsufficientStorage, "the database is out of disk space", true
		case sqlstateSerialization, sqlstateDeadlock, sqlstateLockNotAvailable, sqlstateOutOfMemory,
			sqlstateTooManyConnections, sqlstateAdminShutdown, sqlstateCrashShutdown, sqlstateCannotConnectNow,
			sqlstateReadOnlyTx:
			return berth.CodeUnavailable, "the database is busy or unavailable", true
		}
		if strings.HasPrefix(pe.Code, "22") {
			return berth.CodeInvalid, "a value cannot be stored", true
		}
		return "", "", false
	}
	// Not reaching the server, or losing the connection, is the database
	// being unavailable; the caller's own cancellation or deadline is not.
	var (
		ce *pgconn.ConnectError
		ne net.Error
	)
	if errors.As(err, &ce) ||
		errors.As(err, &ne) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return berth.CodeUnavailable, "the database is unavailable", true
	}
	return "", "", false
}

// Time passes t as a timestamptz, truncated to the microseconds PostgreSQL
// keeps. pgx truncates too, but doing it here makes a value the store
// returns equal to what it stored, and matches the SQLite store.
func (dialect) Time(t time.Time) any { return t.Truncate(time.Microsecond) }

// ScanTime takes the time.Time pgx decodes a timestamptz into, in UTC as
// the SQLite store returns times rather than in the process's local zone.
func (dialect) ScanTime(src any) (time.Time, error) {
	t, ok := src.(time.Time)
	if !ok {
		return time.Time{}, fmt.Errorf("time column: want timestamptz, got %T", src)
	}
	return t.UTC(), nil
}

// Text is cleanText.
func (dialect) Text(s string) string { return cleanText(s) }

// cleanText makes text captured from processes (build logs, error messages
// that quote an agent's output) storable: PostgreSQL's TEXT holds neither
// NUL bytes nor invalid UTF-8, both of which a build can print. Each is
// replaced with U+FFFD, so a failure is still recorded rather than lost to
// an encoding error. Valid text is returned unchanged.
func cleanText(s string) string {
	if utf8.ValidString(s) && !strings.Contains(s, "\x00") {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// LockClause locks the agent's row FOR NO KEY UPDATE rather than FOR
// UPDATE: it conflicts with itself and with updates of the row, so replicas
// racing on one agent take turns, but not with the key-share locks that
// inserting a version, build or deployment of the agent takes, which need
// not wait. Transactions are READ COMMITTED, so each statement after the
// lock sees what the previous holder committed.
func (dialect) LockClause() string { return " FOR NO KEY UPDATE" }

// Leases are kept on the database's clock. Callers pass a lease end on
// their own clock (leaseUntil, leaseExpiredBefore); the store turns it into
// the time left, measured on the caller's clock just before the statement
// runs, and adds that to the database's clock. Replicas whose clocks are
// off by minutes therefore still agree on whether a lease has ended: only
// durations cross machines, and every comparison is against the one clock
// they share.
//
// The database's clock is statement_timestamp(), not now(): now() is frozen
// at the start of the transaction, and a transaction may wait on an agent's
// row lock for a while before it sets a lease. Within one statement the
// clock stands still, which lets an index serve "lease ended before" (the
// ever-moving clock_timestamp() could not), and errs only on the safe side:
// a statement that waited for a row lock judges that row's lease by the
// time it started, so sees it held a little longer.

// LeaseExpr is the database's clock plus the seconds left, $n.
func (dialect) LeaseExpr(n int) string {
	return fmt.Sprintf("statement_timestamp() + make_interval(secs => $%d)", n)
}

// LeaseArg is how long after now, on this process's clock, t is (negative
// when t is past), in seconds. The zero time saturates at about -292
// years, which is still a valid timestamp.
func (dialect) LeaseArg(t time.Time) any { return time.Until(t).Seconds() }
