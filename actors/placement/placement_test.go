package placement

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

func client(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestLeaseAcquireRenewFence(t *testing.T) {
	r := testenv.StartRedis(t)
	c := client(t, r.Addr())
	ctx := context.Background()
	a := &Leases{C: c, Node: "a", TTL: 300 * time.Millisecond}
	b := &Leases{C: c, Node: "b", TTL: 300 * time.Millisecond}

	ha, _, err := a.Acquire(ctx, KindChannel, "1001")
	if err != nil || ha == nil || ha.Value != "a:1" || ha.Token != 1 {
		t.Fatalf("a acquires: %+v %v", ha, err)
	}
	if hb, cur, err := b.Acquire(ctx, KindChannel, "1001"); err != nil || hb != nil || cur != "a:1" {
		t.Fatalf("b while a holds: %+v %q %v", hb, cur, err)
	}
	if err := a.Renew(ctx, ha); err != nil {
		t.Fatal(err)
	}
	if ok, err := Fence(ctx, c, messages.Keys{}, KindChannel, "1001", ha.Value, "cmd:seen:x", "a", time.Minute); !ok || err != nil {
		t.Fatalf("fence by the holder: %v %v", ok, err)
	}
	if ok, err := Fence(ctx, c, messages.Keys{}, KindChannel, "1001", ha.Value, "cmd:seen:x", "a", time.Minute); ok || err != nil {
		t.Fatalf("second claim of the same key: %v %v", ok, err)
	}
	// a stalls past its TTL: b takes the lease with a bigger token, and a
	// can neither renew nor pass the fence any more.
	var hb *Holder
	testenv.Eventually(t, 2*time.Second, func() bool { hb, _, err = b.Acquire(ctx, KindChannel, "1001"); return hb != nil }, "b acquires after expiry")
	if hb.Token != 2 || hb.Value != "b:2" {
		t.Fatalf("b's lease %+v", hb)
	}
	if err := a.Renew(ctx, ha); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("a renews b's lease: %v", err)
	}
	if _, err := Fence(ctx, c, messages.Keys{}, KindChannel, "1001", ha.Value, "cmd:seen:y", "a", time.Minute); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("stale holder through the fence: %v", err)
	}
	if n, _ := c.Exists(ctx, "cmd:seen:y").Result(); n != 0 {
		t.Fatal("a fenced claim left its key")
	}
	if err := a.Release(ctx, ha); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.Get(ctx, messages.Keys{}.Lease(KindChannel, "1001")).Result(); v != "b:2" {
		t.Fatalf("a's release removed b's lease: %q", v)
	}
}

// unitRec records a unit's starts and stops on one node.
type unitRec struct {
	mu      sync.Mutex
	running bool
	lease   *Lease
	starts  int
}

func (u *unitRec) unit(kind, id string, eligible ...string) Unit {
	return Unit{Kind: kind, ID: id, Eligible: eligible,
		Start: func(l *Lease) error {
			u.mu.Lock()
			defer u.mu.Unlock()
			u.running, u.lease = true, l
			u.starts++
			return nil
		},
		Stop: func() {
			u.mu.Lock()
			defer u.mu.Unlock()
			u.running = false
		}}
}

func (u *unitRec) isRunning() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.running
}

