package alarm

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/supervisor"
)

// Errors of the request messages.
var (
	ErrUnknown  = errors.New("unknown alarm")
	ErrNotReady = errors.New("alarms are starting: their state is not loaded from redis yet")
)

// Notifier delivers events to webhooks (actors/alarm/notify).
type Notifier interface {
	Send(urls []string, eventID string, body []byte)
}

// Options configure the alarms actor.
type Options struct {
	Config *config.Config
	Node   string
	// Redis holds the persisted states (read once at start) and Store
	// writes them back with the events.
	Redis    redis.UniversalClient
	Store    *Store
	Notifier Notifier      // nil: no webhooks
	Live     func([]Event) // live sessions (batched); nil: none
	Log      *slog.Logger
	Metrics  *Metrics
	// Supervisor of the rule actors; Dispatcher runs their mailboxes.
	Supervisor actor.SupervisorStrategy
	Dispatcher actor.Dispatcher
	// RuleMiddleware wraps every rule actor's Receive (tests inject faults).
	RuleMiddleware []actor.ReceiverMiddleware
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Ack acknowledges alarm ID for User (Comment goes to the event's reason).
// Reply: *Reply.
type Ack struct{ ID, User, Comment string }

// Shelve shelves alarm ID for For. Reply: *Reply.
type Shelve struct {
	ID, User, Reason string
	For              time.Duration
}

// Unshelve ends the shelve of alarm ID. Reply: *Reply.
type Unshelve struct{ ID, User string }

// Reply answers Ack, Shelve and Unshelve: the state after it, or Err
// (ErrUnknown, ErrNotReady, ErrNotActive, ErrAlreadyAcked, ErrNotShelved).
type Reply struct {
	State State
	Err   error
}

type input struct {
	v  float64
	q  messages.Quality
	ts int64
}

type tick struct{}

type loaded struct {
	states map[string]State
}

// slot is what a rule actor keeps across its restarts: the whole
// evaluation (state, latest input, a pending on/off delay) as of the last
// message it handled.
type slot struct {
	rule *Rule
	eval Eval
}

// Manager is the alarms actor: it loads the rules' states, supervises one
// actor per rule and routes point updates and operator requests to them.
type Manager struct {
	opt    *Options
	out    *outbox
	rules  []*Rule
	byKey  map[messages.PointKey][]int
	pids   []*actor.PID
	byID   map[string]int
	ready  bool
	early  map[messages.PointKey]messages.PointUpdate // latest update of each key before ready
	cancel context.CancelFunc
}

// NewProps returns the props of the alarms actor.
func NewProps(opt Options) *actor.Props {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	var popts []actor.PropsOption
	if opt.Supervisor != nil {
		popts = append(popts, actor.WithSupervisor(opt.Supervisor))
	}
	o := &opt
	return actor.PropsFromProducer(func() actor.Actor { return &Manager{opt: o} }, popts...)
}

// Receive implements actor.Actor.
func (m *Manager) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case *actor.Started:
		m.start(ctx)
	case *loaded:
		m.spawn(ctx, msg.states)
	case *messages.PointUpdates:
		m.route(ctx, msg.Updates)
	case *Ack:
		m.forward(ctx, msg.ID)
	case *Shelve:
		m.forward(ctx, msg.ID)
	case *Unshelve:
		m.forward(ctx, msg.ID)
	case *actor.Stopping:
		if m.cancel != nil {
			m.cancel()
		}
		if m.out != nil {
			m.out.stop()
		}
	}
}

func (m *Manager) start(ctx actor.Context) {
	m.rules = NewRules(m.opt.Config)
	m.byKey = map[messages.PointKey][]int{}
	m.byID = map[string]int{}
	ids := make([]string, len(m.rules))
	for i, r := range m.rules {
		m.byKey[r.Point] = append(m.byKey[r.Point], i)
		m.byID[r.ID] = i
		ids[i] = r.ID
	}
	m.early = map[messages.PointKey]messages.PointUpdate{}
	m.out = newOutbox(m.opt)
	lctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	self, root, log := ctx.Self(), ctx.ActorSystem().Root, m.opt.Log
	go func() {
		policy := supervisor.DefaultPolicy()
		for attempt := 1; ; attempt++ {
			c, done := context.WithTimeout(lctx, 5*time.Second)
			var keys messages.Keys
			if m.opt.Store != nil {
				keys = m.opt.Store.opt.Keys
			}
			states, bad, err := Load(c, m.opt.Redis, keys, ids)
			done()
			if err == nil {
				if m.opt.Store != nil {
					m.opt.Store.Seed(states)
				}
				for _, e := range bad {
					log.Error("alarm state unreadable, the rule starts from normal", "err", e)
				}
				root.Send(self, &loaded{states: states})
				return
			}
			if lctx.Err() != nil {
				return
			}
			if attempt == 1 || attempt%10 == 0 {
				log.Warn("alarms wait for redis to load their state (no rule is evaluated before)", "err", err, "attempt", attempt)
			}
			select {
			case <-lctx.Done():
				return
			case <-time.After(policy.Delay(attempt, rand.Float64())):
			}
		}
	}()
}

