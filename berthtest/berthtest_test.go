package berthtest_test

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/artifact"
	"github.com/berthhq/berth/berthtest"
)

func TestZip(t *testing.T) {
	b := berthtest.ZipWithModes(t, map[string]string{
		"a.txt":   "A",
		"bin/run": "#!/bin/sh\n",
		"empty/":  "",
	}, map[string]os.FileMode{"bin/run": 0o755})
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("zip.NewReader: %v", err)
	}
	got := map[string]os.FileMode{}
	for _, f := range zr.File {
		got[f.Name] = f.Mode()
	}
	want := map[string]os.FileMode{"a.txt": 0o644, "bin/run": 0o755, "empty/": os.ModeDir | 0o755}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ZipWithModes entries = %v, want %v", got, want)
	}
}

func TestEchoPackagePassesInspect(t *testing.T) {
	tests := []struct {
		name string
		opts berthtest.PackageOptions
		want artifact.Package
	}{
		{
			name: "defaults",
			want: artifact.Package{Name: "echo-agent", Config: berth.Config{
				Run: []string{"./echo-agent"}, HealthPath: berth.DefaultHealthPath,
			}},
		},
		{
			name: "everything set",
			opts: berthtest.PackageOptions{
				Name: "support-bot", Version: "1.2.3",
				Env: map[string]string{"ECHO_GREETING": "hi"},
				Run: []string{"sh", "-c", "exit 3"}, Build: []string{"true"},
				HealthPath: "/healthz", ReadyTimeout: "5s",
				ExtraFiles: map[string]string{"data/x.txt": "x"},
			},
			want: artifact.Package{Name: "support-bot", Version: "1.2.3", Config: berth.Config{
				Run: []string{"sh", "-c", "exit 3"}, Build: []string{"true"}, HealthPath: "/healthz",
				Env: map[string]string{"ECHO_GREETING": "hi"}, ReadyTimeout: berth.Duration(5 * time.Second),
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := berthtest.EchoPackage(t, tt.opts)
			p, err := artifact.Inspect(bytes.NewReader(b), int64(len(b)), artifact.DefaultLimits())
			if err != nil {
				t.Fatalf("Inspect(EchoPackage(%+v)) = %v, want success", tt.opts, err)
			}
			if p.Name != tt.want.Name || p.Version != tt.want.Version || !reflect.DeepEqual(p.Config, tt.want.Config) {
				t.Errorf("Inspect(EchoPackage) = %q %q %+v, want %q %q %+v", p.Name, p.Version, p.Config, tt.want.Name, tt.want.Version, tt.want.Config)
			}
		})
	}
}

func TestEchoPackageExtraFilesReplaceMetadata(t *testing.T) {
	b := berthtest.EchoPackage(t, berthtest.PackageOptions{ExtraFiles: map[string]string{"berth.json": `{"run": []}`}})
	_, err := artifact.Inspect(bytes.NewReader(b), int64(len(b)), artifact.DefaultLimits())
	if got := berth.ErrorCode(err); got != berth.CodeInvalid {
		t.Errorf("Inspect(package with empty run) code = %q (%v), want %q", got, err, berth.CodeInvalid)
	}
}

// TestEchoPackageUnpacksAndRuns unpacks a package made by EchoPackage and
// runs its run command the way the process runtime does.
func TestEchoPackageUnpacksAndRuns(t *testing.T) {
	b := berthtest.EchoPackage(t, berthtest.PackageOptions{Name: "runner", Version: "2.0.0", Env: map[string]string{"ECHO_GREETING": "hey"}})
	p, err := artifact.Inspect(bytes.NewReader(b), int64(len(b)), artifact.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "v")
	if err := artifact.Unpack(bytes.NewReader(b), int64(len(b)), dir, artifact.DefaultLimits()); err != nil {
		t.Fatalf("Unpack: %v", err)
	}
	url, _ := startAgent(t, dir, p.Config, map[string]string{"BERTH_AGENT_NAME": p.Name, "BERTH_AGENT_VERSION": p.Version})
	w, err := berthtest.GetWhoami(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	if w.Name != "runner" || w.Version != "2.0.0" || w.Greeting != "hey" {
		t.Errorf("whoami = %+v, want runner 2.0.0 greeting hey", w)
	}
}

func TestRunEchoAgentAnswersWhoami(t *testing.T) {
	url := berthtest.RunEchoAgent(t, map[string]string{"BERTH_AGENT_VERSION": "4.5.6", "BERTH_DEPLOYMENT_ID": "d-1"})
	w, err := berthtest.GetWhoami(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	if w.Version != "4.5.6" || w.DeploymentID != "d-1" || w.PID == 0 {
		t.Errorf("whoami = %+v, want version 4.5.6, deployment d-1 and a pid", w)
	}
}

// TestEchoAgentDrainsOnSIGTERM checks graceful shutdown: a stream in flight
// when SIGTERM arrives is finished, then the agent exits 0.
func TestEchoAgentDrainsOnSIGTERM(t *testing.T) {
	dir := filepath.Dir(berthtest.EchoAgentBinary(t))
	url, cmd := startAgent(t, dir, berth.Config{Run: []string{"./echo-agent"}}, nil)

	resp, err := http.Get(url + "/sse?n=3&ms=200")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	events := 0
	readEvent := func() bool {
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "data: ") {
				events++
				return true
			}
		}
		return false
	}
	if !readEvent() {
		t.Fatalf("no first event: %v", sc.Err())
	}
	// The stream is now certainly in flight.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for readEvent() {
	}
	if events != 3 {
		t.Errorf("got %d events across SIGTERM, want 3", events)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("echo agent exit after SIGTERM = %v, want success", err)
	}
}

