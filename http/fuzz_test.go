package http

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
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

// strictTarget is a struct with the field types request bodies use.
type strictTarget struct {
	Name    string            `json:"name"`
	Count   int               `json:"count"`
	Small   int8              `json:"small"`
	Ratio   float64           `json:"ratio"`
	Flag    *bool             `json:"flag"`
	Tags    []string          `json:"tags"`
	Env     map[string]string `json:"env"`
	Nested  *strictNested     `json:"nested"`
	Pointer *string           `json:"pointer"`
}

type strictNested struct {
	ID string `json:"id"`
}

// strictFields are the JSON names strictTarget knows, at the top level.
var strictFields = []string{"name", "count", "small", "ratio", "flag", "tags", "env", "nested", "pointer"}

func FuzzDecodeStrict(f *testing.F) {
	for _, s := range []string{
		``,
		`{}`,
		`{"name":"a","count":1,"small":-128,"ratio":0.5,"flag":true,"tags":["x"],"env":{"A":"b"},"nested":{"id":"n"},"pointer":"p"}`,
		`{"unknown":1}`,
		`{"nested":{"id":"n","extra":true}}`,
		`{"Name":"case folded"}`,
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
		// known fields.
		if trimmed[0] != '{' || !json.Valid([]byte(trimmed)) {
			t.Fatalf("DecodeStrict(%q) accepted something that is not exactly one JSON object", body)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(body, &obj); err != nil {
			t.Fatalf("DecodeStrict(%q) accepted, but it is not a JSON object: %v", body, err)
		}
		for k := range obj {
			known := false
			for _, f := range strictFields {
				if strings.EqualFold(k, f) {
					known = true
				}
			}
			if !known {
				t.Fatalf("DecodeStrict(%q) accepted unknown field %q", body, k)
			}
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