func (m *Manager) spawn(ctx actor.Context, states map[string]State) {
	m.pids = make([]*actor.PID, len(m.rules))
	var opts []actor.PropsOption
	if len(m.opt.RuleMiddleware) > 0 {
		opts = append(opts, actor.WithReceiverMiddleware(m.opt.RuleMiddleware...))
	}
	if m.opt.Dispatcher != nil {
		opts = append(opts, actor.WithDispatcher(m.opt.Dispatcher))
	}
	active := 0
	for i, r := range m.rules {
		s := &slot{rule: r, eval: *NewEval(r, states[r.ID], m.opt.Node)}
		if s.eval.S.Active() {
			active++
		}
		pid, err := ctx.SpawnNamed(actor.PropsFromProducer(func() actor.Actor {
			return &ruleActor{slot: s, opt: m.opt, out: m.out}
		}, opts...), r.ID)
		if err != nil {
			panic("spawn alarm " + r.ID + ": " + err.Error())
		}
		m.pids[i] = pid
	}
	m.ready = true
	m.opt.Log.Info("alarms running", "rules", len(m.rules), "active_restored", active)
	if len(m.early) > 0 {
		ups := make([]messages.PointUpdate, 0, len(m.early))
		for _, u := range m.early {
			ups = append(ups, u)
		}
		m.early = nil
		m.route(ctx, ups)
	}
}

func (m *Manager) route(ctx actor.Context, ups []messages.PointUpdate) {
	if !m.ready {
		for _, u := range ups {
			if len(m.byKey[u.Key]) > 0 {
				m.early[u.Key] = u
			}
		}
		return
	}
	var slab []input
	for i := range ups {
		u := &ups[i]
		rules := m.byKey[u.Key]
		for _, r := range rules {
			if len(slab) == cap(slab) {
				slab = make([]input, 0, 64)
			}
			slab = append(slab, input{v: u.Value, q: u.Quality, ts: u.Timestamp})
			ctx.Send(m.pids[r], &slab[len(slab)-1])
		}
	}
}

func (m *Manager) forward(ctx actor.Context, id string) {
	i, ok := m.byID[id]
	switch {
	case !ok:
		ctx.Respond(&Reply{Err: ErrUnknown})
	case !m.ready:
		ctx.Respond(&Reply{Err: ErrNotReady})
	default:
		ctx.Forward(m.pids[i])
	}
}

// ruleActor evaluates one rule.
type ruleActor struct {
	slot    *slot
	opt     *Options
	out     *outbox
	eval    *Eval
	timer   *time.Timer
	timerAt time.Time
}

// Receive implements actor.Actor.
func (a *ruleActor) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case *actor.Started:
		e := a.slot.eval // a copy: a panic cannot leave it half-updated
		a.eval = &e
		a.after(ctx, nil) // re-arms a pending delay, escalation or shelve timer
	case *input:
		if a.opt.Metrics != nil {
			a.opt.Metrics.evaluations.Inc()
		}
		a.after(ctx, a.eval.Input(msg.v, msg.q, msg.ts, a.opt.Now()))
	case *tick:
		a.timerAt = time.Time{}
		a.after(ctx, a.eval.Tick(a.opt.Now()))
	case *Ack:
		evs, err := a.eval.Ack(msg.User, msg.Comment, a.opt.Now())
		a.after(ctx, evs)
		ctx.Respond(&Reply{State: a.eval.S, Err: err})
	case *Shelve:
		a.after(ctx, a.eval.Shelve(msg.For, msg.Reason, msg.User, a.opt.Now()))
		ctx.Respond(&Reply{State: a.eval.S})
	case *Unshelve:
		evs, err := a.eval.Unshelve(msg.User, a.opt.Now())
		a.after(ctx, evs)
		ctx.Respond(&Reply{State: a.eval.S, Err: err})
	case *actor.Stopping, *actor.Restarting:
		if a.timer != nil {
			a.timer.Stop()
			a.timer = nil
		}
	}
}

// after publishes the events, keeps the state for a restart and sets the
// timer to the next delay, escalation or shelve expiry.
func (a *ruleActor) after(ctx actor.Context, evs []Event) {
	a.slot.eval = *a.eval
	if len(evs) > 0 {
		a.out.emit(evs, &a.eval.S, a.slot.rule.Notify)
	}
	next := a.eval.Next()
	if next.Equal(a.timerAt) {
		return
	}
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
	a.timerAt = next
	if next.IsZero() {
		return
	}
	self, root := ctx.Self(), ctx.ActorSystem().Root
	a.timer = time.AfterFunc(max(time.Until(next), 0)+time.Millisecond, func() { root.Send(self, &tick{}) })
}

