package http

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/berthhq/berth"
)

// rollbackSeeds are rollback bodies worth starting from: valid ones and the
// kinds of malformed input the API must refuse.
var rollbackSeeds = []string{
	``,
	`   `,
	`{}`,
	`{"target_version":"1.0.0"}`,
	`{"target_version":"  1.0.0  ","cleanup_failed":false,"reason":"bad deploy"}`,
	`{"target_version":null,"cleanup_failed":null,"reason":null}`,
	`{"target_version":""}`,
	`{"target_version":"   "}`,
	`{"target_version":1}`,
	`{"cleanup_failed":"yes"}`,
	`{"reason":["a"]}`,
	`{"target":"1.0.0"}`,
	`{"TARGET_VERSION":"1.0.0"}`,
	`{"target_version":"1.0.0"}{}`,
	`{"target_version":"1.0.0"} x`,
	`{"target_version":"1.0.0"`,
	`[]`,
	`null`,
	`"1.0.0"`,
	`{"reason":"` + strings.Repeat("r", 4097) + `"}`,
	`{"target_version":"` + strings.Repeat("9", 129) + `"}`,
	`{"reason":"\u00e9\ud800"}`,
	`{"cleanup_failed":true,"cleanup_failed":false}`,
	"\xef\xbb\xbf{}",
	`{"target_version":"1.0.0\u0000"}`,
	`{"cleanup_failed":null}`,
	`{"cleanup_failed":null,"cleanup_failed":false}`,
	`{"CLEANUP_FAILED":false}`,
	`{"Target_Version":"1.0.0"}`,
	`{"Reason":"x"}`,
	`{"re\u0061son":"escaped key"}`,
	`{"reason":"a\u0000b"}`,
	`{"reason":"c1 \u0085 del \u007f esc \u001b"}`,
	`{"reason":"line\nline\r\n\ttab \u00e9 \ud83d\udc1b"}`,
	`{"target_version":"1.0\t.0"}`,
}

func FuzzParseRollbackBody(f *testing.F) {
	for _, s := range rollbackSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := ParseRollbackBody(body)
		if err != nil {
			var be *berth.Error
			if !errors.As(err, &be) || be.Code != berth.CodeInvalidBody || be.Message == "" {
				t.Fatalf("ParseRollbackBody(%q) error = %#v, want a *berth.Error with CodeInvalidBody and a message", body, err)
			}
			return
		}
		if req.DryRun || req.Async || req.IdempotencyKey != "" {
			t.Fatalf("ParseRollbackBody(%q) = %+v: set fields that only the query and headers may set", body, req)
		}
		if req.Target != strings.TrimSpace(req.Target) || len(req.Target) > 128 || len(req.Reason) > 4096 {
			t.Fatalf("ParseRollbackBody(%q) = %+v: target not trimmed or a field over its limit", body, req)
		}
		if !utf8.ValidString(req.Target) || !utf8.ValidString(req.Reason) {
			t.Fatalf("ParseRollbackBody(%q) = %+v: invalid UTF-8 accepted", body, req)
		}
		for _, r := range req.Target {
			if unicode.IsControl(r) {
				t.Fatalf("ParseRollbackBody(%q) = %+v: control character %U accepted in the target", body, req, r)
			}
		}
		for _, r := range req.Reason {
			if unicode.IsControl(r) && r != '\t' && r != '\n' && r != '\r' {
				t.Fatalf("ParseRollbackBody(%q) = %+v: control character %U accepted in the reason", body, req, r)
			}
		}
		// Only the exact field names, and no null cleanup_failed (the
		// last one counts, as in the decoder).
		if len(strings.TrimSpace(string(body))) > 0 {
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(body, &obj); err != nil {
				t.Fatalf("ParseRollbackBody(%q) accepted, but it is not a JSON object: %v", body, err)
			}
			for k := range obj {
				if k != "target_version" && k != "cleanup_failed" && k != "reason" {
					t.Fatalf("ParseRollbackBody(%q) accepted field %q", body, k)
				}
			}
			if string(obj["cleanup_failed"]) == "null" {
				t.Fatalf("ParseRollbackBody(%q) = %+v: accepted a null cleanup_failed", body, req)
			}
		}

		// Re-encode what was understood and parse it again.
		var rb RollbackBody
		if req.Target != "" {
			rb.TargetVersion = &req.Target
		}
		rb.CleanupFailed = &req.CleanupFailed
		if req.Reason != "" {
			rb.Reason = &req.Reason
		}
		again, err := json.Marshal(rb)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", rb, err)
		}
		req2, err := ParseRollbackBody(again)
		if err != nil {
			t.Fatalf("ParseRollbackBody(%q) accepted, but its re-encoding %s is refused: %v", body, again, err)
		}
		if !reflect.DeepEqual(req, req2) {
			t.Fatalf("ParseRollbackBody(%q) = %+v, but its re-encoding %s parses to %+v", body, req, again, req2)
		}
	})
}

