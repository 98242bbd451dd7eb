package dag

import (
	"context"
	"log/slog"
	"math"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

// Sink receives the computed points (the Redis writer, live sessions and
// history; never the DAG's own feed).
type Sink interface {
	Publish(u *messages.PointUpdate)
}

// Options configure the DAG.
type Options struct {
	Config     *config.Config
	Node       string
	Sink       Sink
	Store      StateStore // nil: stateful functions start fresh after a restart
	Log        *slog.Logger
	Supervisor actor.SupervisorStrategy // of the node actors
	// NodeMiddleware wraps every node actor's Receive (tests inject faults).
	NodeMiddleware []actor.ReceiverMiddleware
	// LevelTimeout bounds a level's evaluation; a node that does not answer
	// in time (it is restarting) gives its output quality bad. Default 1 s.
	LevelTimeout time.Duration
	// OnWave, when set, is called after each wave with the input updates
	// it took, the evaluations it ran and the sample time of its oldest
	// input (latency: done - oldest). Called on the actor's goroutine.
	OnWave func(inputs, evaluations int, oldest, done time.Time)
}

// GetComputations asks the DAG for the state of every computation.
type GetComputations struct{}

// ComputationInfo is one computation as GET /api/computations shows it.
type ComputationInfo struct {
	Output      string    `json:"output"`
	Name        string    `json:"name"`
	Expression  string    `json:"expression"`
	Inputs      []string  `json:"inputs"`
	Level       int       `json:"level"`
	Value       *float64  `json:"value"`
	Quality     string    `json:"quality"`
	Updated     time.Time `json:"updated"`
	LastError   string    `json:"last_error"`
	Evaluations uint64    `json:"evaluations"`
	Restarts    int       `json:"restarts"`
}

// Computations answers GetComputations.
type Computations struct{ Items []ComputationInfo }

type inputValue struct {
	v  float64
	q  messages.Quality
	ok bool // a value was seen
}

type nodeStatus struct {
	value     float64
	quality   messages.Quality
	has       bool
	updated   time.Time
	lastError string
	evals     uint64
}

type levelTimeout struct {
	wave  uint64
	level int
}

// Coordinator is the DAG actor: it keeps the current value of every input
// and output, and runs waves: the updates that arrived since the last wave
// mark their readers dirty, then levels are evaluated in order (each level
// by its node actors in parallel), so every computation is recomputed at
// most once per wave and only after all of its inputs.
type Coordinator struct {
	opt   Options
	g     *graph
	nodes []*actor.PID
	vals  map[messages.PointKey]inputValue
	stat  []nodeStatus

	queue   []messages.PointUpdate
	inWave  bool
	waveIn  int       // input updates of the running wave
	waveEv  int       // evaluations of the running wave
	oldest  time.Time // sample time of the wave's oldest input
	wave    uint64
	level   int
	dirty   []bool
	pending int
	now     time.Time
	timer   *time.Timer
	restart func(string) int
}

// NewProps returns the props of the DAG coordinator. restarts reports the
// restarts of a node actor by its PID id (supervisor.Stats.For), or nil.
func NewProps(opt Options, restarts func(string) int) *actor.Props {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.LevelTimeout <= 0 {
		opt.LevelTimeout = time.Second
	}
	popts := []actor.PropsOption{}
	if opt.Supervisor != nil {
		popts = append(popts, actor.WithSupervisor(opt.Supervisor))
	}
	return actor.PropsFromProducer(func() actor.Actor {
		return &Coordinator{opt: opt, restart: restarts}
	}, popts...)
}

// Receive implements actor.Actor.
func (c *Coordinator) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		c.start(ctx)
	case *messages.PointUpdates:
		c.queue = append(c.queue, m.Updates...)
		c.startWave(ctx)
	case *evaluated:
		c.result(ctx, m)
	case *levelTimeout:
		if m.wave == c.wave && m.level == c.level && c.inWave && c.pending > 0 {
			c.expire(ctx)
		}
	case *GetComputations:
		ctx.Respond(c.info(ctx))
	case *actor.Stopping:
		if c.timer != nil {
			c.timer.Stop()
		}
	}
}

func (c *Coordinator) start(ctx actor.Context) {
	c.g = newGraph(c.opt.Config)
	c.vals = map[messages.PointKey]inputValue{}
	c.stat = make([]nodeStatus, len(c.g.comps))
	c.dirty = make([]bool, len(c.g.comps))
	c.nodes = make([]*actor.PID, len(c.g.comps))
	opts := []actor.PropsOption{}
	if len(c.opt.NodeMiddleware) > 0 {
		opts = append(opts, actor.WithReceiverMiddleware(c.opt.NodeMiddleware...))
	}
	for i, comp := range c.g.comps {
		pid, err := ctx.SpawnNamed(actor.PropsFromProducer(func() actor.Actor {
			return &nodeActor{comp: comp, store: c.opt.Store, log: c.opt.Log}
		}, opts...), comp.Output)
		if err != nil {
			panic("spawn computation " + comp.Output + ": " + err.Error())
		}
		c.nodes[i] = pid
	}
}

// startWave takes the queued updates into the values and evaluates the
// computations they affect, unless a wave is running.
func (c *Coordinator) startWave(ctx actor.Context) {
	if c.inWave || len(c.queue) == 0 {
		return
	}
	c.waveIn, c.waveEv, c.oldest = len(c.queue), 0, time.Time{}
	for _, u := range c.queue {
		readers := c.g.readers[u.Key]
		if len(readers) == 0 {
			continue // no computation reads this point
		}
		if t := time.UnixMilli(u.Timestamp); c.oldest.IsZero() || t.Before(c.oldest) {
			c.oldest = t
		}
		old := c.vals[u.Key]
		s := inputValue{v: u.Value, q: u.Quality, ok: true}
		if u.Quality == messages.CommLost || u.Quality == messages.Stale || u.Quality == messages.Bad {
			s.v = old.v // keep the last value, mark the quality
			s.ok = old.ok
		}
		if old == s {
			continue
		}
		c.vals[u.Key] = s
		for _, r := range readers {
			c.dirty[r] = true
		}
	}
	c.queue = c.queue[:0]
	c.inWave = true
	c.wave++
	c.now = time.Now()
	c.level = 0
	c.runLevel(ctx)
}

