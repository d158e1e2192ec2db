//go:build !unix

package proxy

// connAlive reports false where a non-blocking peek is not implemented, so
// requests that cannot be retried always use a new connection there.
func connAlive(*upConn) bool { return false }