// strictTarget is a struct with the field types request bodies use, and
// the nesting (embedded, nested, in lists and maps) the name check follows.
type strictTarget struct {
	strictEmbedded
	Name    string                  `json:"name"`
	Count   int                     `json:"count"`
	Small   int8                    `json:"small"`
	Ratio   float64                 `json:"ratio"`
	Flag    *bool                   `json:"flag"`
	Tags    []string                `json:"tags"`
	Env     map[string]string       `json:"env"`
	Nested  *strictNested           `json:"nested"`
	Pointer *string                 `json:"pointer"`
	Items   []strictNested          `json:"items"`
	ByKey   map[string]strictNested `json:"by_key"`
}

type strictNested struct {
	ID string `json:"id"`
}

type strictEmbedded struct {
	Extra string `json:"extra"`
}

// strictFields are the JSON names strictTarget knows, at the top level.
var strictFields = []string{"name", "count", "small", "ratio", "flag", "tags", "env", "nested", "pointer", "items", "by_key", "extra"}

// errKeyShape stops strictKeysExact where body is not shaped like a
// strictTarget.
var errKeyShape = errors.New("not shaped like a strictTarget")

// strictKeysExact reports whether every key of body, one JSON object for a
// strictTarget, is spelled exactly as a field of the struct it goes into,
// at every depth, duplicates included. It walks with json.Decoder's tokens,
// independently of DecodeStrict's own scan, and fails with errKeyShape or a
// syntax error where it cannot tell.
func strictKeysExact(body []byte) (bool, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	exact := true
	skip := func() error {
		var raw json.RawMessage
		return dec.Decode(&raw)
	}
	// object walks an object (or null), calling value for each key's
	// value; allowed nil means any key.
	var object func(allowed []string, value func(key string) error) error
	object = func(allowed []string, value func(key string) error) error {
		tok, err := dec.Token()
		if err != nil || tok == nil {
			return err
		}
		if tok != json.Delim('{') {
			return errKeyShape
		}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			key := tok.(string)
			if allowed != nil && !slices.Contains(allowed, key) {
				exact = false
			}
			if err := value(key); err != nil {
				return err
			}
		}
		_, err = dec.Token()
		return err
	}
	nested := func() error {
		return object([]string{"id"}, func(string) error { return skip() })
	}
	err := object(strictFields, func(key string) error {
		switch key {
		case "nested":
			return nested()
		case "by_key":
			return object(nil, func(string) error { return nested() })
		case "items":
			tok, err := dec.Token()
			if err != nil || tok == nil {
				return err
			}
			if tok != json.Delim('[') {
				return errKeyShape
			}
			for dec.More() {
				if err := nested(); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		}
		return skip()
	})
	return exact, err
}

// stdAccepts reports whether encoding/json alone, as strict as it goes
// (unknown fields refused, in any case), takes body as one strictTarget.
func stdAccepts(body []byte) bool {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var v strictTarget
	if dec.Decode(&v) != nil || dec.More() {
		return false
	}
	_, err := dec.Token()
	return err == io.EOF
}

