// Package http serves Berth's HTTP API (compatible with the Nasiko
// platform's lifecycle API) and provides the Go client the CLI uses.
package http

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"unicode"

	"github.com/berthhq/berth"
)

// statusOf is the one table mapping error codes to HTTP statuses.
var statusOf = map[berth.Code]int{
	berth.CodeInvalid:             http.StatusBadRequest,
	berth.CodeInvalidBody:         http.StatusUnprocessableEntity,
	berth.CodeUnauthorized:        http.StatusUnauthorized,
	berth.CodeForbidden:           http.StatusForbidden,
	berth.CodeNotFound:            http.StatusNotFound,
	berth.CodeMethodNotAllowed:    http.StatusMethodNotAllowed,
	berth.CodeConflict:            http.StatusConflict,
	berth.CodeNoRollbackTarget:    http.StatusConflict,
	berth.CodeOperationInProgress: http.StatusConflict,
	berth.CodeTargetUnhealthy:     http.StatusConflict,
	berth.CodeBuildFailed:         http.StatusUnprocessableEntity,
	berth.CodeDeployFailed:        http.StatusConflict,
	berth.CodeTooLarge:            http.StatusRequestEntityTooLarge,
	berth.CodeInsufficientStorage: http.StatusInsufficientStorage,
	berth.CodeUnavailable:         http.StatusServiceUnavailable,
	berth.CodeInternal:            http.StatusInternalServerError,
}

// StatusOf returns the HTTP status for an error code.
func StatusOf(c berth.Code) int {
	if s, ok := statusOf[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// ErrorBody is the body of every error response. Detail repeats Message for
// clients written against FastAPI.
type ErrorBody struct {
	StatusCode  int        `json:"status_code"`
	Message     string     `json:"message"`
	Detail      string     `json:"detail"`
	Code        berth.Code `json:"code"`
	OperationID string     `json:"operation_id,omitempty"`
}

// envelope is the success shape: {"data": …, "status_code": N, "message": "…"}.
type envelope struct {
	Data       any    `json:"data"`
	StatusCode int    `json:"status_code"`
	Message    string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		http.Error(w, `{"status_code":500,"message":"encode response","detail":"encode response","code":"internal"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func writeData(w http.ResponseWriter, status int, message string, data any) {
	writeJSON(w, status, envelope{Data: data, StatusCode: status, Message: message})
}

// writeError writes err in the error shape. Internal errors are logged and
// shown to the caller without their cause.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := berth.ErrorCode(err)
	status := StatusOf(code)
	body := ErrorBody{StatusCode: status, Code: code, Message: berth.ErrorMessage(err)}
	var be *berth.Error
	if errors.As(err, &be) {
		body.OperationID = be.OperationID
	}
	switch {
	case code == berth.CodeUnavailable || code == berth.CodeInsufficientStorage:
		// Conditions of the environment (a locked database, a full disk,
		// no free port) that clear up by themselves: worth a warning,
		// not an error page for a bug.
		s.log.Warn("request refused for now", "method", r.Method, "path", r.URL.Path, "code", code, "err", err)
	case status >= 500:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "code", code, "err", err)
	}
	body.Detail = body.Message
	if code == berth.CodeUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="berth"`)
	}
	writeJSON(w, status, body)
}

// maxJSONBody bounds JSON request bodies.
const maxJSONBody = 1 << 20

// decodeJSON strictly decodes a JSON object body into v: unknown fields,
// wrong types, trailing data and oversize bodies are refused with
// CodeInvalidBody (CodeTooLarge for size). An empty body leaves v as it is
// when allowEmpty.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any, allowEmpty bool) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxJSONBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return berth.Errorf(berth.CodeTooLarge, "request body is larger than %d bytes", maxJSONBody)
		}
		return berth.Errorf(berth.CodeInvalidBody, "read request body: %v", err)
	}
	return DecodeStrict(body, v, allowEmpty)
}

