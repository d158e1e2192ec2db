package process

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/berthhq/berth"
)

// outputGrace bounds how long we wait, once a process group has been
// killed, for its output pipe to reach EOF. Only a process that left the
// group (setsid) can hold the pipe open longer, and we must not hang on it.
const outputGrace = 2 * time.Second

// defaultPath is the PATH children get when the server has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// proc is one started child process, the leader of its own process group.
type proc struct {
	pid     int
	started time.Time
	tail    *lineRing // its last output lines, for error messages

	exited  chan struct{} // closed once the leader has been reaped
	state   *os.ProcessState
	waitErr error

	outDone chan struct{} // closed once its output pipe reached EOF
}

// startProc starts path with argv in dir with exactly env, in a new process
// group, copying its combined stdout and stderr to out (from one goroutine)
// and into the returned proc's line ring.
func startProc(path string, argv []string, dir string, env []string, out io.Writer) (*proc, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{
		Path: path,
		Args: argv,
		Dir:  dir,
		Env:  env,
		// One pipe for both streams keeps their interleaving, and handing
		// exec an *os.File means Wait does not wait for our copier: a
		// grandchild holding the pipe cannot delay exit detection.
		Stdout:      pw,
		Stderr:      pw,
		SysProcAttr: sysProcAttr(),
	}
	err = cmd.Start()
	// A freshly unpacked executable can be "text file busy" for a moment:
	// another goroutine's fork may have inherited the unpacker's write
	// descriptor before close-on-exec applied (golang.org/issue/22315).
	// It clears as soon as that child execs, so retry briefly.
	for i := 0; errors.Is(err, syscall.ETXTBSY) && i < 20; i++ {
		time.Sleep(time.Duration(i+1) * 5 * time.Millisecond)
		cmd = &exec.Cmd{Path: cmd.Path, Args: cmd.Args, Dir: cmd.Dir, Env: cmd.Env, Stdout: pw, Stderr: pw, SysProcAttr: cmd.SysProcAttr}
		err = cmd.Start()
	}
	// The child has its own copy of the write end; ours must go so that EOF
	// arrives once every process sharing it has exited.
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, err
	}
	p := &proc{
		pid:     cmd.Process.Pid,
		started: time.Now(),
		tail:    newLineRing(tailLines),
		exited:  make(chan struct{}),
		outDone: make(chan struct{}),
	}
	go func() {
		defer close(p.outDone)
		defer pr.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := pr.Read(buf)
			if n > 0 {
				out.Write(buf[:n])
				p.tail.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		p.state, p.waitErr = cmd.ProcessState, err
		close(p.exited)
	}()
	return p, nil
}

// signal sends sig to p's whole process group.
func (p *proc) signal(sig syscall.Signal) {
	// kill(0 or -1, …) would hit our own group or every process we may
	// signal; a started child's pid is never that, but be certain.
	if p.pid <= 1 {
		return
	}
	// ESRCH (the group is gone) is the expected outcome of a second kill.
	_ = syscall.Kill(-p.pid, sig)
}

// hasExited reports whether the leader has been reaped.
func (p *proc) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// exitStatus describes how the leader ended, e.g. "exit status 1" or
// "signal: killed". It must only be called after p.exited is closed.
func (p *proc) exitStatus() string {
	if p.state != nil {
		return p.state.String()
	}
	if p.waitErr != nil {
		return p.waitErr.Error()
	}
	return "exited"
}

// reap kills whatever is left of p's group once its leader has exited (a
// restart must not find the old port taken by a straggler) and waits, for a
// bounded time, for the output to drain so error messages quote all of it.
func (p *proc) reap() {
	<-p.exited
	p.signal(syscall.SIGKILL)
	t := time.NewTimer(outputGrace)
	defer t.Stop()
	select {
	case <-p.outDone:
	case <-t.C:
	}
}

// kill ends p's group at once and waits until the leader is reaped.
func (p *proc) kill() {
	p.signal(syscall.SIGKILL)
	p.reap()
}

// terminate asks p's group to stop with SIGTERM, and SIGKILLs it once grace
// has passed. It returns once the leader is reaped.
func (p *proc) terminate(grace time.Duration) {
	deadline := time.Now().Add(grace)
	p.signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
		// The rest of the group gets what is left of the grace period; EOF
		// on the shared output pipe means all of them have exited.
		t.Reset(time.Until(deadline))
		select {
		case <-p.outDone:
		case <-t.C:
		}
	case <-t.C:
	}
	p.kill()
}

// childEnv builds a child's environment: a minimal base taken from the
// server (never its whole environment, which may hold secrets such as
// BERTH_JWT_SECRET), then extra (the package's env, which may override the
// base), then fixed, which always wins. The result is sorted.
func childEnv(tmpDir string, extra, fixed map[string]string) []string {
	env := map[string]string{"PATH": defaultPath}
	for _, k := range []string{"PATH", "HOME", "LANG"} {
		if v, ok := os.LookupEnv(k); ok && v != "" {
			env[k] = v
		}
	}
	if tmpDir != "" {
		env["TMPDIR"] = tmpDir
	}
	maps.Copy(env, extra)
	maps.Copy(env, fixed)
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// envValue returns the value of key in env (last one wins, as for exec).
func envValue(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}

// resolveCommand finds the executable for argv0: a name containing a slash
// is taken relative to dir (so "./bin/agent" is the package's own binary);
// a bare name is searched in pathList, the child's own PATH (not the
// server's), skipping relative entries so the package cannot shadow it.
func resolveCommand(argv0, dir, pathList string) (string, error) {
	if argv0 == "" {
		return "", errors.New("empty command")
	}
	if strings.Contains(argv0, "/") {
		p := argv0
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		return p, checkExecutable(p)
	}
	for _, d := range filepath.SplitList(pathList) {
		if d == "" || !filepath.IsAbs(d) {
			continue
		}
		p := filepath.Join(d, argv0)
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH: %w", argv0, os.ErrNotExist)
}

// checkExecutable reports whether p is a regular file with an execute bit.
func checkExecutable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file: %w", p, os.ErrPermission)
	}
	if st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not executable: %w", p, os.ErrPermission)
	}
	return nil
}

// commandError turns a failure to resolve or start argv into a caller-safe
// error of code c; the OS error (with server paths) goes into Err only.
func commandError(c berth.Code, what string, argv []string, err error) *berth.Error {
	return &berth.Error{
		Code:    c,
		Message: fmt.Sprintf("cannot run %s command %q: %s", what, argv[0], reason(err)),
		Err:     err,
	}
}

// reason names the kind of an exec failure without exposing server paths.
func reason(err error) string {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "not found"
	case errors.Is(err, os.ErrPermission):
		return "permission denied"
	case errors.Is(err, syscall.ENOEXEC):
		return "not an executable format"
	default:
		return "cannot execute"
	}
}
