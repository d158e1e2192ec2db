//go:build unix

package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockDataDir takes an exclusive lock on dataDir for this process, held
// until the returned file is closed or the process dies (the kernel drops
// an flock with its holder, so a server killed with -9 leaves no stale
// lock). A second server on the same data dir would take over the first
// one's agents: its start-up kills processes it takes for leftovers of a
// crashed server and records new deployments beside the live ones. So it
// is refused, naming the holder's pid.
func lockDataDir(dataDir string) (*os.File, error) {
	path := filepath.Join(dataDir, "berth.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder := "another process"
			if b, rErr := os.ReadFile(path); rErr == nil {
				if pid, aErr := strconv.Atoi(strings.TrimSpace(string(b))); aErr == nil {
					holder = "process " + strconv.Itoa(pid)
				}
			}
			return nil, fmt.Errorf("data dir %s is in use by another berth serve (%s); one data dir serves one server at a time", dataDir, holder)
		}
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	// The pid is for the message above; the lock is what counts.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}
