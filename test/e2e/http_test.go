package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/test/testenv"
)

// The HTTP edge of a running node, seen from raw sockets and clients on
// other loopback addresses: timeouts, the connection cap, failed
// authentication throttling, strict bodies, security headers and TLS.

const pvTable = "point_id,type,name,unit,signal,min,max,period\n1,m,pv_power,kW,sine,0,500,10s\n5,c,inverter_enable,,,,,\n"

// edgeNode is a node with a virtual channel (1002: 1002:m:1 moving,
// 1002:c:5 writable) and the operator and viewer tokens of control_test.go.
type edgeNode struct {
	p      *proc
	redis  *testenv.Redis
	addr   string // 127.0.0.1:PORT
	base   string // http:// or https:// + addr
	dir    string
	cfg    string
	client *http.Client // trusts the node's CA when it has one
}

// startEdgeNode runs a node whose `node:` mapping has the extra lines
// nodeYAML (indented by two spaces), with files added to its directory.
func startEdgeNode(t *testing.T, nodeYAML string, files map[string]string, client *http.Client) *edgeNode {
	t.Helper()
	r := testenv.StartRedis(t)
	port := testenv.FreePort(t)
	if files == nil {
		files = map[string]string{}
	}
	files["node.yaml"] = fmt.Sprintf(`node:
  name: edge
  http: "127.0.0.1:%d"
%sredis: {url: %q}
auth:
  tokens:
    - {name: op1, token: %s, role: operator}
    - {name: watcher, token: %s, role: viewer}
channels:
  - {id: 1002, name: PV, protocol: virtual, poll_interval: 100ms, points: pv.csv}
`, port, nodeYAML, r.URL(), opToken, viewerToken)
	files["pv.csv"] = pvTable
	n := &edgeNode{redis: r, addr: "127.0.0.1:" + strconv.Itoa(port), dir: writeFiles(t, files), client: client}
	if n.client == nil {
		n.client = &http.Client{Timeout: 10 * time.Second}
	}
	n.cfg = filepath.Join(n.dir, "node.yaml")
	n.p = start(t, nil, "run", "-c", n.cfg)
	scheme := "http://"
	if strings.Contains(nodeYAML, "tls:") {
		scheme = "https://"
	}
	n.base = scheme + n.addr
	testenv.Eventually(t, 15*time.Second, func() bool {
		resp, err := n.client.Get(n.base + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "node ready at %s", n.base)
	return n
}

// openFDs counts the node process's open file descriptors.
func (n *edgeNode) openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", n.p.cmd.Process.Pid))
	if err != nil {
		t.Skipf("cannot count the node's file descriptors: %v", err)
	}
	return len(ents)
}

// clientAt is an HTTP client whose connections come from the loopback
// address ip, with tc for https.
func clientAt(t *testing.T, ip string, tc *tls.Config) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext, TLSClientConfig: tc}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

type answer struct {
	status int
	header http.Header
	body   string
}

func call(t *testing.T, c *http.Client, method, url, token, body string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b)}
}

