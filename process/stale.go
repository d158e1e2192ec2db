package process

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// pidDirName is the directory under RunDir holding one file per live
// deployment with its process group id. Deployment ids cannot start with a
// dot, so it cannot clash with a deployment's run directory.
const pidDirName = ".pgids"

func (r *Runtime) pgidPath(id string) string {
	return filepath.Join(r.opts.RunDir, pidDirName, id)
}

// recordGroup notes d's current process group so that a later server can
// clean up after this one if it dies without stopping it. Best effort.
func (r *Runtime) recordGroup(d *deployment, pgid int) {
	p := r.pgidPath(d.id)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return
	}
	_ = os.WriteFile(p, []byte(strconv.Itoa(pgid)), 0o600)
}

// forgetGroup drops d's group record once nothing of it runs.
func (r *Runtime) forgetGroup(d *deployment) {
	os.Remove(r.pgidPath(d.id))
}

// killStale kills what a previous server left running. Pdeathsig kills each
// deployment's direct child when the server dies, but not processes that
// child started (say, an agent run by "sh -c" without exec): those stay in
// the group, orphaned, possibly holding a port. For every group recorded
// under RunDir/.pgids, we SIGKILL the processes still in that group that
// carry that deployment's BERTH_DEPLOYMENT_ID in their environment; the
// second check keeps a reused group id from costing an innocent process.
func (r *Runtime) killStale() {
	dir := filepath.Join(r.opts.RunDir, pidDirName)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return // nothing recorded (or nothing we can read): nothing to do
	}
	groups := map[int]string{} // pgid → deployment id
	for _, e := range entries {
		id := e.Name()
		b, err := os.ReadFile(filepath.Join(dir, id))
		os.Remove(filepath.Join(dir, id))
		if err != nil || checkID(id) != nil {
			continue
		}
		if pgid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pgid > 1 {
			groups[pgid] = id
		}
	}
	if len(groups) == 0 {
		return
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		id, ok := groups[procGroup(pid)]
		if !ok || !procHasEnv(pid, "BERTH_DEPLOYMENT_ID="+id) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			r.log.Warn("killed a process left over from a previous server", "deployment", id, "pid", pid)
		}
	}
}

// procGroup returns pid's process group id, or 0.
func procGroup(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name is parenthesised and may hold spaces; the fields
	// after it are: state ppid pgrp …
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 3 {
		return 0
	}
	pgid, _ := strconv.Atoi(f[2])
	return pgid
}

// procHasEnv reports whether pid's initial environment holds the entry kv.
func procHasEnv(pid int, kv string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	for _, e := range bytes.Split(b, []byte{0}) {
		if string(e) == kv {
			return true
		}
	}
	return false
}
