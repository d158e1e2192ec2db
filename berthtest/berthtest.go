// Package berthtest holds helpers for Berth's tests: building the example
// echo agent, making agent packages (zips) and running the agent.
package berthtest

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// echoAgentPkg is the example agent's import path relative to the module
// root.
const echoAgentPkg = "examples/echo-agent"

var (
	echoOnce sync.Once
	echoPath string
	echoErr  error
)

// EchoAgentBinary builds ./examples/echo-agent once per test process and
// returns the path of the binary.
//
// The binary is kept in the user's cache directory under a name derived
// from the agent's sources and the Go version, so test processes for
// different packages share one build and nothing piles up in the temporary
// directory; if there is no cache directory, a temporary one is used.
func EchoAgentBinary(tb testing.TB) string {
	tb.Helper()
	echoOnce.Do(func() { echoPath, echoErr = buildEchoAgent() })
	if echoErr != nil {
		tb.Fatalf("building the echo agent: %v", echoErr)
	}
	return echoPath
}

func buildEchoAgent() (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	src := filepath.Join(root, filepath.FromSlash(echoAgentPkg))
	key, err := sourceKey(src)
	if err != nil {
		return "", err
	}
	dir, err := cacheDir(key)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "echo-agent")
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() {
		return bin, nil
	}

	// Build next to the final path and rename, so that a concurrent test
	// process never executes a half-written binary.
	tmp, err := os.CreateTemp(dir, "echo-agent.build-*")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", tmp.Name(), "./"+echoAgentPkg)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./%s: %v\n%s", echoAgentPkg, err, out)
	}
	if err := os.Chmod(tmp.Name(), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), bin); err != nil {
		return "", err
	}
	return bin, nil
}

// sourceKey hashes the agent's non-test Go files and the toolchain, which
// is everything its binary depends on (it imports only the standard
// library).
func sourceKey(src string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	entries, err := os.ReadDir(src)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasSuffix(name, "_test.go") || !(strings.HasSuffix(name, ".go") || name == "AgentCard.json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func cacheDir(key string) (string, error) {
	if base, err := os.UserCacheDir(); err == nil {
		dir := filepath.Join(base, "berth-test", "echo-agent-"+key)
		if err := os.MkdirAll(dir, 0o755); err == nil {
			return dir, nil
		}
	}
	return os.MkdirTemp("", "berthtest-echo-agent-")
}

// ModuleRoot returns the directory of Berth's go.mod, found by walking up
// from the working directory (a test's package directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod found above the working directory")
		}
		dir = parent
	}
}

// EchoAgentDir returns the example agent's source folder.
func EchoAgentDir(tb testing.TB) string {
	tb.Helper()
	root, err := ModuleRoot()
	if err != nil {
		tb.Fatal(err)
	}
	return filepath.Join(root, filepath.FromSlash(echoAgentPkg))
}

// Zip returns a zip holding files (name → contents). Names ending in "/"
// are directories. Entries are written in name order.
func Zip(tb testing.TB, files map[string]string) []byte {
	tb.Helper()
	return ZipWithModes(tb, files, nil)
}

// ZipWithModes is Zip with file modes: modes[name] (such as 0o755 for an
// executable) is recorded for that entry; others get 0o644, or 0o755 and
// fs.ModeDir for directories. Large files are stored uncompressed to keep
// tests fast.
func ZipWithModes(tb testing.TB, files map[string]string, modes map[string]fs.FileMode) []byte {
	tb.Helper()
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)

	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, name := range names {
		hdr := &zip.FileHeader{Name: name, Method: zip.Deflate, Modified: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
		mode, ok := modes[name]
		switch {
		case strings.HasSuffix(name, "/"):
			hdr.Method = zip.Store
			if !ok {
				mode = 0o755
			}
			mode |= fs.ModeDir
		case !ok:
			mode = 0o644
		}
		hdr.SetMode(mode)
		if len(files[name]) > 1<<20 {
			hdr.Method = zip.Store
		}
		w, err := zw.CreateHeader(hdr)
		if err != nil {
			tb.Fatalf("zip entry %q: %v", name, err)
		}
		if _, err := io.WriteString(w, files[name]); err != nil {
			tb.Fatalf("zip entry %q: %v", name, err)
		}
	}
	if err := zw.Close(); err != nil {
		tb.Fatalf("closing zip: %v", err)
	}
	return buf.Bytes()
}

// ZipDir returns a zip of the files under dir, with paths relative to dir
// and executable bits kept, as a user would upload a folder.
func ZipDir(tb testing.TB, dir string) []byte {
	tb.Helper()
	files := make(map[string]string)
	modes := make(map[string]fs.FileMode)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			files[rel+"/"] = ""
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file", p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		files[rel] = string(b)
		modes[rel] = fi.Mode().Perm()
		return nil
	})
	if err != nil {
		tb.Fatalf("zipping %s: %v", dir, err)
	}
	return ZipWithModes(tb, files, modes)
}

