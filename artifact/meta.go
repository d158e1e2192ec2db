package artifact

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/Masterminds/semver/v3"
	"github.com/berthhq/berth"
)

// MaxReadyTimeout is the longest ready_timeout berth.json may ask for.
const MaxReadyTimeout = 10 * time.Minute

// utf8BOM is stripped from the start of metadata files: some editors on
// Windows write it, and encoding/json does not accept it.
var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

// envNameRE is what a berth.json env key must match (POSIX portable names).
var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// parseCard validates an AgentCard.json document and returns a Package with
// Card, Name, Version and Description set.
func parseCard(b []byte) (Package, error) {
	b = bytes.TrimPrefix(b, utf8BOM)
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil || fields == nil {
		return Package{}, berth.Errorf(berth.CodeInvalid, "%s must be a JSON object: %s", CardFile, jsonProblem(err, "null"))
	}
	var p Package
	raw, ok := fields["name"]
	if !ok {
		return Package{}, berth.Errorf(berth.CodeInvalid, "%s has no \"name\"", CardFile)
	}
	if err := json.Unmarshal(raw, &p.Name); err != nil || isNull(raw) {
		return Package{}, berth.Errorf(berth.CodeInvalid, "%s: \"name\" must be a string", CardFile)
	}
	if p.Name == "" {
		return Package{}, berth.Errorf(berth.CodeInvalid, "%s: \"name\" must not be empty", CardFile)
	}
	if !berth.ValidName(p.Name) {
		return Package{}, berth.Errorf(berth.CodeInvalid,
			"%s: name %q is not a valid agent name: use 1 to 63 lowercase letters, digits and '-', starting with a letter or digit",
			CardFile, p.Name)
	}
	// version and description are optional; null counts as absent.
	if raw, ok := fields["version"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &p.Version); err != nil {
			return Package{}, berth.Errorf(berth.CodeInvalid, "%s: \"version\" must be a string like \"1.2.0\"", CardFile)
		}
		if err := checkVersion(p.Version); err != nil {
			return Package{}, berth.Errorf(berth.CodeInvalid, "%s: %v", CardFile, err)
		}
	}
	if raw, ok := fields["description"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &p.Description); err != nil {
			return Package{}, berth.Errorf(berth.CodeInvalid, "%s: \"description\" must be a string", CardFile)
		}
	}
	p.Card = json.RawMessage(bytes.Clone(b))
	return p, nil
}

// checkVersion accepts a plain MAJOR.MINOR.PATCH semver label: no "v"
// prefix, pre-release or build metadata, which version ordering and label
// reuse rules do not account for.
func checkVersion(s string) error {
	v, err := semver.StrictNewVersion(s)
	if err != nil || v.Prerelease() != "" || v.Metadata() != "" {
		return fmt.Errorf("version %q is not a plain MAJOR.MINOR.PATCH version such as \"1.2.0\"", s)
	}
	return nil
}

// rawConfig mirrors berth.json with pointers where "absent" and "empty"
// must be told apart.
type rawConfig struct {
	Run          []string          `json:"run"`
	Build        []string          `json:"build"`
	HealthPath   *string           `json:"health_path"`
	Env          map[string]string `json:"env"`
	ReadyTimeout *string           `json:"ready_timeout"`
	Image        *string           `json:"image"`
}

// configFieldTypes names what each berth.json field must be, for messages.
var configFieldTypes = map[string]string{
	"run":           "a list of strings",
	"build":         "a list of strings",
	"health_path":   "a string",
	"env":           "an object whose values are strings",
	"ready_timeout": "a duration string such as \"30s\"",
	"image":         "a string",
}

