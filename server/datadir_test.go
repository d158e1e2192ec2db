package server_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/lifecycle"
	"github.com/berthhq/berth/server"
)

// A second berth serve on a data dir in use is refused before it touches
// anything: it would otherwise take the first server's agents for leftovers
// of a crash, kill them and record duplicate deployments. The first server
// and its agents go on undisturbed; once it stops, the data dir is free.
func TestSecondServerOnSameDataDirIsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ts := startServer(t, dir)
	ts.upload(ts.Admin, light(t, "solo", "1.0.0", nil))
	before := ts.whoami("solo")

	cfg := server.Config{
		Addr: "127.0.0.1:0", DataDir: dir, ReadyTimeout: 10 * time.Second, StopTimeout: 2 * time.Second,
		Engine: lifecycle.DefaultConfig(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	second, err := server.Open(context.Background(), cfg)
	if err == nil {
		second.Close()
		t.Fatal("server.Open on a data dir in use = nil error, want a refusal")
	}
	if !strings.Contains(err.Error(), "in use by another berth serve") {
		t.Errorf("server.Open on a data dir in use = %q, want it to say the data dir is in use", err)
	}
	if after := ts.whoami("solo"); after.PID != before.PID {
		t.Errorf("agent pid %d → %d: the refused server touched the running agent", before.PID, after.PID)
	}
	if deps := ts.deployments(ts.Admin, "solo"); len(deps) != 1 {
		t.Errorf("deployments after the refused start = %d, want 1 (no duplicate recorded)", len(deps))
	}
	if st, _ := ts.get("/api/v1/registry/user/agents", ts.Admin); st != http.StatusOK {
		t.Errorf("first server after the refused start = %d, want 200", st)
	}

	ts.Close()
	ts2 := startServer(t, dir)
	if w := ts2.whoami("solo"); w.Version != "1.0.0" {
		t.Errorf("whoami after the first server stopped = %+v, want 1.0.0 served again", w)
	}
}
