// Package testenv starts the real servers that integration tests talk to
// (redis-server on a free loopback port) and provides small waiting helpers.
// Every server is stopped with t.Cleanup.
package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Eventually polls cond every 10 ms until it returns true or d passes, and
// fails the test with msg (formatted with args) if it never does.
func Eventually(t testing.TB, d time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: "+msg, append([]any{d}, args...)...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := PickPort()
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	return p
}

// PickPort returns a TCP port on 127.0.0.1 that was free a moment ago
// (for harnesses outside tests), reserved for this process (ports.go); the
// kernel's choice when no reservation could be made.
func PickPort() (int, error) {
	if p := reservePort(); p != 0 {
		return p, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Redis is a redis-server process owned by one test.
type Redis struct {
	process
	Port  int
	dir   string
	extra []string // more redis-server arguments (ACL users, a TLS port)
}

// Addr is host:port of the server.
func (r *Redis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.Port) }

// URL is the redis:// URL of the server.
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }

// RedisServerPath returns the redis-server binary, or "" when it is absent.
func RedisServerPath() string {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return ""
	}
	return p
}

// StartRedis starts a redis-server without persistence on a free port. It
// skips the test when redis-server is not installed (.ci/run installs it).
func StartRedis(t testing.TB) *Redis { t.Helper(); return StartRedisWith(t) }

// StartRedisWith is StartRedis with more redis-server arguments, for
// example an ACL user ("--user", "site-a on >secret ~site-a:* &site-a:* +@all")
// or a TLS port ("--tls-port", "N", "--tls-cert-file", ...). The plain port
// stays open for the test's own checks.
func StartRedisWith(t testing.TB, args ...string) *Redis {
	t.Helper()
	if RedisServerPath() == "" {
		t.Skip("redis-server not on PATH: install the Debian package redis-server (.ci/run does)")
	}
	r, err := startRedisServer(t.TempDir(), args)
	if err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	r.t = t
	t.Cleanup(r.Stop)
	return r
}

// StartRedisServer starts a redis-server with its files in dir, outside a
// test (benchmark harnesses). The caller stops it.
func StartRedisServer(dir string) (*Redis, error) { return startRedisServer(dir, nil) }

func startRedisServer(dir string, extra []string) (*Redis, error) {
	if RedisServerPath() == "" {
		return nil, fmt.Errorf("redis-server not on PATH (Debian package redis-server)")
	}
	r := &Redis{dir: dir, extra: extra}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if r.Port, err = PickPort(); err != nil {
			return nil, err
		}
		if err = r.start(); err == nil {
			return r, nil
		}
	}
	return nil, err
}

func (r *Redis) start() error {
	args := []string{"--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir,
		"--logfile", filepath.Join(r.dir, "redis.log")}
	r.cmd = exec.Command(RedisServerPath(), append(args, r.extra...)...)
	done, err := r.run()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
			return fmt.Errorf("redis-server exited: %s", lastLines(string(log), 5))
		default:
		}
		if pingRedis(r.Addr()) == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.kill()
	return fmt.Errorf("redis-server on %s did not answer PING within 5s", r.Addr())
}

// Restart starts the server again on the same port, empty (Stop kills it
// as a crash would: nothing is saved). Started by StartRedis, a failure
// fails the test.
func (r *Redis) Restart() { r.restart(r.start, "redis-server on "+r.Addr()) }

// process is a server process owned by a test (t set) or a harness.
type process struct {
	t    testing.TB
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// run starts p.cmd and returns the channel closed when it exits.
func (p *process) run() (<-chan struct{}, error) {
	p.done = make(chan struct{})
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	cmd, done := p.cmd, p.done
	go func() { _ = cmd.Wait(); close(done) }()
	return done, nil
}

// Stop kills the server. Idempotent.
func (p *process) Stop() {
	if p.cmd != nil {
		p.kill()
		p.cmd = nil
	}
}

func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// restart stops the server and calls start until it succeeds (the ports
// may linger briefly); failing that it fails the test, or panics outside one.
func (p *process) restart(start func() error, what string) {
	p.Stop()
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		if err = start(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p.t != nil {
		p.t.Helper()
		p.t.Fatalf("restart %s: %v", what, err)
	}
	panic(fmt.Sprintf("restart %s: %v", what, err))
}

// pingRedis speaks just enough RESP to see that the server answers.
func pingRedis(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("unexpected PING answer %q", line)
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
