package alarm

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/supervisor"
)

// Redis keys (docs/alarms.md, ARCHITECTURE §4): the contract's names, without
// a site prefix (the store and the API use messages.Keys).
const (
	ActiveIndex  = "idx:alarm:active"
	EventsList   = "alarm:events"
	EventChannel = "alarm:event"
	// EventsKept is how many events alarm:events keeps.
	EventsKept = 10000
)

// Key is the hash of alarm id (the contract's name, without a site prefix).
func Key(id string) string { return "alarm:" + id }

// StoreOptions configure a Store.
type StoreOptions struct {
	Log     *slog.Logger
	Metrics *Metrics
	Policy  supervisor.Policy // retry backoff while Redis fails; zero: DefaultPolicy
	// MaxQueued bounds the events waiting for Redis (default 100000); beyond
	// it the oldest are dropped (counted and logged). States are never
	// dropped: only the latest of each rule is kept anyway.
	MaxQueued int
	// Node names the marker key alarm:store:{node} by which the store
	// notices a Redis that lost its data (restarted empty) and rewrites
	// every rule's state (default "node").
	Node string
	// CheckInterval is how often the store checks the marker when nothing
	// is written (default 5 s).
	CheckInterval time.Duration
	// Keys are the site's key names (redis.prefix).
	Keys messages.Keys
}

// Store writes alarm states and events to Redis: in order, batched, from
// one goroutine, and again after a failure until Redis takes them, so an
// outage or a flood loses nothing (up to MaxQueued events).
type Store struct {
	c   redis.UniversalClient
	opt StoreOptions

	mu       sync.Mutex
	events   []queued
	states   map[string]*State // latest state of each rule not yet written
	all      map[string]*State // latest state of every rule (for a rewrite)
	full     bool              // rewrite every state at the next flush
	checked  bool              // the marker was read once
	seeded   bool              // Seed was called
	seedTODO map[string]bool   // seeded states not written yet
	dropped  int
	token    string // this store's run marker

	signal chan struct{}
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

type queued struct {
	json     []byte
	sampleTS int64
}

// NewStore starts the writer goroutine.
func NewStore(c redis.UniversalClient, opt StoreOptions) *Store {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Policy.Initial <= 0 {
		opt.Policy = supervisor.DefaultPolicy()
	}
	if opt.MaxQueued <= 0 {
		opt.MaxQueued = 100_000
	}
	if opt.Node == "" {
		opt.Node = "node"
	}
	if opt.CheckInterval <= 0 {
		opt.CheckInterval = 5 * time.Second
	}
	s := &Store{c: c, opt: opt, states: map[string]*State{}, all: map[string]*State{}, signal: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{}),
		token: strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.FormatUint(rand.Uint64(), 36)}
	go s.loop()
	return s
}

// Seed gives the store the states loaded at start (every rule's, normal
// when Redis had none) and writes them all at the first flush: every rule
// has its hash in Redis, so a missing hash always means a Redis that lost
// the states (the API then says so instead of showing normal), and the
// store can write them all again into such a Redis.
func (s *Store) Seed(states map[string]State) {
	s.mu.Lock()
	s.seeded = true
	s.seedTODO = make(map[string]bool, len(states))
	for id, st := range states { // fresh from Redis: newer than what this store saw (in a cluster, another node ran them)
		cp := st
		s.all[id] = &cp
		s.seedTODO[id] = true
		if _, newer := s.states[id]; !newer {
			s.states[id] = &cp
		}
	}
	s.mu.Unlock()
	s.wake()
}

// Seeded reports whether the states given to Seed are all in Redis: until
// then the API cannot read every rule's state (the node is not ready).
func (s *Store) Seeded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seeded && len(s.seedTODO) == 0
}

// Resync makes the next flush, at once, check whether Redis still holds the
// alarm states and write them all again if not. The node calls it when its
// point writer found a Redis that lost its data, so the alarm states come
// back at the same moment as the point hashes.
func (s *Store) Resync() { s.wake() } // every flush checks the marker