// PackageOptions describes a package made by EchoPackage. Zero fields take
// the defaults noted.
type PackageOptions struct {
	// Name is the card's name; default "echo-agent".
	Name string
	// Version is the card's version; default none (the server picks one).
	Version string
	// Env is berth.json's env; default none.
	Env map[string]string
	// Run is berth.json's run; default ["./echo-agent"].
	Run []string
	// Build is berth.json's build; default none.
	Build []string
	// HealthPath is berth.json's health_path; default none (the agent card
	// path, which the echo agent serves).
	HealthPath string
	// ReadyTimeout is berth.json's ready_timeout, such as "10s"; default
	// none.
	ReadyTimeout string
	// ExtraFiles are added to the package (name → contents); an entry named
	// AgentCard.json or berth.json replaces the generated one.
	ExtraFiles map[string]string
}

// EchoPackage returns an agent package (zip) holding AgentCard.json,
// berth.json and the prebuilt echo agent at "echo-agent" (executable), so
// deploying it needs no build step.
func EchoPackage(tb testing.TB, o PackageOptions) []byte {
	tb.Helper()
	bin, err := os.ReadFile(EchoAgentBinary(tb))
	if err != nil {
		tb.Fatalf("reading the echo agent binary: %v", err)
	}
	card := map[string]any{
		"name":        "echo-agent",
		"description": "Echoes messages back (Berth test package).",
		"skills":      []map[string]any{{"id": "echo", "name": "Echo", "description": "Echoes the message text."}},
	}
	if o.Name != "" {
		card["name"] = o.Name
	}
	if o.Version != "" {
		card["version"] = o.Version
	}
	cfg := map[string]any{"run": []string{"./echo-agent"}}
	if o.Run != nil {
		cfg["run"] = o.Run
	}
	if o.Build != nil {
		cfg["build"] = o.Build
	}
	if o.HealthPath != "" {
		cfg["health_path"] = o.HealthPath
	}
	if o.Env != nil {
		cfg["env"] = o.Env
	}
	if o.ReadyTimeout != "" {
		cfg["ready_timeout"] = o.ReadyTimeout
	}
	files := map[string]string{
		"AgentCard.json": mustJSON(tb, card),
		"berth.json":     mustJSON(tb, cfg),
		"echo-agent":     string(bin),
	}
	for name, body := range o.ExtraFiles {
		files[name] = body
	}
	return ZipWithModes(tb, files, map[string]fs.FileMode{"echo-agent": 0o755})
}

func mustJSON(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		tb.Fatalf("encoding JSON: %v", err)
	}
	return string(b)
}

// Whoami is the echo agent's GET /whoami answer.
type Whoami struct {
	Name         string `json:"name"`
	Version      string `json:"version"`
	AgentID      string `json:"agent_id"`
	DeploymentID string `json:"deployment_id"`
	Greeting     string `json:"greeting"`
	PID          int    `json:"pid"`
}

// GetWhoami asks the echo agent at baseURL (such as http://127.0.0.1:1234
// or a proxy's http://host/agents/name) who it is.
func GetWhoami(ctx context.Context, baseURL string) (Whoami, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(baseURL, "/")+"/whoami", nil)
	if err != nil {
		return Whoami{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Whoami{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return Whoami{}, fmt.Errorf("GET /whoami: %s: %s", resp.Status, b)
	}
	var w Whoami
	if err := json.NewDecoder(resp.Body).Decode(&w); err != nil {
		return Whoami{}, fmt.Errorf("GET /whoami: %v", err)
	}
	return w, nil
}

// RunEchoAgent starts the echo agent binary on a free local port with env
// added to the test's environment, waits until it answers /whoami, and
// returns its base URL. The agent is stopped with SIGTERM when the test
// ends.
func RunEchoAgent(tb testing.TB, env map[string]string) string {
	tb.Helper()
	port, err := FreePort()
	if err != nil {
		tb.Fatalf("finding a free port: %v", err)
	}
	cmd := exec.Command(EchoAgentBinary(tb))
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port))
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting the echo agent: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if _, err := GetWhoami(ctx, url); err == nil {
			return url
		}
		select {
		case err := <-exited:
			tb.Fatalf("echo agent exited before answering: %v\n%s", err, logs.String())
		case <-ctx.Done():
			tb.Fatalf("echo agent did not answer /whoami on %s:\n%s", url, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// syncBuffer is a bytes.Buffer safe to read while a process writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// EchoAgentSourceZip returns the example agent's source folder zipped as a
// user would upload it: AgentCard.json, berth.json and the Go sources,
// without tests or build output. Deploying it runs berth.json's build
// command, which needs the go tool.
func EchoAgentSourceZip(tb testing.TB) []byte {
	tb.Helper()
	dir := EchoAgentDir(tb)
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatalf("reading %s: %v", dir, err)
	}
	files := make(map[string]string)
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || strings.HasSuffix(name, "_test.go") ||
			!(strings.HasSuffix(name, ".go") || strings.HasSuffix(name, ".json")) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			tb.Fatalf("reading %s: %v", name, err)
		}
		files[name] = string(b)
	}
	return Zip(tb, files)
}
