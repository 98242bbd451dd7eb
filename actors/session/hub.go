package session

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/voltage-ems/voltage/messages"
)

// Conn is a client connection as a session sees it (the WebSocket
// transport in package web implements it).
type Conn interface {
	// Send queues a frame; false means the client's backlog is full.
	Send(frame []byte, binary bool) bool
	// Close sends a close frame with code and reason and drops the
	// connection. Idempotent.
	Close(code int, reason string)
}

// PointReader reads current values for snapshots (redisbus.ReadPoints).
type PointReader func(keys []messages.PointKey) ([]messages.PointUpdate, error)

// Open asks the hub for a session on conn; the answer is *Opened.
type Open struct {
	Conn Conn
	User string
}

// Opened answers Open with the session's PID.
type Opened struct{ PID *actor.PID }

// Client carries a message the client sent (a text or binary frame).
type Client struct{ Data []byte }

// Gone tells a session its connection is closed.
type Gone struct{}

// Hub is the sessions actor: the parent of every session actor, the index
// from point key to the sessions subscribed to it, and the fan-out of point
// updates.
type Hub struct {
	known     map[messages.PointKey]*keyEntry
	byChannel map[uint32][]messages.PointKey // the known keys of each channel
	sessions  map[string]*subscriber         // by PID id
	read      PointReader
	nextID    uint64
	out       map[*actor.PID][]messages.PointUpdate
}

type keyEntry struct {
	key  string
	subs []*actor.PID
}

type subscriber struct {
	pid      *actor.PID
	patterns []string
	keys     map[messages.PointKey]struct{} // the keys the patterns match now
}

// NewHubProps returns the props of the hub. known are the points to index
// from the start (the configured ones); others are indexed when first seen.
// strategy supervises the sessions.
func NewHubProps(known []messages.PointKey, read PointReader, strategy actor.SupervisorStrategy) *actor.Props {
	opts := []actor.PropsOption{}
	if strategy != nil {
		opts = append(opts, actor.WithSupervisor(strategy))
	}
	return actor.PropsFromProducer(func() actor.Actor {
		h := &Hub{known: make(map[messages.PointKey]*keyEntry, len(known)), byChannel: map[uint32][]messages.PointKey{},
			sessions: map[string]*subscriber{}, read: read, out: map[*actor.PID][]messages.PointUpdate{}}
		for _, k := range known {
			h.learn(k)
		}
		return h
	}, opts...)
}

// subscribeReq asks the hub to add or remove a session's patterns; the hub
// answers with *subscribedResp.
type subscribeReq struct {
	patterns []string
	remove   bool
}

type subscribedResp struct {
	patterns []string            // all of the session's patterns now
	added    []messages.PointKey // keys newly matched (for the snapshot)
	total    int                 // keys matched now
}

// sessionUpdates is the part of a batch one session subscribed to.
type sessionUpdates struct{ updates []messages.PointUpdate }

// Receive implements actor.Actor.
func (h *Hub) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *Open:
		h.nextID++
		st := newState(m.Conn, m.User, h.read)
		pid, err := ctx.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return &sessionActor{st: st} }),
			"s"+itoa(h.nextID))
		if err != nil {
			m.Conn.Close(1011, "cannot start a session")
			ctx.Respond(&Opened{})
			return
		}
		ctx.Watch(pid)
		h.sessions[pid.Id] = &subscriber{pid: pid, keys: map[messages.PointKey]struct{}{}}
		ctx.Respond(&Opened{PID: pid})
	case *subscribeReq:
		ctx.Respond(h.subscribe(ctx.Sender(), m))
	case *messages.PointUpdates:
		h.fanout(ctx, m.Updates)
	case *actor.Terminated:
		if s := h.sessions[m.Who.Id]; s != nil {
			h.setPatterns(s, nil)
			delete(h.sessions, m.Who.Id)
		}
	case *Broadcast:
		for _, s := range h.sessions {
			ctx.Send(s.pid, m)
		}
	case *GetStats:
		ctx.Respond(&Stats{Sessions: len(h.sessions), Keys: len(h.known)})
	}
}

// Broadcast sends Frame to every session as a frame of its own (in the
// session's format). Frame must encode with a "type" field, e.g. the
// {"type":"alarm",...} frames of the alarms issue.
type Broadcast struct{ Frame any }

// GetStats asks the hub for Stats.
type GetStats struct{}

// Stats is the hub's size.
type Stats struct{ Sessions, Keys int }

