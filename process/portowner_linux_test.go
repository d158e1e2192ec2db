package process

import (
	"encoding/binary"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"testing"
)

func TestParseListeners(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the sample tables are as a little-endian host prints them")
	}
	// Lines as /proc/net/tcp and tcp6 print them on a little-endian host;
	// 0x1F90 is port 8080.
	const tcp = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 222 1 0000000000000000 100 0 0 10 0
   2: 0200007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 333 1 0000000000000000 100 0 0 10 0
   3: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 444 1 0000000000000000 100 0 0 10 0
   4: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 555 1 0000000000000000 100 0 0 10 0
`
	const tcp6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 666 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 888 1 0000000000000000 100 0 0 10 0
`
	tests := []struct {
		name  string
		table string
		port  int
		want  []uint64
	}{
		// 127.0.0.1 and 0.0.0.0 listeners count; 127.0.0.2, another port
		// and an established connection do not.
		{"tcp", tcp, 8080, []uint64{111, 222}},
		{"tcp other port", tcp, 8081, []uint64{444}},
		// :: and ::ffff:127.0.0.1 count; ::1 does not.
		{"tcp6", tcp6, 8080, []uint64{666, 777}},
		{"no such port", tcp, 9999, nil},
		{"empty", "", 8080, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[uint64]bool{}
			parseListeners([]byte(tt.table), tt.port, got)
			if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, tt.want) {
				t.Errorf("parseListeners(%s, %d) = %v, want %v", tt.name, tt.port, keys, tt.want)
			}
		})
	}
}

// TestDiagListenersMatchesProc checks the netlink answer against the
// /proc/net/tcp{,6} tables for real sockets: a 127.0.0.1 listener, a
// wildcard one, one on 127.0.0.2 (not reached by 127.0.0.1) and an
// established connection on a listener's port.
func TestDiagListenersMatchesProc(t *testing.T) {
	listen := func(addr string) int {
		t.Helper()
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Skipf("listen %s: %v", addr, err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln.Addr().(*net.TCPAddr).Port
	}
	loop := listen("127.0.0.1:0")
	wild := listen(":0")
	other := listen("127.0.0.2:0")
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(loop)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, port := range []int{loop, wild, other} {
		got, err := diagListeners(port)
		if err != nil {
			t.Skipf("sock_diag unavailable here: %v", err)
		}
		want := map[uint64]bool{}
		for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
			if b, err := os.ReadFile(f); err == nil {
				parseListeners(b, port, want)
			}
		}
		if !maps.Equal(got, want) {
			t.Errorf("diagListeners(%d) = %v, /proc says %v", port, got, want)
		}
		if wantN := map[int]int{loop: 1, wild: 1, other: 0}[port]; len(got) != wantN {
			t.Errorf("diagListeners(%d) found %d listeners, want %d", port, len(got), wantN)
		}
	}
}

// BenchmarkPortHolderOf is the check every start makes once its agent
// answers: about 0.1 ms over netlink, against about 10 ms when it read
// /proc/net/tcp (which walks the kernel's whole connection hash table).
func BenchmarkPortHolderOf(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	for b.Loop() {
		if h := portHolderOf(port, os.Getpid(), "BERTH_BENCH=1"); h != holderSelf {
			b.Fatalf("portHolderOf = %v, want holderSelf", h)
		}
	}
}
