package sqlstore

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// Now is the stores' clock for the times they record themselves (when an
// operation started or was interrupted), in UTC at the microseconds both
// databases keep, so a value the store returns equals what it stored.
func Now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// nullTime encodes t, or NULL when t is nil.
func (s *Store) nullTime(t *time.Time) any {
	if t == nil {
		return nil
	}
	return s.d.Time(*t)
}

// rawArg passes a JSON document as its text, kept byte for byte, or NULL
// when it is empty.
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

// bytesOf returns src, a TEXT or JSON column value as database/sql hands it
// to a Scanner, as bytes; ok is false for NULL. The bytes may be the
// driver's buffer: a Scanner that keeps them copies them.
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

// timeCol scans a NOT NULL time column through the dialect.
type timeCol struct {
	d Dialect
	t *time.Time
}

func (c timeCol) Scan(src any) error {
	if src == nil {
		return fmt.Errorf("time column is NULL")
	}
	t, err := c.d.ScanTime(src)
	*c.t = t
	return err
}

// nullTimeCol scans a nullable time column through the dialect; NULL is nil.
type nullTimeCol struct {
	d Dialect
	t **time.Time
}

func (c nullTimeCol) Scan(src any) error {
	if src == nil {
		*c.t = nil
		return nil
	}
	t, err := c.d.ScanTime(src)
	if err != nil {
		return err
	}
	*c.t = &t
	return nil
}

// nullStringCol scans a nullable TEXT column; NULL is "".
type nullStringCol struct{ s *string }

func (c nullStringCol) Scan(src any) error {
	b, _, err := bytesOf(src)
	*c.s = string(b)
	return err
}

// rawCol scans a nullable JSON column; NULL is nil. The bytes are copied:
// the driver may reuse its buffer.
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
	_ sql.Scanner = timeCol{}
	_ sql.Scanner = nullTimeCol{}
	_ sql.Scanner = nullStringCol{}
	_ sql.Scanner = rawCol{}
	_ sql.Scanner = jsonCol[int]{}
	_ sql.Scanner = jsonValCol[int]{}
)
