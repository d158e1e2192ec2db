package artifact_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/artifact"
)

// testLimits are small so that limit cases stay cheap.
var testLimits = artifact.Limits{MaxEntries: 20, MaxUnpackedBytes: 1 << 20, MaxFileBytes: 512 << 10}

func TestDefaultLimits(t *testing.T) {
	got := artifact.DefaultLimits()
	want := artifact.Limits{MaxEntries: 10_000, MaxUnpackedBytes: 512 << 20, MaxFileBytes: 256 << 20}
	if got != want {
		t.Errorf("DefaultLimits() = %+v, want %+v", got, want)
	}
}

func TestHostilePackages(t *testing.T) {
	many := withMeta("")
	for i := range 25 {
		many = append(many, file(fmt.Sprintf("f%02d.txt", i), "x"))
	}
	zeros := strings.Repeat("\x00", 2<<20)

	tests := []struct {
		name     string
		zip      []byte
		wantCode berth.Code
		wantMsg  string // a substring of the message, often the entry name
	}{
		// Not a zip.
		{"empty file", []byte{}, berth.CodeInvalid, "empty"},
		{"not a zip", []byte("hello, this is not a zip archive at all"), berth.CodeInvalid, "not a valid zip"},
		{"truncated zip", buildZip(t, withMeta("")...)[:60], berth.CodeInvalid, "not a valid zip"},

		// Paths escaping the root.
		{"zip slip ../x", buildZip(t, withMeta("", file("../x", "pwned"))...), berth.CodeInvalid, `"../x"`},
		{"absolute /etc/x", buildZip(t, withMeta("", file("/etc/x", "pwned"))...), berth.CodeInvalid, `"/etc/x"`},
		{"a/../../x", buildZip(t, withMeta("", file("a/../../x", "pwned"))...), berth.CodeInvalid, `"a/../../x"`},
		{"inner .. in folder layout", buildZip(t, withMeta("agent/", file("agent/../x", "pwned"))...), berth.CodeInvalid, `"agent/../x"`},
		{"backslash path", buildZip(t, withMeta("", file(`..\x`, "pwned"))...), berth.CodeInvalid, "backslash"},
		{"windows drive", buildZip(t, withMeta("", file("C:/x", "pwned"))...), berth.CodeInvalid, `"C:/x"`},
		{"NUL byte", buildZip(t, withMeta("", file("a\x00b", "x"))...), berth.CodeInvalid, "NUL"},
		{"control character", buildZip(t, withMeta("", file("a\nb", "x"))...), berth.CodeInvalid, "control"},
		{"empty path element", buildZip(t, withMeta("", file("a//b", "x"))...), berth.CodeInvalid, `"a//b"`},
		{"name too long", buildZip(t, withMeta("", file(strings.Repeat("a", 300), "x"))...), berth.CodeInvalid, "longer than"},

		// Entry types.
		{"symlink", buildZip(t, withMeta("", zent{name: "link", body: "/etc/passwd", mode: fs.ModeSymlink | 0o777})...), berth.CodeInvalid, `"link" is a symbolic link`},
		{"symlink dir", buildZip(t, withMeta("", zent{name: "link/", unixMode: 0o120777})...), berth.CodeInvalid, "symbolic link"},
		{"named pipe", buildZip(t, withMeta("", zent{name: "fifo", mode: fs.ModeNamedPipe | 0o644})...), berth.CodeInvalid, `"fifo" is not a regular file`},
		{"device", buildZip(t, withMeta("", zent{name: "dev", mode: fs.ModeDevice | 0o644})...), berth.CodeInvalid, `"dev"`},
		{"encrypted", buildZip(t, withMeta("", zent{name: "secret", body: "x", flags: 0x1})...), berth.CodeInvalid, "encrypted"},
		{"unknown compression", buildZip(t, withMeta("", zent{name: "odd", body: "x", method: 99})...), berth.CodeInvalid, `"odd" uses unsupported compression`},
		{"directory with data", buildZip(t, withMeta("", zent{name: "d/", declared: 5})...), berth.CodeInvalid, `"d/"`},

		// Duplicates.
		{"duplicate file", buildZip(t, withMeta("", file("x.txt", "1"), file("x.txt", "2"))...), berth.CodeInvalid, `"x.txt" appears more than once`},
		{"duplicate via ./", buildZip(t, withMeta("", file("x.txt", "1"), file("./x.txt", "2"))...), berth.CodeInvalid, "more than once"},
		{"duplicate card", buildZip(t, withMeta("", file("AgentCard.json", goodCard))...), berth.CodeInvalid, "more than once"},
		{"file then dir", buildZip(t, withMeta("", file("x", "1"), dir("x/"))...), berth.CodeInvalid, "both a file and a directory"},
		{"dir then file", buildZip(t, withMeta("", dir("x/"), file("x", "1"))...), berth.CodeInvalid, "both a file and a directory"},
		{"file under file", buildZip(t, withMeta("", file("x", "1"), file("x/y", "2"))...), berth.CodeInvalid, "both a file and a directory"},
		{"file over implied dir", buildZip(t, withMeta("", file("x/y", "2"), file("x", "1"))...), berth.CodeInvalid, "both a file and a directory"},

		// Limits.
		{"too many entries", buildZip(t, many...), berth.CodeTooLarge, "27 entries"},
		{"zip bomb with lying size", buildZip(t, withMeta("", zent{name: "bomb", body: zeros, declared: 100})...), berth.CodeTooLarge, `"bomb"`},
		{"bomb lying about total", buildZip(t, withMeta("",
			file("b1", zeros[:400<<10]),
			file("b2", zeros[:400<<10]),
			zent{name: "b3", body: zeros[:400<<10], declared: 10})...), berth.CodeTooLarge, `package unpacks to more than the 1048576 bytes allowed (at entry "b3"`},
		{"size lie within limits", buildZip(t, withMeta("", zent{name: "liar", body: "0123456789abcdef", declared: 4})...), berth.CodeInvalid, `"liar" unpacks to 16 bytes`},
		{"size lie short", buildZip(t, withMeta("", zent{name: "short", body: "abc", declared: 10})...), berth.CodeInvalid, `"short"`},
		{"huge file", buildZip(t, withMeta("", file("huge.bin", zeros[:600<<10]))...), berth.CodeTooLarge, `"huge.bin"`},
		{"huge declared size", buildZip(t, withMeta("", zent{name: "big", body: "x", declared: 1 << 40})...), berth.CodeTooLarge, `"big"`},
		{"too much in total", buildZip(t, withMeta("",
			file("a.bin", zeros[:400<<10]), file("b.bin", zeros[:400<<10]), file("c.bin", zeros[:400<<10]))...), berth.CodeTooLarge, "more than the 1048576 bytes"},
		{"bad checksum", buildZip(t, withMeta("", zent{name: "crc", body: "hello", badCRC: true})...), berth.CodeInvalid, `"crc" is corrupt`},
		{"corrupt deflate", corruptDeflate(t), berth.CodeInvalid, `"data.txt" is corrupt`},

		// AgentCard.json.
		{"missing card", buildZip(t, file("berth.json", goodConfig), file("main.py", "")), berth.CodeInvalid, "no AgentCard.json"},
		{"card in a nested folder", buildZip(t, file("a/b/AgentCard.json", goodCard), file("a/b/berth.json", goodConfig), file("a/c.txt", ""), file("x.txt", "")), berth.CodeInvalid, `found "a/b/AgentCard.json"`},
		{"card is a directory", buildZip(t, dir("AgentCard.json/"), file("berth.json", goodConfig)), berth.CodeInvalid, "is a directory"},
		{"card not JSON", pkg(t, `{"name": `, goodConfig), berth.CodeInvalid, "AgentCard.json"},
		{"card is an array", pkg(t, `[{"name": "x"}]`, goodConfig), berth.CodeInvalid, "must be a JSON object"},
		{"card is null", pkg(t, `null`, goodConfig), berth.CodeInvalid, "must be a JSON object"},
		{"card without name", pkg(t, `{"version": "1.0.0"}`, goodConfig), berth.CodeInvalid, `no "name"`},
		{"card with empty name", pkg(t, `{"name": ""}`, goodConfig), berth.CodeInvalid, "must not be empty"},
		{"card name not a string", pkg(t, `{"name": 5}`, goodConfig), berth.CodeInvalid, `"name" must be a string`},
		{"card name null", pkg(t, `{"name": null}`, goodConfig), berth.CodeInvalid, `"name" must be a string`},
		{"card name not a slug", pkg(t, `{"name": "My Agent"}`, goodConfig), berth.CodeInvalid, `"My Agent" is not a valid agent name`},
		{"card version two parts", pkg(t, `{"name": "a", "version": "1.0"}`, goodConfig), berth.CodeInvalid, `"1.0"`},
		{"card version v prefix", pkg(t, `{"name": "a", "version": "v1.0.0"}`, goodConfig), berth.CodeInvalid, `"v1.0.0"`},
		{"card version prerelease", pkg(t, `{"name": "a", "version": "1.0.0-beta"}`, goodConfig), berth.CodeInvalid, "MAJOR.MINOR.PATCH"},
		{"card version metadata", pkg(t, `{"name": "a", "version": "1.0.0+git"}`, goodConfig), berth.CodeInvalid, "MAJOR.MINOR.PATCH"},
		{"card version leading zero", pkg(t, `{"name": "a", "version": "01.0.0"}`, goodConfig), berth.CodeInvalid, "MAJOR.MINOR.PATCH"},
		{"card version number", pkg(t, `{"name": "a", "version": 1}`, goodConfig), berth.CodeInvalid, `"version" must be a string`},
		{"card description number", pkg(t, `{"name": "a", "description": 3}`, goodConfig), berth.CodeInvalid, `"description" must be a string`},
		{"card too large", pkg(t, `{"name": "a", "x": "`+strings.Repeat("y", 1<<20)+`"}`, goodConfig), berth.CodeTooLarge, "AgentCard.json"},

		// berth.json.
		{"missing config", buildZip(t, file("AgentCard.json", goodCard)), berth.CodeInvalid, "no berth.json"},
		{"config unknown field", pkg(t, goodCard, `{"run": ["x"], "ports": [80]}`), berth.CodeInvalid, `unknown field "ports"`},
		{"config empty run", pkg(t, goodCard, `{"run": []}`), berth.CodeInvalid, `"run" is required`},
		{"config bad env key", pkg(t, goodCard, `{"run": ["x"], "env": {"1BAD": "x"}}`), berth.CodeInvalid, `"1BAD"`},
		{"config PORT override", pkg(t, goodCard, `{"run": ["x"], "env": {"PORT": "80"}}`), berth.CodeInvalid, `"PORT"`},
		{"config negative ready_timeout", pkg(t, goodCard, `{"run": ["x"], "ready_timeout": "-1s"}`), berth.CodeInvalid, "ready_timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := artifact.Inspect(bytes.NewReader(tt.zip), int64(len(tt.zip)), testLimits)
			checkErr(t, "Inspect", err, tt.wantCode, tt.wantMsg)

			parent := t.TempDir()
			if err := os.WriteFile(filepath.Join(parent, "other"), []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, parent)
			target := filepath.Join(parent, "v1")
			err = artifact.Unpack(bytes.NewReader(tt.zip), int64(len(tt.zip)), target, testLimits)
			checkErr(t, "Unpack", err, tt.wantCode, tt.wantMsg)
			if after := snapshot(t, parent); !reflect.DeepEqual(after, before) {
				t.Errorf("failed Unpack changed the parent folder:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

func checkErr(t *testing.T, op string, err error, wantCode berth.Code, wantMsg string) {
	t.Helper()
	var be *berth.Error
	if !errors.As(err, &be) {
		t.Fatalf("%s error = %v (%T), want a *berth.Error with code %q", op, err, err, wantCode)
	}
	if be.Code != wantCode {
		t.Errorf("%s error code = %q (%v), want %q", op, be.Code, err, wantCode)
	}
	if !strings.Contains(be.Message, wantMsg) {
		t.Errorf("%s error message = %q, want it to contain %q", op, be.Message, wantMsg)
	}
}

// corruptDeflate builds a package whose deflated entry has damaged data
// (but a central directory that agrees with itself).
func corruptDeflate(t *testing.T) []byte {
	body := strings.Repeat("some compressible text ", 200)
	b := buildZip(t, withMeta("", file("data.txt", body))...)
	// The deflate stream of data.txt follows its local header; scribble
	// over its middle.
	i := bytes.Index(b, []byte("data.txt"))
	if i < 0 {
		t.Fatal("data.txt not found in zip")
	}
	start := i + len("data.txt") + 10
	for j := start; j < start+20; j++ {
		b[j] = 0xff
	}
	return b
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name, config, wantMsg string
	}{
		{"not an object", `["x"]`, "must be a JSON object"},
		{"null", `null`, "must be a JSON object"},
		{"empty", ``, "must be a JSON object"},
		{"syntax", `{"run": [}`, "invalid JSON"},
		{"trailing data", `{"run": ["x"]} {}`, "after the JSON object"},
		{"no run", `{}`, `"run" is required`},
		{"run not a list", `{"run": "./agent"}`, `"run" must be a list of strings`},
		{"run element empty", `{"run": ["./agent", ""]}`, "element 1 is empty"},
		{"run element null", `{"run": [null]}`, "element 0 is empty"},
		{"run element number", `{"run": [1]}`, `"run" must be a list of strings`},
		{"run NUL", `{"run": ["a\u0000b"]}`, "NUL"},
		{"build element empty", `{"run": ["x"], "build": [""]}`, `"build" element 0 is empty`},
		{"health_path relative", `{"run": ["x"], "health_path": "healthz"}`, `"health_path"`},
		{"health_path empty", `{"run": ["x"], "health_path": ""}`, `"health_path"`},
		{"health_path scheme-relative", `{"run": ["x"], "health_path": "//evil.example/x"}`, `"health_path"`},
		{"health_path space", `{"run": ["x"], "health_path": "/a b"}`, "spaces"},
		{"health_path fragment", `{"run": ["x"], "health_path": "/a#b"}`, "not a valid URL path"},
		{"env not an object", `{"run": ["x"], "env": ["A=1"]}`, `"env" must be an object`},
		{"env value number", `{"run": ["x"], "env": {"A": 1}}`, `"env" must be an object`},
		{"env key dash", `{"run": ["x"], "env": {"A-B": "1"}}`, `"A-B" is not valid`},
		{"env key empty", `{"run": ["x"], "env": {"": "1"}}`, `"" is not valid`},
		{"env BERTH_ prefix", `{"run": ["x"], "env": {"BERTH_AGENT_VERSION": "9.9.9"}}`, "set by Berth"},
		{"env NUL value", `{"run": ["x"], "env": {"A": "a\u0000"}}`, "NUL"},
		{"ready_timeout number", `{"run": ["x"], "ready_timeout": 30}`, `"ready_timeout" must be a duration string`},
		{"ready_timeout no unit", `{"run": ["x"], "ready_timeout": "30"}`, "not a duration"},
		{"ready_timeout zero", `{"run": ["x"], "ready_timeout": "0s"}`, "more than 0"},
		{"ready_timeout negative", `{"run": ["x"], "ready_timeout": "-5s"}`, "more than 0"},
		{"ready_timeout too long", `{"run": ["x"], "ready_timeout": "10m1s"}`, "at most 10m0s"},
		{"image not a string", `{"run": ["x"], "image": 5}`, `"image" must be a string`},
		{"image with space", `{"run": ["x"], "image": "a b"}`, `"image"`},
		{"unknown field", `{"run": ["x"], "command": "y"}`, `unknown field "command"`},
		{"field in the wrong case", `{"RUN": ["x"]}`, `unknown field "RUN"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := artifact.ParseConfig([]byte(tt.config))
			if err == nil {
				t.Fatalf("ParseConfig(%s) = %+v, want an error", tt.config, cfg)
			}
			checkErr(t, "ParseConfig", err, berth.CodeInvalid, tt.wantMsg)
			if !strings.HasPrefix(berth.ErrorMessage(err), "berth.json") {
				t.Errorf("ParseConfig(%s) message = %q, want it to name berth.json", tt.config, berth.ErrorMessage(err))
			}
		})
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name   string
		config string
		want   berth.Config
	}{
		{"minimal gets defaults", `{"run": ["./agent"]}`, berth.Config{Run: []string{"./agent"}, HealthPath: berth.DefaultHealthPath}},
		{"everything", "\ufeff" + `{
			"run": ["sh", "-c", "exec ./agent"],
			"build": ["go", "build", "-o", "agent", "."],
			"health_path": "/healthz?deep=1",
			"env": {"LOG_LEVEL": "info", "_X1": ""},
			"ready_timeout": "1m30s",
			"image": "registry.example.com/team/agent:1.2.0"
		}`, berth.Config{
			Run:          []string{"sh", "-c", "exec ./agent"},
			Build:        []string{"go", "build", "-o", "agent", "."},
			HealthPath:   "/healthz?deep=1",
			Env:          map[string]string{"LOG_LEVEL": "info", "_X1": ""},
			ReadyTimeout: berth.Duration(90 * time.Second),
			Image:        "registry.example.com/team/agent:1.2.0",
		}},
		{"empty build and env are none", `{"run": ["a"], "build": [], "env": {}}`, berth.Config{Run: []string{"a"}, HealthPath: berth.DefaultHealthPath}},
		{"nulls are absent", `{"run": ["a"], "build": null, "env": null, "health_path": null, "ready_timeout": null, "image": null}`,
			berth.Config{Run: []string{"a"}, HealthPath: berth.DefaultHealthPath}},
		{"ready_timeout at the maximum", `{"run": ["a"], "ready_timeout": "10m"}`,
			berth.Config{Run: []string{"a"}, HealthPath: berth.DefaultHealthPath, ReadyTimeout: berth.Duration(10 * time.Minute)}},
		{"lowercase port is not PORT", `{"run": ["a"], "env": {"port": "1", "MY_BERTH_X": "2"}}`,
			berth.Config{Run: []string{"a"}, HealthPath: berth.DefaultHealthPath, Env: map[string]string{"port": "1", "MY_BERTH_X": "2"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := artifact.ParseConfig([]byte(tt.config))
			if err != nil {
				t.Fatalf("ParseConfig(%s) = %v, want success", tt.config, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseConfig(%s) = %+v, want %+v", tt.config, got, tt.want)
			}
		})
	}
}

func TestInspectGoodPackages(t *testing.T) {
	tests := []struct {
		name            string
		zip             []byte
		wantName        string
		wantVersion     string
		wantDescription string
		wantConfig      berth.Config
	}{
		{
			name:     "root layout",
			zip:      buildZip(t, withMeta("", exe("bin/agent", "#!/bin/sh\n"), file("README.md", "hi"))...),
			wantName: "support-bot", wantVersion: "1.2.0", wantDescription: "Answers questions.",
			wantConfig: berth.Config{Run: []string{"./bin/agent"}, HealthPath: berth.DefaultHealthPath,
				Env: map[string]string{"LOG_LEVEL": "info"}, ReadyTimeout: berth.Duration(30 * time.Second)},
		},
		{
			name: "single folder with macOS junk",
			zip: buildZip(t, append([]zent{dir("support-bot/")}, withMeta("support-bot/",
				file("support-bot/.DS_Store", "junk"),
				file("__MACOSX/support-bot/._AgentCard.json", "junk"),
				file("support-bot/src/main.py", "print()"))...)...),
			wantName: "support-bot", wantVersion: "1.2.0", wantDescription: "Answers questions.",
			wantConfig: berth.Config{Run: []string{"./bin/agent"}, HealthPath: berth.DefaultHealthPath,
				Env: map[string]string{"LOG_LEVEL": "info"}, ReadyTimeout: berth.Duration(30 * time.Second)},
		},
		{
			name:       "minimal card and config, defaults applied",
			zip:        pkg(t, `{"name": "a"}`, `{"run": ["./a"]}`),
			wantName:   "a",
			wantConfig: berth.Config{Run: []string{"./a"}, HealthPath: berth.DefaultHealthPath},
		},
		{
			name:       "null version and description are absent",
			zip:        pkg(t, `{"name": "a", "version": null, "description": null}`, `{"run": ["./a"]}`),
			wantName:   "a",
			wantConfig: berth.Config{Run: []string{"./a"}, HealthPath: berth.DefaultHealthPath},
		},
		{
			name:       "dot-slash names and a UTF-8 BOM",
			zip:        buildZip(t, file("./AgentCard.json", "\ufeff"+`{"name": "a"}`), file("./berth.json", `{"run": ["./a"]}`), dir("./")),
			wantName:   "a",
			wantConfig: berth.Config{Run: []string{"./a"}, HealthPath: berth.DefaultHealthPath},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := artifact.Inspect(bytes.NewReader(tt.zip), int64(len(tt.zip)), testLimits)
			if err != nil {
				t.Fatalf("Inspect = %v, want success", err)
			}
			if p.Name != tt.wantName || p.Version != tt.wantVersion || p.Description != tt.wantDescription {
				t.Errorf("Inspect = name %q version %q description %q, want %q %q %q", p.Name, p.Version, p.Description, tt.wantName, tt.wantVersion, tt.wantDescription)
			}
			if !reflect.DeepEqual(p.Config, tt.wantConfig) {
				t.Errorf("Inspect config = %+v, want %+v", p.Config, tt.wantConfig)
			}
			sum := sha256.Sum256(tt.zip)
			if p.Digest != hex.EncodeToString(sum[:]) {
				t.Errorf("Inspect digest = %s, want %x", p.Digest, sum)
			}
			var card map[string]any
			if err := json.Unmarshal(p.Card, &card); err != nil || card["name"] != tt.wantName {
				t.Errorf("Inspect card = %s (%v), want the card JSON", p.Card, err)
			}
		})
	}
}

func TestCardKeptAsGiven(t *testing.T) {
	b := pkg(t, goodCard, goodConfig)
	p, err := artifact.Inspect(bytes.NewReader(b), int64(len(b)), testLimits)
	if err != nil {
		t.Fatal(err)
	}
	if string(p.Card) != goodCard {
		t.Errorf("Inspect card = %s, want %s", p.Card, goodCard)
	}
}

func TestZeroLimitsMeanDefaults(t *testing.T) {
	b := buildZip(t, withMeta("", file("big.bin", strings.Repeat("\x00", 600<<10)))...)
	if _, err := artifact.Inspect(bytes.NewReader(b), int64(len(b)), artifact.Limits{}); err != nil {
		t.Errorf("Inspect(600 KiB file, zero limits) = %v, want success under the defaults", err)
	}
}

func TestUnpack(t *testing.T) {
	tests := []struct {
		name string
		zip  []byte
		want map[string]string
	}{
		{
			name: "root layout",
			zip: buildZip(t, withMeta("",
				exe("bin/agent", "#!/bin/sh\necho hi\n"),
				zent{name: "setuid", body: "s", mode: fs.ModeSetuid | 0o4711},
				zent{name: "private", body: "p", mode: 0o600},
				dir("empty/"),
				file("src/lib/util.py", "x = 1\n"))...),
			want: map[string]string{
				"AgentCard.json":  "file -rw-r--r-- " + goodCard,
				"berth.json":      "file -rw-r--r-- " + goodConfig,
				"bin":             "dir -rwxr-xr-x",
				"bin/agent":       "file -rwxr-xr-x #!/bin/sh\necho hi\n",
				"setuid":          "file -rwxr-xr-x s",
				"private":         "file -rw-r--r-- p",
				"empty":           "dir -rwxr-xr-x",
				"src":             "dir -rwxr-xr-x",
				"src/lib":         "dir -rwxr-xr-x",
				"src/lib/util.py": "file -rw-r--r-- x = 1\n",
			},
		},
		{
			name: "single folder layout",
			zip: buildZip(t, append([]zent{dir("agent/")}, withMeta("agent/",
				exe("agent/run.sh", "#!/bin/sh\n"),
				file("agent/.DS_Store", "junk"),
				file("__MACOSX/agent/._run.sh", "junk"),
				dir("agent/data/"))...)...),
			want: map[string]string{
				"AgentCard.json": "file -rw-r--r-- " + goodCard,
				"berth.json":     "file -rw-r--r-- " + goodConfig,
				"run.sh":         "file -rwxr-xr-x #!/bin/sh\n",
				"data":           "dir -rwxr-xr-x",
			},
		},
		{
			name: "single folder without a directory entry",
			zip:  buildZip(t, withMeta("x/", file("x/a/b.txt", "b"))...),
			want: map[string]string{
				"AgentCard.json": "file -rw-r--r-- " + goodCard,
				"berth.json":     "file -rw-r--r-- " + goodConfig,
				"a":              "dir -rwxr-xr-x",
				"a/b.txt":        "file -rw-r--r-- b",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			target := filepath.Join(parent, "v1")
			if err := artifact.Unpack(bytes.NewReader(tt.zip), int64(len(tt.zip)), target, testLimits); err != nil {
				t.Fatalf("Unpack = %v, want success", err)
			}
			if got := readTree(t, target); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("unpacked tree =\n%v\nwant\n%v", got, tt.want)
			}
			fi, err := os.Stat(target)
			if err != nil || fi.Mode().Perm() != 0o755 {
				t.Errorf("target folder mode = %v (%v), want 0755", fi.Mode(), err)
			}
			entries, _ := os.ReadDir(parent)
			if len(entries) != 1 {
				t.Errorf("parent holds %d entries after Unpack, want only the target (no temp folder left)", len(entries))
			}
		})
	}
}

func TestUnpackRefusesExistingTarget(t *testing.T) {
	b := pkg(t, goodCard, goodConfig)
	for _, existing := range []string{"dir", "empty dir", "file"} {
		t.Run(existing, func(t *testing.T) {
			parent := t.TempDir()
			target := filepath.Join(parent, "v1")
			switch existing {
			case "dir":
				os.Mkdir(target, 0o755)
				os.WriteFile(filepath.Join(target, "keep"), []byte("x"), 0o644)
			case "empty dir":
				os.Mkdir(target, 0o755)
			case "file":
				os.WriteFile(target, []byte("x"), 0o644)
			}
			before := snapshot(t, parent)
			err := artifact.Unpack(bytes.NewReader(b), int64(len(b)), target, testLimits)
			if got := berth.ErrorCode(err); got != berth.CodeConflict {
				t.Errorf("Unpack onto existing %s = %v, want code %q", existing, err, berth.CodeConflict)
			}
			if after := snapshot(t, parent); !reflect.DeepEqual(after, before) {
				t.Errorf("Unpack onto existing %s changed it:\nbefore %v\nafter  %v", existing, before, after)
			}
		})
	}
}

func TestUnpackMissingParent(t *testing.T) {
	b := pkg(t, goodCard, goodConfig)
	base := t.TempDir()
	target := filepath.Join(base, "missing", "v1")
	err := artifact.Unpack(bytes.NewReader(b), int64(len(b)), target, testLimits)
	if got := berth.ErrorCode(err); got != berth.CodeInternal {
		t.Errorf("Unpack with a missing parent = %v, want code %q", err, berth.CodeInternal)
	}
	if entries, _ := os.ReadDir(base); len(entries) != 0 {
		t.Errorf("Unpack with a missing parent created %v", entries)
	}
}

func TestZipToTarGzMatchesUnpack(t *testing.T) {
	zips := map[string][]byte{
		"root layout": buildZip(t, withMeta("",
			exe("bin/agent", "#!/bin/sh\n"), dir("empty/"), file("a/b/c.txt", "c"), file(".DS_Store", "junk"))...),
		"single folder": buildZip(t, append([]zent{dir("pkg/")}, withMeta("pkg/",
			exe("pkg/run", "x"), file("__MACOSX/pkg/._run", "junk"), file("pkg/"+strings.Repeat("n", 120), "long name"))...)...),
	}
	for name, b := range zips {
		t.Run(name, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "v")
			if err := artifact.Unpack(bytes.NewReader(b), int64(len(b)), target, testLimits); err != nil {
				t.Fatalf("Unpack = %v", err)
			}
			want := readTree(t, target)

			var out bytes.Buffer
			if err := artifact.ZipToTarGz(&out, bytes.NewReader(b), int64(len(b))); err != nil {
				t.Fatalf("ZipToTarGz = %v", err)
			}
			got := readTarGz(t, out.Bytes())
			if !reflect.DeepEqual(got, want) {
				t.Errorf("tar.gz contents =\n%v\nwant (as unpacked)\n%v", got, want)
			}
		})
	}
}

// readTarGz returns a tree description in readTree's format.
func readTarGz(t *testing.T, b []byte) map[string]string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("gzip: %v", err)
	}
	tr := tar.NewReader(zr)
	m := make(map[string]string)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("tar: %v", err)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if _, dup := m[name]; dup {
			t.Errorf("tar has %q twice", name)
		}
		perm := fs.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			m[name] = "dir " + perm.String()
		case tar.TypeReg:
			body, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("tar entry %q: %v", name, err)
			}
			m[name] = "file " + perm.String() + " " + string(body)
		default:
			m[name] = fmt.Sprintf("other %c", hdr.Typeflag)
		}
	}
	return m
}

func TestZipToTarGzRefusesHostile(t *testing.T) {
	tests := map[string][]byte{
		"zip slip":  buildZip(t, withMeta("", file("../x", "x"))...),
		"symlink":   buildZip(t, withMeta("", zent{name: "l", body: "/", mode: fs.ModeSymlink | 0o777})...),
		"not a zip": []byte("nope"),
		"size lie":  buildZip(t, withMeta("", zent{name: "liar", body: "0123456789", declared: 3})...),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			err := artifact.ZipToTarGz(io.Discard, bytes.NewReader(b), int64(len(b)))
			if got := berth.ErrorCode(err); got != berth.CodeInvalid {
				t.Errorf("ZipToTarGz(%s) = %v, want code %q", name, err, berth.CodeInvalid)
			}
		})
	}
}

func BenchmarkInspect(b *testing.B) {
	ents := withMeta("")
	for i := range 1000 {
		ents = append(ents, file(fmt.Sprintf("src/f%04d.py", i), strings.Repeat("print('hello')\n", 100)))
	}
	z := buildZip(b, ents...)
	lim := artifact.DefaultLimits()
	b.SetBytes(int64(len(z)))
	for b.Loop() {
		if _, err := artifact.Inspect(bytes.NewReader(z), int64(len(z)), lim); err != nil {
			b.Fatal(err)
		}
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestZipToTarGzWriteError(t *testing.T) {
	b := buildZip(t, withMeta("", file("a.txt", strings.Repeat("a", 100<<10)))...)
	err := artifact.ZipToTarGz(failingWriter{}, bytes.NewReader(b), int64(len(b)))
	if got := berth.ErrorCode(err); got != berth.CodeInternal {
		t.Errorf("ZipToTarGz(failing writer) = %v, want code %q", err, berth.CodeInternal)
	}
}
