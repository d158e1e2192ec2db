package process_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/process"
)

func TestBuild(t *testing.T) {
	t.Setenv("BERTH_JWT_SECRET", "s3cret")
	tests := []struct {
		name     string
		argv     []string
		env      []string
		timeout  time.Duration
		maxLog   int
		wantCode berth.Code
		wantLogs []string // substrings of the returned logs
		wantMsg  []string // substrings of the error message
	}{
		{
			name:     "success with both streams",
			argv:     []string{"sh", "-c", "echo to-stdout; echo to-stderr >&2"},
			wantLogs: []string{"to-stdout\n", "to-stderr\n"},
		},
		{
			name:     "relative command in dir",
			argv:     []string{"./build.sh"},
			wantLogs: []string{"script ran in build-dir-marker"},
		},
		{
			name:     "server env is not leaked",
			argv:     []string{"sh", "-c", `echo "secret=[$BERTH_JWT_SECRET] path=[$PATH]"`},
			wantLogs: []string{"secret=[] path=[" + os.Getenv("PATH") + "]"},
		},
		{
			name:     "given env is used as is",
			argv:     []string{"sh", "-c", `echo "x=[$X] home=[$HOME]"`},
			env:      []string{"PATH=" + os.Getenv("PATH"), "X=1"},
			wantLogs: []string{"x=[1] home=[]"},
		},
		{
			name:     "failure",
			argv:     []string{"sh", "-c", "echo compiling; echo 'main.go:3: syntax error' >&2; exit 2"},
			wantCode: berth.CodeBuildFailed,
			wantLogs: []string{"compiling", "syntax error"},
			wantMsg:  []string{"exit status 2", "main.go:3: syntax error"},
		},
		{
			name:     "timeout",
			argv:     []string{"sh", "-c", "echo started; sleep 30"},
			timeout:  200 * time.Millisecond,
			wantCode: berth.CodeBuildFailed,
			wantLogs: []string{"started"},
			wantMsg:  []string{"timed out after 200ms", "started"},
		},
		{
			name:     "missing command",
			argv:     []string{"./no-such-build"},
			wantCode: berth.CodeBuildFailed,
			wantMsg:  []string{"not found"},
		},
		{
			name:     "output capped at the tail",
			argv:     []string{"sh", "-c", "i=0; while [ $i -lt 2000 ]; do i=$((i+1)); echo line$i; done"},
			maxLog:   1000,
			wantLogs: []string{"[berth: earlier output truncated]\n", "line2000\n"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			script := "#!/bin/sh\necho script ran in $(basename \"$PWD\")\n"
			sub := filepath.Join(dir, "build-dir-marker")
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(sub, "build.sh"), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			out, err := process.Build(context.Background(), sub, tt.argv, tt.env, tt.timeout, tt.maxLog)
			if got := berth.ErrorCode(err); got != tt.wantCode {
				t.Fatalf("Build(%q) = %v (code %q), want code %q", tt.argv, err, got, tt.wantCode)
			}
			for _, w := range tt.wantLogs {
				if !strings.Contains(string(out), w) {
					t.Errorf("Build(%q) logs = %q, want them to contain %q", tt.argv, out, w)
				}
			}
			for _, w := range tt.wantMsg {
				if msg := berth.ErrorMessage(err); !strings.Contains(msg, w) {
					t.Errorf("Build(%q) message = %q, want it to contain %q", tt.argv, msg, w)
				}
			}
			if tt.maxLog > 0 && len(out) > tt.maxLog {
				t.Errorf("Build(%q) returned %d bytes of logs, want at most %d", tt.argv, len(out), tt.maxLog)
			}
		})
	}
}

func TestBuildEmptyCommand(t *testing.T) {
	out, err := process.Build(context.Background(), t.TempDir(), nil, nil, 0, 0)
	if out != nil || err != nil {
		t.Errorf("Build(no command) = %q, %v; want nil, nil", out, err)
	}
}

func TestBuildCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := process.Build(ctx, t.TempDir(), []string{"sleep", "30"}, nil, 0, 0)
	if berth.ErrorCode(err) != berth.CodeBuildFailed || !errors.Is(err, context.Canceled) {
		t.Errorf("Build(canceled ctx) = %v, want code %q wrapping context.Canceled", err, berth.CodeBuildFailed)
	}
}

// TestBuildLeavesNothingRunning checks that background processes a build
// started are killed, whether it succeeds or times out.
func TestBuildLeavesNothingRunning(t *testing.T) {
	tests := []struct {
		name    string
		script  string
		timeout time.Duration
	}{
		{"success", "sleep 30 & echo $! > pid", 0},
		{"timeout", "sleep 30 & echo $! > pid; wait", 300 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			process.Build(context.Background(), dir, []string{"sh", "-c", tt.script}, nil, tt.timeout, 0)
			b, err := os.ReadFile(filepath.Join(dir, "pid"))
			if err != nil {
				t.Fatal(err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			waitUntil(t, fmt.Sprintf("background pid %d is killed", pid), func() bool { return gone(pid) })
		})
	}
}
