package main

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestParseIgnoreRefusesUnsupported(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string
	}{
		{"!keep.txt", "negation"},
		{"a/**/b", "** is not supported"},
		{"**", "** is not supported"},
		{"[", "bad pattern"},
	}
	for _, tt := range tests {
		_, err := parseIgnore(strings.NewReader(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("parseIgnore(%q) = %v, want an error containing %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestIgnored(t *testing.T) {
	rules, err := parseIgnore(strings.NewReader(`
# comment
*.log
node_modules
build/
/secrets.json
docs/*.md
   
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path  string
		isDir bool
		want  bool
	}{
		{"app.log", false, true},
		{"deep/in/app.log", false, true},
		{"app.logger", false, false},
		{"node_modules", true, true},
		{"web/node_modules", true, true},
		{"build", true, true},
		{"sub/build", true, true},
		{"build", false, false}, // a file named build: build/ is for folders
		{"secrets.json", false, true},
		{"sub/secrets.json", false, false}, // anchored at the root
		{"docs/a.md", false, true},
		{"docs/sub/a.md", false, false},
		{"main.go", false, false},
		{"# comment", false, false},
	}
	for _, tt := range tests {
		if got := rules.ignored(tt.path, tt.isDir); got != tt.want {
			t.Errorf("ignored(%q, dir=%v) = %v, want %v", tt.path, tt.isDir, got, tt.want)
		}
	}
}

func TestPackDir(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		".berthignore":   "*.tmp\ncache/\n",
		"main.sh":        "#!/bin/sh\necho hi\n",
		"lib/util.sh":    "x",
		"lib/junk.tmp":   "x",
		"cache/a":        "x",
		".git/config":    "x",
		"empty/.keep":    "",
		"AgentCard.json": `{"name":"x"}`,
	}
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if name == "main.sh" {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	st, err := packDir(dir, &buf)
	if err != nil {
		t.Fatalf("packDir = %v", err)
	}
	zr, err := zip.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	modes := map[string]os.FileMode{}
	for _, f := range zr.File {
		names = append(names, f.Name)
		modes[f.Name] = f.Mode()
	}
	sort.Strings(names)
	want := []string{".berthignore", "AgentCard.json", "empty/", "empty/.keep", "lib/", "lib/util.sh", "main.sh"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("packDir zipped %v, want %v", names, want)
	}
	if modes["main.sh"].Perm()&0o100 == 0 {
		t.Errorf("main.sh mode %v in the zip, want it executable", modes["main.sh"])
	}
	if st.Files != 5 || st.Ignored != 3 {
		t.Errorf("packDir stats = %+v, want 5 files and 3 left out", st)
	}
}

func TestTokenExpiry(t *testing.T) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		token  string
		want   int64
		wantOK bool
	}{
		{"h." + enc(`{"exp":1700000000}`) + ".s", 1700000000, true},
		{"h." + enc(`{"sub":"x"}`) + ".s", 0, false},
		{"h.!!!.s", 0, false},
		{"not-a-jwt", 0, false},
	}
	for _, tt := range tests {
		got, ok := tokenExpiry(tt.token)
		if ok != tt.wantOK || (ok && got.Unix() != tt.want) {
			t.Errorf("tokenExpiry(%q) = %v, %v, want %v, %v", tt.token, got, ok, time.Unix(tt.want, 0), tt.wantOK)
		}
	}
}

func TestFormatting(t *testing.T) {
	sizes := []struct {
		n    int64
		want string
	}{
		{0, "0 bytes"},
		{1023, "1023 bytes"},
		{1536, "1.5 KiB (1536 bytes)"},
		{5 << 20, "5.0 MiB (5242880 bytes)"},
	}
	for _, tt := range sizes {
		if got := humanBytes(tt.n); got != tt.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
	argv := []string{"sh", "-c", "go build -o bin/x . && echo 'ok'", ""}
	if got, want := shellJoin(argv), `sh -c 'go build -o bin/x . && echo '\''ok'\''' ''`; got != want {
		t.Errorf("shellJoin(%q) = %s, want %s", argv, got, want)
	}
	if got := strings.Join(lastLines("a\nb\nc\n", 2), ","); got != "b,c" {
		t.Errorf("lastLines(a b c, 2) = %q, want b,c", got)
	}
	if got := oneLine("first\nsecond", 80); got != "first …" {
		t.Errorf("oneLine(two lines) = %q", got)
	}
	if got := oneLine("abcdef", 4); got != "abc…" {
		t.Errorf("oneLine(abcdef, 4) = %q, want abc…", got)
	}
}

// tarNames returns the file names in a tar.gz.
func tarNames(t *testing.T, b []byte) map[string]bool {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not gzip: %v", err)
	}
	tr := tar.NewReader(zr)
	names := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatalf("not a tar: %v", err)
		}
		names[strings.TrimPrefix(h.Name, "./")] = true
	}
}
