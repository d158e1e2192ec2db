package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/berthtest"
	"github.com/berthhq/berth/server"
)

// An agent process that dies while active is restarted, the deployment
// says so, and the proxy serves again.
func TestCrashedAgentIsRestarted(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	ts.upload(ts.Admin, echo(t, "phoenix", "1.0.0", nil))
	before := ts.whoami("phoenix")
	if err := syscall.Kill(before.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill agent: %v", err)
	}
	waitFor(t, "the agent to come back", 20*time.Second, func() bool {
		w, err := berthtest.GetWhoami(context.Background(), ts.URL+"/agents/phoenix")
		return err == nil && w.PID != before.PID
	})
	after := ts.whoami("phoenix")
	if after.DeploymentID != before.DeploymentID || after.Version != "1.0.0" {
		t.Errorf("after restart %+v, want the same deployment of 1.0.0 (%s)", after, before.DeploymentID)
	}
	var st, restarts any
	waitFor(t, "the deployment record to show the restart", 10*time.Second, func() bool {
		_, b := ts.do("GET", "/api/v1/agents/phoenix/deployments", ts.Admin, nil, "", nil)
		var r struct{ Data []map[string]any }
		mustJSON(t, b, &r)
		st, restarts = r.Data[0]["status"], r.Data[0]["restarts"]
		return st == "running" && restarts != float64(0)
	})
}

