package web

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

// recordingSink keeps the audit events it is given.
type recordingSink struct {
	mu  sync.Mutex
	evs []messages.AuditEvent
}

func (s *recordingSink) Audit(ev *messages.AuditEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evs = append(s.evs, *ev)
}

func (s *recordingSink) take() []messages.AuditEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.evs
	s.evs = nil
	return out
}

// edgeEnv is the handler with a log, metrics and an audit sink to look at.
type edgeEnv struct {
	*env
	log   *testenv.LogBuffer
	reg   *prometheus.Registry
	m     *HTTPMetrics
	audit *recordingSink
}

// edgeYAML is testYAML with an alarm and a short auth refill.
var edgeYAML = strings.Replace(testYAML, "node: {name: web-test}", "node: {name: web-test, http_auth_refill: 2s}", 1) +
	`alarms:
  - {id: hv, point: "1001:m:10001", condition: ">", threshold: 250}
`

func newEdgeEnv(t *testing.T, yaml string) *edgeEnv {
	t.Helper()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: 1})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &edgeEnv{log: &testenv.LogBuffer{}, reg: prometheus.NewRegistry(), audit: &recordingSink{}}
	e.m = NewHTTPMetrics(e.reg)
	h := NewHandler(Deps{
		Config: loadTestConfig(t, yaml), Redis: rdb, Gatherer: e.reg, Version: "test",
		Log: slog.New(slog.NewTextHandler(e.log, nil)), Context: ctx, Metrics: e.m, Audit: e.audit,
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	e.env = &env{t: t, redis: r, rdb: rdb, srv: srv}
	return e
}

// clientFrom is an HTTP client whose connections come from the loopback
// address ip (127.0.0.2: another client address for the server).
func clientFrom(t testing.TB, ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func doWith(t testing.TB, c *http.Client, method, url, token, body string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// TestSecurityHeaders: every answer carries the policy and the other
// security headers; API answers are not cached, the dashboard revalidates.
func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t, testYAML)
	f := func(path, token string, status int, cache string) {
		t.Helper()
		r := e.do(http.MethodGet, path, token, "")
		if r.status != status {
			t.Fatalf("GET %s: %s", path, r)
		}
		want := map[string]string{
			"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
				"font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
			"X-Content-Type-Options": "nosniff",
			"Referrer-Policy":        "no-referrer",
			"X-Frame-Options":        "DENY",
			"Cache-Control":          cache,
		}
		for k, v := range want {
			if got := r.header.Get(k); got != v {
				t.Errorf("GET %s: %s: %q, want %q", path, k, got, v)
			}
		}
	}
	f("/", "", 200, "no-cache")
	f("/static/app.js", "", 200, "no-cache")
	f("/health", "", 200, "no-store")
	f("/api/points?pattern=1001:m:*", viewerToken, 200, "no-store")
	f("/api/channels", "", 401, "no-store")
	f("/metrics", viewerToken, 200, "no-store")
	f("/no/such/route", "", 404, "no-store")
}

// TestAuthThrottle: after a burst of wrong tokens, an address is answered
// 429 with Retry-After, even for a right token, until the bucket refills;
// another address is not affected; the log names the address and route,
// never the token; the metrics count it.
func TestAuthThrottle(t *testing.T) {
	e := newEdgeEnv(t, edgeYAML)
	one, two := clientFrom(t, "127.0.0.1"), clientFrom(t, "127.0.0.2")
	url := e.srv.URL + "/api/points?pattern=1001:m:*"
	const guess = "guess-token-0000000"
	var statuses []int
	var last response
	for i := range 30 {
		last = doWith(t, one, http.MethodGet, url, fmt.Sprintf("%s%02d", guess, i), "")
		statuses = append(statuses, last.status)
	}
	for i, s := range statuses {
		if want := map[bool]int{true: 401, false: 429}[i < 10]; s != want {
			t.Fatalf("answers to 30 wrong tokens: %v; want 10 x 401 then 429", statuses)
		}
	}
	retry, err := strconv.Atoi(last.header.Get("Retry-After"))
	if err != nil || retry < 1 {
		t.Fatalf("429 without Retry-After in seconds: %q (%s)", last.header.Get("Retry-After"), last)
	}
	if er := last.errorBody(t); er.Code != "too_many_requests" {
		t.Fatalf("429 body %+v", er)
	}
	// A right token from the throttled address: refused unseen, on every route.
	if r := doWith(t, one, http.MethodGet, url, viewerToken, ""); r.status != 429 {
		t.Fatalf("right token while throttled: %s", r)
	}
	if r := doWith(t, one, http.MethodPost, e.srv.URL+"/control/1001/3", operatorToken, `{"value":1}`); r.status != 429 {
		t.Fatalf("control while throttled: %s", r)
	}
	if r := doWith(t, one, http.MethodGet, e.srv.URL+"/ws?token="+viewerToken, "", ""); r.status != 429 {
		t.Fatalf("/ws while throttled: %s", r)
	}
	// No token at all: the usual 401, and the open routes stay open.
	if r := doWith(t, one, http.MethodGet, url, "", ""); r.status != 401 {
		t.Fatalf("no token while throttled: %s", r)
	}
	if r := doWith(t, one, http.MethodGet, e.srv.URL+"/health", "", ""); r.status != 200 {
		t.Fatalf("/health while throttled: %s", r)
	}
	// Another address.
	if r := doWith(t, two, http.MethodGet, url, viewerToken, ""); r.status != 200 {
		t.Fatalf("right token from 127.0.0.2: %s", r)
	}
	if r := doWith(t, two, http.MethodGet, url, guess, ""); r.status != 401 {
		t.Fatalf("wrong token from 127.0.0.2: %s", r)
	}
	// The bucket refills (2 s per attempt here).
	testenv.Eventually(t, 5*time.Second, func() bool {
		return doWith(t, one, http.MethodGet, url, viewerToken, "").status == 200
	}, "right token accepted again after Retry-After")

	logs := e.log.String()
	if strings.Contains(logs, guess) || strings.Contains(logs, viewerToken) || strings.Contains(logs, operatorToken) {
		t.Fatalf("a token in the log:\n%s", logs)
	}
	for _, want := range []string{"throttling failed authentications", "remote=127.0.0.1", `route="GET /api/points"`, "failures=10"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("log lacks %q:\n%s", want, logs)
		}
	}
	if n := strings.Count(logs, "\n"); n > 6 {
		t.Fatalf("%d log lines for one flood:\n%s", n, logs)
	}
	if got := testutil.ToFloat64(e.m.authFailures); got != 11 {
		t.Errorf("voltage_http_auth_failures_total %v, want 11", got)
	}
	if got := testutil.ToFloat64(e.m.authThrottled); got < 23 {
		t.Errorf("voltage_http_auth_throttled_total %v, want at least 23", got)
	}
}

