package testenv

import (
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Ports handed to servers started by tests come from below the kernel's
// ephemeral range, so that the outgoing connections of the processes under
// test (which take ephemeral ports) never sit on a port a server is about
// to bind. Each port is also reserved across the test binaries that `go
// test ./...` runs in parallel: a flock on a file named after the port,
// held until this process exits (the kernel drops it then, so nothing goes
// stale).
var ports struct {
	sync.Mutex
	dir   string
	held  map[int]*os.File
	lo    int
	hi    int // exclusive
	ready bool
}

func portRange() (lo, hi int) {
	lo, hi = 20000, 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(b))
	if len(f) == 2 {
		if first, err := strconv.Atoi(f[0]); err == nil && first > 11000 {
			hi = first
			lo = min(lo, first-10000)
		}
	}
	return lo, hi
}

// reservePort returns a port below the ephemeral range that no other test
// process holds and that nothing listens on; 0 when it found none.
func reservePort() int {
	ports.Lock()
	defer ports.Unlock()
	if !ports.ready {
		ports.ready = true
		ports.lo, ports.hi = portRange()
		ports.held = map[int]*os.File{}
		ports.dir = filepath.Join(os.TempDir(), "voltage-test-ports")
		if err := os.MkdirAll(ports.dir, 0o777); err != nil {
			ports.dir = ""
		}
	}
	if ports.dir == "" {
		return 0
	}
	n := ports.hi - ports.lo
	start := rand.IntN(n)
	for i := 0; i < 200; i++ {
		p := ports.lo + (start+i*7919)%n
		if _, mine := ports.held[p]; mine {
			continue
		}
		f, err := os.OpenFile(filepath.Join(ports.dir, strconv.Itoa(p)), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			return 0
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close() // another test process holds it
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			f.Close() // in use by something else
			continue
		}
		l.Close()
		ports.held[p] = f // kept open: the lock lasts as long as this process
		return p
	}
	return 0
}
