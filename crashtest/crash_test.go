// Package crashtest kills a real `berth serve` process with SIGKILL in the
// middle of updates and rollbacks and checks what the store and the proxy
// say after it restarts.
package crashtest

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/berthtest"
)

var rounds = flag.Int("crash.rounds", 6, "kill -9 rounds per test (the long mode uses 20 or more)")

var berthBin string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "berth-crashtest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	root, err := berthtest.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	berthBin = filepath.Join(dir, "berth")
	build := exec.Command("go", "build", "-o", berthBin, "./cmd/berth")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build berth:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const (
	adminKey    = "bk_crashtestadminkey"
	adminSecret = "crash-test-admin-secret-0123456789"
)

// proc is one `berth serve` process.
type proc struct {
	t       *testing.T
	cmd     *exec.Cmd
	url     string
	token   string
	logPath string
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// serve starts berth serve on dataDir and waits until it answers.
func serve(t *testing.T, dataDir, addr string) *proc {
	t.Helper()
	logPath := filepath.Join(dataDir, fmt.Sprintf("serve-%d.log", time.Now().UnixNano()))
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(berthBin, "serve", "--addr", addr, "--data-dir", dataDir, "--stop-timeout", "2s", "--rollback-grace", "30s")
	cmd.Env = append(os.Environ(), "BERTH_ADMIN_ACCESS_KEY="+adminKey, "BERTH_ADMIN_ACCESS_SECRET="+adminSecret)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, url: "http://" + addr, logPath: logPath}
	t.Cleanup(func() { p.kill() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(p.url + "/api/v1/healthcheck")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("berth serve did not come up:\n%s", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var login struct{ Token string }
	p.call("POST", "/auth/users/login", fmt.Sprintf(`{"access_key":%q,"access_secret":%q}`, adminKey, adminSecret), &login, 200)
	p.token = login.Token
	return p
}

// kill sends SIGKILL and reaps the process.
func (p *proc) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.cmd.Wait()
}

func (p *proc) request(method, path string, body io.Reader, contentType string) (int, []byte, error) {
	req, err := http.NewRequest(method, p.url+path, body)
	if err != nil {
		return 0, nil, err
	}
	if p.token != "" {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// call makes a JSON call and requires status want.
func (p *proc) call(method, path, body string, out any, want int) {
	p.t.Helper()
	st, b, err := p.request(method, path, strings.NewReader(body), "application/json")
	if err != nil || st != want {
		p.t.Fatalf("%s %s = %d %s %v, want %d", method, path, st, b, err, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			p.t.Fatalf("decode %s: %v", b, err)
		}
	}
}

func deployBody(t *testing.T, zip []byte, fields map[string]string) (io.Reader, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for k, v := range fields {
		mw.WriteField(k, v)
	}
	fw, _ := mw.CreateFormFile("file", "agent.zip")
	fw.Write(zip)
	mw.Close()
	return &buf, mw.FormDataContentType()
}

type history struct {
	CurrentVersion string `json:"current_version"`
	Versions       []struct {
		Version string `json:"version"`
		Status  string `json:"status"`
	} `json:"versions"`
}

// check asserts the crash invariants on a freshly restarted server: exactly
// one active version, which the proxy serves; no operation left running.
func check(t *testing.T, p *proc, agent string) history {
	t.Helper()
	var h history
	p.call("GET", "/api/v1/agents/"+agent+"/versions?limit=500", "", &h, 200)
	active := 0
	for _, v := range h.Versions {
		if v.Status == "active" {
			active++
			if v.Version != h.CurrentVersion {
				t.Errorf("active version %s is not current_version %s", v.Version, h.CurrentVersion)
			}
		}
		if v.Status == "building" {
			t.Errorf("version %s is still building after restart; an interrupted build must be failed", v.Version)
		}
	}
	if active != 1 {
		t.Fatalf("%d active versions after restart, want exactly 1: %+v", active, h.Versions)
	}
	// The proxy serves the active version (it may take a moment to start).
	var w berthtest.Whoami
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		w, err = berthtest.GetWhoami(context.Background(), p.url+"/agents/"+agent)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(p.logPath)
			t.Fatalf("agent not served after restart: %v\n%s", err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if w.Version != h.CurrentVersion {
		t.Errorf("proxy serves %s, store says %s", w.Version, h.CurrentVersion)
	}
	var ops struct {
		Data []struct {
			ID, Status, Kind string
		} `json:"data"`
	}
	p.call("GET", "/api/v1/agents/"+agent+"/operations?limit=1000", "", &ops, 200)
	for _, op := range ops.Data {
		if op.Status == "running" {
			t.Errorf("operation %s (%s) still running after restart", op.ID, op.Kind)
		}
	}
	return h
}

// TestKillDuringRollbackAndUpdate kills berth serve with SIGKILL at random
// moments while rollbacks and updates run, restarts it on the same data
// dir, and checks the invariants each time.
func TestKillDuringRollbackAndUpdate(t *testing.T) {
	dataDir := t.TempDir()
	addr := freeAddr(t)
	p := serve(t, dataDir, addr)
	deploy := func(method, path, version string) (int, []byte, error) {
		body, ct := deployBody(t, berthtest.EchoPackage(t, berthtest.PackageOptions{Name: "crashy", Version: version}),
			map[string]string{"update_strategy": "blue-green"})
		if method == "POST" {
			body, ct = deployBody(t, berthtest.EchoPackage(t, berthtest.PackageOptions{Name: "crashy", Version: version}), nil)
		}
		return p.request(method, path, body, ct)
	}
	if st, b, err := deploy("POST", "/api/v1/agents/upload?wait=true", "1.0.0"); err != nil || st != 200 {
		t.Fatalf("upload = %d %s %v", st, b, err)
	}
	if st, b, err := deploy("PUT", "/api/v1/agents/crashy/update?wait=true", "1.1.0"); err != nil || st != 200 {
		t.Fatalf("update = %d %s %v", st, b, err)
	}
	next := 2
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for round := range *rounds {
		// Fire operations in the background and kill the server at a random
		// moment among them.
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; ; i++ {
				var st int
				var err error
				if i%4 == 3 {
					st, _, err = deploy("PUT", "/api/v1/agents/crashy/update?wait=true", fmt.Sprintf("1.%d.0", next))
					next++
				} else {
					st, _, err = p.request("POST", "/api/v1/agents/crashy/rollback", strings.NewReader(`{"reason":"chaos"}`), "application/json")
					if err == nil && st == 409 {
						// Nothing good left behind: go forward explicitly.
						st, _, err = p.request("POST", "/api/v1/agents/crashy/rollback", strings.NewReader(`{"target_version":"1.1.0"}`), "application/json")
					}
				}
				if err != nil {
					return // the server died
				}
			}
		}()
		time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
		p.kill()
		<-done
		p = serve(t, dataDir, addr)
		h := check(t, p, "crashy")
		// The next operation works.
		st, b, err := p.request("POST", "/api/v1/agents/crashy/rollback", strings.NewReader(`{"target_version":"1.0.0"}`), "application/json")
		if h.CurrentVersion == "1.0.0" {
			st, b, err = p.request("POST", "/api/v1/agents/crashy/rollback", strings.NewReader(`{"target_version":"1.1.0"}`), "application/json")
		}
		if err != nil || st != 200 {
			t.Fatalf("round %d: rollback after restart = %d %s %v", round, st, b, err)
		}
		t.Logf("round %d: restarted serving %s; next rollback ok", round, h.CurrentVersion)
	}
}

// TestKillLeavesNoOrphans checks that agent processes die with the server
// even on SIGKILL, so that no orphan holds a port.
func TestKillLeavesNoOrphans(t *testing.T) {
	dataDir := t.TempDir()
	p := serve(t, dataDir, freeAddr(t))
	body, ct := deployBody(t, berthtest.EchoPackage(t, berthtest.PackageOptions{Name: "orphan", Version: "1.0.0"}), nil)
	if st, b, err := p.request("POST", "/api/v1/agents/upload?wait=true", body, ct); err != nil || st != 200 {
		t.Fatalf("upload = %d %s %v", st, b, err)
	}
	var deps struct {
		Data []struct {
			ServiceURL *string `json:"service_url"`
		} `json:"data"`
	}
	p.call("GET", "/api/v1/agents/orphan/deployments", "", &deps, 200)
	if len(deps.Data) == 0 || deps.Data[0].ServiceURL == nil {
		t.Fatalf("no deployment URL")
	}
	direct := *deps.Data[0].ServiceURL
	if _, err := berthtest.GetWhoami(context.Background(), direct); err != nil {
		t.Fatalf("agent not answering directly before the kill: %v", err)
	}
	p.kill()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := berthtest.GetWhoami(context.Background(), direct); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent at %s still answers 10 s after berth serve was killed: an orphan", direct)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
