package sqlite

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// timeLayout encodes instants as fixed-width UTC text with microseconds.
// Fixed width and a single zone make text order equal time order, so
// comparisons and ORDER BY work on the column directly and are served by
// indexes. Microseconds match PostgreSQL's precision, so both stores round
// trip the same values.
const timeLayout = "2006-01-02T15:04:05.000000Z"

// encTime encodes t (Format truncates to microseconds).
func encTime(t time.Time) string { return t.UTC().Format(timeLayout) }

// encNullTime encodes t, or NULL when t is nil.
func encNullTime(t *time.Time) any {
	if t == nil {
		return nil
	}
	return encTime(*t)
}

// encRaw stores a JSON document as TEXT, or NULL when it is empty.
func encRaw(m json.RawMessage) any {
	if len(m) == 0 {
		return nil
	}
	return string(m)
}

// encNullString stores "" as NULL.
func encNullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// encJSON marshals v for a TEXT column, NULL when v is a nil pointer.
func encJSON[T any](v *T) (any, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

// text returns src, a TEXT column value, as a string; ok is false for NULL.
func text(src any) (s string, ok bool, err error) {
	switch v := src.(type) {
	case nil:
		return "", false, nil
	case string:
		return v, true, nil
	case []byte:
		return string(v), true, nil
	default:
		return "", false, fmt.Errorf("want TEXT, got %T", src)
	}
}

// timeCol scans a NOT NULL time column.
type timeCol struct{ t *time.Time }

func (c timeCol) Scan(src any) error {
	s, ok, err := text(src)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("time column is NULL")
	}
	*c.t, err = time.Parse(timeLayout, s)
	return err
}

// nullTimeCol scans a nullable time column; NULL is nil.
type nullTimeCol struct{ t **time.Time }

func (c nullTimeCol) Scan(src any) error {
	s, ok, err := text(src)
	if err != nil || !ok {
		*c.t = nil
		return err
	}
	t, err := time.Parse(timeLayout, s)
	if err != nil {
		return err
	}
	*c.t = &t
	return nil
}

// nullStringCol scans a nullable TEXT column; NULL is "".
type nullStringCol struct{ s *string }

func (c nullStringCol) Scan(src any) error {
	s, _, err := text(src)
	*c.s = s
	return err
}

// rawCol scans a nullable JSON TEXT column; NULL is nil.
type rawCol struct{ m *json.RawMessage }

func (c rawCol) Scan(src any) error {
	s, ok, err := text(src)
	if err != nil || !ok {
		*c.m = nil
		return err
	}
	*c.m = json.RawMessage(s)
	return nil
}

// jsonCol scans a nullable JSON TEXT column into *p, allocating it; NULL
// leaves *p nil.
type jsonCol[T any] struct{ p **T }

func (c jsonCol[T]) Scan(src any) error {
	s, ok, err := text(src)
	if err != nil || !ok {
		*c.p = nil
		return err
	}
	v := new(T)
	if err := json.Unmarshal([]byte(s), v); err != nil {
		return err
	}
	*c.p = v
	return nil
}

// jsonValCol scans a NOT NULL JSON TEXT column into *p.
type jsonValCol[T any] struct{ p *T }

func (c jsonValCol[T]) Scan(src any) error {
	s, ok, err := text(src)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("JSON column is NULL")
	}
	return json.Unmarshal([]byte(s), c.p)
}

var (
	_ sql.Scanner = timeCol{}
	_ sql.Scanner = nullTimeCol{}
	_ sql.Scanner = nullStringCol{}
	_ sql.Scanner = rawCol{}
	_ sql.Scanner = jsonCol[int]{}
	_ sql.Scanner = jsonValCol[int]{}
)
