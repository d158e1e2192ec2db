package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/berthtest"
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