func FuzzDecodeStrict(f *testing.F) {
	for _, s := range []string{
		``,
		`{}`,
		`{"name":"a","count":1,"small":-128,"ratio":0.5,"flag":true,"tags":["x"],"env":{"A":"b"},"nested":{"id":"n"},"pointer":"p"}`,
		`{"unknown":1}`,
		`{"nested":{"id":"n","extra":true}}`,
		`{"Name":"case folded"}`,
		`{"NESTED":{"id":"n"}}`,
		`{"nested":{"ID":"n"}}`,
		`{"extra":"promoted","Extra":"x"}`,
		`{"items":[{"id":"a"},{"Id":"b"}],"by_key":{"K":{"id":"c"}}}`,
		`{"by_key":{"k":{"iD":"c"}}}`,
		`{"n\u0061me":"escaped"}`,
		`{"\u004eame":"escaped, folded"}`,
		`{"nested":{"ID":"a"},"nested":{"id":"b"}}`,
		`{"by_key":{"k":{"id":"a","Id":"b"}}}`,
		`{"name":1}`,
		`{"count":"1"}`,
		`{"count":1.5}`,
		`{"flag":"true"}`,
		`{"tags":"x"}`,
		`{"env":{"A":1}}`,
		`{"name":null,"count":null,"flag":null,"tags":null,"env":null,"nested":null}`,
		`null`,
		`{"name":"a"} {"name":"b"}`,
		`{"name":"a"}]`,
		`{"name":"a"}}`,
		`{"name":"a"} garbage`,
		`{"name":"a"`,
		`{"count":99999999999999999999999999999}`,
		`{"small":128}`,
		`{"ratio":1e400}`,
		`{"count":-0}`,
		`{"count":1e2}`,
		`[{"name":"a"}]`,
		`"just a string"`,
		`123`,
		` {"name":"spaces around"} `,
		"\t\n{}\n",
		`{"name":"\ud800"}`,
		`{"name":"a","name":"b"}`,
		"{\"name\":\"\xff\"}",
	} {
		f.Add([]byte(s), len(s)%2 == 0)
	}
	f.Fuzz(func(t *testing.T, body []byte, allowEmpty bool) {
		var v strictTarget
		err := DecodeStrict(body, &v, allowEmpty)
		trimmed := strings.TrimSpace(string(body))
		if err != nil {
			var be *berth.Error
			if !errors.As(err, &be) || be.Code != berth.CodeInvalidBody || be.Message == "" {
				t.Fatalf("DecodeStrict(%q) error = %#v, want a *berth.Error with CodeInvalidBody and a message", body, err)
			}
			if trimmed == "" && allowEmpty {
				t.Fatalf("DecodeStrict(%q, allowEmpty) refused an empty body: %v", body, err)
			}
			// What encoding/json takes is refused only for a key in
			// the wrong case.
			if stdAccepts(body) {
				if exact, werr := strictKeysExact(body); werr == nil && exact {
					t.Fatalf("DecodeStrict(%q) = %v, but encoding/json accepts it and its keys are exact", body, err)
				}
			}
			return
		}
		if trimmed == "" {
			if !allowEmpty {
				t.Fatalf("DecodeStrict(%q, allowEmpty=false) accepted an empty body", body)
			}
			if !reflect.DeepEqual(v, strictTarget{}) {
				t.Fatalf("DecodeStrict(%q) of an empty body changed v to %+v", body, v)
			}
			return
		}
		// Accepted: exactly one JSON object, nothing after it, and only
		// known fields, spelled exactly (case included) at every depth.
		if trimmed[0] != '{' || !json.Valid([]byte(trimmed)) {
			t.Fatalf("DecodeStrict(%q) accepted something that is not exactly one JSON object", body)
		}
		if exact, err := strictKeysExact(body); err != nil || !exact {
			t.Fatalf("DecodeStrict(%q) accepted a key not spelled exactly as its field (exact=%v, %v)", body, exact, err)
		}
		// Re-encoding and decoding again gives the same value.
		again, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", v, err)
		}
		var v2 strictTarget
		if err := DecodeStrict(again, &v2, false); err != nil {
			t.Fatalf("DecodeStrict(%q) accepted, but its re-encoding %s is refused: %v", body, again, err)
		}
		if !reflect.DeepEqual(v, v2) {
			t.Fatalf("DecodeStrict(%q) = %+v, but its re-encoding %s decodes to %+v", body, v, again, v2)
		}
	})
}

