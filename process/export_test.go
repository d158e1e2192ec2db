package process

import "net"

// SetListen replaces how r opens the listeners that pick ports, so that a
// test can make the host run out of them.
func SetListen(r *Runtime, listen func(network, address string) (net.Listener, error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.listen = listen
}