// DecodeStrict decodes one JSON object from body into v, refusing unknown
// fields, wrong types and trailing data with CodeInvalidBody. Field names
// must match v's JSON names exactly: encoding/json would also take
// "Reason" or "CLEANUP_FAILED" for "reason" and "cleanup_failed", which
// other implementations of the API (Nasiko's pydantic models) refuse as
// unknown fields, so DecodeStrict refuses them too, at every depth where v
// decodes a struct.
func DecodeStrict(body []byte, v any, allowEmpty bool) error {
	if len(bytes.TrimSpace(body)) == 0 {
		if allowEmpty {
			return nil
		}
		return berth.Errorf(berth.CodeInvalidBody, "request body is empty; a JSON object is required")
	}
	if trimmed := bytes.TrimSpace(body); trimmed[0] != '{' {
		return berth.Errorf(berth.CodeInvalidBody, "request body must be a JSON object")
	}
	// Names first, so that {"Reason": 1} is reported as the unknown field
	// it is rather than as a wrong type for "reason"; and before v is
	// written to.
	if err := checkFieldNames(body, v); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return berth.Errorf(berth.CodeInvalidBody, "invalid JSON body: %s", describeJSONError(err))
	}
	if dec.More() {
		return berth.Errorf(berth.CodeInvalidBody, "invalid JSON body: unexpected data after the object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return berth.Errorf(berth.CodeInvalidBody, "invalid JSON body: unexpected data after the object")
	}
	return nil
}

// checkFieldNames refuses an object key that is not exactly one of the JSON
// names of the struct it decodes into. Anything else wrong with body
// (syntax, types, a key unknown in any case) is left to the decoder, which
// sees the same bytes and refuses them with a better message.
func checkFieldNames(body []byte, v any) error {
	t := reflect.TypeOf(v)
	if t == nil {
		return nil
	}
	p := planFor(t)
	if p == nil {
		// No struct anywhere in v (a map of raw messages, say): the
		// decoder's own rules are all there is to check.
		return nil
	}
	// The scan below assumes valid JSON, which json.Valid checks without
	// allocating; it also bounds the nesting (10000 levels) and so the
	// scan's recursion. Invalid JSON is the decoder's to refuse.
	if !json.Valid(body) {
		return nil
	}
	ks := keyScanner{data: body}
	if uf := ks.value(p); uf != nil {
		msg := fmt.Sprintf("invalid JSON body: json: unknown field %q", uf.name)
		if uf.want != "" {
			msg += fmt.Sprintf(" (field names are case-sensitive: did you mean %q?)", uf.want)
		}
		return berth.Errorf(berth.CodeInvalidBody, "%s", msg)
	}
	return nil
}

// planKind is the JSON shape a fieldPlan expects.
type planKind uint8

const (
	planObject planKind = iota // a struct: keys must be its field names
	planList                   // a slice or array of values to check
	planMap                    // a map: any keys, values to check
)

// fieldPlan says which object keys a Go type accepts. A nil plan means
// there is nothing to check inside a value of the type.
type fieldPlan struct {
	kind planKind
	// fields maps each exact JSON name of a struct to the plan of its
	// value (planObject).
	fields map[string]*fieldPlan
	// names are the keys of fields, sorted, for hints.
	names []string
	// elem is the plan of the elements (planList) or values (planMap).
	elem *fieldPlan
}

// plans caches a *fieldPlan (possibly nil) per reflect.Type: building one
// costs reflection, using one does not.
var plans sync.Map

func planFor(t reflect.Type) *fieldPlan {
	if p, ok := plans.Load(t); ok {
		return p.(*fieldPlan)
	}
	p := buildPlan(t, map[reflect.Type]*fieldPlan{})
	actual, _ := plans.LoadOrStore(t, p)
	return actual.(*fieldPlan)
}

