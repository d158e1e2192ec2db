package http

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
)

// requestBodies are the struct types the handlers pass to DecodeStrict (by
// way of decodeJSON), each as a constructor of a fresh value to decode into.
var requestBodies = []struct {
	name string
	new  func() any
}{
	{"RollbackBody", func() any { return new(RollbackBody) }},
	{"loginRequest", func() any { return new(loginRequest) }},
	{"registerRequest", func() any { return new(registerRequest) }},
	{"createBuildBody", func() any { return new(createBuildBody) }},
	{"buildStatusBody", func() any { return new(buildStatusBody) }},
	{"createDeploymentBody", func() any { return new(createDeploymentBody) }},
	{"deploymentStatusBody", func() any { return new(deploymentStatusBody) }},
}

// wantInvalidBody fails unless err is a *berth.Error with CodeInvalidBody
// whose message contains every one of parts.
func wantInvalidBody(t *testing.T, what string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s = nil, want a CodeInvalidBody error", what)
		return
	}
	if c := berth.ErrorCode(err); c != berth.CodeInvalidBody {
		t.Errorf("%s = %v, want code %s", what, err, berth.CodeInvalidBody)
		return
	}
	for _, p := range parts {
		if !strings.Contains(berth.ErrorMessage(err), p) {
			t.Errorf("%s message = %q, want it to mention %q", what, berth.ErrorMessage(err), p)
		}
	}
}

// jsonNames returns the JSON names of struct type typ's fields; it fails
// the test if typ embeds a struct (none of the request bodies does), so
// that a new body cannot slip past it.
func jsonNames(t *testing.T, typ reflect.Type) []string {
	t.Helper()
	var names []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Anonymous {
			t.Fatalf("%s embeds %s: extend jsonNames to follow embedded structs", typ, f.Type)
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			t.Fatalf("%s.%s has no json name", typ, f.Name)
		}
		names = append(names, name)
	}
	return names
}

