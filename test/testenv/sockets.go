package testenv

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// DialFrom opens a raw TCP connection to addr from the loopback address ip
// (127.0.0.2 is another client address on the same machine), closed when
// the test ends.
func DialFrom(t testing.TB, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// ClosedWithin reads c until the server closes it, and reports whether that
// happened within d; it returns what was read meanwhile (an answer the
// server sent before closing).
func ClosedWithin(c net.Conn, d time.Duration) (bool, string) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false, string(b)
	}
	return true, string(b)
}
