// Package notify POSTs alarm events to webhooks (the `notify:` URLs of an
// alarm rule, see docs/alarms.md).
//
// Each target URL has its own queue and one delivery goroutine, started on
// the first event for it. Events to one target go out in order, one request
// in flight at a time; a target that is down or slow holds up only its own
// queue, never the other targets nor the caller of Send, which only appends
// under a mutex.
//
// Delivery is at least once: network errors, timeouts, 408, 429 and 5xx
// answers are retried with the supervisor backoff until a 2xx answer or
// Stop; receivers deduplicate with the X-Voltage-Event-Id header (the
// event_id). Any other answer (3xx, other 4xx) rejects the event for good.
// A queue holds at most Options.QueueMax events; beyond that the oldest
// queued event is dropped.
//
// URLs may carry secrets (user info, tokens in the query string): they are
// never used as metric labels, and logs show scheme://host/path only.
package notify

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/voltage-ems/voltage/supervisor"
)

// Defaults of Options.
const (
	DefaultTimeout   = 5 * time.Second
	DefaultQueueMax  = 10000
	DefaultUserAgent = "voltage-alarms"
)

const (
	// rejectBodyMax is how much of a rejecting answer's body is logged.
	rejectBodyMax = 200
	// drainMax is how much of an answer's body is read (and discarded) so
	// that the connection can be reused.
	drainMax = 64 << 10
	// logEvery limits the repeated logs of one target (queue full, failed
	// attempts) to one per period.
	logEvery = time.Minute
)

// Options configure a Notifier. The zero value is usable.
type Options struct {
	Log       *slog.Logger      // nil: slog.Default()
	Policy    supervisor.Policy // retry backoff; zero value: supervisor.DefaultPolicy()
	Timeout   time.Duration     // per POST, connect to end of the answer; default 5s
	QueueMax  int               // events queued per target URL; default 10000
	Client    *http.Client      // nil: a client with Timeout that follows no redirects
	Metrics   *Metrics          // nil: no metrics
	UserAgent string            // default "voltage-alarms"
}

// Notifier delivers alarm events to webhooks. It is safe for concurrent
// use. Build it with New and stop it with Stop.
type Notifier struct {
	log       *slog.Logger
	policy    supervisor.Policy
	maxDelay  time.Duration // the policy's largest delay, caps Retry-After
	timeout   time.Duration
	queueMax  int
	client    *http.Client
	transport *http.Transport // ours when Options.Client is nil: idle connections closed on Stop
	m         *Metrics
	ua        []string // header value, shared by all requests (never modified)

	ctx    context.Context // cancelled when Stop gives up waiting
	cancel context.CancelFunc
	wg     sync.WaitGroup // delivery goroutines

	mu      sync.Mutex
	targets map[string]*target
	order   []*target // creation order, for Stop's report
	pending int
	stopped bool
}

// event is one queued delivery.
type event struct {
	id   string
	body []byte // shared by all targets; never modified
}

// target is one webhook URL with its queue. Fields below mu are guarded by
// Notifier.mu.
type target struct {
	url  string        // as configured, secrets included: never logged
	name string        // scheme://host/path, for logs
	bad  error         // the URL cannot be used: every event is rejected
	wake chan struct{} // capacity 1: something was queued, or Stop

	// guarded by Notifier.mu
	q           ring
	busy        bool    // an event has been taken and is not finished
	lost        []event // events abandoned by the delivery goroutine at Stop
	dropped     int     // events dropped because the queue was full
	dropsLogged int     // dropped at the time of the last log
	lastDropLog time.Time
}

