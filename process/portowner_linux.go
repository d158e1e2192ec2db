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
	"syscall"
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
//
// It asks the kernel over netlink (sock_diag) for the listening sockets
// only. /proc/net/tcp, the fallback, walks every bucket of the whole
// connection hash table: about 10 ms on a 24 GiB machine however few
// sockets there are, which doubled the time of a cold rollback.
func loopbackListeners(port int) (inodes map[uint64]bool, ok bool) {
	if inodes, err := diagListeners(port); err == nil {
		return inodes, true
	}
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

// Netlink sock_diag (linux/sock_diag.h, linux/inet_diag.h).
const (
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	tcpListenState   = 10 // TCP_LISTEN
	// inetDiagReqLen is sizeof(struct inet_diag_req_v2): family,
	// protocol, ext, pad, states (u32), then a 48-byte inet_diag_sockid.
	inetDiagReqLen = 56
	// inetDiagMsgLen is sizeof(struct inet_diag_msg): family, state,
	// timer, retrans, the sockid (48 bytes: sport, dport, src[16],
	// dst[16], if, cookie[2]), expires, rqueue, wqueue, uid, inode.
	inetDiagMsgLen = 72
)

// diagListeners is loopbackListeners over netlink: one dump of the
// listening TCP sockets per address family.
func diagListeners(port int) (map[uint64]bool, error) {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, syscall.NETLINK_INET_DIAG)
	if err != nil {
		return nil, err
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return nil, err
	}
	out := map[uint64]bool{}
	buf := make([]byte, 32<<10)
	for seq, family := range []uint8{syscall.AF_INET, syscall.AF_INET6} {
		if err := diagDump(fd, buf, uint32(seq+1), family, port, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// diagDump asks for family's listening TCP sockets and adds to out the
// inodes of those on port at 127.0.0.1 or a wildcard address.
func diagDump(fd int, buf []byte, seq uint32, family uint8, port int, out map[uint64]bool) error {
	req := make([]byte, syscall.NLMSG_HDRLEN+inetDiagReqLen)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], sockDiagByFamily)
	binary.NativeEndian.PutUint16(req[6:], syscall.NLM_F_REQUEST|syscall.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], seq)
	r := req[syscall.NLMSG_HDRLEN:]
	r[0] = family
	r[1] = syscall.IPPROTO_TCP
	binary.NativeEndian.PutUint32(r[4:], 1<<tcpListenState)
	if err := syscall.Sendto(fd, req, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return err
	}
	for {
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			switch m.Header.Type {
			case syscall.NLMSG_DONE:
				return nil
			case syscall.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno < 0 {
						return syscall.Errno(-errno)
					}
				}
				return errors.New("sock_diag: error reply")
			}
			d := m.Data
			if len(d) < inetDiagMsgLen || d[1] != tcpListenState {
				continue
			}
			if int(binary.BigEndian.Uint16(d[4:6])) != port {
				continue
			}
			ip := net.IP(d[8:24])
			if d[0] == syscall.AF_INET {
				ip = net.IP(d[8:12])
			}
			if !ip.IsUnspecified() && !ip.Equal(net.IPv4(127, 0, 0, 1)) {
				continue
			}
			if inode := binary.NativeEndian.Uint32(d[68:72]); inode != 0 {
				out[uint64(inode)] = true
			}
		}
	}
}
