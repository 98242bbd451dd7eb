package placement

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// NodeKey is a node's heartbeat hash (the contract's name, without a site
// prefix: messages.Keys.Node has it); it expires one lease TTL after the
// node's last beat, so its existence is the node's liveness.
func NodeKey(name string) string { return "node:" + name }

// Lease is the view a running unit has of its lease: Valid is false from
// the moment the lease may have expired in Redis (checked before each poll).
type Lease struct {
	Kind, ID string
	value    string
	token    int64
	base     time.Time
	deadline atomic.Int64 // ns after base (monotonic clock)
}

func newLease(h *Holder) *Lease {
	l := &Lease{Kind: h.Kind, ID: h.ID, value: h.Value, token: h.Token, base: time.Now()}
	l.set(h.Deadline)
	return l
}

func (l *Lease) set(deadline time.Time) { l.deadline.Store(int64(deadline.Sub(l.base))) }

// Valid reports whether the lease is certainly still ours.
func (l *Lease) Valid() bool { return time.Since(l.base) < time.Duration(l.deadline.Load()) }

// Value is "node:token", what the lease key holds while it is ours.
func (l *Lease) Value() string { return l.value }

// Token is the fencing token.
func (l *Lease) Token() int64 { return l.token }

// Unit is something placed on one node at a time.
type Unit struct {
	Kind, ID string
	Eligible []string // node names, in order of preference
	// Start runs the unit on this node under lease l; Stop stops it and
	// returns once it has stopped. Both are called from the placer's
	// goroutine and must not block long.
	Start func(l *Lease) error
	Stop  func()
}

// Options configure a Placer.
type Options struct {
	Leases   *Leases // Node and TTL are this node's
	Nodes    []string
	Units    []Unit
	Log      *slog.Logger
	Interval time.Duration // default TTL/3
	// Beat returns the fields of the heartbeat hash besides updated and owned.
	Beat func() map[string]any
	// Members returns the nodes cluster membership holds (protoactor's
	// member list), nil while it has none. A node counts as alive when it
	// is a member and its heartbeat is in Redis (a member that cannot
	// reach Redis cannot hold a lease). Nil: the heartbeats alone.
	Members func() map[string]bool
}

// Placer runs the placement loop of one node: heartbeat, membership from
// the heartbeats, renewing what it holds, handing over to a preferred node,
// acquiring what it should run.
type Placer struct {
	opt  Options
	held map[string]*held // by unit key
	// prev is the lease value a unit had here until a renewal failed for
	// a reason other than losing it: the next acquire may take it back
	// at once instead of waiting for it to expire.
	prev map[string]string
	// wake is when a lease this node waits for expires (zero: none).
	wake time.Time

	mu     sync.Mutex
	status Status

	stop chan struct{}
	done chan struct{}
	once sync.Once
	// crashed (tests) ends the loop as a killed process would: nothing is
	// stopped or released.
	crashed atomic.Bool
}

type held struct {
	unit  *Unit
	lease *Lease
	h     *Holder
	since time.Time
}

// Status is what this node knows about its placement.
type Status struct {
	Alive     []string  // nodes with a heartbeat, at the last cycle
	Owned     []string  // unit keys running here ("channel:1001")
	Missing   []string  // units this node should run but does not (yet)
	RedisDown bool      // the last cycle could not reach Redis
	Cycle     time.Time // end of the last cycle
}

// New returns a placer; Run starts it.
func New(opt Options) *Placer {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Interval <= 0 {
		opt.Interval = opt.Leases.TTL / 3
	}
	return &Placer{opt: opt, held: map[string]*held{}, prev: map[string]string{}, stop: make(chan struct{}), done: make(chan struct{})}
}

func unitKey(u *Unit) string { return u.Kind + ":" + u.ID }

// Status returns the last cycle's status.
func (p *Placer) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

// Run runs the loop until Stop.
func (p *Placer) Run() {
	go func() {
		defer close(p.done)
		for {
			p.cycle()
			wait := p.opt.Interval
			// Wake up at the earliest deadline too: a unit whose lease
			// could not be renewed stops the moment it may have expired;
			// and when a lease this node waits for expires.
			for _, h := range p.held {
				if d := time.Until(h.h.Deadline); d < wait {
					wait = max(d, time.Millisecond)
				}
			}
			if !p.wake.IsZero() {
				if d := time.Until(p.wake); d < wait {
					wait = max(d, time.Millisecond)
				}
			}
			select {
			case <-p.stop:
				if !p.crashed.Load() {
					p.releaseAll()
				}
				return
			case <-time.After(wait):
			}
		}
	}()
}

// Stop stops every unit held here, releases the leases (so a standby
// takes over at once) and ends the loop.
func (p *Placer) Stop() {
	p.once.Do(func() {
		close(p.stop)
		<-p.done
	})
}