// metric reads one sample of the node's /metrics.
func metric(t *testing.T, c *http.Client, base, name string) float64 {
	t.Helper()
	a := call(t, c, http.MethodGet, base+"/metrics", viewerToken, "")
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(a.body)
	if a.status != 200 || m == nil {
		t.Fatalf("metric %s not in /metrics (%d)", name, a.status)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestHTTPSlowClientsAndIdleConnections: 200 sockets that send half a body
// without a token are all closed within the read timeout and the node's
// file descriptors come back; an idle keep-alive connection is closed after
// the idle timeout; a WebSocket outlives both.
func TestHTTPSlowClientsAndIdleConnections(t *testing.T) {
	n := startEdgeNode(t, `  http_read_header_timeout: 1s
  http_read_timeout: 1s
  http_idle_timeout: 1s
  http_max_conns_per_client: 0
`, nil, nil)
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/ws?token="+viewerToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	before := n.openFDs(t)
	const slow = 200
	half := "POST /control/1002/5 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"value\":"
	conns := make([]net.Conn, slow)
	for i := range conns {
		conns[i] = testenv.DialFrom(t, "127.0.0.1", n.addr)
		if _, err := io.WriteString(conns[i], half); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return n.openFDs(t) >= before+slow/2 }, "the node holding the slow sockets")
	start := time.Now()
	for i, c := range conns {
		if closed, got := testenv.ClosedWithin(c, 4*time.Second); !closed {
			t.Fatalf("slow socket %d still open %v after sending half a body (read %q)", i, time.Since(start).Round(time.Millisecond), got)
		}
	}
	t.Logf("%d slow sockets closed by the node within %v", slow, time.Since(start).Round(time.Millisecond))
	testenv.Eventually(t, 5*time.Second, func() bool { return n.openFDs(t) <= before+2 }, "the node's descriptors back to %d", before)

	// An idle keep-alive connection.
	c := testenv.DialFrom(t, "127.0.0.1", n.addr)
	br := bufio.NewReader(c)
	if _, err := io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /health: %v %v", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	start = time.Now()
	_ = c.SetReadDeadline(time.Now().Add(4 * time.Second))
	if _, err := br.ReadByte(); err == nil || os.IsTimeout(err) {
		t.Fatalf("idle keep-alive connection still open after %v (idle timeout 1s): %v", time.Since(start), err)
	}

	// The WebSocket opened before all that still works.
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"op":"subscribe","patterns":["1002:m:1"]}`)); err != nil {
		t.Fatalf("WebSocket after the timeouts: %v", err)
	}
	for seen := map[string]bool{}; !seen["update"]; {
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, data, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("WebSocket after the timeouts (seen %v): %v", seen, err)
		}
		var f struct{ Type string }
		_ = json.Unmarshal(data, &f)
		seen[f.Type] = true
	}
}

// TestHTTPConnsPerClient: a client address holds at most
// http_max_conns_per_client connections; one more is closed at once,
// counted and logged; another address is served.
func TestHTTPConnsPerClient(t *testing.T) {
	n := startEdgeNode(t, `  http_read_header_timeout: 10s
  http_read_timeout: 10s
  http_max_conns_per_client: 5
`, nil, nil)
	n.client.CloseIdleConnections() // the readiness check's connection
	other := clientAt(t, "127.0.0.2", nil)
	testenv.Eventually(t, 5*time.Second, func() bool {
		return metric(t, other, n.base, "voltage_http_connections_open") == 1 // this one
	}, "no other connection open")
	held := make([]net.Conn, 5)
	for i := range held {
		held[i] = testenv.DialFrom(t, "127.0.0.1", n.addr)
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		return metric(t, other, n.base, "voltage_http_connections_open") == 6
	}, "5 connections from 127.0.0.1 accepted")
	start := time.Now()
	over := testenv.DialFrom(t, "127.0.0.1", n.addr)
	_, _ = io.WriteString(over, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
	if closed, got := testenv.ClosedWithin(over, 3*time.Second); !closed || strings.Contains(got, "200 OK") || time.Since(start) > time.Second {
		t.Fatalf("6th connection from 127.0.0.1: closed %v after %v, read %q", closed, time.Since(start), got)
	}
	if a := call(t, other, http.MethodGet, n.base+"/health", "", ""); a.status != 200 {
		t.Fatalf("from 127.0.0.2: %d %s", a.status, a.body)
	}
	if v := metric(t, other, n.base, "voltage_http_connections_refused_total"); v != 1 {
		t.Fatalf("voltage_http_connections_refused_total %v, want 1", v)
	}
	_ = held[0].Close()
	testenv.Eventually(t, 5*time.Second, func() bool {
		c := clientAt(t, "127.0.0.1", nil)
		resp, err := c.Get(n.base + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "127.0.0.1 served again once one of its connections closed")
	for _, want := range []string{"too many open connections from this client address", "remote=127.0.0.1", "max=5"} {
		if !strings.Contains(n.p.Output(), want) {
			t.Fatalf("log lacks %q", want)
		}
	}
}

// TestHTTPAuthThrottle: 30 wrong tokens on one connection are 401 ten
// times, then 429 with Retry-After; the right token from that address is
// 429 too until it may try again; 127.0.0.2 is not affected; the log names
// the address, the route and the count, never a token.
func TestHTTPAuthThrottle(t *testing.T) {
	n := startEdgeNode(t, "  http_auth_refill: 3s\n", nil, nil)
	one, two := clientAt(t, "127.0.0.1", nil), clientAt(t, "127.0.0.2", nil)
	url := n.base + "/api/points?pattern=1002:*"
	const guess = "guessed-token-0000"
	var codes []int
	var last answer
	for i := range 30 {
		last = call(t, one, http.MethodGet, url, fmt.Sprintf("%s%02d", guess, i), "")
		codes = append(codes, last.status)
	}
	for i, c := range codes {
		if want := map[bool]int{true: 401, false: 429}[i < 10]; c != want {
			t.Fatalf("30 wrong tokens: %v, want 10 x 401 then 429", codes)
		}
	}
	if s, err := strconv.Atoi(last.header.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("429 Retry-After %q: %s", last.header.Get("Retry-After"), last.body)
	}
	if a := call(t, one, http.MethodGet, url, viewerToken, ""); a.status != 429 {
		t.Fatalf("right token from the throttled address: %d %s", a.status, a.body)
	}
	if a := call(t, one, http.MethodPost, n.base+"/control/1002/5", opToken, `{"value":1}`); a.status != 429 {
		t.Fatalf("control from the throttled address: %d %s", a.status, a.body)
	}
	if a := call(t, two, http.MethodGet, url, viewerToken, ""); a.status != 200 {
		t.Fatalf("from 127.0.0.2: %d %s", a.status, a.body)
	}
	if v := metric(t, two, n.base, "voltage_http_auth_failures_total"); v != 10 {
		t.Fatalf("voltage_http_auth_failures_total %v, want 10", v)
	}
	if v := metric(t, two, n.base, "voltage_http_auth_throttled_total"); v != 22 {
		t.Fatalf("voltage_http_auth_throttled_total %v, want 22", v)
	}
	testenv.Eventually(t, 8*time.Second, func() bool { return call(t, one, http.MethodGet, url, viewerToken, "").status == 200 },
		"the right token accepted again after Retry-After")
	out := n.p.Output()
	if strings.Contains(out, guess) || strings.Contains(out, viewerToken) || strings.Contains(out, opToken) {
		t.Fatalf("a token in the node's log:\n%s", out)
	}
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "throttling failed authentications") {
			line = l
		}
	}
	for _, want := range []string{"remote=127.0.0.1", `route="GET /api/points"`, "failures=10", "retry_after_s=3"} {
		if !strings.Contains(line, want) {
			t.Fatalf("throttling log line %q lacks %q", line, want)
		}
	}
}

// TestHTTPStrictBodiesAndHeaders: duplicate and wrongly cased fields are
// refused and nothing is sent; every answer has the security headers.
func TestHTTPStrictBodiesAndHeaders(t *testing.T) {
	n := startEdgeNode(t, "", nil, nil)
	f := func(body, want string) {
		t.Helper()
		a := call(t, n.client, http.MethodPost, n.base+"/control/1002/5", opToken, body)
		if a.status != 400 || !strings.Contains(a.body, want) {
			t.Fatalf("%s: %d %s, want 400 with %s", body, a.status, a.body, want)
		}
	}
	f(`{"value":1,"value":0}`, `duplicate field \"value\"`)
	f(`{"Value":1}`, `unknown field \"Value\" (fields are case sensitive: did you mean \"value\"?)`)
	f(`{"value":1,"wait":"1s","WAIT":"2s"}`, `did you mean \"wait\"?`)
	rdb := redis.NewClient(&redis.Options{Addr: n.redis.Addr()})
	defer rdb.Close()
	if keys, _ := rdb.Keys(context.Background(), "cmd:result:*").Result(); len(keys) > 0 {
		t.Fatalf("refused bodies were claimed: %v", keys)
	}
	// The same command, once well formed, runs.
	if a := call(t, n.client, http.MethodPost, n.base+"/control/1002/5", opToken, `{"value":1,"wait":"3s"}`); a.status != 200 || !strings.Contains(a.body, `"success"`) {
		t.Fatalf("well-formed command: %d %s", a.status, a.body)
	}

	for _, path := range []string{"/", "/api/points?pattern=1002:*", "/metrics", "/health", "/api/nothing"} {
		a := call(t, n.client, http.MethodGet, n.base+path, viewerToken, "")
		csp := a.header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "unsafe-inline") ||
			a.header.Get("X-Content-Type-Options") != "nosniff" || a.header.Get("Referrer-Policy") != "no-referrer" ||
			a.header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("GET %s: security headers %v", path, a.header)
		}
		if cc := a.header.Get("Cache-Control"); (path == "/") != (cc == "no-cache") || (path != "/" && cc != "no-store") {
			t.Errorf("GET %s: Cache-Control %q", path, cc)
		}
	}
}

