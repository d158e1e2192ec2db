//go:build unix

package proxy

import (
	"syscall"
)

// connAlive reports whether the idle connection c is still open and has
// nothing unread: a non-blocking peek that sees EAGAIN. It lets a request
// that cannot be retried avoid a connection the upstream closed while it
// sat in the pool.
func connAlive(c *upConn) bool {
	if c.br.Buffered() > 0 {
		return false
	}
	sc, ok := c.conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// EAGAIN: open with nothing to read. A byte means the upstream
		// sent something unasked; zero bytes means it closed. Either
		// way the connection cannot carry a request.
		alive = rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK
		return true
	})
	return err == nil && alive
}
