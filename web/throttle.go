package web

import (
	"log/slog"
	"math"
	"sync"
	"time"
)

// Failed authentication is throttled per client address (clientKey): each
// address has a bucket of burst failures that refills by one every refill
// period. A failure takes one; with less than one left, the address is
// throttled: every request from it that carries a credential is answered
// 429 with Retry-After before the credential is compared, so guessing
// stops there. A success does not refill the bucket (a viewer token must
// not buy more guesses at the operator's).
const (
	// maxThrottleClients bounds the addresses remembered; beyond it, new
	// addresses share one bucket (overflowKey) until old ones have
	// refilled and are dropped.
	maxThrottleClients = 10000
	overflowKey        = "(other addresses)"
	// throttleLogEvery is how often one address is logged at most; all
	// addresses together get throttleLogBurst lines a second.
	throttleLogEvery = 10 * time.Second
	throttleLogBurst = 10
)

type failBucket struct {
	tokens float64   // failures still allowed at `at`
	at     time.Time // when tokens was computed
	// For the log: failures and 429s since the address was last logged.
	failures, refused int
	logged            time.Time
	// streak counts the failures since the bucket was last full;
	// announced: "throttling" was logged (again only once the bucket has
	// refilled completely).
	streak    int
	announced bool
}

// authThrottle is the table of buckets. Safe for concurrent use.
type authThrottle struct {
	burst  float64
	refill time.Duration
	log    *slog.Logger
	m      *HTTPMetrics

	mu      sync.Mutex
	clients map[string]*failBucket
	swept   time.Time
	// global log budget: throttleLogBurst lines per second
	logWindow time.Time
	logLines  int
	logHeld   int
}

func newAuthThrottle(burst int, refill time.Duration, log *slog.Logger, m *HTTPMetrics) *authThrottle {
	return &authThrottle{burst: float64(burst), refill: refill, log: log, m: m, clients: map[string]*failBucket{}}
}

// refilled brings b's tokens to now.
func (t *authThrottle) refilled(b *failBucket, now time.Time) {
	if el := now.Sub(b.at); el > 0 {
		b.tokens = math.Min(t.burst, b.tokens+float64(el)/float64(t.refill))
		b.at = now
	}
	if b.tokens >= t.burst {
		b.announced, b.streak = false, 0
	}
}

// bucket returns key's bucket, the shared one when key has none and the
// table is full, or nil (never failed, or refilled and dropped).
func (t *authThrottle) bucket(key string) *failBucket {
	if b := t.clients[key]; b != nil {
		return b
	}
	if len(t.clients) >= maxThrottleClients {
		return t.clients[overflowKey]
	}
	return nil
}

// check reports whether key is throttled at now and, when it is, after how
// long it may try again. A throttled request is counted and may be logged.
func (t *authThrottle) check(key, route string, now time.Time) (retry time.Duration, throttled bool) {
	if t == nil {
		return 0, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.bucket(key)
	if b == nil {
		return 0, false
	}
	t.refilled(b, now)
	if b.tokens >= 1 {
		return 0, false
	}
	retry = time.Duration((1 - b.tokens) * float64(t.refill))
	b.refused++
	t.m.throttled()
	if now.Sub(b.logged) >= throttleLogEvery && t.logBudget(now) {
		t.log.Warn("still throttling failed authentications from this client address",
			"remote", key, "route", route, "failures", b.failures, "refused", b.refused, "retry_after_s", retrySeconds(retry))
		b.failures, b.refused, b.logged = 0, 0, now
	}
	return retry, true
}

// fail records a failed authentication of key at now.
func (t *authThrottle) fail(key, route string, now time.Time) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m.authFailed()
	b := t.clients[key]
	if b == nil {
		if len(t.clients) >= maxThrottleClients {
			t.sweep(now)
		}
		if len(t.clients) >= maxThrottleClients {
			key = overflowKey
		}
		if b = t.clients[key]; b == nil {
			b = &failBucket{tokens: t.burst, at: now}
			t.clients[key] = b
		}
	}
	t.refilled(b, now)
	b.tokens = max(0, b.tokens-1) // no debt: a throttled address waits one refill at most
	b.failures++
	b.streak++
	switch {
	case b.tokens < 1 && !b.announced && t.logBudget(now):
		b.announced = true
		t.log.Warn("throttling failed authentications from this client address: answering 429 until it may try again",
			"remote", key, "route", route, "failures", b.streak, "retry_after_s", retrySeconds(time.Duration((1-b.tokens)*float64(t.refill))))
		b.failures, b.refused, b.logged = 0, 0, now
	case now.Sub(b.logged) >= throttleLogEvery && t.logBudget(now):
		t.log.Warn("authentication failed", "remote", key, "route", route, "failures", b.failures)
		b.failures, b.refused, b.logged = 0, 0, now
	}
}

// logBudget reports whether a line may be logged now under the global
// budget; the first line after held-back ones says how many there were.
func (t *authThrottle) logBudget(now time.Time) bool {
	if now.Sub(t.logWindow) >= time.Second {
		if t.logHeld > 0 {
			t.log.Warn("failed authentication log lines held back (too many client addresses at once)", "lines", t.logHeld)
		}
		t.logWindow, t.logLines, t.logHeld = now, 0, 0
	}
	if t.logLines >= throttleLogBurst {
		t.logHeld++
		return false
	}
	t.logLines++
	return true
}

// sweep drops the buckets that have refilled; at most once a second, as it
// visits every address.
func (t *authThrottle) sweep(now time.Time) {
	if now.Sub(t.swept) < time.Second {
		return
	}
	t.swept = now
	for k, b := range t.clients {
		if t.refilled(b, now); b.tokens >= t.burst && k != overflowKey {
			delete(t.clients, k)
		}
	}
	if b := t.clients[overflowKey]; b != nil && b.tokens >= t.burst {
		delete(t.clients, overflowKey)
	}
}

// retrySeconds is a wait in whole seconds, rounded up, at least 1 (what
// Retry-After says).
func retrySeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

// size is how many addresses are remembered.
func (t *authThrottle) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.clients)
}