func (s *Store) wake() {
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

func (s *Store) markerKey() string { return s.opt.Keys.AlarmStore(s.opt.Node) }

// Put queues the new state of rule id and its events (JSON, oldest first).
func (s *Store) Put(id string, st *State, events []queued) {
	s.mu.Lock()
	cp := *st
	s.states[id] = &cp
	s.all[id] = &cp
	s.events = append(s.events, events...)
	if over := len(s.events) - s.opt.MaxQueued; over > 0 {
		s.events = append(s.events[:0], s.events[over:]...)
		s.dropped += over
		if s.opt.Metrics != nil {
			s.opt.Metrics.dropped.Add(float64(over))
		}
	}
	s.mu.Unlock()
	s.wake()
}

// Queued is the number of events waiting for Redis.
func (s *Store) Queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

// Stop writes what is queued (for up to timeout) and stops the goroutine.
func (s *Store) Stop(timeout time.Duration) {
	s.once.Do(func() {
		close(s.stop)
		<-s.done // an attempt in progress ends within its 5 s timeout
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		for {
			more, err := s.flush(ctx)
			if err != nil {
				s.opt.Log.Error("alarm events not written to redis at shutdown", "events", s.Queued(), "err", err)
				return
			}
			if !more {
				return
			}
		}
	})
}

func (s *Store) loop() {
	defer close(s.done)
	fails := 0
	// The periodic flush checks the marker: a Redis restarted empty gets
	// its alarm states back within a few seconds even when nothing happens.
	check := time.NewTicker(s.opt.CheckInterval)
	defer check.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.signal:
		case <-check.C:
		}
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			more, err := s.flush(ctx)
			cancel()
			if err == nil {
				if fails > 0 {
					s.opt.Log.Info("alarm store: redis writes resumed", "after_failures", fails)
				}
				fails = 0
				if more {
					continue // the next batch at once
				}
				break
			}
			fails++
			if s.opt.Metrics != nil {
				s.opt.Metrics.storeFailures.Inc()
			}
			if fails == 1 || fails%20 == 0 {
				s.opt.Log.Warn("alarm store: redis write failed, will retry", "err", err, "queued", s.Queued(), "failures", fails)
			}
			select {
			case <-s.stop:
				return
			case <-time.After(s.opt.Policy.Delay(fails, rand.Float64())):
			}
		}
	}
}

// flushBatch bounds the events (and states) of one MULTI/EXEC, so that a
// flood does not hold Redis (and its other clients) for long and the first
// events reach subscribers early.
const flushBatch = 500

