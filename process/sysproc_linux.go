package process

import "syscall"

// sysProcAttr puts a child in its own process group, so that signals reach
// everything it spawned and a terminal's Ctrl-C aimed at the server does
// not, and has the kernel SIGKILL it when the server dies, even on kill -9,
// so that no orphan keeps holding a port. (Pdeathsig is tied to the forking
// OS thread; the Go runtime does not retire threads that are not locked.)
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
