package supervisor

import (
	"math"
	"math/rand/v2"
	"time"
)

// Policy says how soon a failed actor (or a lost connection) is retried and
// when to give up.
//
// The n-th consecutive failure waits Initial * 2^(n-1), capped at Max, then
// moved by a random factor in [1-Jitter, 1+Jitter) so that many actors that
// fail together do not restart together. The cap applies before the jitter,
// so a delay may reach Max*(1+Jitter). A failure that comes more than Reset
// after the previous one starts the count again at 1.
type Policy struct {
	Initial time.Duration // delay after the first failure; 0 means 100ms
	Max     time.Duration // largest delay before jitter; 0 means 30s
	Jitter  float64       // relative jitter, clamped to [0, 1]; 0 means none
	Reset   time.Duration // quiet period that resets the count; 0 means 60s
	// MaxRestarts is the number of consecutive failures that are restarted;
	// the next one gives up (the strategy stops the child). 0 is unlimited.
	MaxRestarts int
}

// DefaultPolicy returns the policy of the architecture: 100ms doubling to
// 30s, 10% jitter, count reset after 60s without failure, never give up.
func DefaultPolicy() Policy {
	return Policy{Initial: 100 * time.Millisecond, Max: 30 * time.Second, Jitter: 0.1, Reset: 60 * time.Second}
}

// withDefaults fills zero durations from DefaultPolicy and clamps Jitter.
func (p Policy) withDefaults() Policy {
	d := DefaultPolicy()
	if p.Initial <= 0 {
		p.Initial = d.Initial
	}
	if p.Max <= 0 {
		p.Max = d.Max
	}
	if p.Max < p.Initial {
		p.Max = p.Initial
	}
	if p.Reset <= 0 {
		p.Reset = d.Reset
	}
	p.Jitter = min(max(p.Jitter, 0), 1)
	if p.MaxRestarts < 0 {
		p.MaxRestarts = 0
	}
	return p
}

// Delay returns the delay before retrying after the n-th consecutive
// failure (n >= 1; smaller n counts as 1). r is a uniform random number in
// [0, 1) that picks the jitter: 0.5 gives the delay without jitter.
func (p Policy) Delay(n int, r float64) time.Duration {
	p = p.withDefaults()
	d := p.Initial
	for i := 1; i < n && d < p.Max; i++ {
		d *= 2 // cannot overflow: d < Max before doubling
	}
	d = min(d, p.Max)
	if p.Jitter > 0 {
		d = time.Duration(math.Round(float64(d) * (1 + p.Jitter*(2*r-1))))
	}
	return d
}

// GiveUp reports whether the failures-th consecutive failure exceeds
// MaxRestarts.
func (p Policy) GiveUp(failures int) bool {
	return p.MaxRestarts > 0 && failures > p.MaxRestarts
}

// Backoff tracks consecutive failures of one thing (a connection, a task)
// and hands out the delay before each retry. It is not safe for concurrent
// use; an actor keeps one in its state. The supervision strategy does not
// use it: it counts failures in protoactor's per-child RestartStatistics.
type Backoff struct {
	policy   Policy
	rand     func() float64
	now      func() time.Time
	failures int
	last     time.Time
}

// BackoffOption changes how a Backoff is built.
type BackoffOption func(*Backoff)

// WithRand sets the source of jitter, a function returning uniform numbers
// in [0, 1). The default is math/rand/v2's Float64.
func WithRand(f func() float64) BackoffOption {
	return func(b *Backoff) { b.rand = f }
}

// WithClock sets the clock that measures the quiet period. The default is
// time.Now.
func WithClock(now func() time.Time) BackoffOption {
	return func(b *Backoff) { b.now = now }
}

// NewBackoff returns a Backoff with no failures recorded.
func NewBackoff(p Policy, opts ...BackoffOption) *Backoff {
	b := &Backoff{policy: p.withDefaults(), rand: rand.Float64, now: time.Now}
	for _, o := range opts {
		o(b)
	}
	return b
}

// Next records a failure now and returns the delay to wait before the
// retry. If the previous failure is more than Policy.Reset ago, the count
// starts again at 1.
func (b *Backoff) Next() time.Duration {
	now := b.now()
	if b.failures > 0 && now.Sub(b.last) > b.policy.Reset {
		b.failures = 0
	}
	b.failures++
	b.last = now
	return b.policy.Delay(b.failures, b.rand())
}

// Failures returns the number of consecutive failures recorded by Next,
// after applying the quiet-period reset as of now.
func (b *Backoff) Failures() int {
	if b.failures > 0 && b.now().Sub(b.last) > b.policy.Reset {
		return 0
	}
	return b.failures
}

// GiveUp reports whether the failures recorded so far exceed
// Policy.MaxRestarts.
func (b *Backoff) GiveUp() bool {
	return b.policy.GiveUp(b.Failures())
}

// Reset forgets all failures, for example after a successful reconnect.
func (b *Backoff) Reset() {
	b.failures = 0
	b.last = time.Time{}
}