// flush writes up to flushBatch queued events and states in one
// MULTI/EXEC, oldest events first; on failure they go back to the front
// of the queue. more reports that something is still queued.
func (s *Store) flush(ctx context.Context) (more bool, err error) {
	s.mu.Lock()
	if s.full {
		// Rewrite every rule's state, batch by batch.
		for id, st := range s.all {
			if _, dirty := s.states[id]; !dirty {
				s.states[id] = st
			}
		}
		s.full = false
	}
	n := min(len(s.events), flushBatch)
	events := s.events[:n:n]
	s.events = s.events[n:]
	states := make(map[string]*State, min(len(s.states), flushBatch))
	for id, st := range s.states {
		if len(states) == flushBatch {
			break
		}
		states[id] = st
		delete(s.states, id)
	}
	dropped := s.dropped
	s.dropped = 0
	s.mu.Unlock()
	if dropped > 0 {
		s.opt.Log.Error("alarm events dropped: redis unreachable and the queue is full", "dropped", dropped, "max", s.opt.MaxQueued)
	}
	var marker *redis.StringCmd
	cmds, err := s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		// The previous value of the marker says whether this Redis still
		// holds what this store wrote: if not, rewrite every state.
		marker = p.GetSet(ctx, s.markerKey(), s.token)
		var add, rem []any
		for id, st := range states {
			p.HSet(ctx, s.opt.Keys.Alarm(id), stateFields(st))
			if st.Active() {
				add = append(add, id)
			} else {
				rem = append(rem, id)
			}
		}
		if len(add) > 0 {
			p.SAdd(ctx, s.opt.Keys.AlarmActive(), add...)
		}
		if len(rem) > 0 {
			p.SRem(ctx, s.opt.Keys.AlarmActive(), rem...)
		}
		if len(events) > 0 {
			args := make([]any, len(events))
			for j := range events {
				args[j] = events[j].json
			}
			p.LPush(ctx, s.opt.Keys.AlarmEvents(), args...)
			p.LTrim(ctx, s.opt.Keys.AlarmEvents(), 0, EventsKept-1)
		}
		for i := range events {
			p.Publish(ctx, s.opt.Keys.AlarmEvent(), events[i].json)
		}
		return nil
	})
	if errors.Is(err, redis.Nil) { // the GETSET of a missing marker: look further
		err = nil
		for _, c := range cmds {
			if e := c.Err(); e != nil && !errors.Is(e, redis.Nil) {
				err = e
				break
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		for id, st := range states {
			if _, newer := s.states[id]; !newer {
				s.states[id] = st
			}
		}
		s.events = append(events, s.events...)
		return true, err
	}
	// A marker that is not ours: on the first check, a previous run of this
	// node or nothing (the states loaded at start are being written by
	// Seed: nothing more to do); later, Redis lost it (restarted empty) or
	// another store took over.
	if v := marker.Val(); v != s.token && s.checked {
		if rewrite := len(s.all); rewrite > 0 {
			s.opt.Log.Warn("alarm store: redis lost the alarm states (restarted empty?), writing them again", "rules", rewrite)
			s.full = true
		}
	}
	s.checked = true
	for id := range states {
		delete(s.seedTODO, id)
	}
	if m := s.opt.Metrics; m != nil {
		now := time.Now().UnixMilli()
		for i := range events {
			if events[i].sampleTS > 0 {
				m.latency.Observe(float64(now-events[i].sampleTS) / 1000)
			}
		}
		m.written.Add(float64(len(events)))
	}
	return s.full || len(s.events) > 0 || len(s.states) > 0, nil
}

func stateFields(st *State) []any {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	return []any{
		"state", st.State, "level", st.Level, "band", st.Band, "value", f(st.Value), "threshold", f(st.Threshold),
		"since", i(st.Since), "message", st.Message, "acked_by", st.AckedBy, "acked_at", i(st.AckedAt),
		"shelved_until", i(st.ShelvedUntil), "shelved_by", st.ShelvedBy, "shelve_reason", st.ShelveReason,
		"seq", strconv.FormatUint(st.Seq, 10), "updated", i(st.Updated), "escalations", strconv.Itoa(st.Escalations),
		"escalated_at", i(st.EscalatedAt),
	}
}

// ParseState reads the hash alarm:{id}; an empty hash is a rule never raised.
func ParseState(h map[string]string) (State, error) {
	var st State
	var errs []error
	fl := func(k string) float64 {
		if h[k] == "" {
			return 0
		}
		v, err := strconv.ParseFloat(h[k], 64)
		if err != nil {
			errs = append(errs, errors.New(k+": "+err.Error()))
		}
		return v
	}
	in := func(k string) int64 {
		if h[k] == "" {
			return 0
		}
		v, err := strconv.ParseInt(h[k], 10, 64)
		if err != nil {
			errs = append(errs, errors.New(k+": "+err.Error()))
		}
		return v
	}
	st.State, st.Level, st.Band, st.Message = h["state"], h["level"], h["band"], h["message"]
	st.AckedBy, st.ShelvedBy, st.ShelveReason = h["acked_by"], h["shelved_by"], h["shelve_reason"]
	st.Value, st.Threshold = fl("value"), fl("threshold")
	st.Since, st.AckedAt, st.ShelvedUntil = in("since"), in("acked_at"), in("shelved_until")
	st.Updated, st.EscalatedAt = in("updated"), in("escalated_at")
	st.Seq = uint64(in("seq"))
	st.Escalations = int(in("escalations"))
	switch st.State {
	case "", Normal, ActiveUnacked, ActiveAcked, ClearedUnacked:
	default:
		errs = append(errs, errors.New("state: unknown "+strconv.Quote(st.State)))
	}
	if st.State == "" {
		st.State = Normal
	}
	return st, errors.Join(errs...)
}

// Load reads the persisted states of the rules ids (missing: normal). A hash
// that cannot be read is reported in bad and its rule starts from normal.
func Load(ctx context.Context, c redis.UniversalClient, keys messages.Keys, ids []string) (states map[string]State, bad []error, err error) {
	out := make(map[string]State, len(ids))
	for i := 0; i < len(ids); i += 1000 {
		chunk := ids[i:min(i+1000, len(ids))]
		cmds := make([]*redis.MapStringStringCmd, len(chunk))
		if _, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j, id := range chunk {
				cmds[j] = p.HGetAll(ctx, keys.Alarm(id))
			}
			return nil
		}); err != nil {
			return nil, nil, err
		}
		for j, id := range chunk {
			st, err := ParseState(cmds[j].Val())
			if err != nil {
				bad = append(bad, errors.New("redis "+keys.Alarm(id)+": "+err.Error()))
				st = State{State: Normal, Seq: st.Seq}
			}
			out[id] = st
		}
	}
	return out, bad, nil
}
