package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The Quickstart section of README.md marks the commands this test runs:
// the fenced sh block after a quickstartServe marker is the one command
// that runs the server, and the blocks after quickstartRun markers are what
// the user types next, in order, in one shell.
const (
	quickstartServe = "<!-- quickstart:serve -->"
	quickstartRun   = "<!-- quickstart:run -->"
)

// quickstart is the runnable content of README.md's Quickstart section.
type quickstart struct {
	serve string   // the server command
	run   []string // the user's command blocks
}

// parseQuickstart extracts the marked blocks of the "## Quickstart"
// section. A marker not followed by a ```sh block is an error, so a README
// edit cannot silently drop a command from the test.
func parseQuickstart(readme string) (quickstart, error) {
	var qs quickstart
	lines := strings.Split(readme, "\n")
	start := -1
	for i, l := range lines {
		if strings.TrimSpace(l) == "## Quickstart" {
			start = i + 1
			break
		}
	}
	if start < 0 {
		return qs, fmt.Errorf("no \"## Quickstart\" heading")
	}
	for i := start; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		if strings.HasPrefix(l, "## ") {
			break
		}
		if l != quickstartServe && l != quickstartRun {
			continue
		}
		marker := l
		j := i + 1
		for j < len(lines) && strings.TrimSpace(lines[j]) == "" {
			j++
		}
		if j >= len(lines) || strings.TrimSpace(lines[j]) != "```sh" {
			return qs, fmt.Errorf("line %d: %s is not followed by a ```sh block", i+1, marker)
		}
		var block []string
		k := j + 1
		for ; k < len(lines) && strings.TrimSpace(lines[k]) != "```"; k++ {
			block = append(block, lines[k])
		}
		if k >= len(lines) {
			return qs, fmt.Errorf("line %d: unterminated ```sh block", j+1)
		}
		text := strings.TrimSpace(strings.Join(block, "\n"))
		if marker == quickstartServe {
			if qs.serve != "" {
				return qs, fmt.Errorf("line %d: a second %s block", i+1, quickstartServe)
			}
			qs.serve = text
		} else {
			qs.run = append(qs.run, text)
		}
		i = k
	}
	if qs.serve == "" || len(qs.run) == 0 {
		return qs, fmt.Errorf("the Quickstart needs one %s block and at least one %s block", quickstartServe, quickstartRun)
	}
	return qs, nil
}

func TestParseQuickstart(t *testing.T) {
	good := "# X\n## Quickstart\ntext\n" + quickstartServe + "\n\n```sh\nserve it\n```\n" +
		quickstartRun + "\n```sh\na\nb\n```\n```sh\nnot marked\n```\n" + quickstartRun + "\n```sh\nc\n```\n" +
		"## Next\n" + quickstartRun + "\n```sh\nnot in the section\n```\n"
	qs, err := parseQuickstart(good)
	if err != nil || qs.serve != "serve it" || strings.Join(qs.run, "|") != "a\nb|c" {
		t.Errorf("parseQuickstart(good) = %+v, %v, want serve \"serve it\" and runs [a\\nb c]", qs, err)
	}
	bad := []string{
		"no heading",
		"## Quickstart\n" + quickstartServe + "\n```sh\nx\n```\n",                                         // no run block
		"## Quickstart\n" + quickstartRun + "\n```sh\nx\n```\n",                                           // no serve block
		"## Quickstart\n" + quickstartServe + "\n```text\nx\n```\n" + quickstartRun + "\n```sh\nx\n```\n", // not sh
		"## Quickstart\n" + quickstartServe + "\n```sh\nx\n",                                              // unterminated
		"## Quickstart\n" + quickstartServe + "\n```sh\nx\n```\n" + quickstartServe + "\n```sh\ny\n```\n" + quickstartRun + "\n```sh\nx\n```\n",
	}
	for _, in := range bad {
		if _, err := parseQuickstart(in); err == nil {
			t.Errorf("parseQuickstart(%q) = nil error, want one", in)
		}
	}
}

// goEnv returns the go command's settings that depend on HOME, so that a
// user with a fresh HOME still finds the build and module caches.
func goEnv(t *testing.T) []string {
	t.Helper()
	keys := []string{"GOCACHE", "GOMODCACHE", "GOPATH", "GOENV", "GOFLAGS", "GOPROXY", "GOTOOLCHAIN", "GONOSUMDB", "GOPRIVATE"}
	out, err := exec.Command("go", append([]string{"env", "-json"}, keys...)...).Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	var m map[string]string
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, k := range keys {
		if m[k] != "" {
			env = append(env, k+"="+m[k])
		}
	}
	return env
}