var (
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// decodesItself reports whether encoding/json hands values of t to t's own
// UnmarshalJSON or UnmarshalText (time.Time, json.RawMessage, …): their
// insides are not struct fields to check.
func decodesItself(t reflect.Type) bool {
	pt := reflect.PointerTo(t)
	return t.Implements(jsonUnmarshalerType) || pt.Implements(jsonUnmarshalerType) ||
		t.Implements(textUnmarshalerType) || pt.Implements(textUnmarshalerType)
}

// buildPlan builds t's plan; memo holds the struct plans under way, so
// that recursive types end in a cycle instead of recursing forever.
func buildPlan(t reflect.Type, memo map[reflect.Type]*fieldPlan) *fieldPlan {
	for {
		if decodesItself(t) {
			return nil
		}
		if t.Kind() != reflect.Pointer {
			break
		}
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if p, ok := memo[t]; ok {
			return p
		}
		p := &fieldPlan{kind: planObject, fields: map[string]*fieldPlan{}}
		memo[t] = p
		addFields(p, t, memo, map[reflect.Type]bool{t: true})
		for name := range p.fields {
			p.names = append(p.names, name)
		}
		slices.Sort(p.names)
		return p
	case reflect.Slice, reflect.Array:
		if e := buildPlan(t.Elem(), memo); e != nil {
			return &fieldPlan{kind: planList, elem: e}
		}
	case reflect.Map:
		if e := buildPlan(t.Elem(), memo); e != nil {
			return &fieldPlan{kind: planMap, elem: e}
		}
	}
	return nil
}

// addFields adds the JSON names of struct t to p, following encoding/json's
// rules for which fields count and what they are called, and promoting the
// fields of embedded structs. Where encoding/json drops a name that two
// embedded structs both define, p keeps it: the decoder refuses it anyway,
// as an unknown field, and p only needs never to accept less.
func addFields(p *fieldPlan, t reflect.Type, memo map[reflect.Type]*fieldPlan, embedding map[reflect.Type]bool) {
	for i := range t.NumField() {
		sf := t.Field(i)
		ft := sf.Type
		if ft.Name() == "" && ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if sf.Anonymous {
			if !sf.IsExported() && ft.Kind() != reflect.Struct {
				continue
			}
		} else if !sf.IsExported() {
			continue
		}
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if !validTagName(name) {
			name = ""
		}
		if name == "" && sf.Anonymous && ft.Kind() == reflect.Struct {
			// An embedded struct's fields are promoted into this object.
			if !embedding[ft] {
				embedding[ft] = true
				addFields(p, ft, memo, embedding)
			}
			continue
		}
		if name == "" {
			name = sf.Name
		}
		if _, dup := p.fields[name]; !dup {
			p.fields[name] = buildPlan(sf.Type, memo)
		}
	}
}

// validTagName is encoding/json's rule for a usable name in a json tag; a
// field with another tag name is known by its Go name.
func validTagName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case strings.ContainsRune("!#$%&()*+-./:;<=>?@[]^_{|}~ ", c):
		case !unicode.IsLetter(c) && !unicode.IsDigit(c):
			return false
		}
	}
	return true
}

// unknownFieldError is a key that no field has exactly.
type unknownFieldError struct {
	name string // the key, as sent (unescaped)
	want string // the field name it matches in another case, if any
}

// keyScanner reads the object keys of one valid JSON value. It scans the
// bytes rather than use json.Decoder's Token, which allocates for every
// token and would cost more than the decode itself. Its input must be
// valid JSON (json.Valid): it does not check syntax.
type keyScanner struct {
	data []byte
	pos  int
}

