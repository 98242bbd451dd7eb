package testenv

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// TestPortsAvoidEphemeralRangeAndEachOther: ports come from below the
// kernel's ephemeral range, are never handed out twice, are bindable, and
// are locked against other test processes.
func TestPortsAvoidEphemeralRangeAndEachOther(t *testing.T) {
	lo, hi := portRange()
	seen := map[int]bool{}
	for i := 0; i < 50; i++ {
		p := FreePort(t)
		if p < lo || p >= hi {
			t.Fatalf("port %d outside [%d, %d)", p, lo, hi)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		l.Close()
		// Another process's flock on the same file fails while we hold it
		// (a second open file description stands in for it).
		f, err := os.Open(filepath.Join(ports.dir, strconv.Itoa(p)))
		if err != nil {
			t.Fatal(err)
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			t.Fatalf("port %d is not locked against other test processes", p)
		}
		f.Close()
	}
}
