//go:build unix && !linux

package process

import "syscall"

// sysProcAttr puts a child in its own process group, so that signals reach
// everything it spawned. This platform has no parent-death signal (and no
// /proc for the leftover sweep in New): children outlive a killed server.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