// An agent dying mid-request gets a prompt 502 with the API's error body,
// never a hang.
func TestAgentDiesMidRequest(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	ts.upload(ts.Admin, echo(t, "fragile-mid", "1.0.0", nil))
	pid := ts.whoami("fragile-mid").PID
	go func() {
		time.Sleep(300 * time.Millisecond)
		syscall.Kill(pid, syscall.SIGKILL)
	}()
	client := &http.Client{Timeout: 20 * time.Second}
	start := time.Now()
	resp, err := client.Get(ts.URL + "/agents/fragile-mid/slow?ms=10000")
	if err != nil {
		t.Fatalf("request through the proxy failed at the transport level: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e errorBody
	_ = json.Unmarshal(b, &e)
	if resp.StatusCode != http.StatusBadGateway || e.Code != "bad_gateway" || e.Message == "" {
		t.Errorf("request to a dying agent = %d %s, want 502 bad_gateway", resp.StatusCode, b)
	}
	if d := time.Since(start); d > 9*time.Second {
		t.Errorf("502 took %v: the proxy waited for the request's own end", d)
	}
}

// Oversized and abusive requests are refused without harm.
func TestRequestLimits(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	ts.upload(ts.Admin, echo(t, "limits", "1.0.0", nil))
	huge := `{"reason":"` + strings.Repeat("x", 2<<20) + `"}`
	st, b := ts.rollbackRaw(ts.Admin, "limits", huge, "", nil)
	var e errorBody
	mustJSON(t, b, &e)
	if st != http.StatusRequestEntityTooLarge || e.Code != "too_large" {
		t.Errorf("2 MiB rollback body = %d %s, want 413 too_large", st, b)
	}
	if v := ts.history(ts.Admin, "limits").CurrentVersion; v != "1.0.0" {
		t.Errorf("current = %s after refused requests", v)
	}
	// Many concurrent API calls all answer.
	var wg sync.WaitGroup
	errs := make(chan string, 1000)
	for range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", ts.URL+"/api/v1/agents/limits/versions", nil)
			req.Header.Set("Authorization", "Bearer "+ts.Admin)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err.Error()
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				errs <- resp.Status
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for e := range errs {
		if n < 5 {
			t.Errorf("concurrent request failed: %s", e)
		}
		n++
	}
	if n > 0 {
		t.Errorf("%d of 1000 concurrent requests failed", n)
	}
}

// BenchmarkUploadToServing measures an upload (?wait=true) of a small
// package until the proxy answers from the new agent.
func BenchmarkUploadToServing(b *testing.B) {
	ts := startServer(b, "")
	zips := make([][]byte, b.N)
	for i := range zips {
		zips[i] = echo(b, fmt.Sprintf("bench-up-%d", i), "1.0.0", nil)
	}
	b.ResetTimer()
	for i := range b.N {
		ts.upload(ts.Admin, zips[i])
		if _, err := berthtest.GetWhoami(context.Background(), ts.URL+fmt.Sprintf("/agents/bench-up-%d", i)); err != nil {
			b.Fatal(err)
		}
	}
}

// diskFullDir mounts a small tmpfs for a data directory, or skips where
// mounting is not allowed (not root, no CAP_SYS_ADMIN).
func diskFullDir(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill up (%v: %s); run as root to test a full disk", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// A full disk during upload answers 507, and nothing half-written stays.
func TestDiskFullDuringUpload(t *testing.T) {
	if os.Getenv("BERTH_TEST_DATABASE_URL") != "" {
		t.Skip("the disk-full case is about the embedded default's data dir")
	}
	t.Parallel()
	// Room for the store and one copy of the package, not for unpacking it.
	dir := diskFullDir(t, "9m")
	ts := startServer(t, dir)
	zip := echo(t, "full", "1.0.0", nil) // about 6 MB: the echo binary
	st, b := ts.uploadRaw(ts.Admin, zip, nil, "?wait=true")
	var e errorBody
	mustJSON(t, b, &e)
	if st != http.StatusInsufficientStorage || e.Code != "insufficient_storage" {
		t.Fatalf("upload onto a full disk = %d %s, want 507 insufficient_storage", st, b)
	}
	// Nothing half-written: no package, no unpacked version, no spooled
	// upload; the version, if recorded, is failed, and nothing serves.
	for _, sub := range []string{"packages", "versions", "tmp"} {
		var files []string
		filepath.WalkDir(filepath.Join(dir, sub), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				files = append(files, p)
			}
			return nil
		})
		if len(files) > 0 {
			t.Errorf("after the failed upload %s holds %v", sub, files)
		}
	}
	h := ts.history(ts.Admin, "full")
	if h.CurrentVersion != "" {
		t.Errorf("current version = %q after a failed upload", h.CurrentVersion)
	}
	for _, v := range h.Versions {
		if v.Status != "failed" {
			t.Errorf("version %s is %s after a failed upload, want failed", v.Version, v.Status)
		}
	}
	for _, op := range ts.operations(ts.Admin, "full") {
		if op.Status == "running" {
			t.Errorf("operation %s still running", op.ID)
		}
	}
	// A bigger upload than the space left fails while spooling: 507 too.
	big := echo(t, "huge", "1.0.0", map[string]string{"PAD": strings.Repeat("x", 1)})
	big = append(big, make([]byte, 12<<20)...) // trailing bytes: still spooled first
	st, b = ts.uploadRaw(ts.Admin, big, nil, "?wait=true")
	mustJSON(t, b, &e)
	if st != http.StatusInsufficientStorage {
		t.Errorf("upload larger than the free space = %d %s, want 507", st, b)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(entries) > 0 {
		t.Errorf("spooled upload left in tmp: %v", entries)
	}
}

// A slow client that never finishes its headers is cut off after the
// header timeout, and others are served meanwhile.
func TestSlowClientIsCutOff(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", func(c *server.Config) { c.ReadHeaderTimeout = 300 * time.Millisecond })
	conns := make([]net.Conn, 20)
	for i := range conns {
		c, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A request line and one header, then nothing: slowloris.
		if _, err := c.Write([]byte("GET /api/v1/healthcheck HTTP/1.1\r\nHost: x\r\n")); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	// The server still answers others while those hang.
	if st, _ := ts.do("GET", "/api/v1/healthcheck", "", nil, "", nil); st != http.StatusOK {
		t.Errorf("healthcheck while slow clients hang = %d", st)
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		_, err := io.ReadAll(c) // returns once the server closes the connection
		if err != nil {
			t.Fatalf("slow client %d: connection not closed by the server: %v", i, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("slow client %d held its connection %v", i, d)
		}
	}
}

// An active version whose agent crashes and cannot be restarted is rolled
// back automatically to the last known good version, as an auto_rollback
// operation by "berth" that says why.
func TestCrashLoopingVersionIsRolledBackAutomatically(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", func(c *server.Config) { c.RestartBackoff = 20 * time.Millisecond })
	ts.upload(ts.Admin, echo(t, "loop", "1.0.0", nil))
	// 1.1.0 starts healthy once; after that every start exits at once, as
	// a version with a crash on some later input would.
	bad := berthtest.EchoPackage(t, berthtest.PackageOptions{Name: "loop", Version: "1.1.0",
		Run: []string{"sh", "-c", "test -e started-once && exit 3; touch started-once; exec ./echo-agent"}})
	ts.update(ts.Admin, "loop", bad, nil)
	w := ts.whoami("loop")
	if w.Version != "1.1.0" {
		t.Fatalf("after the update whoami = %+v, want 1.1.0", w)
	}
	if err := syscall.Kill(w.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill agent: %v", err)
	}
	waitFor(t, "the automatic rollback to 1.0.0", 60*time.Second, func() bool {
		w, err := berthtest.GetWhoami(context.Background(), ts.URL+"/agents/loop")
		return err == nil && w.Version == "1.0.0"
	})
	if h := ts.history(ts.Admin, "loop"); h.CurrentVersion != "1.0.0" {
		t.Errorf("current version = %s, want 1.0.0", h.CurrentVersion)
	}
	ops := ts.operations(ts.Admin, "loop")
	if len(ops) == 0 {
		t.Fatal("no operations recorded")
	}
	op := ops[0] // newest first
	if op.Kind != "auto_rollback" || op.Status != "succeeded" || op.Actor != "berth" ||
		op.FromVersion != "1.1.0" || op.ToVersion != "1.0.0" || !strings.Contains(op.Reason, "crashed") {
		t.Errorf("newest operation = %+v, want a succeeded auto_rollback by berth 1.1.0 → 1.0.0 whose reason says it crashed", op)
	}
}