// TestReadmeQuickstart runs README.md's Quickstart as a new user would: the
// server command (with the binary TestMain built in place of `go run
// ./cmd/berth`, on a free port and a temp data dir), then the user's
// commands in one shell with a fresh HOME, from the repository root.
func TestReadmeQuickstart(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"sh", "curl", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the quickstart needs %s: %v", tool, err)
		}
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	qs, err := parseQuickstart(string(readme))
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}

	const goRun = "go run ./cmd/berth "
	if !strings.HasPrefix(qs.serve, goRun+"serve") || strings.ContainsAny(qs.serve, "'\"\\$\n") {
		t.Fatalf("README.md's server command is %q, want one plain line starting with %q", qs.serve, goRun+"serve")
	}
	srv := startServerCmd(t, exec.Command(berthBin, strings.Fields(strings.TrimPrefix(qs.serve, goRun))...), root)

	home := t.TempDir()
	gobin := filepath.Join(home, "go-bin")
	script := "set -ex\n" + strings.Join(qs.run, "\n")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	cmd.Dir = root
	cmd.Env = append(goEnv(t),
		"HOME="+home,
		"PATH="+gobin+string(os.PathListSeparator)+os.Getenv("PATH"),
		"GOBIN="+gobin,
		"BERTH_SERVER="+srv.URL,
		"BERTH_DATA_DIR="+srv.DataDir,
	)
	if v := os.Getenv("TMPDIR"); v != "" {
		cmd.Env = append(cmd.Env, "TMPDIR="+v)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	out := stdout.String()
	if err != nil {
		t.Fatalf("the Quickstart failed: %v\nstdout:\n%s\nstderr (commands and progress):\n%s", err, out, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(gobin, "berth")); err != nil {
		t.Errorf("the Quickstart's go install did not install berth: %v", err)
	}
	if _, err := os.Stat(filepath.Join(home, ".config", "berth", "config.json")); err != nil {
		t.Errorf("the Quickstart's login did not store a config: %v", err)
	}

	for _, want := range []string{
		"live      echo-agent 1.0.0 at " + srv.URL + "/agents/echo-agent/",
		"echo (v1.0.0): hello [hello]",
		"live      echo-agent 1.1.0 at ",
		"would roll back echo-agent 1.1.0 → 1.0.0",
		"rolled back echo-agent 1.1.0 → 1.0.0 in ",
		"by admin → 1.0.0",
		"rollback  succeeded  admin",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the Quickstart's output does not contain %q:\n%s", want, out)
		}
	}
	// The reason shows in both the version timeline and the audit trail.
	if n := strings.Count(out, "1.1.0 greets users in the wrong language"); n < 2 {
		t.Errorf("the rollback reason appears %d times in the Quickstart's output, want it in versions and ops:\n%s", n, out)
	}
	// whoami through the proxy: the first deploy, the second, then the
	// rollback.
	var seen []string
	for _, m := range regexp.MustCompile(`"name":"echo-agent","version":"([0-9.]+)"`).FindAllStringSubmatch(out, -1) {
		seen = append(seen, m[1])
	}
	if got := strings.Join(seen, " "); got != "1.0.0 1.1.0 1.0.0" {
		t.Errorf("whoami through the proxy answered versions %q, want \"1.0.0 1.1.0 1.0.0\"", got)
	}

	checkReadmeReferences(t, string(readme), root, srv.URL)
}

// checkReadmeReferences checks what else in README.md can rot: the test
// command, the links into docs/api.md, and the route table against the
// routes the server serves.
func checkReadmeReferences(t *testing.T, readme, root, serverURL string) {
	t.Helper()
	if !strings.Contains(readme, "```sh\ngo test -race ./...\n```") {
		t.Errorf("README.md does not state the test command `go test -race ./...` in its own sh block")
	}

	api, err := os.ReadFile(filepath.Join(root, "docs", "api.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, l := range strings.Split(string(api), "\n") {
		if strings.HasPrefix(l, "#") {
			anchors[githubAnchor(strings.TrimLeft(l, "# "))] = true
		}
	}
	for _, m := range regexp.MustCompile(`docs/api\.md#([a-z0-9-]+)`).FindAllStringSubmatch(readme, -1) {
		if !anchors[m[1]] {
			t.Errorf("README.md links to docs/api.md#%s, which has no such heading", m[1])
		}
	}

	resp, err := http.Get(serverURL + "/api/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if len(doc.Paths) == 0 {
		t.Fatal("openapi.json lists no paths")
	}
	for path, methods := range doc.Paths {
		for method := range methods {
			route := "`" + strings.ToUpper(method) + " " + path + "`"
			if !strings.Contains(readme, route) {
				t.Errorf("README.md's route table lacks %s", route)
			}
		}
	}
}

// githubAnchor is the anchor GitHub gives a heading.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}