// TestEchoAgentSourceZipBuildsStandalone uploads the example folder as a
// user would, unpacks it, runs berth.json's build command and then its run
// command: the zipped folder alone must be a working package.
func TestEchoAgentSourceZipBuildsStandalone(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go build")
	}
	b := berthtest.EchoAgentSourceZip(t)
	p, err := artifact.Inspect(bytes.NewReader(b), int64(len(b)), artifact.DefaultLimits())
	if err != nil {
		t.Fatalf("Inspect(example folder) = %v", err)
	}
	if p.Name != "echo-agent" || p.Version != "1.0.0" || len(p.Config.Build) == 0 {
		t.Fatalf("Inspect(example folder) = %q %q build %q, want echo-agent 1.0.0 with a build command", p.Name, p.Version, p.Config.Build)
	}
	dir := filepath.Join(t.TempDir(), "src")
	if err := artifact.Unpack(bytes.NewReader(b), int64(len(b)), dir, artifact.DefaultLimits()); err != nil {
		t.Fatalf("Unpack: %v", err)
	}
	build := exec.Command(p.Config.Build[0], p.Config.Build[1:]...)
	build.Dir = dir
	// The unpacked folder lies outside any module or workspace.
	build.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %q: %v\n%s", p.Config.Build, err, out)
	}
	url, _ := startAgent(t, dir, p.Config, map[string]string{"BERTH_AGENT_VERSION": "3.0.0"})
	w, err := berthtest.GetWhoami(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	if w.Version != "3.0.0" || w.Greeting != "hello" {
		t.Errorf("whoami = %+v, want version 3.0.0 and the greeting from berth.json", w)
	}
}

// startAgent runs cfg.Run in dir with PORT, cfg.Env and env set, the way the
// process runtime does, waits until it answers cfg.HealthPath, and stops it
// when the test ends.
func startAgent(t *testing.T, dir string, cfg berth.Config, env map[string]string) (string, *exec.Cmd) {
	t.Helper()
	port, err := berthtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cfg.Run[0], cfg.Run[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port))
	for k, v := range cfg.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %q: %v", cfg.Run, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	health := cfg.HealthPath
	if health == "" {
		health = berth.DefaultHealthPath
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url + health)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return url, cmd
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent on %s did not become healthy: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
