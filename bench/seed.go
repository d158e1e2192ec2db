package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlite"
)

// seedSpec is the history written into a store before the server opens it.
type seedSpec struct {
	// Others is how many other agents to create, OtherVersions versions
	// each.
	Others, OtherVersions int
	// Target, when set, is one more agent with TargetVersions versions.
	Target         string
	TargetVersions int
}

// seedStore writes spec's history into a new store at dbPath through the
// berth.Store interface, with c as its superuser (so the server's bootstrap,
// which only runs on an empty store, is not needed).
//
// Every agent looks like one with real history that is currently not
// running: versions in state ready (or rolled_back, every seventh, with its
// rollback record) that were each active once, one successful build each,
// one stopped deployment each. None is active, because the server restores
// active versions at start-up and these have no files to run; the bench
// deploys real versions on top through the API.
//
// Writing goes to a scratch directory on tmpfs (/dev/shm) when there is
// one, and the finished file is copied to dbPath: with synchronous=FULL
// every insert is an fsync, and tens of thousands of them would measure the
// disk, not Berth. The server then runs on dbPath on the real disk.
func seedStore(ctx context.Context, dbPath string, c creds, spec seedSpec) error {
	scratch, err := scratchDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	tmp := filepath.Join(scratch, "berth.db")
	st, err := sqlite.Open(ctx, tmp)
	if err != nil {
		return err
	}
	owner := berth.User{ID: uuid.NewString(), Username: "admin", Email: "admin@example.com", AccessKey: c.key,
		SecretHash: berth.HashSecret(c.secret), IsSuperUser: true, CreatedAt: time.Now().UTC()}
	err = st.CreateUser(ctx, owner)
	for i := 0; err == nil && i < spec.Others; i++ {
		err = seedAgent(ctx, st, owner.ID, fmt.Sprintf("other-%04d", i), spec.OtherVersions)
	}
	if err == nil && spec.Target != "" {
		err = seedAgent(ctx, st, owner.ID, spec.Target, spec.TargetVersions)
	}
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("seed store: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dbPath), 0o700); err != nil {
		return err
	}
	// Closing the last connection checkpoints the WAL into the main file;
	// copy a leftover WAL too in case it did not.
	for _, suffix := range []string{"", "-wal"} {
		if err := copyFile(tmp+suffix, dbPath+suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return syncFile(dbPath)
}

// seedAgent creates agent name with n versions of history.
func seedAgent(ctx context.Context, st berth.Store, ownerID, name string, n int) error {
	now := time.Now().UTC().Truncate(time.Microsecond)
	card, _ := json.Marshal(map[string]any{"name": name, "description": "seeded agent", "version": "0.0.1"})
	a := berth.Agent{ID: uuid.NewString(), Name: name, OwnerID: ownerID, Description: "seeded agent", Card: card,
		CreatedAt: now.Add(-time.Duration(n+1) * 10 * time.Minute), UpdatedAt: now}
	if err := st.CreateAgent(ctx, a); err != nil {
		return err
	}
	cfg := berth.Config{Run: []string{"./echo-agent"}, HealthPath: "/healthz", Env: map[string]string{"ECHO_GREETING": "hello"},
		ReadyTimeout: berth.Duration(30 * time.Second)}
	var prevLabel string
	for i := 0; i < n; i++ {
		label := fmt.Sprintf("0.%d.%d", i/100, i%100)
		created := a.CreatedAt.Add(time.Duration(i+1) * 10 * time.Minute)
		activated := created.Add(time.Minute)
		sum := sha256.Sum256([]byte(name + label))
		v := berth.Version{ID: uuid.NewString(), AgentID: a.ID, Version: label, State: berth.VersionReady, Config: cfg,
			Card: card, Digest: hex.EncodeToString(sum[:]), BuildID: uuid.NewString(), CreatedAt: created, ActivatedAt: &activated}
		if i%7 == 6 && prevLabel != "" {
			v.State = berth.VersionRolledBack
			v.Rollback = &berth.RollbackInfo{OperationID: uuid.NewString(), Reason: "error rate up", Actor: "admin",
				From: label, To: prevLabel, At: activated.Add(5 * time.Minute)}
		}
		finished := created.Add(20 * time.Second)
		b := berth.Build{ID: v.BuildID, AgentID: a.ID, VersionID: v.ID, Version: label, Status: berth.BuildSuccess,
			Logs: "build ok\n", CreatedAt: created, UpdatedAt: finished, FinishedAt: &finished}
		d := berth.Deployment{ID: uuid.NewString(), AgentID: a.ID, VersionID: v.ID, Version: label, Status: berth.DeploymentStopped,
			URL: fmt.Sprintf("http://127.0.0.1:%d", 40000+i%20000), CreatedAt: created.Add(30 * time.Second),
			UpdatedAt: activated.Add(10 * time.Minute)}
		if err := st.CreateVersion(ctx, v); err != nil {
			return err
		}
		if err := st.CreateBuild(ctx, b); err != nil {
			return err
		}
		if err := st.CreateDeployment(ctx, d); err != nil {
			return err
		}
		prevLabel = label
	}
	return nil
}

// scratchDir returns a new directory on tmpfs if there is one, else under
// $TMPDIR.
func scratchDir() (string, error) {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "berth-bench-seed-"); err == nil {
			return dir, nil
		}
	}
	return os.MkdirTemp("", "berth-bench-seed-")
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