// New returns a Notifier; delivery goroutines start with the first event
// for each target.
func New(opt Options) *Notifier {
	n := &Notifier{
		log:      opt.Log,
		policy:   opt.Policy,
		timeout:  opt.Timeout,
		queueMax: opt.QueueMax,
		client:   opt.Client,
		m:        opt.Metrics,
		targets:  map[string]*target{},
	}
	if n.log == nil {
		n.log = slog.Default()
	}
	if n.policy == (supervisor.Policy{}) {
		n.policy = supervisor.DefaultPolicy()
	}
	// Delay with a huge failure count and no jitter is the policy's cap,
	// with the policy's own defaults applied.
	n.maxDelay = n.policy.Delay(1<<30, 0.5)
	if n.timeout <= 0 {
		n.timeout = DefaultTimeout
	}
	if n.queueMax <= 0 {
		n.queueMax = DefaultQueueMax
	}
	if n.client == nil {
		n.transport = http.DefaultTransport.(*http.Transport).Clone()
		n.client = &http.Client{
			Transport: n.transport,
			Timeout:   n.timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse // a 3xx is an answer, and rejects the event
			},
		}
	}
	ua := opt.UserAgent
	if ua == "" {
		ua = DefaultUserAgent
	}
	n.ua = []string{ua}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	return n
}

// Send queues one event for each URL and returns at once: it never waits
// for the network. body is the event JSON, eventID its event_id; neither
// Send's caller nor the Notifier may modify body afterwards (it is shared,
// not copied). After Stop, Send does nothing.
func (n *Notifier) Send(urls []string, eventID string, body []byte) {
	if len(urls) == 0 {
		return
	}
	type dropLog struct {
		name, eventID  string
		dropped, total int
	}
	var logs []dropLog // rare: only when a queue is full and its log is due
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		n.log.Debug("alarm webhook notifier stopped, event not sent", "event_id", eventID)
		return
	}
	for _, u := range urls {
		t := n.targets[u]
		if t == nil {
			t = n.newTarget(u)
		}
		if t.q.len() >= n.queueMax {
			old, _ := t.q.pop()
			t.dropped++
			n.pending--
			n.m.addDropped()
			n.m.addPending(-1)
			if now := time.Now(); t.dropsLogged == 0 || now.Sub(t.lastDropLog) >= logEvery {
				logs = append(logs, dropLog{t.name, old.id, t.dropped - t.dropsLogged, t.dropped})
				t.dropsLogged, t.lastDropLog = t.dropped, now
			}
		}
		t.q.push(event{id: eventID, body: body}, n.queueMax)
		n.pending++
		n.m.addPending(1)
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
	n.mu.Unlock()
	for _, l := range logs {
		n.log.Warn("alarm webhook queue full, oldest event dropped",
			"target", l.name, "event_id", l.eventID, "dropped", l.dropped, "dropped_total", l.total, "queue_max", n.queueMax)
	}
}

// newTarget registers u and starts its delivery goroutine. n.mu is held and
// n is not stopped.
func (n *Notifier) newTarget(u string) *target {
	t := &target{url: u, wake: make(chan struct{}, 1)}
	t.name, t.bad = checkURL(u)
	n.targets[u] = t
	n.order = append(n.order, t)
	n.wg.Add(1)
	go n.run(t)
	return t
}

// Pending returns the number of events queued or in flight over all
// targets.
func (n *Notifier) Pending() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pending
}

// Undelivered is an event a target had not taken when the notifier stopped.
type Undelivered struct {
	URL     string
	EventID string
	Body    []byte
}

