// Package placement decides which node runs each placed unit (a channel,
// the computation group, the alarm group, the history writer) and holds
// the unit's Redis lease while it runs here (ARCHITECTURE §8).
//
// A lease is the key lease:{kind}:{id} holding "node:token" with a PX TTL.
// The token comes from INCR lease:fence:{kind}:{id}, so it grows with every
// new owner: a stale owner's token is smaller, and the command path checks
// it (Fence) before a write reaches a device. The owner renews at a third
// of the TTL and stops the unit the moment a renewal fails or its local
// deadline passes (a stalled process wakes up past it), so two nodes never
// run a unit for longer than one TTL.
package placement

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/messages"
)

// Unit kinds.
const (
	KindChannel      = "channel"
	KindComputations = "computations"
	KindAlarms       = "alarms"
	KindHistory      = "history"
)

// ErrNotOwner is returned when the lease is not (or no longer) ours.
var ErrNotOwner = errors.New("lease not held by this node")

var (
	// acquireScript: KEYS[1] lease, KEYS[2] fence counter; ARGV[1] node,
	// ARGV[2] TTL ms, ARGV[3] a value this process held before ("" none),
	// which it may take back as is. Returns {1, value} when acquired, or
	// {0, current value, its PTTL}.
	acquireScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
  if ARGV[3] ~= '' and cur == ARGV[3] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, cur}
  end
  return {0, cur, redis.call('PTTL', KEYS[1])}
end
local tok = redis.call('INCR', KEYS[2])
local v = ARGV[1] .. ':' .. tok
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return {1, v}
`)
	renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)
	// fenceScript claims an idempotency key only while the lease is ours:
	// KEYS[1] lease, KEYS[2] the key to SET NX, ARGV[1] our lease value,
	// ARGV[2] the value, ARGV[3] its TTL in ms. Returns 1 claimed, 0 taken
	// already, -1 fenced (not the owner).
	fenceScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return 1
end
return 0
`)
)

// Holder is a lease this node holds.
type Holder struct {
	Kind, ID string
	Value    string // "node:token"
	Token    int64
	// Deadline is when the lease may have expired in Redis: the time the
	// last successful acquire or renew was sent, plus the TTL.
	Deadline time.Time
}

// Owner splits a lease value "node:token".
func Owner(v string) (node string, token int64) {
	node, tok, _ := strings.Cut(v, ":")
	token, _ = strconv.ParseInt(tok, 10, 64)
	return node, token
}

// Leases acquires, renews and releases leases for one node.
type Leases struct {
	C    redis.UniversalClient
	Keys messages.Keys // the site's key names (redis.prefix)
	Node string
	TTL  time.Duration
	Now  func() time.Time // default time.Now
}

func (l *Leases) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// Acquire takes the lease if it is free. It returns the holder, or nil and
// the current value when another node (or an earlier run of this one)
// holds it.
func (l *Leases) Acquire(ctx context.Context, kind, id string) (*Holder, string, error) {
	h, cur, _, err := l.acquire(ctx, kind, id, "")
	return h, cur, err
}

// acquire is Acquire that may also take back prev, a value this process
// held until a renewal failed, and reports how long a taken lease lasts.
func (l *Leases) acquire(ctx context.Context, kind, id, prev string) (*Holder, string, time.Duration, error) {
	sent := l.now()
	res, err := acquireScript.Run(ctx, l.C, []string{l.Keys.Lease(kind, id), l.Keys.Fence(kind, id)},
		l.Node, l.TTL.Milliseconds(), prev).Slice()
	if err != nil {
		return nil, "", 0, err
	}
	if len(res) < 2 {
		return nil, "", 0, errors.New("lease acquire: unexpected reply")
	}
	v, _ := res[1].(string)
	if ok, _ := res[0].(int64); ok != 1 {
		var left time.Duration
		if len(res) == 3 {
			if ms, _ := res[2].(int64); ms > 0 {
				left = time.Duration(ms) * time.Millisecond
			}
		}
		return nil, v, left, nil
	}
	_, tok := Owner(v)
	return &Holder{Kind: kind, ID: id, Value: v, Token: tok, Deadline: sent.Add(l.TTL)}, v, 0, nil
}

// RenewAll renews every holder in one pipeline (one round trip whatever
// their number); errs[i] is nil, ErrNotOwner or the failure of holders[i].
func (l *Leases) RenewAll(ctx context.Context, holders []*Holder) []error {
	errs := make([]error, len(holders))
	if len(holders) == 0 {
		return errs
	}
	sent := l.now()
	run := func() []*redis.Cmd {
		pipe := l.C.Pipeline()
		cmds := make([]*redis.Cmd, len(holders))
		for i, h := range holders {
			cmds[i] = renewScript.EvalSha(ctx, pipe, []string{l.Keys.Lease(h.Kind, h.ID)}, h.Value, l.TTL.Milliseconds())
		}
		_, _ = pipe.Exec(ctx)
		return cmds
	}
	cmds := run()
	if err := cmds[0].Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// A new or restarted Redis: load the script, then once more.
		if err := renewScript.Load(ctx, l.C).Err(); err == nil {
			cmds = run()
		}
	}
	for i, h := range holders {
		n, err := cmds[i].Int()
		switch {
		case err != nil:
			errs[i] = err
		case n != 1:
			errs[i] = ErrNotOwner
		default:
			h.Deadline = sent.Add(l.TTL)
		}
	}
	return errs
}

// Renew extends h; ErrNotOwner when the lease is no longer h's.
func (l *Leases) Renew(ctx context.Context, h *Holder) error {
	sent := l.now()
	n, err := renewScript.Run(ctx, l.C, []string{l.Keys.Lease(h.Kind, h.ID)}, h.Value, l.TTL.Milliseconds()).Int()
	if err != nil {
		return err
	}
	if n != 1 {
		return ErrNotOwner
	}
	h.Deadline = sent.Add(l.TTL)
	return nil
}

// Release gives the lease up if it is still h's.
func (l *Leases) Release(ctx context.Context, h *Holder) error {
	return releaseScript.Run(ctx, l.C, []string{l.Keys.Lease(h.Kind, h.ID)}, h.Value).Err()
}

// ReleaseAll releases every holder still current, in one pipeline.
func (l *Leases) ReleaseAll(ctx context.Context, hs []*Holder) error {
	if len(hs) == 0 {
		return nil
	}
	pipe := l.C.Pipeline()
	for _, h := range hs {
		releaseScript.Eval(ctx, pipe, []string{l.Keys.Lease(h.Kind, h.ID)}, h.Value)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// Fence claims key (SET NX PX ttl) only while lease value is the current
// holder of kind/id: true if claimed, false if the key existed; ErrNotOwner
// when the lease has moved on.
func Fence(ctx context.Context, c redis.UniversalClient, keys messages.Keys, kind, id, lease, key, value string, ttl time.Duration) (bool, error) {
	n, err := fenceScript.Run(ctx, c, []string{keys.Lease(kind, id), key}, lease, value, ttl.Milliseconds()).Int()
	if err != nil {
		return false, err
	}
	switch n {
	case 1:
		return true, nil
	case 0:
		return false, nil
	}
	return false, ErrNotOwner
}