func startPlacer(t *testing.T, c redis.UniversalClient, node string, ttl time.Duration, units ...Unit) *Placer {
	p := New(Options{Leases: &Leases{C: c, Node: node, TTL: ttl}, Nodes: []string{"a", "b"}, Units: units,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	p.Run()
	t.Cleanup(p.Stop)
	return p
}

// TestFailoverAndHandback: the preferred node runs the unit; when it
// crashes (no release) the standby starts it once the lease has expired,
// never while the crashed node's lease may still be valid; when the
// preferred node comes back, the unit is handed back to it.
func TestFailoverAndHandback(t *testing.T) {
	r := testenv.StartRedis(t)
	c := client(t, r.Addr())
	const ttl = 600 * time.Millisecond
	ua, ub := &unitRec{}, &unitRec{}
	pa := startPlacer(t, c, "a", ttl, ua.unit(KindChannel, "1001", "a", "b"))
	testenv.Eventually(t, 3*time.Second, ua.isRunning, "a runs the unit")
	pb := startPlacer(t, c, "b", ttl, ub.unit(KindChannel, "1001", "a", "b"))
	testenv.Eventually(t, 3*time.Second, func() bool { st := pb.Status(); return len(st.Alive) == 2 }, "b sees both nodes")
	if ub.isRunning() {
		t.Fatal("the standby started the unit while the preferred node runs it")
	}

	// a crashes: nothing released.
	crashed := time.Now()
	aLease := ua.lease
	pa.crashed.Store(true)
	pa.Stop()
	testenv.Eventually(t, 5*time.Second, ub.isRunning, "b takes over")
	took := time.Since(crashed)
	if aLease.Valid() {
		t.Fatal("b started while a's lease was still valid")
	}
	if took > ttl+ttl/3+500*time.Millisecond {
		t.Fatalf("failover took %v (ttl %v)", took, ttl)
	}
	if ub.lease.Token() <= aLease.Token() {
		t.Fatalf("token %d after %d: not increasing", ub.lease.Token(), aLease.Token())
	}

	// a comes back: b hands the unit back.
	ua2 := &unitRec{}
	startPlacer(t, c, "a", ttl, ua2.unit(KindChannel, "1001", "a", "b"))
	testenv.Eventually(t, 5*time.Second, ua2.isRunning, "a runs the unit again")
	if ub.isRunning() {
		t.Fatal("b still runs the unit after the handback")
	}
}

// TestRedisDownStopsUnits: without Redis nothing can be renewed, so every
// unit stops (within the TTL) and starts again when Redis is back.
func TestRedisDownStopsUnits(t *testing.T) {
	r := testenv.StartRedis(t)
	c := client(t, r.Addr())
	const ttl = 600 * time.Millisecond
	u := &unitRec{}
	p := startPlacer(t, c, "a", ttl, u.unit(KindAlarms, "group", "a"))
	testenv.Eventually(t, 3*time.Second, u.isRunning, "unit running")
	r.Stop()
	stopped := time.Now()
	testenv.Eventually(t, 3*time.Second, func() bool { return !u.isRunning() }, "unit stopped without redis")
	if d := time.Since(stopped); d > ttl+100*time.Millisecond {
		t.Fatalf("the unit ran %v without redis (ttl %v)", d, ttl)
	}
	if st := p.Status(); !st.RedisDown && len(st.Missing) == 0 {
		t.Fatalf("status %+v", st)
	}
	r.Restart()
	testenv.Eventually(t, 5*time.Second, u.isRunning, "unit running again after redis came back")
	if st := p.Status(); len(st.Owned) != 1 || !strings.HasPrefix(st.Owned[0], "alarms:") {
		t.Fatalf("status %+v", st)
	}
}

// TestStallOfRedisStopsThenReadopts: Redis stalls (CLIENT PAUSE) past the
// renewal's time budget: the unit stops at once; when Redis answers again
// and still holds this node's lease, the node takes it back as it is (same
// token) instead of waiting for it to expire.
func TestStallOfRedisStopsThenReadopts(t *testing.T) {
	r := testenv.StartRedis(t)
	c := client(t, r.Addr())
	admin := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = admin.Close() })
	const ttl = 3 * time.Second
	u := &unitRec{}
	startPlacer(t, c, "a", ttl, u.unit(KindChannel, "7", "a"))
	testenv.Eventually(t, 5*time.Second, u.isRunning, "unit running")
	first := u.lease
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", "1500", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	testenv.Eventually(t, 3*time.Second, func() bool { return !u.isRunning() }, "unit stopped while redis stalls")
	testenv.Eventually(t, 5*time.Second, u.isRunning, "unit running again")
	u.mu.Lock()
	again, starts := u.lease, u.starts
	u.mu.Unlock()
	if starts != 2 || again.Token() != first.Token() || again.Value() != first.Value() {
		t.Fatalf("starts %d, token %d then %d: want the same lease taken back", starts, first.Token(), again.Token())
	}
	if d := time.Since(paused); d >= ttl {
		t.Fatalf("back after %v: it waited for the lease to expire", d)
	}
}