// Stop stops accepting events and lets the delivery goroutines go on with
// what is queued (retries included) until every queue is empty or ctx is
// done; then it cancels the requests in flight, waits for the goroutines to
// end, logs per target how many events were never delivered and returns
// them (per target in order), to be kept for the next run. Calling Stop
// again only waits for the goroutines.
func (n *Notifier) Stop(ctx context.Context) []Undelivered {
	n.mu.Lock()
	first := !n.stopped
	n.stopped = true
	for _, t := range n.order {
		select {
		case t.wake <- struct{}{}: // an idle goroutine sees the stop and ends
		default:
		}
	}
	n.mu.Unlock()

	done := make(chan struct{})
	go func() {
		n.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		n.cancel()
		<-done // every wait of a delivery goroutine also watches n.ctx
	}
	n.cancel()
	if n.transport != nil {
		n.transport.CloseIdleConnections()
	}
	if !first {
		return nil
	}

	n.mu.Lock()
	type report struct {
		name          string
		lost, dropped int
	}
	var reports []report
	var out []Undelivered
	total := 0
	for _, t := range n.order {
		lost := len(t.lost) + t.q.len()
		for _, ev := range t.lost {
			out = append(out, Undelivered{URL: t.url, EventID: ev.id, Body: ev.body})
		}
		for {
			ev, ok := t.q.pop()
			if !ok {
				break
			}
			out = append(out, Undelivered{URL: t.url, EventID: ev.id, Body: ev.body})
		}
		t.q = ring{}
		t.lost = nil
		total += lost
		if lost > 0 {
			reports = append(reports, report{t.name, lost, t.dropped})
		}
	}
	n.pending -= total
	n.m.addPending(-total)
	n.mu.Unlock()
	for _, r := range reports {
		n.log.Warn("alarm webhook events not delivered before stop", "target", r.name, "events", r.lost, "dropped_total", r.dropped)
	}
	return out
}

// run delivers t's events in order until Stop.
func (n *Notifier) run(t *target) {
	defer n.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	failures := 0 // consecutive failed attempts
	var lastFailLog time.Time
	for {
		ev, ok := n.take(t)
		if !ok {
			return
		}
		for {
			res := n.post(t, ev)
			if res.kind == stopped {
				n.abandon(t, ev)
				return
			}
			if res.kind == delivered || res.kind == rejected {
				if res.kind == delivered {
					n.m.addSent()
					if failures > 0 {
						n.log.Info("alarm webhook delivered after failed attempts", "target", t.name, "event_id", ev.id, "failures", failures)
					}
				} else {
					n.m.addRejected()
					if res.err != nil {
						n.log.Error("alarm webhook event not sent, not retried", "target", t.name, "event_id", ev.id, "err", res.err)
					} else {
						n.log.Error("alarm webhook rejected event, not retried", "target", t.name, "event_id", ev.id,
							"status", res.status, "body", res.body)
					}
				}
				failures = 0
				n.finish(t)
				break
			}

			failures++
			n.m.addFailure(res.kind)
			delay := n.policy.Delay(failures, rand.Float64())
			if res.retryAfter > 0 {
				delay = min(res.retryAfter, n.maxDelay)
			}
			if now := time.Now(); failures == 1 || now.Sub(lastFailLog) >= logEvery {
				lastFailLog = now
				args := []any{"target", t.name, "event_id", ev.id, "reason", res.kind, "failures", failures, "delay", delay}
				if res.status != 0 {
					args = append(args, "status", res.status)
				}
				if res.err != nil {
					args = append(args, "err", res.err)
				}
				n.log.Warn("alarm webhook attempt failed, retrying", args...)
			}
			timer.Reset(delay)
			select {
			case <-timer.C:
			case <-n.ctx.Done():
				timer.Stop()
				n.abandon(t, ev)
				return
			}
		}
	}
}

// take returns t's next event, waiting for one; false once stopped with
// nothing left, or when Stop gives up waiting.
func (n *Notifier) take(t *target) (event, bool) {
	for {
		n.mu.Lock()
		ev, ok := t.q.pop()
		if ok {
			t.busy = true
			n.mu.Unlock()
			return ev, true
		}
		stop := n.stopped
		n.mu.Unlock()
		if stop {
			return event{}, false
		}
		select {
		case <-t.wake:
		case <-n.ctx.Done():
			return event{}, false
		}
	}
}

// finish ends the event in flight (delivered or rejected).
func (n *Notifier) finish(t *target) {
	n.mu.Lock()
	t.busy = false
	n.pending--
	n.m.addPending(-1)
	n.mu.Unlock()
}