// releaseAll stops every unit held here, then releases all their leases
// and the heartbeat in one round trip, so that standbys take over at once.
func (p *Placer) releaseAll() {
	var hs []*Holder
	for k, h := range p.held {
		h.unit.Stop()
		hs = append(hs, h.h)
		delete(p.held, k)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := p.opt.Leases.ReleaseAll(ctx, hs); err != nil {
		p.opt.Log.Warn("leases not released (they expire on their own)", "units", len(hs), "err", err)
	}
	_ = p.opt.Leases.C.Del(ctx, p.opt.Leases.Keys.Node(p.opt.Leases.Node)).Err()
}

func (p *Placer) drop(k string, h *held, why string, args ...any) {
	h.unit.Stop()
	delete(p.held, k)
	p.opt.Log.Warn("unit stopped: "+why, append([]any{"unit", k, "held_for", time.Since(h.since).Round(time.Millisecond)}, args...)...)
}

func (p *Placer) cycle() {
	l := p.opt.Leases
	budget := max(l.TTL/3, 200*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	p.wake = time.Time{}

	// Deadlines first: a stalled process wakes up here past them.
	for k, h := range p.held {
		if !time.Now().Before(h.h.Deadline) {
			p.drop(k, h, "its lease may have expired (no renewal in time)")
		}
	}

	// Heartbeat and membership in one round trip.
	owned := make([]string, 0, len(p.held))
	for k := range p.held {
		owned = append(owned, k)
	}
	slices.Sort(owned)
	fields := map[string]any{}
	if p.opt.Beat != nil {
		fields = p.opt.Beat()
	}
	fields["updated"] = time.Now().UnixMilli()
	fields["owned"] = strings.Join(owned, ",")
	pipe := l.C.Pipeline()
	pipe.HSet(ctx, l.Keys.Node(l.Node), fields)
	pipe.PExpire(ctx, l.Keys.Node(l.Node), l.TTL)
	exists := make([]*redis.IntCmd, len(p.opt.Nodes))
	for i, n := range p.opt.Nodes {
		exists[i] = pipe.Exists(ctx, l.Keys.Node(n))
	}
	_, err := pipe.Exec(ctx)
	if err != nil {
		// No Redis, no lease: everything stops here and starts again
		// when Redis is back.
		for k, h := range p.held {
			p.prev[k] = h.h.Value // Redis may still hold it when it answers again
			p.drop(k, h, "redis unreachable", "err", err)
		}
		p.setStatus(nil, true)
		return
	}
	var members map[string]bool
	if p.opt.Members != nil {
		members = p.opt.Members()
	}
	alive := map[string]bool{}
	var aliveList []string
	for i, n := range p.opt.Nodes {
		if exists[i].Val() == 1 && (members == nil || members[n] || n == l.Node) {
			alive[n] = true
			aliveList = append(aliveList, n)
		}
	}

	// Renew what is held, in one round trip with its own time budget; a
	// failure stops the unit at once.
	keys := make([]string, 0, len(p.held))
	holders := make([]*Holder, 0, len(p.held))
	for k, h := range p.held {
		keys = append(keys, k)
		holders = append(holders, h.h)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), budget)
	errs := l.RenewAll(rctx, holders)
	rcancel()
	for i, k := range keys {
		h := p.held[k]
		switch err := errs[i]; {
		case errors.Is(err, ErrNotOwner):
			p.drop(k, h, "lease taken by another node")
		case err != nil:
			p.prev[k] = h.h.Value
			p.drop(k, h, "lease renewal failed", "err", err)
		default:
			h.lease.set(h.h.Deadline)
		}
	}
	actx, acancel := context.WithTimeout(context.Background(), budget)
	defer acancel()

	for i := range p.opt.Units {
		u := &p.opt.Units[i]
		k := unitKey(u)
		want := ""
		for _, n := range u.Eligible {
			if alive[n] {
				want = n
				break
			}
		}
		if h, ok := p.held[k]; ok {
			if want != "" && want != l.Node {
				// A node ahead of this one in the unit's order is alive:
				// hand the unit back to it.
				h.unit.Stop()
				delete(p.held, k)
				rctx, rcancel := context.WithTimeout(context.Background(), budget)
				err := l.Release(rctx, h.h)
				rcancel()
				if err != nil {
					p.opt.Log.Warn("lease not released after handover (it expires on its own)", "unit", k, "err", err)
				}
				p.opt.Log.Info("unit handed over to a preferred node", "unit", k, "to", want)
			}
			continue
		}
		if want != l.Node {
			continue
		}
		if actx.Err() != nil {
			break // out of time this cycle: the next one goes on
		}
		h, cur, left, err := l.acquire(actx, u.Kind, u.ID, p.prev[k])
		if err != nil {
			p.opt.Log.Warn("lease acquire failed", "unit", k, "err", err)
			continue
		}
		delete(p.prev, k)
		if h == nil {
			if owner, _ := Owner(cur); owner == l.Node {
				p.opt.Log.Info("lease still held by an earlier run of this node; waiting for it to expire", "unit", k)
			}
			if owner, _ := Owner(cur); !alive[owner] && left > 0 {
				// Its owner is gone: try again the moment it expires.
				if at := time.Now().Add(left + 5*time.Millisecond); p.wake.IsZero() || at.Before(p.wake) {
					p.wake = at
				}
			}
			continue
		}
		lease := newLease(h)
		if err := u.Start(lease); err != nil {
			p.opt.Log.Error("unit did not start; lease released", "unit", k, "err", err)
			_ = l.Release(actx, h)
			continue
		}
		p.held[k] = &held{unit: u, lease: lease, h: h, since: time.Now()}
		p.opt.Log.Info("unit started here", "unit", k, "token", h.Token)
	}
	p.setStatus(aliveList, false)
}

func (p *Placer) setStatus(alive []string, redisDown bool) {
	st := Status{Alive: alive, RedisDown: redisDown, Cycle: time.Now()}
	for k := range p.held {
		st.Owned = append(st.Owned, k)
	}
	slices.Sort(st.Owned)
	aliveSet := map[string]bool{}
	for _, n := range alive {
		aliveSet[n] = true
	}
	for i := range p.opt.Units {
		u := &p.opt.Units[i]
		for _, n := range u.Eligible {
			if aliveSet[n] || n == p.opt.Leases.Node {
				if n == p.opt.Leases.Node {
					if _, ok := p.held[unitKey(u)]; !ok {
						st.Missing = append(st.Missing, unitKey(u))
					}
				}
				break
			}
		}
	}
	p.mu.Lock()
	p.status = st
	p.mu.Unlock()
}