// outbox hands a rule's events to the store, the webhooks and the live
// sessions; it never blocks the rule actor on I/O.
type outbox struct {
	opt *Options

	mu     sync.Mutex
	live   []Event
	signal chan struct{}
	done   chan struct{}
	quit   chan struct{}
	once   sync.Once
}

func newOutbox(opt *Options) *outbox {
	o := &outbox{opt: opt, signal: make(chan struct{}, 1), done: make(chan struct{}), quit: make(chan struct{})}
	go o.loop()
	return o
}

func (o *outbox) emit(evs []Event, st *State, notify []string) {
	q := make([]queued, 0, len(evs))
	good := evs[:0:0]
	for i := range evs {
		b, err := json.Marshal(&evs[i])
		if err != nil { // cannot happen: Eval never keeps a NaN or Inf value
			o.opt.Log.Error("alarm event not encodable, dropped", "alarm", evs[i].AlarmID, "err", err)
			continue
		}
		q = append(q, queued{json: b, sampleTS: evs[i].SampleTS})
		good = append(good, evs[i])
		if o.opt.Metrics != nil {
			o.opt.Metrics.events.WithLabelValues(evs[i].Type).Inc()
		}
		if o.opt.Notifier != nil && len(notify) > 0 && !evs[i].Shelved {
			o.opt.Notifier.Send(notify, evs[i].EventID, b)
		}
	}
	if o.opt.Store != nil {
		o.opt.Store.Put(evs[0].AlarmID, st, q)
	}
	if o.opt.Live != nil && len(good) > 0 {
		o.mu.Lock()
		o.live = append(o.live, good...)
		o.mu.Unlock()
		select {
		case o.signal <- struct{}{}:
		default:
		}
	}
}

// liveBatch bounds the events of one WebSocket frame.
const liveBatch = 500

func (o *outbox) loop() {
	defer close(o.done)
	for {
		select {
		case <-o.quit:
			return
		case <-o.signal:
		}
		o.mu.Lock()
		evs := o.live
		o.live = nil
		o.mu.Unlock()
		for i := 0; i < len(evs); i += liveBatch {
			o.opt.Live(evs[i:min(i+liveBatch, len(evs))])
		}
		// At most one batch every 10 ms: a flood becomes a few frames.
		select {
		case <-o.quit:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (o *outbox) stop() {
	o.once.Do(func() {
		close(o.quit)
		<-o.done
	})
}

// Frame is the WebSocket frame of alarm events: {"type":"alarm","events":[...]}.
type Frame struct {
	Type   string  `json:"type" msgpack:"type"`
	Events []Event `json:"events" msgpack:"events"`
}

// Requests sends the operator actions to the alarms actor (web.AlarmActions).
type Requests struct {
	Root    *actor.RootContext
	PID     *actor.PID
	Timeout time.Duration // default 5 s
}

func (r Requests) ask(ctx context.Context, msg any) (State, error) {
	t := r.Timeout
	if t <= 0 {
		t = 5 * time.Second
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) < t {
		t = max(time.Until(d), time.Millisecond)
	}
	res, err := r.Root.RequestFuture(r.PID, msg, t).Result()
	if err != nil {
		return State{}, err
	}
	rep, ok := res.(*Reply)
	if !ok {
		return State{}, errors.New("alarms: unexpected reply")
	}
	return rep.State, rep.Err
}

// Ack acknowledges alarm id for user.
func (r Requests) Ack(ctx context.Context, id, user, comment string) (State, error) {
	return r.ask(ctx, &Ack{ID: id, User: user, Comment: comment})
}

// Shelve shelves alarm id for d.
func (r Requests) Shelve(ctx context.Context, id, user, reason string, d time.Duration) (State, error) {
	return r.ask(ctx, &Shelve{ID: id, User: user, Reason: reason, For: d})
}

// Unshelve ends the shelve of alarm id.
func (r Requests) Unshelve(ctx context.Context, id, user string) (State, error) {
	return r.ask(ctx, &Unshelve{ID: id, User: user})
}

// Watched passes on only the updates of points some rule watches: most
// points have no alarm, and their updates need not cross the feed.
type Watched struct {
	Keys map[messages.PointKey]struct{}
	Next interface{ Publish(u *messages.PointUpdate) }
}

// NewWatched returns the filter of cfg's alarm points in front of next.
func NewWatched(cfg *config.Config, next interface{ Publish(u *messages.PointUpdate) }) *Watched {
	w := &Watched{Keys: map[messages.PointKey]struct{}{}, Next: next}
	for i := range cfg.Alarms {
		if k, err := messages.ParsePointKey(cfg.Alarms[i].Point); err == nil {
			w.Keys[k] = struct{}{}
		}
	}
	return w
}

// Publish implements acquisition.Sink.
func (w *Watched) Publish(u *messages.PointUpdate) {
	if _, ok := w.Keys[u.Key]; ok {
		w.Next.Publish(u)
	}
}