// runLevel sends the dirty computations of the current level (or the next
// level that has any) to their node actors.
func (c *Coordinator) runLevel(ctx actor.Context) {
	for ; c.level <= c.g.maxLevel; c.level++ {
		for i, comp := range c.g.comps {
			if !c.dirty[i] || c.g.level[i] != c.level {
				continue
			}
			in := make([]float64, len(comp.Inputs.Bindings))
			ready := true
			for k, b := range comp.Inputs.Bindings {
				s := c.vals[b.Key]
				if !s.ok {
					ready = false // an input never seen: nothing to compute yet
					break
				}
				in[k] = s.v
			}
			if !ready {
				c.dirty[i] = false
				continue
			}
			ctx.Request(c.nodes[i], &evaluate{wave: c.wave, idx: i, inputs: in, now: c.now})
			c.pending++
			c.waveEv++
		}
		if c.pending > 0 {
			wave, level, self, root := c.wave, c.level, ctx.Self(), ctx.ActorSystem().Root
			c.timer = time.AfterFunc(c.opt.LevelTimeout, func() { root.Send(self, &levelTimeout{wave: wave, level: level}) })
			return
		}
	}
	c.inWave = false
	if c.opt.OnWave != nil {
		c.opt.OnWave(c.waveIn, c.waveEv, c.oldest, time.Now())
	}
	c.startWave(ctx) // what arrived meanwhile
}

func (c *Coordinator) result(ctx actor.Context, m *evaluated) {
	if m.wave != c.wave || !c.dirty[m.idx] {
		return // a late answer of a wave already given up on
	}
	c.apply(m.idx, m.value, m.err)
	c.pending--
	if c.pending == 0 {
		c.timer.Stop()
		c.level++
		c.runLevel(ctx)
	}
}

// expire gives up on the nodes of the level that did not answer.
func (c *Coordinator) expire(ctx actor.Context) {
	for i := range c.g.comps {
		if c.dirty[i] && c.g.level[i] == c.level {
			c.apply(i, math.NaN(), "no answer from the computation's actor (restarting)")
		}
	}
	c.pending = 0
	c.level++
	c.runLevel(ctx)
}

// apply records a computation's result and publishes its output: bad when
// it failed (keeping the last value), uncertain when an input is not good,
// good otherwise; a value change within the deadband is not published.
func (c *Coordinator) apply(i int, v float64, errText string) {
	c.dirty[i] = false
	comp := c.g.comps[i]
	st := &c.stat[i]
	st.evals++
	q := messages.Good
	for _, b := range comp.Inputs.Bindings {
		if c.vals[b.Key].q != messages.Good {
			q = messages.Uncertain
		}
	}
	st.lastError = errText
	if errText != "" {
		q, v = messages.Bad, st.value
		if !st.has {
			v = math.NaN()
		}
	}
	if st.has && st.quality == q && (v == st.value || (comp.Deadband > 0 && math.Abs(v-st.value) <= comp.Deadband) ||
		math.IsNaN(v) && math.IsNaN(st.value)) {
		return
	}
	st.value, st.quality, st.has, st.updated = v, q, true, c.now
	c.vals[comp.OutputKey] = inputValue{v: v, q: q, ok: !math.IsNaN(v)}
	for _, r := range c.g.readers[comp.OutputKey] {
		c.dirty[r] = true
	}
	u := messages.PointUpdate{Key: comp.OutputKey, Value: v, Timestamp: c.now.UnixMilli(), Quality: q, Node: c.opt.Node}
	c.opt.Sink.Publish(&u)
}

func (c *Coordinator) info(ctx actor.Context) *Computations {
	out := &Computations{Items: make([]ComputationInfo, len(c.g.comps))}
	for i, comp := range c.g.comps {
		st := c.stat[i]
		it := ComputationInfo{Output: comp.Output, Name: comp.Name, Expression: comp.Expression, Level: c.g.level[i],
			LastError: st.lastError, Evaluations: st.evals, Updated: st.updated}
		for _, b := range comp.Inputs.Bindings {
			it.Inputs = append(it.Inputs, b.Name+"="+b.Key.String())
		}
		if st.has {
			it.Quality = st.quality.String()
			if !math.IsNaN(st.value) {
				v := st.value
				it.Value = &v
			}
		}
		if c.restart != nil {
			it.Restarts = c.restart(c.nodes[i].Id)
		}
		out.Items[i] = it
	}
	return out
}

// RedisStateStore keeps computation state in the Redis hash dag:state
// (field: output key).
type RedisStateStore struct {
	Client redis.UniversalClient
	Keys   messages.Keys // the site's key names (redis.prefix)
}

// Load implements StateStore.
func (s RedisStateStore) Load(ctx context.Context, output string) ([]byte, error) {
	b, err := s.Client.HGet(ctx, s.Keys.DagState(), output).Bytes()
	if err == redis.Nil {
		return nil, nil
	}
	return b, err
}

// Save implements StateStore.
func (s RedisStateStore) Save(ctx context.Context, output string, state []byte) error {
	return s.Client.HSet(ctx, s.Keys.DagState(), output, state).Err()
}
