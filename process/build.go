package process

import (
	"context"
	"path/filepath"
	"time"

	"github.com/berthhq/berth"
)

// DefaultMaxBuildLog is the output cap Build uses when maxLog is not
// positive.
const DefaultMaxBuildLog = 1 << 20

// Build runs a package's build command argv in dir and returns its combined
// stdout and stderr, capped at maxLog bytes (DefaultMaxBuildLog if maxLog is
// not positive) by keeping the tail, and prefixed by a marker line when the
// head was dropped.
//
// A relative argv[0] containing a slash (such as "./build.sh") is resolved
// against dir, a bare name against the PATH in env. env is the complete
// environment of the command; nil means a minimal one (PATH, HOME, LANG
// from the server) — never the server's whole environment. An empty argv
// means there is nothing to build and returns (nil, nil).
//
// The command runs in its own process group, which is killed when it
// finishes (no leftovers), when timeout passes (if positive), or when ctx
// ends. Any failure is a *berth.Error with CodeBuildFailed whose message
// gives the exit status or the timeout and the last lines of output; for a
// canceled ctx, Err is ctx.Err().
func Build(ctx context.Context, dir string, argv []string, env []string, timeout time.Duration, maxLog int) ([]byte, error) {
	if len(argv) == 0 {
		return nil, nil
	}
	if maxLog <= 0 {
		maxLog = DefaultMaxBuildLog
	}
	if env == nil {
		env = childEnv("", nil, nil)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, &berth.Error{Code: berth.CodeBuildFailed, Message: "invalid build directory", Err: err}
	}
	path, err := resolveCommand(argv[0], dir, envValue(env, "PATH"))
	if err != nil {
		return nil, commandError(berth.CodeBuildFailed, "build", argv, err)
	}
	out := &tailBuffer{max: maxLog}
	p, err := startProc(path, argv, dir, env, out)
	if err != nil {
		return nil, commandError(berth.CodeBuildFailed, "build", argv, err)
	}

	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	var failure *berth.Error
	select {
	case <-p.exited:
	case <-expired:
		failure = berth.Errorf(berth.CodeBuildFailed, "build timed out after %s", timeout)
	case <-ctx.Done():
		failure = &berth.Error{Code: berth.CodeBuildFailed, Message: "build was canceled", Err: ctx.Err()}
	}
	// Killing the group also on success removes anything the build left
	// running in the background, and reap waits (for a bounded time) until
	// the output is complete.
	p.kill()
	logs := out.Bytes()
	if failure == nil && (p.state == nil || !p.state.Success()) {
		failure = berth.Errorf(berth.CodeBuildFailed, "build failed (%s)", p.exitStatus())
	}
	if failure != nil {
		failure.Message += describeOutput(p.tail)
		return logs, failure
	}
	return logs, nil
}