// tlsFiles copies the PEM files of a test CA into the node's directory.
func tlsFiles(t *testing.T, ca *testenv.CA, names ...string) map[string]string {
	t.Helper()
	files := map[string]string{}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	files["tls/ca.crt"] = read(ca.CertPEM)
	for _, name := range names {
		cert, key := ca.Issue(t, name)
		files["tls/"+name+".crt"], files["tls/"+name+".key"] = read(cert), read(key)
	}
	return files
}

// wsSnapshot subscribes on a WebSocket and waits for the snapshot.
func wsSnapshot(t *testing.T, d *websocket.Dialer, url string) error {
	t.Helper()
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		return err
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"op":"subscribe","patterns":["1002:m:1"]}`)); err != nil {
		return err
	}
	for {
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, data, err := ws.ReadMessage()
		if err != nil {
			return err
		}
		if strings.Contains(string(data), `"snapshot"`) {
			return nil
		}
	}
}

// TestHTTPS: node.tls serves the API and the WebSocket over TLS with the
// configured certificate; clients that do not trust its CA, plain HTTP and
// TLS 1.1 are refused; `voltage control` speaks https.
func TestHTTPS(t *testing.T) {
	ca := testenv.NewCA(t, "site")
	trusted := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: ca.ClientTLS(t, "", "")}}
	n := startEdgeNode(t, "  tls: {cert: tls/node.crt, key: tls/node.key}\n", tlsFiles(t, ca, "node"), trusted)
	if !strings.Contains(n.p.Output(), "addr=https://"+n.addr) {
		t.Fatalf("the log does not give the https address:\n%s", n.p.Output())
	}
	if a := call(t, trusted, http.MethodGet, n.base+"/api/points?pattern=1002:*", viewerToken, ""); a.status != 200 || !strings.Contains(a.body, "1002:m:1") {
		t.Fatalf("https API: %d %s", a.status, a.body)
	}
	// A client that does not trust the CA fails the handshake.
	if _, err := (&http.Client{Timeout: 5 * time.Second}).Get(n.base + "/health"); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("untrusting client: %v", err)
	}
	// Plain HTTP and old TLS are refused.
	if resp, err := http.Get("http://" + n.addr + "/health"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP answered 200 on the TLS port")
		}
	}
	old := ca.ClientTLS(t, "", "")
	old.MaxVersion = tls.VersionTLS11
	if _, err := tls.Dial("tcp", n.addr, old); err == nil {
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
	// The WebSocket over wss.
	if err := wsSnapshot(t, &websocket.Dialer{TLSClientConfig: ca.ClientTLS(t, "", "")}, "wss://"+n.addr+"/ws?token="+viewerToken); err != nil {
		t.Fatalf("wss: %v", err)
	}
	if err := wsSnapshot(t, &websocket.Dialer{}, "wss://"+n.addr+"/ws?token="+viewerToken); err == nil {
		t.Fatal("wss without trusting the CA succeeded")
	}

	// voltage control: with -c it trusts the node's own certificate.
	env := []string{"VOLTAGE_TOKEN=" + opToken}
	if out, code := runCmd(t, env, "control", "-c", n.cfg, "--point", "1002:c:5", "--value", "1"); code != 0 || !strings.Contains(out, `"success"`) {
		t.Fatalf("voltage control -c over https: exit %d\n%s", code, out)
	}
	if out, code := runCmd(t, env, "control", "--url", n.base, "--ca", ca.CertPEM, "--point", "1002:c:5", "--value", "0"); code != 0 || !strings.Contains(out, `"success"`) {
		t.Fatalf("voltage control --url --ca: exit %d\n%s", code, out)
	}
	if out, code := runCmd(t, env, "control", "--url", n.base, "--point", "1002:c:5", "--value", "1"); code == 0 || !strings.Contains(out, "give --ca FILE") {
		t.Fatalf("voltage control without a CA that signs the node: exit %d\n%s", code, out)
	}
}

// TestHTTPSMutualTLS: with node.tls.client_ca, a client without a
// certificate from that CA is refused in the handshake; with one it is
// served, over https, wss and `voltage control --cert --key`.
func TestHTTPSMutualTLS(t *testing.T) {
	ca := testenv.NewCA(t, "site")
	stranger := testenv.NewCA(t, "stranger")
	files := tlsFiles(t, ca, "node", "operator")
	withCert := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: ca.ClientTLS(t, filepath.Join(ca.Dir, "operator.crt"), filepath.Join(ca.Dir, "operator.key"))}}
	n := startEdgeNode(t, "  tls: {cert: tls/node.crt, key: tls/node.key, client_ca: tls/ca.crt}\n", files, withCert)
	if a := call(t, withCert, http.MethodGet, n.base+"/api/points?pattern=1002:*", viewerToken, ""); a.status != 200 {
		t.Fatalf("client with a certificate: %d %s", a.status, a.body)
	}
	noCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: ca.ClientTLS(t, "", "")}}
	if _, err := noCert.Get(n.base + "/health"); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	sCert, sKey := stranger.Issue(t, "mallory")
	other := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: ca.ClientTLS(t, sCert, sKey)}}
	if _, err := other.Get(n.base + "/health"); err == nil {
		t.Fatal("a client with a certificate of another CA was served")
	}
	tc := ca.ClientTLS(t, filepath.Join(ca.Dir, "operator.crt"), filepath.Join(ca.Dir, "operator.key"))
	if err := wsSnapshot(t, &websocket.Dialer{TLSClientConfig: tc}, "wss://"+n.addr+"/ws?token="+viewerToken); err != nil {
		t.Fatalf("wss with a client certificate: %v", err)
	}
	env := []string{"VOLTAGE_TOKEN=" + opToken}
	if out, code := runCmd(t, env, "control", "-c", n.cfg, "--cert", filepath.Join(n.dir, "tls/operator.crt"), "--key", filepath.Join(n.dir, "tls/operator.key"),
		"--point", "1002:c:5", "--value", "1"); code != 0 || !strings.Contains(out, `"success"`) {
		t.Fatalf("voltage control with a client certificate: exit %d\n%s", code, out)
	}
	if out, code := runCmd(t, env, "control", "-c", n.cfg, "--point", "1002:c:5", "--value", "0"); code == 0 || !strings.Contains(out, "give --cert FILE --key FILE") {
		t.Fatalf("voltage control without a client certificate: exit %d\n%s", code, out)
	}
}

// TestHTTPTLSConfigErrors: `voltage check` reports TLS files that cannot be
// used with the file, line and field, all at once.
func TestHTTPTLSConfigErrors(t *testing.T) {
	ca := testenv.NewCA(t, "site")
	files := tlsFiles(t, ca, "node", "other")
	files["node.yaml"] = `node:
  name: bad
  tls:
    cert: tls/node.crt
    key: tls/other.key
    client_ca: tls/missing.crt
channels:
  - {id: 1002, name: PV, protocol: virtual, points: pv.csv}
`
	files["pv.csv"] = pvTable
	dir := writeFiles(t, files)
	cfg := filepath.Join(dir, "node.yaml")
	out, code := runCmd(t, nil, "check", "-c", cfg)
	if code == 0 {
		t.Fatalf("check passed:\n%s", out)
	}
	for _, want := range []string{
		cfg + ":5: node.tls.key: " + filepath.Join(dir, "tls/other.key") + " does not go with " + filepath.Join(dir, "tls/node.crt") + ": private key does not match public key",
		cfg + ":6: node.tls.client_ca: cannot read " + filepath.Join(dir, "tls/missing.crt") + ": no such file or directory",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
}
