package notify

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/voltage-ems/voltage/supervisor"
	"github.com/voltage-ems/voltage/test/testenv"
)

// fastPolicy retries after 5ms, 10ms, 20ms, 40ms, 50ms, ... without jitter.
var fastPolicy = supervisor.Policy{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// start returns a Notifier with fastPolicy (unless opt has a policy), fresh
// metrics and a captured log; it is stopped at the end of the test, before
// the test's servers close.
func start(t *testing.T, opt Options) (*Notifier, *Metrics, *testenv.LogBuffer) {
	t.Helper()
	logs := &testenv.LogBuffer{}
	opt.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if opt.Policy == (supervisor.Policy{}) {
		opt.Policy = fastPolicy
	}
	if opt.Metrics == nil {
		opt.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	n := New(opt)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n.Stop(ctx)
	})
	return n, opt.Metrics, logs
}

// hit is one request a receiver got.
type hit struct {
	id, method, path, ctype, ua string
	body                        []byte
	at                          time.Time
}

// receiver is a webhook server that records every request. respond, when
// set, writes the answer to the attempt-th request for event id (default:
// 200).
type receiver struct {
	srv     *httptest.Server
	url     string
	respond func(w http.ResponseWriter, r *http.Request, id string, attempt int)

	mu          sync.Mutex
	hits        []hit
	attempts    map[string]int
	inflight    int
	maxInflight int
}

// newReceiver starts a receiver on ln (nil: a free port of 127.0.0.1).
func newReceiver(t *testing.T, ln net.Listener, respond func(w http.ResponseWriter, r *http.Request, id string, attempt int)) *receiver {
	t.Helper()
	rc := &receiver{respond: respond, attempts: map[string]int{}}
	rc.srv = httptest.NewUnstartedServer(http.HandlerFunc(rc.serve))
	if ln != nil {
		rc.srv.Listener.Close()
		rc.srv.Listener = ln
	}
	rc.srv.Start()
	t.Cleanup(rc.srv.Close)
	rc.url = rc.srv.URL + "/hook"
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	id := r.Header.Get("X-Voltage-Event-Id")
	rc.mu.Lock()
	rc.hits = append(rc.hits, hit{id: id, method: r.Method, path: r.URL.Path, ctype: r.Header.Get("Content-Type"),
		ua: r.Header.Get("User-Agent"), body: body, at: time.Now()})
	rc.attempts[id]++
	attempt := rc.attempts[id]
	rc.inflight++
	rc.maxInflight = max(rc.maxInflight, rc.inflight)
	rc.mu.Unlock()
	defer func() { // before the answer reaches the client
		rc.mu.Lock()
		rc.inflight--
		rc.mu.Unlock()
	}()
	if rc.respond != nil {
		rc.respond(w, r, id, attempt)
	}
}

func (rc *receiver) all() []hit {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.hits)
}

func (rc *receiver) ids() []string {
	var ids []string
	for _, h := range rc.all() {
		ids = append(ids, h.id)
	}
	return ids
}

func (rc *receiver) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.hits)
}