// caseVariants returns spellings of name that differ from it only in case.
func caseVariants(name string) []string {
	var out []string
	for _, v := range []string{strings.ToUpper(name), strings.ToUpper(name[:1]) + name[1:], strings.ToLower(name)} {
		if v != name && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// TestDecodeStrictFieldCaseEveryBody checks, for every field of every
// request body, that the exact name is accepted and every other casing is
// refused as an unknown field, with a hint naming the real one.
func TestDecodeStrictFieldCaseEveryBody(t *testing.T) {
	for _, rb := range requestBodies {
		typ := reflect.TypeOf(rb.new()).Elem()
		for _, name := range jsonNames(t, typ) {
			// null fits every field type, so the name alone decides.
			exact := `{"` + name + `":null}`
			if err := DecodeStrict([]byte(exact), rb.new(), false); err != nil {
				t.Errorf("DecodeStrict(%q) into %s = %v, want nil", exact, rb.name, err)
			}
			for _, v := range caseVariants(name) {
				body := `{"` + v + `":null}`
				err := DecodeStrict([]byte(body), rb.new(), false)
				wantInvalidBody(t, "DecodeStrict("+body+") into "+rb.name, err,
					`unknown field "`+v+`"`, `did you mean "`+name+`"`)
			}
		}
	}
}

// TestDecodeStrictCaseSensitive pins case-sensitivity with real values,
// including that a refused body leaves the fields it names unset.
func TestDecodeStrictCaseSensitive(t *testing.T) {
	for _, c := range []struct {
		name string
		new  func() any
		body string
		ok   bool
	}{
		{"RollbackBody", func() any { return new(RollbackBody) }, `{"CLEANUP_FAILED":false}`, false},
		{"RollbackBody", func() any { return new(RollbackBody) }, `{"Target_Version":"1.0.0"}`, false},
		{"RollbackBody", func() any { return new(RollbackBody) }, `{"Reason":"x"}`, false},
		{"RollbackBody", func() any { return new(RollbackBody) }, `{"reason":"x","REASON":"y"}`, false},
		// An escaped key is the same key: only its value counts.
		{"RollbackBody", func() any { return new(RollbackBody) }, `{"re\u0061son":"x"}`, true},
		{"RollbackBody", func() any { return new(RollbackBody) }, `{"R\u0045ASON":"x"}`, false},
		// U+212A KELVIN SIGN folds to "k" in encoding/json's matching.
		{"loginRequest", func() any { return new(loginRequest) }, `{"access_\u212aey":"k","access_secret":"s"}`, false},
		{"loginRequest", func() any { return new(loginRequest) }, `{"access_key":"k","access_secret":"s"}`, true},
		{"loginRequest", func() any { return new(loginRequest) }, `{"Access_Key":"k","access_secret":"s"}`, false},
		{"registerRequest", func() any { return new(registerRequest) }, `{"username":"u","IS_SUPER_USER":true}`, false},
		{"registerRequest", func() any { return new(registerRequest) }, `{"username":"u","is_super_user":true}`, true},
		{"createBuildBody", func() any { return new(createBuildBody) }, `{"agent_id":"a","Version_Tag":"1.0.0"}`, false},
		{"buildStatusBody", func() any { return new(buildStatusBody) }, `{"Status":"failed"}`, false},
		{"createDeploymentBody", func() any { return new(createDeploymentBody) }, `{"agent_id":"a","build_id":"b","Replicas":2}`, false},
		{"createDeploymentBody", func() any { return new(createDeploymentBody) }, `{"agent_id":"a","build_id":"b","replicas":2}`, true},
		{"deploymentStatusBody", func() any { return new(deploymentStatusBody) }, `{"status":"stopped","Error_Message":"x"}`, false},
		// A raw map (registry bodies) keeps any key as sent.
		{"map", func() any { return new(map[string]json.RawMessage) }, `{"Name":"x","name":"y","NAME":1}`, true},
	} {
		v := c.new()
		err := DecodeStrict([]byte(c.body), v, false)
		if (err == nil) != c.ok {
			t.Errorf("DecodeStrict(%q) into %s = %v, want ok=%v", c.body, c.name, err, c.ok)
			continue
		}
		if err == nil {
			continue
		}
		wantInvalidBody(t, "DecodeStrict("+c.body+") into "+c.name, err, "unknown field")
		if zero := reflect.New(reflect.TypeOf(v).Elem()).Interface(); !reflect.DeepEqual(v, zero) {
			t.Errorf("DecodeStrict(%q) into %s refused the body but set %+v", c.body, c.name, v)
		}
	}
}

// TestDecodeStrictUnknownFieldMessage keeps the message of a plainly
// unknown field as it was, and adds the hint only for a case mismatch.
func TestDecodeStrictUnknownFieldMessage(t *testing.T) {
	for _, c := range []struct{ body, want string }{
		{`{"force":true}`, `invalid JSON body: json: unknown field "force"`},
		{`{"Reason":"x"}`, `invalid JSON body: json: unknown field "Reason" (field names are case-sensitive: did you mean "reason"?)`},
		// A wrong type under a wrong-case name is about the name.
		{`{"CLEANUP_FAILED":"no"}`, `invalid JSON body: json: unknown field "CLEANUP_FAILED" (field names are case-sensitive: did you mean "cleanup_failed"?)`},
		{`{"cleanup_failed":"no"}`, `invalid JSON body: field "cleanup_failed" must be a boolean, not string`},
	} {
		err := DecodeStrict([]byte(c.body), new(RollbackBody), false)
		if got := berth.ErrorMessage(err); got != c.want || berth.ErrorCode(err) != berth.CodeInvalidBody {
			t.Errorf("DecodeStrict(%q) = %v, want %s: %q", c.body, err, berth.CodeInvalidBody, c.want)
		}
	}
}

// Types that exercise the name check beyond the flat request bodies.
type (
	caseInner struct {
		ID string `json:"id"`
	}
	CaseEmbedded struct {
		Promoted string `json:"promoted"`
		Untagged string
	}
	caseEmbeddedHidden struct {
		Hidden string `json:"hidden"`
	}
	caseNode struct {
		Name string     `json:"name"`
		Kids []caseNode `json:"kids"`
	}
	caseOuter struct {
		CaseEmbedded
		caseEmbeddedHidden
		Named   CaseEmbedded            `json:"named"`
		Ptr     *caseInner              `json:"ptr"`
		List    []caseInner             `json:"list"`
		Array   [2]*caseInner           `json:"array"`
		ByName  map[string]caseInner    `json:"by_name"`
		Deep    map[string][]*caseInner `json:"deep"`
		Tree    *caseNode               `json:"tree"`
		When    time.Time               `json:"when"`
		Raw     json.RawMessage         `json:"raw"`
		Any     any                     `json:"any"`
		Bad     string                  `json:"b\"ad"` // invalid tag name: known by its Go name
		Skipped string                  `json:"-"`
		Dash    string                  `json:"-,"`
		NoTag   int
		private string
	}
)

func TestDecodeStrictNestedAndEmbedded(t *testing.T) {
	for _, c := range []struct {
		body string
		ok   bool
	}{
		{`{"promoted":"p","Untagged":"u","hidden":"h"}`, true},
		{`{"Promoted":"p"}`, false},
		{`{"untagged":"u"}`, false},
		{`{"HIDDEN":"h"}`, false},
		{`{"CaseEmbedded":{"promoted":"p"}}`, false}, // promoted, not a field of its own
		{`{"named":{"promoted":"p","Untagged":"u"}}`, true},
		{`{"named":{"PROMOTED":"p"}}`, false},
		{`{"ptr":{"id":"x"}}`, true},
		{`{"ptr":{"ID":"x"}}`, false},
		{`{"ptr":null,"Ptr":null}`, false},
		{`{"list":[{"id":"a"},{"id":"b"}]}`, true},
		{`{"list":[{"id":"a"},{"Id":"b"}]}`, false},
		{`{"array":[{"id":"a"},null]}`, true},
		{`{"array":[null,{"iD":"a"}]}`, false},
		{`{"by_name":{"Any Key":{"id":"a"},"ID":{"id":"b"}}}`, true},
		{`{"by_name":{"k":{"Id":"a"}}}`, false},
		{`{"deep":{"k":[null,{"id":"a"}]}}`, true},
		{`{"deep":{"k":[{"id":"a"},{"ID":"b"}]}}`, false},
		{`{"tree":{"name":"r","kids":[{"name":"a","kids":[{"name":"b"}]}]}}`, true},
		{`{"tree":{"name":"r","kids":[{"name":"a","kids":[{"Name":"b"}]}]}}`, false},
		{`{"when":"2026-01-02T03:04:05Z","raw":{"ANY":[1,{"X":2}]},"any":{"Whatever":1}}`, true},
		{`{"When":"2026-01-02T03:04:05Z"}`, false},
		{`{"Bad":"x"}`, true},
		{`{"bad":"x"}`, false},
		{`{"-":"x"}`, true},
		{`{"NoTag":1}`, true},
		{`{"notag":1}`, false},
		{`{"Skipped":"x"}`, false},
		{`{"private":"x"}`, false},
		// Strings, escapes, numbers and whitespace the key scan must step
		// over exactly.
		{" {\n \"any\" : { \"x\" : \"}\\\"{\" , \"y\":[1e5,-0.5E-3,true,null,\"]\"] } ,\t\"ptr\" : { \"id\" : \"a\\\"b\" } } \n", true},
		{`{"any":{"s":"\\"},"ptr":{"Id":"x"}}`, false},
		{`{"any":"\\","PTR":null}`, false},
		{`{"any":[{"}":"{"},[[]],{}],"list":[],"by_name":{},"ptr":{}}`, true},
		{`{"p\u0074r":{"\u0069d":"x"}}`, true},
		{`{"\u0050tr":null}`, false},
		{`{"a\"b":1}`, false},
		{`{"raw":{"ptr":{"ID":1}},"ptr":{"id":"x"}}`, true},
		// Shapes that do not fit are the decoder's to refuse.
		{`{"ptr":[{"ID":1}]}`, false},
		{`{"list":{"ID":1}}`, false},
		{`{"ptr":"x","Ptr":1}`, false},
	} {
		var v caseOuter
		err := DecodeStrict([]byte(c.body), &v, false)
		if (err == nil) != c.ok {
			t.Errorf("DecodeStrict(%q) into caseOuter = %v, want ok=%v", c.body, err, c.ok)
			continue
		}
		if err != nil && berth.ErrorCode(err) != berth.CodeInvalidBody {
			t.Errorf("DecodeStrict(%q) code = %s, want %s", c.body, berth.ErrorCode(err), berth.CodeInvalidBody)
		}
	}
}

// TestDecodeStrictDeepNesting checks that nesting beyond encoding/json's
// limit is still refused, and a deep but legal tree still checked.
func TestDecodeStrictDeepNesting(t *testing.T) {
	deep := func(n int, leaf string) string {
		return `{"tree":` + strings.Repeat(`{"kids":[`, n) + leaf + strings.Repeat(`]}`, n) + `}`
	}
	for _, c := range []struct {
		what string
		body string
		ok   bool
	}{
		{"100 levels", deep(100, `{"name":"x"}`), true},
		{"100 levels, wrong case at the bottom", deep(100, `{"NAME":"x"}`), false},
		{"beyond the decoder's depth limit", deep(6000, `{"name":"x"}`), false},
	} {
		var v caseOuter
		err := DecodeStrict([]byte(c.body), &v, false)
		if (err == nil) != c.ok {
			t.Errorf("DecodeStrict(%s) = %v, want ok=%v", c.what, err, c.ok)
		}
	}
}

func TestParseRollbackBodyRefusals(t *testing.T) {
	for _, c := range []struct {
		body string
		want string // part of the message
	}{
		{`{"cleanup_failed":null}`, "cleanup_failed must be true or false, not null"},
		{`{"target_version":"1.0.0","cleanup_failed":null,"reason":"x"}`, "cleanup_failed must be true or false, not null"},
		{`{"cleanup_failed":true,"cleanup_failed":null}`, "not null"}, // the last one counts
		{`{"CLEANUP_FAILED":false}`, `unknown field "CLEANUP_FAILED"`},
		{`{"Target_Version":"1.0.0"}`, `unknown field "Target_Version"`},
		{`{"Reason":"x"}`, `unknown field "Reason"`},
		{`{"reason":"a\u0000b"}`, "reason must not contain control characters other than tab, newline and carriage return (found U+0000 at byte 1)"},
		{`{"reason":"\u0001"}`, "U+0001"},
		{`{"reason":"bell\u0007"}`, "U+0007"},
		{`{"reason":"esc \u001b[31mred"}`, "U+001B"},
		{`{"reason":"del\u007f"}`, "U+007F"},
		{`{"reason":"c1 \u0085 next line"}`, "U+0085"},
		{`{"reason":"\u009b"}`, "U+009B"},
		{`{"reason":"form\ffeed"}`, "U+000C"},
		{`{"target_version":"1.0.0\u0000"}`, "target_version must not contain control characters (found U+0000 at byte 5)"},
		{`{"target_version":"1.0\t.0"}`, "target_version must not contain control characters (found U+0009"},
		{`{"target_version":"1.0\n.0"}`, "U+000A"},
		{`{"target_version":"\u007f1.0.0"}`, "U+007F"},
		{`{"target_version":""}`, "must not be empty"},
		{`{"target_version":" \t\n "}`, "must not be empty"},
		{`{"target_version":"` + strings.Repeat("9", 129) + `"}`, "longer than 128 bytes"},
		{`{"reason":"` + strings.Repeat("r", 4097) + `"}`, "longer than 4096 bytes"},
		{`{"cleanup_failed":"false"}`, `field "cleanup_failed" must be a boolean`},
	} {
		req, err := ParseRollbackBody([]byte(c.body))
		if err == nil {
			t.Errorf("ParseRollbackBody(%.60q) = %+v, nil, want %s %q", c.body, req, berth.CodeInvalidBody, c.want)
			continue
		}
		wantInvalidBody(t, "ParseRollbackBody("+c.body[:min(len(c.body), 60)]+")", err, c.want)
	}
}

func TestParseRollbackBodyAccepts(t *testing.T) {
	type want struct {
		target  string
		cleanup bool
		reason  string
	}
	for _, c := range []struct {
		body string
		want want
	}{
		{``, want{"", true, ""}},
		{" \n\t ", want{"", true, ""}},
		{`{}`, want{"", true, ""}},
		{`{"target_version":null,"reason":null}`, want{"", true, ""}},
		{`{"target_version":null,"cleanup_failed":false,"reason":null}`, want{"", false, ""}},
		{`{"cleanup_failed":true}`, want{"", true, ""}},
		{`{"cleanup_failed":null,"cleanup_failed":false}`, want{"", false, ""}}, // the last one counts
		{`{"target_version":" 1.0.0\n"}`, want{"1.0.0", true, ""}},
		{`{"reason":"line one\nline two\r\n\ttabbed"}`, want{"", true, "line one\nline two\r\n\ttabbed"}},
		{`{"reason":"Régression de performance — 1.1.0 🐛, 回滚"}`, want{"", true, "Régression de performance — 1.1.0 🐛, 回滚"}},
		{`{"reason":"\u2028 and \ufffd are not control characters"}`, want{"", true, "\u2028 and \ufffd are not control characters"}},
		{`{"reason":""}`, want{"", true, ""}},
		{`{"target_version":"1.0.0","cleanup_failed":false,"reason":"Critical bug in 1.1.0"}`, want{"1.0.0", false, "Critical bug in 1.1.0"}},
		{`{"reason":"` + strings.Repeat("é", 2048) + `"}`, want{"", true, strings.Repeat("é", 2048)}},
	} {
		req, err := ParseRollbackBody([]byte(c.body))
		got := want{req.Target, req.CleanupFailed, req.Reason}
		if err != nil || got != c.want {
			t.Errorf("ParseRollbackBody(%.60q) = %+v, %v, want %+v", c.body, got, err, c.want)
		}
	}
}

// TestCheckTextInvalidUTF8 covers what JSON decoding never hands over: a
// string with invalid UTF-8.
func TestCheckTextInvalidUTF8(t *testing.T) {
	for _, c := range []struct {
		s         string
		multiline bool
		ok        bool
	}{
		{"ok\xff", true, false},
		{"\xc3", false, false},
		{"\ufffd", false, true},
		{"a\tb", true, true},
		{"a\tb", false, false},
		{"", false, true},
	} {
		err := checkText("field", c.s, c.multiline)
		if (err == nil) != c.ok {
			t.Errorf("checkText(%q, multiline=%v) = %v, want ok=%v", c.s, c.multiline, err, c.ok)
		}
		if err != nil && berth.ErrorCode(err) != berth.CodeInvalidBody {
			t.Errorf("checkText(%q) code = %s, want %s", c.s, berth.ErrorCode(err), berth.CodeInvalidBody)
		}
	}
}

// BenchmarkDecodeStrictRollback measures the strict decode of a typical
// rollback body, name check included.
func BenchmarkDecodeStrictRollback(b *testing.B) {
	body := []byte(`{"target_version":"1.0.0","cleanup_failed":false,"reason":"Critical bug in 1.1.0"}`)
	for b.Loop() {
		var v RollbackBody
		if err := DecodeStrict(body, &v, false); err != nil {
			b.Fatal(err)
		}
	}
}