// value scans the value at pos with plan p (nil: nothing to check) and
// returns the first key p does not accept, if any.
func (s *keyScanner) value(p *fieldPlan) *unknownFieldError {
	s.space()
	switch {
	case s.data[s.pos] == '{' && p != nil && p.kind != planList:
		s.pos++
		if s.space(); s.data[s.pos] == '}' {
			s.pos++
			return nil
		}
		for {
			s.space()
			start := s.pos
			raw, escaped := s.str()
			quoted := s.data[start:s.pos]
			s.space()
			s.pos++ // ':'
			next := p.elem
			if p.kind == planObject {
				f, ok, key := p.field(raw, escaped, quoted)
				if !ok {
					return &unknownFieldError{name: key, want: p.folded(key)}
				}
				next = f
			}
			if uf := s.value(next); uf != nil {
				return uf
			}
			s.space()
			c := s.data[s.pos]
			s.pos++ // ',' or '}'
			if c == '}' {
				return nil
			}
		}
	case s.data[s.pos] == '[' && p != nil && p.kind == planList:
		s.pos++
		if s.space(); s.data[s.pos] == ']' {
			s.pos++
			return nil
		}
		for {
			if uf := s.value(p.elem); uf != nil {
				return uf
			}
			s.space()
			c := s.data[s.pos]
			s.pos++ // ',' or ']'
			if c == ']' {
				return nil
			}
		}
	}
	// Nothing to check inside: a value of a type without structs, null,
	// or a shape the decoder refuses for the type (an array for a
	// struct, say).
	s.skip()
	return nil
}

// space skips whitespace.
func (s *keyScanner) space() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// str skips the string at pos and returns its bytes between the quotes and
// whether it holds escapes.
func (s *keyScanner) str() (raw []byte, escaped bool) {
	start := s.pos
	s.pos++
	for {
		switch s.data[s.pos] {
		case '"':
			s.pos++
			return s.data[start+1 : s.pos-1], escaped
		case '\\':
			escaped = true
			s.pos += 2
		default:
			s.pos++
		}
	}
}

// field looks up the key whose bytes between the quotes are raw (quoted:
// with them) and returns its field's plan, whether there is one, and the
// key as encoding/json reads it (unescaped; invalid UTF-8 replaced, which
// no field name has).
func (p *fieldPlan) field(raw []byte, escaped bool, quoted []byte) (*fieldPlan, bool, string) {
	if !escaped {
		// Indexing with string(raw) does not allocate; the key is
		// needed as a string only when it is unknown.
		if f, ok := p.fields[string(raw)]; ok {
			return f, true, ""
		}
		return nil, false, string(raw)
	}
	var key string
	_ = json.Unmarshal(quoted, &key) // valid: json.Valid said so
	f, ok := p.fields[key]
	return f, ok, key
}

// literal skips the number, true, false or null at pos.
func (s *keyScanner) literal() {
	for ; s.pos < len(s.data); s.pos++ {
		switch s.data[s.pos] {
		case ',', ']', '}', ' ', '\t', '\n', '\r':
			return
		}
	}
}

// skip skips the value at pos, however deep, without recursion.
func (s *keyScanner) skip() {
	depth := 0
	for {
		s.space()
		switch s.data[s.pos] {
		case '{', '[':
			depth++
			s.pos++
		case '}', ']':
			depth--
			s.pos++
		case ',', ':':
			s.pos++
			continue // inside a container: depth > 0
		case '"':
			s.str()
		default: // a number, true, false or null
			s.literal()
		}
		if depth == 0 {
			return
		}
	}
}

// folded returns the field name key matches case-insensitively, or "".
func (p *fieldPlan) folded(key string) string {
	for _, name := range p.names {
		if strings.EqualFold(name, key) {
			return name
		}
	}
	return ""
}

func describeJSONError(err error) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s, not %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value)
	case errors.As(err, &se):
		return fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "unexpected end of JSON"
	}
	return err.Error()
}

func jsonKind(k string) string {
	switch k {
	case "bool":
		return "a boolean"
	case "string":
		return "a string"
	case "int", "int64", "float64":
		return "a number"
	case "slice":
		return "an array"
	}
	return "a " + k
}