// hang returns a respond function that blocks the first request until
// release is closed (or the client goes away) and answers 200 to the others.
func hang(release <-chan struct{}) func(http.ResponseWriter, *http.Request, string, int) {
	first := true
	var mu sync.Mutex
	return func(w http.ResponseWriter, r *http.Request, _ string, _ int) {
		mu.Lock()
		block := first
		first = false
		mu.Unlock()
		if block {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	}
}

// closedAddr returns an address of 127.0.0.1 where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// allFailures sums the failures of all reasons.
func allFailures(m *Metrics) float64 {
	return testutil.ToFloat64(m.failNetwork) + testutil.ToFloat64(m.failTimeout) + testutil.ToFloat64(m.failStatus)
}

func eventBody(id string) []byte {
	return []byte(fmt.Sprintf(`{"event_id":%q,"alarm_id":"pcs1","type":"raise","value":251.2}`, id))
}

func TestDeliversOnceInOrderWithHeaders(t *testing.T) {
	a := newReceiver(t, nil, nil)
	b := newReceiver(t, nil, nil)
	n, m, _ := start(t, Options{})

	var want []string
	var bodies, copies [][]byte
	for i := range 50 {
		id := fmt.Sprintf("pcs1:%d", i+1)
		body := eventBody(id)
		want = append(want, id)
		bodies = append(bodies, body)
		copies = append(copies, slices.Clone(body))
		n.Send([]string{a.url, b.url + "?token=x"}, id, body)
	}
	eventually(t, 5*time.Second, "all delivered", func() bool { return n.Pending() == 0 })

	for name, rc := range map[string]*receiver{"a": a, "b": b} {
		hits := rc.all()
		if got := rc.ids(); !slices.Equal(got, want) {
			t.Fatalf("receiver %s got events %v, want each once in order %v", name, got, want)
		}
		for i, h := range hits {
			if h.method != http.MethodPost || h.path != "/hook" || h.ctype != "application/json" || h.ua != DefaultUserAgent {
				t.Errorf("receiver %s request %d: %s %s, Content-Type %q, User-Agent %q", name, i, h.method, h.path, h.ctype, h.ua)
			}
			if !bytes.Equal(h.body, copies[i]) {
				t.Errorf("receiver %s request %d: body %q, want %q", name, i, h.body, copies[i])
			}
		}
		if rc.maxInflight != 1 {
			t.Errorf("receiver %s: %d requests in flight at once, want 1", name, rc.maxInflight)
		}
	}
	for i := range bodies {
		if !bytes.Equal(bodies[i], copies[i]) {
			t.Fatalf("body %d modified: %q", i, bodies[i])
		}
	}
	if got := testutil.ToFloat64(m.sent); got != 100 {
		t.Errorf("sent = %v, want 100", got)
	}
	if got := allFailures(m); got != 0 {
		t.Errorf("failures = %v, want 0", got)
	}
	if got := testutil.ToFloat64(m.pending); got != 0 {
		t.Errorf("pending gauge = %v, want 0", got)
	}
}

func TestRetriesUntilTargetComesUp(t *testing.T) {
	addr := closedAddr(t)
	n, m, logs := start(t, Options{})

	began := time.Now()
	n.Send([]string{"http://" + addr + "/hook"}, "pcs1:1", eventBody("pcs1:1"))
	eventually(t, 5*time.Second, "4 failed attempts", func() bool { return testutil.ToFloat64(m.failNetwork) >= 4 })
	// Without backoff, 4 refused connections take far less than the
	// 5+10+20 ms the policy waits between them.
	if el := time.Since(began); el < 35*time.Millisecond {
		t.Fatalf("4 attempts within %v: no backoff", el)
	}
	if n.Pending() != 1 {
		t.Fatalf("Pending() = %d while the target is down, want 1", n.Pending())
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	rc := newReceiver(t, ln, nil)
	eventually(t, 5*time.Second, "delivered", func() bool { return n.Pending() == 0 })

	if got := rc.ids(); !slices.Equal(got, []string{"pcs1:1"}) {
		t.Fatalf("received %v, want [pcs1:1]", got)
	}
	failures := testutil.ToFloat64(m.failNetwork)
	if failures < 4 {
		t.Errorf("network failures = %v, want >= 4", failures)
	}
	if got := allFailures(m); got != failures {
		t.Errorf("failures of all reasons = %v, want only the %v network ones", got, failures)
	}
	if got := testutil.ToFloat64(m.sent); got != 1 {
		t.Errorf("sent = %v, want 1", got)
	}
	if l := logs.String(); strings.Count(l, "attempt failed") != 1 || !strings.Contains(l, "delivered after failed attempts") {
		t.Errorf("want one failure log (rate-limited) and one recovery log, got:\n%s", l)
	}
}

func TestServerErrorRetriedBadRequestRejected(t *testing.T) {
	rc := newReceiver(t, nil, func(w http.ResponseWriter, _ *http.Request, id string, attempt int) {
		switch {
		case id == "pcs1:1" && attempt <= 2:
			http.Error(w, "busy", http.StatusInternalServerError)
		case id == "pcs1:2":
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, strings.Repeat("x", 300))
		}
	})
	n, m, logs := start(t, Options{})
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("pcs1:%d", i)
		n.Send([]string{rc.url}, id, eventBody(id))
	}
	eventually(t, 5*time.Second, "all done", func() bool { return n.Pending() == 0 })

	if got, want := rc.ids(), []string{"pcs1:1", "pcs1:1", "pcs1:1", "pcs1:2", "pcs1:3"}; !slices.Equal(got, want) {
		t.Fatalf("requests %v, want %v", got, want)
	}
	f := func(name string, c prometheus.Collector, want float64) {
		t.Helper()
		if got := testutil.ToFloat64(c); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	f("status failures", m.failStatus, 2)
	if got := allFailures(m); got != 2 {
		t.Errorf("all failures = %v, want 2", got)
	}
	f("rejected", m.rejected, 1)
	f("sent", m.sent, 2)

	l := logs.String()
	if !strings.Contains(l, "status=400") || !strings.Contains(l, "body="+strings.Repeat("x", 200)) ||
		strings.Contains(l, strings.Repeat("x", 201)) {
		t.Errorf("want the rejection logged with status=400 and the first 200 bytes of the body, got:\n%s", l)
	}
}

func TestBackoffRestartsAfterSuccess(t *testing.T) {
	rc := newReceiver(t, nil, func(w http.ResponseWriter, _ *http.Request, id string, attempt int) {
		if (id == "pcs1:1" && attempt <= 5) || (id == "pcs1:2" && attempt == 1) {
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	n, _, logs := start(t, Options{Policy: supervisor.Policy{Initial: 5 * time.Millisecond, Max: 500 * time.Millisecond}})
	n.Send([]string{rc.url}, "pcs1:1", eventBody("pcs1:1"))
	n.Send([]string{rc.url}, "pcs1:2", eventBody("pcs1:2"))
	eventually(t, 5*time.Second, "delivered", func() bool { return n.Pending() == 0 })

	var at []time.Time
	for _, h := range rc.all() {
		if h.id == "pcs1:2" {
			at = append(at, h.at)
		}
	}
	if len(at) != 2 {
		t.Fatalf("pcs1:2 got %d requests, want 2", len(at))
	}
	// pcs1:1 failed 5 times (5+10+20+40+80 ms of backoff); had the count
	// not restarted, pcs1:2's retry would wait 160ms, not 5ms.
	if gap := at[1].Sub(at[0]); gap > 100*time.Millisecond {
		t.Errorf("pcs1:2 retried after %v, want the first backoff step (5ms)", gap)
	}
	if l := logs.String(); !strings.Contains(l, "event_id=pcs1:2 reason=status failures=1 ") {
		t.Errorf("want pcs1:2's failure logged as the first one, got:\n%s", l)
	}
}

func TestStatusesRetriedOrRejected(t *testing.T) {
	// Event "s:<code>" gets <code> on its first attempt, 200 afterwards.
	rc := newReceiver(t, nil, func(w http.ResponseWriter, _ *http.Request, id string, attempt int) {
		var code int
		fmt.Sscanf(id, "s:%d", &code)
		if attempt == 1 && code != 0 {
			if code >= 300 && code < 400 {
				w.Header().Set("Location", "/elsewhere")
			}
			w.WriteHeader(code)
		}
	})
	n, m, _ := start(t, Options{})
	retried := []int{408, 429, 500, 502, 503, 504}
	rejected := []int{301, 302, 307, 400, 401, 403, 404, 410, 422}
	var want []string
	for _, code := range slices.Concat(retried, rejected) {
		id := fmt.Sprintf("s:%d", code)
		n.Send([]string{rc.url}, id, eventBody(id))
		want = append(want, id)
		if slices.Contains(retried, code) {
			want = append(want, id)
		}
	}
	n.Send([]string{rc.url}, "last", eventBody("last"))
	want = append(want, "last")
	eventually(t, 5*time.Second, "all done", func() bool { return n.Pending() == 0 })

	if got := rc.ids(); !slices.Equal(got, want) {
		t.Fatalf("requests %v,\nwant %v", got, want)
	}
	for _, h := range rc.all() {
		if h.path != "/hook" {
			t.Errorf("request to %s: redirect followed", h.path)
		}
	}
	if got := testutil.ToFloat64(m.rejected); got != float64(len(rejected)) {
		t.Errorf("rejected = %v, want %d", got, len(rejected))
	}
	if got := testutil.ToFloat64(m.failStatus); got != float64(len(retried)) {
		t.Errorf("status failures = %v, want %d", got, len(retried))
	}
}

func TestRetryAfterHonouredAndCapped(t *testing.T) {
	rc := newReceiver(t, nil, func(w http.ResponseWriter, _ *http.Request, _ string, attempt int) {
		if attempt == 1 {
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	n, _, _ := start(t, Options{Policy: supervisor.Policy{Initial: 5 * time.Millisecond, Max: 300 * time.Millisecond}})
	n.Send([]string{rc.url}, "pcs1:1", eventBody("pcs1:1"))
	eventually(t, 5*time.Second, "delivered", func() bool { return n.Pending() == 0 })

	hits := rc.all()
	if len(hits) != 2 {
		t.Fatalf("%d requests, want 2", len(hits))
	}
	// The backoff alone would retry after 5ms, Retry-After alone after an
	// hour; capped at the policy's 300ms.
	if gap := hits[1].at.Sub(hits[0].at); gap < 290*time.Millisecond || gap > 3*time.Second {
		t.Fatalf("retried after %v, want the 300ms cap of Retry-After", gap)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)
	f := func(v string, want time.Duration) {
		t.Helper()
		if got := parseRetryAfter(v, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", v, got, want)
		}
	}
	f("", 0)
	f("0", 0)
	f("-5", 0)
	f("3", 3*time.Second)
	f("99999999999999999", 24*time.Hour)
	f("soon", 0)
	f("Tue, 25 Nov 2025 12:00:10 GMT", 10*time.Second)
	f("Tue, 25 Nov 2025 11:00:00 GMT", 0)
}

func TestTimeoutRetried(t *testing.T) {
	rc := newReceiver(t, nil, func(_ http.ResponseWriter, r *http.Request, _ string, attempt int) {
		if attempt == 1 {
			<-r.Context().Done() // until the notifier gives up
		}
	})
	n, m, _ := start(t, Options{Timeout: 100 * time.Millisecond})
	n.Send([]string{rc.url}, "pcs1:1", eventBody("pcs1:1"))
	eventually(t, 5*time.Second, "delivered", func() bool { return n.Pending() == 0 })
	if got := rc.ids(); !slices.Equal(got, []string{"pcs1:1", "pcs1:1"}) {
		t.Fatalf("requests %v, want 2 of pcs1:1", got)
	}
	if got := testutil.ToFloat64(m.failTimeout); got != 1 {
		t.Errorf("timeout failures = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.sent); got != 1 {
		t.Errorf("sent = %v, want 1", got)
	}
}

func TestHangingTargetBlocksNeitherOthersNorSend(t *testing.T) {
	release := make(chan struct{})
	slow := newReceiver(t, nil, hang(release))
	fast := newReceiver(t, nil, nil)
	n, _, logs := start(t, Options{Timeout: time.Minute})
	t.Cleanup(func() { close(release) }) // runs before Stop and before the servers close
	urls := []string{slow.url, fast.url}

	n.Send(urls, "pcs1:0", eventBody("pcs1:0"))
	eventually(t, 5*time.Second, "slow target busy", func() bool { return slow.count() == 1 })

	const sends = 200
	var want []string
	bodies := make([][]byte, sends)
	for i := range bodies {
		id := fmt.Sprintf("pcs1:%d", i+1)
		bodies[i] = eventBody(id)
		want = append(want, id)
	}
	durations := make([]time.Duration, sends)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range sends {
			t0 := time.Now()
			n.Send(urls, want[i], bodies[i])
			durations[i] = time.Since(t0)
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Send blocked behind the hanging target")
	}
	var total time.Duration
	for _, d := range durations {
		total += d
	}
	if avg, worst := total/sends, slices.Max(durations); avg > 200*time.Microsecond || worst > 50*time.Millisecond {
		t.Fatalf("Send took %v on average, %v at worst; want well under a millisecond", avg, worst)
	}

	want = append([]string{"pcs1:0"}, want...)
	// Everything is delivered to the fast target (only the slow one's
	// events are pending) while the slow one still hangs on its first.
	eventually(t, 5*time.Second, "fast target got everything", func() bool { return n.Pending() == sends+1 })
	if got := fast.ids(); !slices.Equal(got, want) {
		t.Fatalf("fast target got %v", got)
	}
	if slow.count() != 1 {
		t.Fatalf("slow target: %d requests, want 1", slow.count())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	n.Stop(ctx)
	if n.Pending() != 0 {
		t.Errorf("Pending() = %d after Stop, want 0", n.Pending())
	}
	if l := logs.String(); !strings.Contains(l, "not delivered before stop\" target="+slow.url+fmt.Sprintf(" events=%d", sends+1)) {
		t.Errorf("want the %d undelivered events of the slow target logged, got:\n%s", sends+1, l)
	}
}

func TestQueueBoundDropsOldest(t *testing.T) {
	release := make(chan struct{})
	rc := newReceiver(t, nil, hang(release))
	n, m, logs := start(t, Options{QueueMax: 3})

	n.Send([]string{rc.url}, "e0", eventBody("e0"))
	eventually(t, 5*time.Second, "e0 in flight", func() bool { return rc.count() == 1 })
	for i := 1; i <= 9; i++ {
		id := fmt.Sprintf("e%d", i)
		n.Send([]string{rc.url}, id, eventBody(id))
	}
	if got := testutil.ToFloat64(m.dropped); got != 6 {
		t.Errorf("dropped = %v, want 6", got)
	}
	if n.Pending() != 4 || testutil.ToFloat64(m.pending) != 4 {
		t.Errorf("Pending() = %d, gauge %v; want 4 (1 in flight, 3 queued)", n.Pending(), testutil.ToFloat64(m.pending))
	}
	if l := logs.String(); strings.Count(l, "queue full") != 1 || !strings.Contains(l, "event_id=e1 ") {
		t.Errorf("want one (rate-limited) queue-full log naming e1, got:\n%s", l)
	}

	close(release)
	eventually(t, 5*time.Second, "queue delivered", func() bool { return n.Pending() == 0 })
	if got, want := rc.ids(), []string{"e0", "e7", "e8", "e9"}; !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	if got := testutil.ToFloat64(m.pending); got != 0 {
		t.Errorf("pending gauge = %v, want 0", got)
	}
}

func TestStopDeliversQueuedEvents(t *testing.T) {
	rc := newReceiver(t, nil, func(w http.ResponseWriter, _ *http.Request, id string, attempt int) {
		if id == "pcs1:5" && attempt == 1 {
			w.WriteHeader(http.StatusBadGateway) // one retry during the drain
		}
	})
	n, _, _ := start(t, Options{})
	for i := 1; i <= 20; i++ {
		id := fmt.Sprintf("pcs1:%d", i)
		n.Send([]string{rc.url}, id, eventBody(id))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n.Stop(ctx)
	if got := rc.count(); got != 21 {
		t.Fatalf("%d requests when Stop returned, want all 20 events (21 requests)", got)
	}
	if ctx.Err() != nil {
		t.Fatal("Stop waited for its deadline although everything was delivered")
	}

	n.Send([]string{rc.url}, "late", eventBody("late"))
	if n.Pending() != 0 {
		t.Fatalf("Send after Stop queued an event: Pending() = %d", n.Pending())
	}
}

func TestStopWithDownTargetLeavesNoGoroutine(t *testing.T) {
	live := newReceiver(t, nil, nil)
	down := "http://" + closedAddr(t) + "/hook"
	before := runtime.NumGoroutine()

	n, m, logs := start(t, Options{})
	for i := 1; i <= 5; i++ {
		id := fmt.Sprintf("pcs1:%d", i)
		n.Send([]string{down, live.url}, id, eventBody(id))
	}
	eventually(t, 5*time.Second, "live target served, down target retried", func() bool {
		return live.count() == 5 && testutil.ToFloat64(m.failNetwork) >= 2
	})

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	n.Stop(ctx)
	if el := time.Since(t0); el < 150*time.Millisecond || el > 2*time.Second {
		t.Fatalf("Stop returned after %v, want when its context expires (200ms)", el)
	}
	if n.Pending() != 0 || testutil.ToFloat64(m.pending) != 0 {
		t.Errorf("after Stop: Pending() = %d, gauge %v; want 0", n.Pending(), testutil.ToFloat64(m.pending))
	}
	if l := logs.String(); !strings.Contains(l, "not delivered before stop\" target="+down+" events=5") {
		t.Errorf("want the 5 undelivered events logged, got:\n%s", l)
	}

	// Stop is over: no delivery goroutine, and no idle connection of the
	// notifier's own transport (its read and write loops) is left.
	eventually(t, 5*time.Second, "goroutines gone", func() bool {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		return !strings.Contains(stacks, "notify.(*Notifier)") && runtime.NumGoroutine() <= before
	})
}

func TestLogsAndMetricsHideURLSecrets(t *testing.T) {
	reject := newReceiver(t, nil, func(w http.ResponseWriter, _ *http.Request, _ string, _ int) {
		w.WriteHeader(http.StatusForbidden)
	})
	addr := closedAddr(t)
	reg := prometheus.NewRegistry()
	n, m, logs := start(t, Options{Metrics: NewMetrics(reg)})
	urls := []string{
		"http://alice:hunter2@" + addr + "/hook?token=s3cret",
		strings.Replace(reject.url, "http://", "http://alice:hunter2@", 1) + "?token=s3cret#frag",
	}
	n.Send(urls, "pcs1:1", eventBody("pcs1:1"))
	eventually(t, 5*time.Second, "failed and rejected", func() bool {
		return testutil.ToFloat64(m.failNetwork) >= 1 && testutil.ToFloat64(m.rejected) == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	n.Stop(ctx)

	l := logs.String()
	for _, secret := range []string{"hunter2", "alice", "s3cret", "token", "frag"} {
		if strings.Contains(l, secret) {
			t.Errorf("log shows %q:\n%s", secret, l)
		}
	}
	if !strings.Contains(l, "target=http://"+addr+"/hook ") || !strings.Contains(l, "target="+reject.url+" ") {
		t.Errorf("want targets logged as scheme://host/path, got:\n%s", l)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, metric := range mf.GetMetric() {
			for _, lp := range metric.GetLabel() {
				if lp.GetName() != "reason" {
					t.Errorf("%s has label %s=%q", mf.GetName(), lp.GetName(), lp.GetValue())
				}
			}
		}
	}
}

func TestInvalidURLRejected(t *testing.T) {
	rc := newReceiver(t, nil, nil)
	n, m, logs := start(t, Options{})
	n.Send([]string{"ftp://example.com/x?k=s3cret", "://bad", rc.url}, "pcs1:1", eventBody("pcs1:1"))
	eventually(t, 5*time.Second, "done", func() bool { return n.Pending() == 0 })
	if got := testutil.ToFloat64(m.rejected); got != 2 {
		t.Errorf("rejected = %v, want 2", got)
	}
	if rc.count() != 1 {
		t.Errorf("valid target got %d requests, want 1", rc.count())
	}
	if l := logs.String(); strings.Contains(l, "s3cret") || strings.Count(l, "event not sent") != 2 {
		t.Errorf("want 2 logs of unusable URLs without their secrets, got:\n%s", l)
	}
}

func TestCheckURL(t *testing.T) {
	f := func(raw, wantName string, wantOK bool) {
		t.Helper()
		name, err := checkURL(raw)
		if name != wantName || (err == nil) != wantOK {
			t.Errorf("checkURL(%q) = %q, %v; want %q, ok %v", raw, name, err, wantName, wantOK)
		}
	}
	f("http://127.0.0.1:9000/hook", "http://127.0.0.1:9000/hook", true)
	f("https://u:p@hooks.example.com/a/b?token=x#f", "https://hooks.example.com/a/b", true)
	f("http://h/a%20b", "http://h/a%20b", true)
	f("ftp://h/x", "ftp://h/x", false)
	f("http:///x", "http:///x", false)
	f("://x?token=y", "invalid-url", false)
}

func TestRing(t *testing.T) {
	var r ring
	next, want := 0, 0
	push := func(k int) {
		for range k {
			r.push(event{id: fmt.Sprint(next)}, 100)
			next++
		}
	}
	pop := func(k int) {
		t.Helper()
		for range k {
			e, ok := r.pop()
			if !ok || e.id != fmt.Sprint(want) {
				t.Fatalf("pop = %q, %v; want %d", e.id, ok, want)
			}
			want++
		}
	}
	push(10)
	pop(7)
	push(30) // wraps, then grows
	pop(20)
	push(60)
	if r.len() != 73 || len(r.buf) > 100 {
		t.Fatalf("len %d, buffer %d; want 73 within the limit of 100", r.len(), len(r.buf))
	}
	pop(73)
	if _, ok := r.pop(); ok || r.len() != 0 {
		t.Fatal("pop from an empty ring")
	}
}

func TestSendAllocatesNothing(t *testing.T) {
	release := make(chan struct{})
	rc := newReceiver(t, nil, hang(release))
	n, _, _ := start(t, Options{QueueMax: 16, Timeout: time.Minute})
	t.Cleanup(func() { close(release) })
	urls := []string{rc.url}
	body := eventBody("pcs1:1")
	n.Send(urls, "pcs1:0", body)
	eventually(t, 5*time.Second, "in flight", func() bool { return rc.count() == 1 })
	for range 16 {
		n.Send(urls, "pcs1:1", body) // fill the queue: from now on each Send drops one
	}
	n.Send(urls, "pcs1:1", body) // the first drop logs
	if allocs := testing.AllocsPerRun(100, func() { n.Send(urls, "pcs1:1", body) }); allocs != 0 {
		t.Fatalf("Send allocates %v times per call", allocs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	n.Stop(ctx)
}
