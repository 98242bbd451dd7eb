package supervisor

import (
	"testing"
	"time"
)

func TestPolicyDelaySequence(t *testing.T) {
	p := Policy{Initial: 100 * time.Millisecond, Max: 30 * time.Second, Reset: time.Minute} // no jitter
	want := []time.Duration{
		100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
		1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond, 12800 * time.Millisecond,
		25600 * time.Millisecond, 30 * time.Second, 30 * time.Second,
	}
	for i, w := range want {
		if got := p.Delay(i+1, 0.5); got != w {
			t.Errorf("Delay(%d) = %v, want %v", i+1, got, w)
		}
	}
	// Far beyond the cap: no overflow.
	for _, n := range []int{64, 100, 1 << 20} {
		if got := p.Delay(n, 0.5); got != 30*time.Second {
			t.Errorf("Delay(%d) = %v, want 30s", n, got)
		}
	}
	// n below 1 counts as the first failure.
	if got := p.Delay(0, 0.5); got != 100*time.Millisecond {
		t.Errorf("Delay(0) = %v, want 100ms", got)
	}
}

func TestPolicyDelayJitter(t *testing.T) {
	p := DefaultPolicy()
	f := func(n int, r float64, want time.Duration) {
		t.Helper()
		if got := p.Delay(n, r); got != want {
			t.Errorf("Delay(%d, %v) = %v, want %v", n, r, got, want)
		}
	}
	f(1, 0, 90*time.Millisecond)
	f(1, 0.5, 100*time.Millisecond)
	f(1, 0.75, 105*time.Millisecond)
	f(2, 0, 180*time.Millisecond)
	f(20, 0, 27*time.Second)
	f(20, 0.5, 30*time.Second)

	// Every r in [0, 1) stays within ±10 %.
	for n := 1; n <= 12; n++ {
		base := p.Delay(n, 0.5)
		for r := 0.0; r < 1; r += 0.01 {
			d := p.Delay(n, r)
			if lo, hi := base*9/10, base*11/10; d < lo || d > hi {
				t.Fatalf("Delay(%d, %v) = %v, want in [%v, %v]", n, r, d, lo, hi)
			}
		}
	}
}

func TestPolicyDefaults(t *testing.T) {
	f := func(in Policy, want Policy) {
		t.Helper()
		if got := in.withDefaults(); got != want {
			t.Errorf("withDefaults(%+v) = %+v, want %+v", in, got, want)
		}
	}
	d := DefaultPolicy()
	f(Policy{}, Policy{Initial: d.Initial, Max: d.Max, Reset: d.Reset})
	f(Policy{Initial: time.Second, Max: time.Millisecond, Jitter: 3, Reset: time.Second, MaxRestarts: -1},
		Policy{Initial: time.Second, Max: time.Second, Jitter: 1, Reset: time.Second})
	f(d, d)
}

func TestPolicyGiveUp(t *testing.T) {
	f := func(max, failures int, want bool) {
		t.Helper()
		if got := (Policy{MaxRestarts: max}).GiveUp(failures); got != want {
			t.Errorf("Policy{MaxRestarts: %d}.GiveUp(%d) = %v, want %v", max, failures, got, want)
		}
	}
	f(0, 1000, false)
	f(3, 3, false)
	f(3, 4, true)
}

// fakeClock is a manually advanced clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestBackoffResetsAfterQuietPeriod(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1764090000, 0)}
	b := NewBackoff(DefaultPolicy(), WithClock(clock.now), WithRand(func() float64 { return 0.5 }))

	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}
	for i, w := range want {
		if got := b.Next(); got != w {
			t.Fatalf("failure %d: delay %v, want %v", i+1, got, w)
		}
		clock.advance(time.Second)
	}
	if got := b.Failures(); got != 3 {
		t.Fatalf("Failures() = %d, want 3", got)
	}

	// Exactly the quiet period is not quiet enough.
	clock.advance(59 * time.Second)
	if got := b.Next(); got != 800*time.Millisecond {
		t.Fatalf("after 60s: delay %v, want 800ms", got)
	}

	// More than the quiet period: the count starts again.
	clock.advance(60*time.Second + time.Nanosecond)
	if got := b.Failures(); got != 0 {
		t.Fatalf("Failures() after quiet period = %d, want 0", got)
	}
	if got := b.Next(); got != 100*time.Millisecond {
		t.Fatalf("after quiet period: delay %v, want 100ms", got)
	}

	b.Next()
	b.Reset()
	if got := b.Next(); got != 100*time.Millisecond {
		t.Fatalf("after Reset: delay %v, want 100ms", got)
	}
}

func TestBackoffJitterAndGiveUp(t *testing.T) {
	clock := &fakeClock{t: time.Unix(0, 0)}
	rs := []float64{0, 0.999999, 0.25}
	i := 0
	next := func() float64 { r := rs[i%len(rs)]; i++; return r }
	p := DefaultPolicy()
	p.MaxRestarts = 2
	b := NewBackoff(p, WithClock(clock.now), WithRand(next))

	if got := b.Next(); got != 90*time.Millisecond {
		t.Fatalf("first delay %v, want 90ms", got)
	}
	if got := b.Next(); got < 219*time.Millisecond || got > 220*time.Millisecond {
		t.Fatalf("second delay %v, want just under 220ms", got)
	}
	if b.GiveUp() {
		t.Fatal("GiveUp after 2 failures with MaxRestarts 2")
	}
	if got := b.Next(); got != 380*time.Millisecond {
		t.Fatalf("third delay %v, want 380ms", got)
	}
	if !b.GiveUp() {
		t.Fatal("no GiveUp after 3 failures with MaxRestarts 2")
	}
}
