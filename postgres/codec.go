package postgres

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// ts truncates t to the microseconds PostgreSQL keeps. pgx truncates too,
// but doing it here makes a value the store returns (InterruptOperations'
// finish time) equal to what it stored, and matches the SQLite store.
func ts(t time.Time) time.Time { return t.Truncate(time.Microsecond) }

// nullTS is t truncated to microseconds, or NULL when t is nil.
func nullTS(t *time.Time) any {
	if t == nil {
		return nil
	}
	return ts(*t)
}

// now is the store's clock for the times it records itself (when an
// operation started or was interrupted), at the precision it keeps. Lease
// checks use the database's clock instead; see leaseExpr.
func now() time.Time { return ts(time.Now().UTC()) }

// rawArg passes a JSON document to a JSON column as its text, kept byte for
// byte, or NULL when it is empty.
func rawArg(m json.RawMessage) any {
	if len(m) == 0 {
		return nil
	}
	return string(m)
}

// nullString passes "" as NULL.
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// jsonArg marshals v for a JSON column, NULL when v is a nil pointer.
func jsonArg[T any](v *T) (any, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

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

// bytesOf returns src, a TEXT or JSON column value as database/sql hands it
// to a Scanner, as bytes; ok is false for NULL.
func bytesOf(src any) (b []byte, ok bool, err error) {
	switch v := src.(type) {
	case nil:
		return nil, false, nil
	case string:
		return []byte(v), true, nil
	case []byte:
		return v, true, nil
	default:
		return nil, false, fmt.Errorf("want TEXT or JSON, got %T", src)
	}
}

// nullStringCol scans a nullable TEXT column; NULL is "".
type nullStringCol struct{ s *string }

func (c nullStringCol) Scan(src any) error {
	b, _, err := bytesOf(src)
	*c.s = string(b)
	return err
}

// rawCol scans a nullable JSON column; NULL is nil. The bytes are copied:
// pgx reuses its read buffer.
type rawCol struct{ m *json.RawMessage }

func (c rawCol) Scan(src any) error {
	b, ok, err := bytesOf(src)
	if err != nil || !ok {
		*c.m = nil
		return err
	}
	*c.m = append(json.RawMessage(nil), b...)
	return nil
}

// jsonCol scans a nullable JSON column into *p, allocating it; NULL leaves
// *p nil.
type jsonCol[T any] struct{ p **T }

func (c jsonCol[T]) Scan(src any) error {
	b, ok, err := bytesOf(src)
	if err != nil || !ok {
		*c.p = nil
		return err
	}
	v := new(T)
	if err := json.Unmarshal(b, v); err != nil {
		return err
	}
	*c.p = v
	return nil
}

// jsonValCol scans a NOT NULL JSON column into *p.
type jsonValCol[T any] struct{ p *T }

func (c jsonValCol[T]) Scan(src any) error {
	b, ok, err := bytesOf(src)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("JSON column is NULL")
	}
	return json.Unmarshal(b, c.p)
}

var (
	_ sql.Scanner = nullStringCol{}
	_ sql.Scanner = rawCol{}
	_ sql.Scanner = jsonCol[int]{}
	_ sql.Scanner = jsonValCol[int]{}
)