// ParseConfig parses and validates a berth.json document. Unknown fields
// are refused. The returned Config has HealthPath defaulted to
// berth.DefaultHealthPath, and nil (not empty) Build and Env when the
// document has none. Errors are *berth.Error with CodeInvalid.
func ParseConfig(b []byte) (berth.Config, error) {
	b = bytes.TrimPrefix(b, utf8BOM)
	// A struct happily decodes from "null"; berth.json must be an object.
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return berth.Config{}, berth.Errorf(berth.CodeInvalid, "%s must be a JSON object", ConfigFile)
	}
	// encoding/json matches field names case-insensitively, so "RUN" or
	// "Health_Path" would slip past DisallowUnknownFields; keys must match
	// exactly.
	var keys map[string]json.RawMessage
	if json.Unmarshal(b, &keys) == nil {
		for _, k := range slices.Sorted(maps.Keys(keys)) {
			if _, ok := configFieldTypes[k]; !ok {
				return berth.Config{}, berth.Errorf(berth.CodeInvalid, "%s: unknown field %q", ConfigFile, k)
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var rc rawConfig
	if err := dec.Decode(&rc); err != nil {
		return berth.Config{}, berth.Errorf(berth.CodeInvalid, "%s: %s", ConfigFile, jsonProblem(err, ""))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return berth.Config{}, berth.Errorf(berth.CodeInvalid, "%s: unexpected data after the JSON object", ConfigFile)
	}
	bad := func(format string, args ...any) (berth.Config, error) {
		return berth.Config{}, berth.Errorf(berth.CodeInvalid, ConfigFile+": "+format, args...)
	}

	var c berth.Config
	if len(rc.Run) == 0 {
		return bad("\"run\" is required: the command that starts the agent, as a list such as [\"./agent\"]")
	}
	if err := checkArgv(rc.Run); err != nil {
		return bad("\"run\" %v", err)
	}
	c.Run = rc.Run
	// An empty build list means "no build step", like an absent one.
	if len(rc.Build) > 0 {
		if err := checkArgv(rc.Build); err != nil {
			return bad("\"build\" %v", err)
		}
		c.Build = rc.Build
	}

	c.HealthPath = berth.DefaultHealthPath
	if rc.HealthPath != nil {
		if err := checkHealthPath(*rc.HealthPath); err != nil {
			return bad("\"health_path\" %v", err)
		}
		c.HealthPath = *rc.HealthPath
	}

	for k, v := range rc.Env {
		switch {
		case !envNameRE.MatchString(k):
			return bad("env name %q is not valid: use letters, digits and '_', not starting with a digit", k)
		case k == "PORT" || strings.HasPrefix(k, "BERTH_"):
			return bad("env %q is set by Berth and cannot be overridden", k)
		case strings.IndexByte(v, 0) >= 0:
			return bad("env %q has a NUL byte in its value", k)
		}
	}
	if len(rc.Env) > 0 {
		c.Env = rc.Env
	}

	if rc.ReadyTimeout != nil {
		d, err := time.ParseDuration(*rc.ReadyTimeout)
		if err != nil {
			return bad("\"ready_timeout\" %q is not a duration such as \"30s\"", *rc.ReadyTimeout)
		}
		if d <= 0 || d > MaxReadyTimeout {
			return bad("\"ready_timeout\" %q must be more than 0 and at most %v", *rc.ReadyTimeout, MaxReadyTimeout)
		}
		c.ReadyTimeout = berth.Duration(d)
	}

	if rc.Image != nil {
		if strings.IndexFunc(*rc.Image, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
			return bad("\"image\" %q must not contain spaces or control characters", *rc.Image)
		}
		c.Image = *rc.Image
	}
	return c, nil
}

// checkArgv checks a command line: at least one element, none empty (an
// empty program or argument is always a mistake) and no NUL bytes (which
// exec cannot pass).
func checkArgv(argv []string) error {
	if len(argv) == 0 {
		return errors.New("must not be empty")
	}
	for i, a := range argv {
		if a == "" {
			return fmt.Errorf("element %d is empty", i)
		}
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("element %d has a NUL byte", i)
		}
	}
	return nil
}

// checkHealthPath accepts an absolute URL path (with optional query) that
// can be appended to an instance's base URL.
func checkHealthPath(p string) error {
	if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") {
		return fmt.Errorf("%q must be a path starting with a single \"/\"", p)
	}
	if strings.IndexFunc(p, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return fmt.Errorf("%q must not contain spaces or control characters", p)
	}
	// ParseRequestURI takes '#' as part of the path; a fragment is never
	// sent to a server, so it has no place here.
	u, err := url.ParseRequestURI(p)
	if err != nil || strings.Contains(p, "#") || u.Host != "" {
		return fmt.Errorf("%q is not a valid URL path", p)
	}
	return nil
}

// jsonProblem describes a JSON decoding error for a caller; ifNil is used
// when err is nil (a document that decoded to nothing useful).
func jsonProblem(err error, ifNil string) string {
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
	)
	switch {
	case err == nil:
		return "got " + ifNil
	case errors.As(err, &syn):
		return fmt.Sprintf("invalid JSON at byte %d: %s", syn.Offset, strings.TrimPrefix(syn.Error(), "json: "))
	case errors.As(err, &typ) && typ.Field != "":
		field, _, _ := strings.Cut(typ.Field, ".")
		if want, ok := configFieldTypes[field]; ok {
			return fmt.Sprintf("%q must be %s", field, want)
		}
		return fmt.Sprintf("field %q has the wrong type", typ.Field)
	case errors.As(err, &typ):
		return fmt.Sprintf("expected a JSON object, got %s", typ.Value)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected end of JSON"
	default:
		// Remaining decoder errors (unknown field, trailing data) have
		// self-explanatory messages.
		return strings.TrimPrefix(err.Error(), "json: ")
	}
}

// isNull reports whether a raw JSON value is null.
func isNull(raw json.RawMessage) bool {
	return string(bytes.TrimSpace(raw)) == "null"
}
