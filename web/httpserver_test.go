package web

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/voltage-ems/voltage/test/testenv"
)

// shortLimits are the server limits of these tests: short, so that what
// they cut is cut quickly.
func shortLimits() ServerOptions {
	return ServerOptions{ReadHeaderTimeout: 500 * time.Millisecond, ReadTimeout: 500 * time.Millisecond,
		WriteTimeout: 2 * time.Second, IdleTimeout: 500 * time.Millisecond, MaxHeaderBytes: 4096}
}

// serveWith serves h with NewServer and WrapListener on a free loopback
// port and returns the listener's address.
func serveWith(t *testing.T, h http.Handler, o ServerOptions) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(h, o)
	go func() { _ = srv.Serve(WrapListener(ln, o)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestServerCutsSlowRequests: headers or a body that do not arrive within
// the read timeouts are cut, with or without a token, and the server holds
// no connection afterwards.
func TestServerCutsSlowRequests(t *testing.T) {
	e := newEnv(t, testYAML)
	o := shortLimits()
	o.Log, o.Metrics = quietLog(), NewHTTPMetrics(prometheus.NewRegistry())
	addr := serveWith(t, e.srv.Config.Handler, o)
	halfBody := func(token string) string {
		auth := ""
		if token != "" {
			auth = "Authorization: Bearer " + token + "\r\n"
		}
		return "POST /control/1001/1 HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"value\":"
	}
	var conns []net.Conn
	for range 50 {
		c := testenv.DialFrom(t, "127.0.0.1", addr)
		if _, err := io.WriteString(c, halfBody("")); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	withToken := testenv.DialFrom(t, "127.0.0.1", addr)
	if _, err := io.WriteString(withToken, halfBody(operatorToken)); err != nil {
		t.Fatal(err)
	}
	slowHeaders := testenv.DialFrom(t, "127.0.0.1", addr)
	if _, err := io.WriteString(slowHeaders, "GET /health HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i, c := range conns {
		if closed, got := testenv.ClosedWithin(c, 3*time.Second); !closed {
			t.Fatalf("socket %d with half a body still open after %v (read %q)", i, time.Since(start), got)
		}
	}
	if closed, got := testenv.ClosedWithin(withToken, 3*time.Second); !closed || !strings.Contains(got, "400 Bad Request") {
		t.Fatalf("half a body with a token: closed %v, answer %q", closed, got)
	}
	if closed, got := testenv.ClosedWithin(slowHeaders, 3*time.Second); !closed || strings.Contains(got, "200 OK") {
		t.Fatalf("slow headers: closed %v, answer %q", closed, got)
	}
	testenv.Eventually(t, 2*time.Second, func() bool { return testutil.ToFloat64(o.Metrics.connsOpen) == 0 },
		"no connection left open on the server (voltage_http_connections_open %v)", testutil.ToFloat64(o.Metrics.connsOpen))
}

// TestServerIdleTimeout: a keep-alive connection without a next request is
// closed after the idle timeout.
func TestServerIdleTimeout(t *testing.T) {
	e := newEnv(t, testYAML)
	o := shortLimits()
	o.ReadTimeout, o.ReadHeaderTimeout = 5*time.Second, 5*time.Second // only idleness ends it
	addr := serveWith(t, e.srv.Config.Handler, o)
	c := testenv.DialFrom(t, "127.0.0.1", addr)
	br := bufio.NewReader(c)
	for range 2 { // it stays usable while used
		if _, err := io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET /health on a keep-alive connection: %v %v", resp, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := br.ReadByte(); err == nil || os.IsTimeout(err) {
		t.Fatalf("idle connection not closed after %v (idle timeout %v): %v", time.Since(start), o.IdleTimeout, err)
	}
	if el := time.Since(start); el < o.IdleTimeout-50*time.Millisecond {
		t.Fatalf("closed after %v, before the idle timeout", el)
	}
}

// TestServerMaxHeaderBytes: oversized headers are refused (431).
func TestServerMaxHeaderBytes(t *testing.T) {
	e := newEnv(t, testYAML)
	addr := serveWith(t, e.srv.Config.Handler, shortLimits())
	c := testenv.DialFrom(t, "127.0.0.1", addr)
	_, _ = io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: "+strings.Repeat("a", 16<<10)+"\r\n\r\n")
	if closed, got := testenv.ClosedWithin(c, 3*time.Second); !closed || !strings.Contains(got, "431") {
		t.Fatalf("16 KiB of headers: closed %v, answer %.80q", closed, got)
	}
}

// TestServerConnsPerClient: one client address may hold MaxConnsPerClient
// connections; one more is closed at once, counted and logged; another
// address is not affected; a closed connection frees its slot.
func TestServerConnsPerClient(t *testing.T) {
	e := newEnv(t, testYAML)
	logs := &testenv.LogBuffer{}
	o := shortLimits()
	o.ReadHeaderTimeout, o.ReadTimeout = 10*time.Second, 10*time.Second // the held connections stay
	o.MaxConnsPerClient, o.Log, o.Metrics = 3, slog.New(slog.NewTextHandler(logs, nil)), NewHTTPMetrics(prometheus.NewRegistry())
	addr := serveWith(t, e.srv.Config.Handler, o)
	var held []net.Conn
	for range 3 {
		held = append(held, testenv.DialFrom(t, "127.0.0.1", addr))
	}
	testenv.Eventually(t, 2*time.Second, func() bool { return testutil.ToFloat64(o.Metrics.connsOpen) == 3 }, "3 connections accepted")
	start := time.Now()
	over := testenv.DialFrom(t, "127.0.0.1", addr)
	if closed, _ := testenv.ClosedWithin(over, 2*time.Second); !closed || time.Since(start) > time.Second {
		t.Fatalf("4th connection from 127.0.0.1 not closed at once (%v)", time.Since(start))
	}
	if r := doWith(t, clientFrom(t, "127.0.0.2"), http.MethodGet, "http://"+addr+"/health", "", ""); r.status != 200 {
		t.Fatalf("from 127.0.0.2: %s", r)
	}
	_ = held[0].Close()
	testenv.Eventually(t, 3*time.Second, func() bool {
		c := clientFrom(t, "127.0.0.1")
		resp, err := c.Get("http://" + addr + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "a slot for 127.0.0.1 again after one of its connections closed")
	if n := testutil.ToFloat64(o.Metrics.connsRefused); n < 1 {
		t.Fatalf("voltage_http_connections_refused_total %v", n)
	}
	for _, want := range []string{"too many open connections from this client address", "remote=127.0.0.1", "max=3"} {
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("log lacks %q:\n%s", want, logs)
		}
	}
}

// TestServerKeepsWebSockets: the server's read, write and idle timeouts do
// not reach a WebSocket connection (gorilla clears the deadlines of the
// connection it takes over): it keeps working long after all of them.
func TestServerKeepsWebSockets(t *testing.T) {
	e := newWSEnv(t, 0)
	o := shortLimits()
	o.WriteTimeout = 300 * time.Millisecond
	addr := serveWith(t, e.srv.Config.Handler, o)
	c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws?token="+viewerToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// outlast waits until a plain connection opened now has been closed by
	// the idle timeout: every server deadline set before has passed too.
	outlast := func() {
		t.Helper()
		p := testenv.DialFrom(t, "127.0.0.1", addr)
		_, _ = io.WriteString(p, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
		if closed, _ := testenv.ClosedWithin(p, 3*time.Second); !closed {
			t.Fatal("a plain idle connection was not closed")
		}
	}
	for round := range 3 {
		outlast()
		send(t, c, `{"op":"ping"}`)
		if f, _ := read(t, c, 2*time.Second); f.Type != "pong" {
			t.Fatalf("round %d: %+v", round, f)
		}
	}
	send(t, c, `{"op":"subscribe","patterns":["1002:m:1"]}`)
	if f, _ := read(t, c, 2*time.Second); f.Type != "subscribed" {
		t.Fatalf("subscribe: %+v", f)
	}
	if f, _ := read(t, c, 2*time.Second); f.Type != "snapshot" {
		t.Fatalf("snapshot: %+v", f)
	}
	outlast()
	e.update("1002:m:1", 42)
	if f, pts := read(t, c, 2*time.Second); f.Type != "update" || len(pts) != 1 || *pts[0].Value != 42 {
		t.Fatalf("update after the timeouts: %+v %+v", f, pts)
	}
}