// abandon gives up the event in flight because Stop gave up waiting; Stop
// counts it as not delivered.
func (n *Notifier) abandon(t *target, ev event) {
	n.mu.Lock()
	if t.busy {
		t.busy = false
		t.lost = append(t.lost, ev)
	}
	n.mu.Unlock()
}

// Kinds of result of one attempt; the failure kinds are the reason labels.
const (
	delivered = "delivered"
	rejected  = "rejected"
	stopped   = "stopped"
)

type result struct {
	kind       string // delivered, rejected, stopped or a failure reason
	status     int
	body       string        // start of a rejecting answer's body
	retryAfter time.Duration // from a 429 or 503 answer; 0: none
	err        error         // without the URL
}

// post makes one attempt to deliver ev to t.
func (n *Notifier) post(t *target, ev event) result {
	if t.bad != nil {
		return result{kind: rejected, err: t.bad}
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(ev.body))
	if err != nil {
		return result{kind: rejected, err: errors.New("invalid request")} // err would show the URL
	}
	req.Header["Content-Type"] = []string{"application/json"}
	req.Header["User-Agent"] = n.ua
	req.Header["X-Voltage-Event-Id"] = []string{ev.id}
	resp, err := n.client.Do(req)
	if err != nil {
		if n.ctx.Err() != nil {
			return result{kind: stopped}
		}
		err = stripURL(err)
		if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			return result{kind: reasonTimeout, err: err}
		}
		return result{kind: reasonNetwork, err: err}
	}
	defer resp.Body.Close()
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300:
		_, _ = io.CopyN(io.Discard, resp.Body, drainMax)
		return result{kind: delivered, status: code}
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		_, _ = io.CopyN(io.Discard, resp.Body, drainMax)
		r := result{kind: reasonStatus, status: code}
		if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
			r.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
		return r
	default:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, rejectBodyMax))
		_, _ = io.CopyN(io.Discard, resp.Body, drainMax)
		return result{kind: rejected, status: code, body: string(b)}
	}
}

// parseRetryAfter returns the wait a Retry-After header asks for: delay
// seconds or an HTTP date; 0 when absent, invalid or already past.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s <= 0 {
			return 0
		}
		if s > int64(24*time.Hour/time.Second) { // no overflow; the caller caps it far lower anyway
			s = int64(24 * time.Hour / time.Second)
		}
		return time.Duration(s) * time.Second
	}
	if at, err := http.ParseTime(v); err == nil && at.After(now) {
		return at.Sub(now)
	}
	return 0
}

// checkURL returns the name of raw for logs (scheme://host/path, without
// user info, query or fragment) and an error if it cannot be POSTed to.
// Neither contains raw's secrets.
func checkURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "invalid-url", errors.New("invalid webhook url")
	}
	name := u.Scheme + "://" + u.Host + u.EscapedPath()
	if u.Scheme != "http" && u.Scheme != "https" {
		return name, errors.New("webhook url scheme must be http or https")
	}
	if u.Host == "" {
		return name, errors.New("webhook url has no host")
	}
	return name, nil
}

// stripURL returns the cause of a *url.Error from http.Client.Do: its
// message holds the URL with its query string.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ring is a FIFO of events that grows up to the queue bound and lets go of
// its memory when it empties after a burst.
type ring struct {
	buf     []event
	head, n int
}

func (r *ring) len() int { return r.n }

// push appends e; the caller keeps r.n below limit, which bounds the
// buffer's growth.
func (r *ring) push(e event, limit int) {
	if r.n == len(r.buf) {
		buf := make([]event, max(min(max(16, 2*len(r.buf)), limit), r.n+1))
		for i := range r.n {
			buf[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = buf, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = e
	r.n++
}

func (r *ring) pop() (event, bool) {
	if r.n == 0 {
		return event{}, false
	}
	e := r.buf[r.head]
	r.buf[r.head] = event{} // let go of the body
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	if r.n == 0 && len(r.buf) > 1024 {
		*r = ring{}
	}
	return e, true
}