// TestAuthThrottleBounded: a flood from many addresses keeps a bounded
// table; beyond it new addresses share one bucket.
func TestAuthThrottleBounded(t *testing.T) {
	th := newAuthThrottle(2, time.Minute, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	now := time.Unix(1000, 0)
	for i := range maxThrottleClients + 500 {
		key := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		th.fail(key, "GET /x", now)
	}
	if n := th.size(); n > maxThrottleClients+1 {
		t.Fatalf("%d addresses remembered, want at most %d", n, maxThrottleClients+1)
	}
	// The overflow bucket took 500 failures: new addresses are throttled.
	if _, throttled := th.check("192.0.2.1", "GET /x", now); !throttled {
		t.Fatal("a new address is not throttled while the overflow bucket is empty")
	}
	// Once the buckets have refilled, a sweep makes room again.
	later := now.Add(time.Hour)
	th.fail("192.0.2.7", "GET /x", later)
	if n := th.size(); n > 2 {
		t.Fatalf("%d addresses remembered after they all refilled", n)
	}
	if _, throttled := th.check("192.0.2.1", "GET /x", later); throttled {
		t.Fatal("a new address is throttled after the sweep")
	}
}

func TestClientKey(t *testing.T) {
	f := func(remote, want string) {
		t.Helper()
		if got := clientKey(remote); got != want {
			t.Errorf("clientKey(%q) = %q, want %q", remote, got, want)
		}
	}
	f("127.0.0.1:5000", "127.0.0.1")
	f("[::ffff:10.1.2.3]:80", "10.1.2.3")
	f("[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64")
	f("[2001:db8:1:2:ffff::1]:443", "2001:db8:1:2::/64")
	f("[fe80::1%eth0]:1", "fe80::/64")
	f("@", "@")
}

// TestAuditRefused: every refused control or alarm action is recorded
// with who, from where, on what and why; accepted ones and reads are not.
func TestAuditRefused(t *testing.T) {
	e := newEdgeEnv(t, edgeYAML)
	e.watchBus()
	f := func(method, path, token, body string, status int, want messages.AuditEvent) {
		t.Helper()
		if r := e.do(method, path, token, body); r.status != status {
			t.Fatalf("%s %s: %s, want %d", method, path, r, status)
		}
		evs := e.audit.take()
		if want.Event == "" {
			if len(evs) > 0 {
				t.Fatalf("%s %s: audited %+v", method, path, evs)
			}
			return
		}
		if len(evs) != 1 {
			t.Fatalf("%s %s: %d audit events %+v, want 1", method, path, len(evs), evs)
		}
		ev := evs[0]
		if ev.Time == 0 || !strings.HasPrefix(ev.Remote, "127.0.0.1:") || ev.Node != "web-test" || ev.Source != "api" {
			t.Errorf("%s %s: %+v", method, path, ev)
		}
		reason := ev.Reason
		if !strings.Contains(reason, want.Reason) {
			t.Errorf("%s %s: reason %q, want it to contain %q", method, path, reason, want.Reason)
		}
		if (ev.Value == nil) != (want.Value == nil) || (ev.Value != nil && *ev.Value != *want.Value) {
			t.Errorf("%s %s: value %v, want %v", method, path, ev.Value, want.Value)
		}
		ev.Time, ev.Remote, ev.Node, ev.Source, ev.Reason, ev.Value = 0, "", "", "", "", nil
		want.Reason, want.Value = "", nil
		if ev != want {
			t.Errorf("%s %s:\n got %+v\nwant %+v", method, path, ev, want)
		}
	}
	const post = http.MethodPost
	ctl := "POST /control/:channel_id/:point_id"
	v := func(f float64) *float64 { return &f }
	f(post, "/control/1001/1", "wrong-token-000000", `{"value":1}`, 401,
		messages.AuditEvent{Event: "refused", Route: ctl, HTTPStatus: 401, Point: "1001:*:1", Reason: "unknown token"})
	f(post, "/control/1001/1", viewerToken, `{"value":1}`, 403,
		messages.AuditEvent{Event: "refused", Route: ctl, HTTPStatus: 403, User: "view1", Point: "1001:*:1", Reason: "needs role operator"})
	f(post, "/control/1001/1", operatorToken, `{"type":"a","value":1,"value":450}`, 400,
		messages.AuditEvent{Event: "refused", Route: ctl, HTTPStatus: 400, User: "op1", Point: "1001:*:1", Reason: `duplicate field "value"`})
	f(post, "/control/1001/1", operatorToken, `{"type":"a","value":600,"id":"k-600"}`, 400,
		messages.AuditEvent{Event: "refused", Route: ctl, HTTPStatus: 400, User: "op1", Point: "1001:a:1", ID: "k-600", Value: v(600), Reason: "outside the range"})
	f(post, "/control/1001/99", operatorToken, `{"value":1}`, 404,
		messages.AuditEvent{Event: "refused", Route: ctl, HTTPStatus: 404, User: "op1", Point: "1001:*:99", Value: v(1), Reason: "no c or a point 99"})
	f(post, "/api/alarms/hv/shelve", operatorToken, `{"for":"1h","for":"2h","reason":"x"}`, 400,
		messages.AuditEvent{Event: "refused", Route: "POST /api/alarms/:id/shelve", HTTPStatus: 400, User: "op1", Point: "1001:m:10001", Reason: `alarm "hv": duplicate field "for"`})
	f(post, "/api/alarms/hv/ack", operatorToken, `{"Comment":"x"}`, 400,
		messages.AuditEvent{Event: "refused", Route: "POST /api/alarms/:id/ack", HTTPStatus: 400, User: "op1", Point: "1001:m:10001", Reason: `did you mean "comment"?`})
	f(post, "/api/alarms/hv/unshelve", viewerToken, ``, 403,
		messages.AuditEvent{Event: "refused", Route: "POST /api/alarms/:id/unshelve", HTTPStatus: 403, User: "view1", Point: "1001:m:10001", Reason: "needs role operator"})
	// Not refused: accepted commands, reads, unavailable alarm actors.
	f(post, "/control/1001/3", operatorToken, `{"value":1}`, 202, messages.AuditEvent{})
	f(http.MethodGet, "/api/points", "wrong-token-000000", ``, 401, messages.AuditEvent{})
	f(post, "/api/alarms/hv/ack", operatorToken, ``, 503, messages.AuditEvent{})
	// Throttled: 429, audited as such.
	for range 10 {
		e.do(post, "/control/1001/1", "wrong-token-000000", `{"value":1}`)
	}
	e.audit.take()
	f(post, "/control/1001/1", operatorToken, `{"value":1}`, 429,
		messages.AuditEvent{Event: "refused", Route: ctl, HTTPStatus: 429, Point: "1001:*:1", Reason: "too many failed authentications"})
}

// TestStrictAlarmBodies: the alarm action bodies are as strict as the
// control body.
func TestStrictAlarmBodies(t *testing.T) {
	e := newEdgeEnv(t, edgeYAML)
	f := func(action, body, want string) {
		t.Helper()
		r := e.do(http.MethodPost, "/api/alarms/hv/"+action, operatorToken, body)
		if r.status != 400 || !strings.Contains(r.errorBody(t).Message, want) {
			t.Fatalf("%s %s: %s, want 400 with %q", action, body, r, want)
		}
	}
	f("ack", `{"comment":"a","comment":"b"}`, `duplicate field "comment"`)
	f("ack", `{"COMMENT":"a"}`, `unknown field "COMMENT" (fields are case sensitive: did you mean "comment"?)`)
	f("shelve", `{"for":"1h","Reason":"x"}`, `did you mean "reason"?`)
	f("shelve", `{"for":"1h","reason":"x","reason":"y"}`, `duplicate field "reason"`)
	f("unshelve", `{"x":1}`, `unknown field "x" (want none)`)
}
