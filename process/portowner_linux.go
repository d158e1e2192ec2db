package process

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
)

// portHolderOf tells who listens on 127.0.0.1:port: the sockets listening
// there come from /proc/net/tcp{,6}, and each must be open in a process of
// group pgid or one whose environment holds marker for the port to count
// as the deployment's.
func portHolderOf(port, pgid int, marker string) portHolder {
	want, ok := loopbackListeners(port)
	if !ok {
		return holderUnknown
	}
	if len(want) == 0 {
		return holderNone
	}
	owned := map[uint64]bool{}
	// The group leader usually holds the socket itself ("sh -c 'exec …'"
	// or a binary run directly): one directory read settles it.
	readable := pgid <= 1 || addSockets(owned, pgid)
	if covers(owned, want) {
		return holderSelf
	}
	// Otherwise look for the rest of the deployment: children of a shell
	// that did not exec, workers of a pre-forking server, or an agent
	// that left the group but kept the environment.
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return holderUnknown
	}
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == pgid {
			continue
		}
		if procGroup(pid) != pgid && !procHasEnv(pid, marker) {
			continue
		}
		if !addSockets(owned, pid) {
			readable = false
		}
	}
	switch {
	case covers(owned, want):
		return holderSelf
	case !readable:
		// A process of the deployment whose descriptors we cannot read
		// may hold the socket: do not blame another process for it.
		return holderUnknown
	}
	return holderOther
}

// loopbackListeners returns the inodes of the TCP sockets listening on port
// at an address that a connection to 127.0.0.1 reaches (127.0.0.1 itself or
// a wildcard, IPv4 or IPv6). ok is false when the tables cannot be read.
func loopbackListeners(port int) (inodes map[uint64]bool, ok bool) {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return nil, false
	}
	inodes = map[uint64]bool{}
	parseListeners(b, port, inodes)
	// No tcp6 table means no IPv6, hence no IPv6 listener.
	if b, err := os.ReadFile("/proc/net/tcp6"); err == nil {
		parseListeners(b, port, inodes)
	}
	return inodes, true
}

// tcpListen is the LISTEN state in /proc/net/tcp.
const tcpListen = "0A"

// parseListeners adds to out the inodes of the sockets of a /proc/net/tcp or
// /proc/net/tcp6 table that listen on port at an address that a connection
// to 127.0.0.1 reaches.
func parseListeners(table []byte, port int, out map[uint64]bool) {
	lines := bytes.Split(table, []byte("\n"))
	for _, line := range lines[min(1, len(lines)):] { // the first line is a header
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode …
		f := strings.Fields(string(line))
		if len(f) < 10 || f[3] != tcpListen {
			continue
		}
		addr, portHex, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		if p, err := strconv.ParseUint(portHex, 16, 16); err != nil || int(p) != port {
			continue
		}
		ip := decodeProcIP(addr)
		if ip == nil || !(ip.IsUnspecified() || ip.Equal(net.IPv4(127, 0, 0, 1))) {
			continue
		}
		if inode, err := strconv.ParseUint(f[9], 10, 64); err == nil && inode != 0 {
			out[inode] = true
		}
	}
}

// decodeProcIP decodes an address as /proc/net/tcp{,6} prints it: each
// 32-bit word of the address in the kernel's (native) byte order, in hex.
func decodeProcIP(s string) net.IP {
	if len(s) != 2*net.IPv4len && len(s) != 2*net.IPv6len {
		return nil
	}
	ip := make(net.IP, len(s)/2)
	for i := 0; i < len(s); i += 8 {
		w, err := strconv.ParseUint(s[i:i+8], 16, 32)
		if err != nil {
			return nil
		}
		binary.NativeEndian.PutUint32(ip[i/2:], uint32(w))
	}
	return ip
}

// addSockets adds the inodes of pid's open sockets to set. It reports false
// if pid's descriptors exist but cannot be read; a process that is gone
// holds nothing and counts as read.
func addSockets(set map[uint64]bool, pid int) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	fds, err := os.ReadDir(dir)
	if err != nil {
		return errors.Is(err, fs.ErrNotExist)
	}
	for _, fd := range fds {
		link, err := os.Readlink(dir + "/" + fd.Name())
		if err != nil {
			continue // closed meanwhile
		}
		if rest, ok := strings.CutPrefix(link, "socket:["); ok {
			if inode, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64); err == nil {
				set[inode] = true
			}
		}
	}
	return true
}

// covers reports whether every inode of want is in have.
func covers(have, want map[uint64]bool) bool {
	for inode := range want {
		if !have[inode] {
			return false
		}
	}
	return true
}
