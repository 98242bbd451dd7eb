package supervisor

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Messages of the test actors.
type (
	ping        struct{}
	pong        struct{ starts int32 }
	boom        struct{}
	getChildren struct{}
)

// child answers ping with the number of times it was started; boom panics.
type child struct{ starts *atomic.Int32 }

func (c *child) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case *actor.Started:
		c.starts.Add(1)
	case ping:
		ctx.Respond(pong{starts: c.starts.Load()})
	case boom:
		panic("boom")
	}
}

// parent spawns children "a" and "b" and reports their PIDs.
type parent struct{ starts map[string]*atomic.Int32 }

func (p *parent) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case *actor.Started:
		for _, name := range []string{"a", "b"} {
			c := &child{starts: p.starts[name]}
			if _, err := ctx.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return c }), name); err != nil {
				panic(err)
			}
		}
	case getChildren:
		ctx.Respond(ctx.Children())
	}
}

// recorder is an Observer that keeps every event.
type recorder struct {
	mu       sync.Mutex
	restarts []restartEvent
	stops    []string
}

type restartEvent struct {
	id       string
	failures int
	delay    time.Duration
}

func (r *recorder) Restarted(child *actor.PID, _ interface{}, failures int, delay time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.restarts = append(r.restarts, restartEvent{child.Id, failures, delay})
}

func (r *recorder) Stopped(child *actor.PID, _ interface{}, _ int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stops = append(r.stops, child.Id)
}

func (r *recorder) events() []restartEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]restartEvent(nil), r.restarts...)
}

func eventually(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// start spawns a parent with strategy s and returns the system and the PIDs
// of children a and b with their start counters.
func start(t *testing.T, s actor.SupervisorStrategy) (sys *actor.ActorSystem, a, b *actor.PID, startsA, startsB *atomic.Int32) {
	t.Helper()
	sys = actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return slog.New(slog.DiscardHandler) }))
	startsA, startsB = new(atomic.Int32), new(atomic.Int32)
	p := &parent{starts: map[string]*atomic.Int32{"a": startsA, "b": startsB}}
	pid, err := sys.Root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return p }, actor.WithSupervisor(s)), "parent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sys.Root.PoisonFuture(pid).Wait()
		sys.Shutdown()
	})
	res, err := sys.Root.RequestFuture(pid, getChildren{}, time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.([]*actor.PID) {
		switch c.Id {
		case "parent/a":
			a = c
		case "parent/b":
			b = c
		}
	}
	if a == nil || b == nil {
		t.Fatalf("children %v, want parent/a and parent/b", res)
	}
	return sys, a, b, startsA, startsB
}

func ask(t *testing.T, sys *actor.ActorSystem, pid *actor.PID) int32 {
	t.Helper()
	res, err := sys.Root.RequestFuture(pid, ping{}, 3*time.Second).Result()
	if err != nil {
		t.Fatalf("ping %s: %v", pid.Id, err)
	}
	return res.(pong).starts
}

func TestStrategyRestartsFailingChildAloneWithBackoff(t *testing.T) {
	rec := &recorder{}
	stats := NewStats(nil)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	s := NewStrategy(DefaultPolicy(), Observers(rec, stats, m.Kind("test")))
	sys, a, b, startsA, startsB := start(t, s)

	// First failure: restarted after about 100 ms; the panicking message is
	// dropped, a later one is answered by the new incarnation.
	sys.Root.Send(a, boom{})
	eventually(t, 2*time.Second, func() bool { return stats.For(a.Id) == 1 })
	if got := ask(t, sys, a); got != 2 {
		t.Fatalf("a answered from start %d, want 2", got)
	}

	// Second consecutive failure waits about 200 ms.
	t0 := time.Now()
	sys.Root.Send(a, boom{})
	eventually(t, 5*time.Second, func() bool { return startsA.Load() == 3 })
	if elapsed := time.Since(t0); elapsed < 180*time.Millisecond {
		t.Errorf("second restart after %v, want >= 180ms", elapsed)
	}
	if got := ask(t, sys, a); got != 3 {
		t.Fatalf("a answered from start %d, want 3", got)
	}

	ev := rec.events()
	if len(ev) != 2 {
		t.Fatalf("restart events %+v, want 2", ev)
	}
	for i, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond} {
		e := ev[i]
		if e.id != a.Id || e.failures != i+1 || e.delay < want*9/10 || e.delay > want*11/10 {
			t.Errorf("event %d = %+v, want %s failure %d delay %v±10%%", i, e, a.Id, i+1, want)
		}
	}

	// The sibling never restarted and still answers.
	if got := ask(t, sys, b); got != 1 {
		t.Errorf("b answered from start %d, want 1", got)
	}
	if startsB.Load() != 1 || stats.For(b.Id) != 0 {
		t.Errorf("b started %d times, %d restarts recorded; want 1 and 0", startsB.Load(), stats.For(b.Id))
	}
	if stats.Total() != 2 || stats.Under("parent") != 2 {
		t.Errorf("Total %d, Under(parent) %d, want 2 and 2", stats.Total(), stats.Under("parent"))
	}
	if got := testutil.ToFloat64(m.restarts.WithLabelValues("test")); got != 2 {
		t.Errorf("voltage_actor_restarts_total{kind=test} = %v, want 2", got)
	}
}

func TestStrategyStopsChildAfterMaxRestarts(t *testing.T) {
	rec := &recorder{}
	stats := NewStats(nil)
	s := NewStrategy(Policy{Initial: time.Millisecond, Max: 5 * time.Millisecond, MaxRestarts: 2}, Observers(rec, stats))
	sys, a, b, startsA, _ := start(t, s)

	// Messages wait in the suspended mailbox, so each boom hits the next
	// incarnation: two restarts, then the third failure stops a.
	for range 3 {
		sys.Root.Send(a, boom{})
	}
	eventually(t, 5*time.Second, func() bool { return stats.Stops(a.Id) == 1 })
	eventually(t, 5*time.Second, func() bool {
		_, err := sys.Root.RequestFuture(a, ping{}, 100*time.Millisecond).Result()
		return errors.Is(err, actor.ErrDeadLetter)
	})
	if got := startsA.Load(); got != 3 {
		t.Errorf("a started %d times, want 3", got)
	}
	if got := stats.For(a.Id); got != 2 {
		t.Errorf("a restarted %d times, want 2", got)
	}
	if got := ask(t, sys, b); got != 1 {
		t.Errorf("b answered from start %d, want 1", got)
	}
}

func TestStatsUnder(t *testing.T) {
	s := NewStats(nil)
	for _, l := range []string{"channels/1001", "channels/1001/dev1/1001:m:1", "channels/1001/dev1/1001:m:1", "channels/10011", "channels/1002"} {
		s.Record(l)
	}
	f := func(prefix string, want int) {
		t.Helper()
		if got := s.Under(prefix); got != want {
			t.Errorf("Under(%q) = %d, want %d", prefix, got, want)
		}
	}
	f("channels/1001", 3)
	f("channels/1001/dev1", 2)
	f("channels", 5)
	f("channels/100", 0)
	if s.Total() != 5 || s.For("channels/1001/dev1/1001:m:1") != 2 {
		t.Errorf("Total %d, For %d; want 5 and 2", s.Total(), s.For("channels/1001/dev1/1001:m:1"))
	}
}

func TestNewMetricsDuplicate(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Fatal("second NewMetrics on the same registry: no error")
	}
}