func (h *Hub) subscribe(pid *actor.PID, m *subscribeReq) *subscribedResp {
	s := h.sessions[pid.Id]
	if s == nil {
		return &subscribedResp{}
	}
	patterns := make([]string, 0, len(s.patterns)+len(m.patterns))
	if m.remove {
		for _, p := range s.patterns {
			if !contains(m.patterns, p) {
				patterns = append(patterns, p)
			}
		}
	} else {
		patterns = append(patterns, s.patterns...)
		for _, p := range m.patterns {
			if !contains(patterns, p) {
				patterns = append(patterns, p)
			}
		}
	}
	added, total := h.setPatterns(s, patterns)
	return &subscribedResp{patterns: patterns, added: added, total: total}
}

// learn indexes a key seen for the first time.
func (h *Hub) learn(k messages.PointKey) *keyEntry {
	e := &keyEntry{key: k.String()}
	h.known[k] = e
	h.byChannel[k.Channel] = append(h.byChannel[k.Channel], k)
	return e
}

// candidates calls f for every known key that patterns may match: only the
// keys of the named channels when every pattern names its channel literally
// ("1001:m:*"), else all keys.
func (h *Hub) candidates(patterns []string, f func(messages.PointKey)) {
	var chans []uint32
	for _, p := range patterns {
		c, _, _ := strings.Cut(p, ":")
		id, err := strconv.ParseUint(c, 10, 32)
		if err != nil { // a wildcard in the channel part
			for k := range h.known {
				f(k)
			}
			return
		}
		chans = append(chans, uint32(id))
	}
	for _, c := range chans {
		for _, k := range h.byChannel[c] {
			f(k)
		}
	}
}

// setPatterns re-indexes one session and returns the keys it gained and
// how many it matches now. It looks only at the keys the session has and
// the ones its new patterns can match, not at every known key.
func (h *Hub) setPatterns(s *subscriber, patterns []string) (added []messages.PointKey, total int) {
	s.patterns = patterns
	now := make(map[messages.PointKey]struct{}, len(s.keys))
	if len(patterns) > 0 {
		h.candidates(patterns, func(k messages.PointKey) {
			if _, seen := now[k]; !seen && matchAny(patterns, h.known[k].key) {
				now[k] = struct{}{}
			}
		})
	}
	for k := range s.keys {
		if _, keep := now[k]; !keep {
			e := h.known[k]
			if i := indexOf(e.subs, s.pid); i >= 0 {
				e.subs = append(e.subs[:i], e.subs[i+1:]...)
			}
		}
	}
	for k := range now {
		if _, had := s.keys[k]; !had {
			h.known[k].subs = append(h.known[k].subs, s.pid)
			added = append(added, k)
		}
	}
	s.keys = now
	return added, len(now)
}

// fanout hands each session the updates it subscribed to, in one message.
func (h *Hub) fanout(ctx actor.Context, us []messages.PointUpdate) {
	for i := range us {
		e := h.known[us[i].Key]
		if e == nil { // first sight of a key (another node's point)
			e = h.learn(us[i].Key)
			for _, s := range h.sessions {
				if matchAny(s.patterns, e.key) {
					e.subs = append(e.subs, s.pid)
					s.keys[us[i].Key] = struct{}{}
				}
			}
		}
		for _, pid := range e.subs {
			h.out[pid] = append(h.out[pid], us[i])
		}
	}
	for pid, batch := range h.out {
		ctx.Send(pid, &sessionUpdates{updates: batch})
		delete(h.out, pid)
	}
}

func indexOf(pids []*actor.PID, p *actor.PID) int {
	for i, q := range pids {
		if q.Id == p.Id {
			return i
		}
	}
	return -1
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func itoa(n uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// Feed batches local point updates for the hub (the in-process L1 path):
// Publish is a mutex-guarded append; a goroutine hands the batch to the hub
// every interval.
type Feed struct {
	mu      sync.Mutex
	buf     []messages.PointUpdate
	send    func(*messages.PointUpdates)
	every   time.Duration
	stop    chan struct{}
	stopped sync.Once
	done    chan struct{}
}

// NewFeed starts a feed that delivers to send every interval (20 ms when 0).
func NewFeed(send func(*messages.PointUpdates), interval time.Duration) *Feed {
	if interval <= 0 {
		interval = 20 * time.Millisecond
	}
	f := &Feed{send: send, every: interval, stop: make(chan struct{}), done: make(chan struct{})}
	go f.loop()
	return f
}

// Publish queues one update (it implements acquisition.Sink).
func (f *Feed) Publish(u *messages.PointUpdate) {
	f.mu.Lock()
	f.buf = append(f.buf, *u)
	f.mu.Unlock()
}

func (f *Feed) loop() {
	defer close(f.done)
	t := time.NewTicker(f.every)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		f.mu.Lock()
		batch := f.buf
		f.buf = nil
		f.mu.Unlock()
		if len(batch) > 0 {
			f.send(&messages.PointUpdates{Updates: batch})
		}
	}
}

// Stop ends the feed. Idempotent.
func (f *Feed) Stop() {
	f.stopped.Do(func() { close(f.stop); <-f.done })
}