// TestDecodeStrictTable pins the decisions the fuzz seeds stand for.
func TestDecodeStrictTable(t *testing.T) {
	for _, c := range []struct {
		body       string
		allowEmpty bool
		ok         bool
	}{
		{``, true, true},
		{``, false, false},
		{`{}`, false, true},
		{`{"name":"a","count":2}`, false, true},
		{`{"unknown":1}`, false, false},
		{`{"nested":{"id":"n","extra":true}}`, false, false},
		{`{"name":1}`, false, false},
		{`{"count":"1"}`, false, false},
		{`{"count":1.5}`, false, false},
		{`{"tags":"x"}`, false, false},
		{`{"name":null,"flag":null}`, false, true},
		{`null`, false, false},
		{`[]`, false, false},
		{`{"name":"a"} {"name":"b"}`, false, false},
		{`{"name":"a"}]`, false, false},
		{`{"name":"a"}}`, false, false},
		{`{"name":"a"} garbage`, false, false},
		{`{"name":"a"`, false, false},
		{`{"count":99999999999999999999999999999}`, false, false},
		{`{"small":128}`, false, false},
		{`{"ratio":1e400}`, false, false},
		{` {"name":"ok"} `, false, true},
		{`{"Name":"a"}`, false, false},
		{`{"nested":{"ID":"n"}}`, false, false},
		{`{"items":[{"id":"a"}],"by_key":{"K":{"id":"b"}},"extra":"e"}`, false, true},
		{`{"items":[{"Id":"a"}]}`, false, false},
		{`{"EXTRA":"e"}`, false, false},
	} {
		var v strictTarget
		err := DecodeStrict([]byte(c.body), &v, c.allowEmpty)
		if (err == nil) != c.ok {
			t.Errorf("DecodeStrict(%q, %v) = %v, want ok=%v", c.body, c.allowEmpty, err, c.ok)
			continue
		}
		if err != nil && berth.ErrorCode(err) != berth.CodeInvalidBody {
			t.Errorf("DecodeStrict(%q) code = %s, want %s", c.body, berth.ErrorCode(err), berth.CodeInvalidBody)
		}
	}
}

func TestParseRollbackBodyTable(t *testing.T) {
	for _, c := range []struct {
		body string
		want *struct {
			target  string
			cleanup bool
			reason  string
		}
	}{
		{``, &struct {
			target  string
			cleanup bool
			reason  string
		}{"", true, ""}},
		{`{"target_version":" 1.0.0 ","cleanup_failed":false,"reason":"why"}`, &struct {
			target  string
			cleanup bool
			reason  string
		}{"1.0.0", false, "why"}},
		{`{"target_version":""}`, nil},
		{`{"target_version":1}`, nil},
		{`{"target":"1.0.0"}`, nil},
		{`{} {}`, nil},
		{`[]`, nil},
		{`{"reason":"` + strings.Repeat("r", 4097) + `"}`, nil},
	} {
		req, err := ParseRollbackBody([]byte(c.body))
		if c.want == nil {
			if err == nil || berth.ErrorCode(err) != berth.CodeInvalidBody {
				t.Errorf("ParseRollbackBody(%.40q) = %+v, %v; want CodeInvalidBody", c.body, req, err)
			}
			continue
		}
		if err != nil || req.Target != c.want.target || req.CleanupFailed != c.want.cleanup || req.Reason != c.want.reason {
			t.Errorf("ParseRollbackBody(%q) = %+v, %v; want %+v", c.body, req, err, *c.want)
		}
	}
}
