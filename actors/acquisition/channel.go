package acquisition

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/messages"
)

// Options configure a channel actor.
type Options struct {
	Channel *config.Channel
	Node    string // stamped on every update
	Sink    Sink
	Log     *slog.Logger
	Metrics *Metrics // nil: unregistered collectors

	// NewDriver builds the driver; default drivers.New.
	NewDriver func(ch *config.Channel, log *slog.Logger) (drivers.Driver, error)
	// Supervisor supervises the device actors and, below them, the point
	// actors (one-for-one). Nil: protoactor's default.
	Supervisor actor.SupervisorStrategy
	// PointMiddleware wraps every point actor's Receive (metrics, tests).
	PointMiddleware []actor.ReceiverMiddleware
	// Restarts returns the restarts of the actor with this PID id and of
	// every actor below it (supervisor.Stats.Under), for the channel status.
	Restarts func(pidID string) int
	// ReconnectDelay gives the wait before connect attempt n (n >= 1) after
	// a failure. Default: 100 ms doubling to 30 s with 10 % jitter.
	ReconnectDelay func(n int) time.Duration
	// ConnectTimeout bounds one connect attempt; default 5 s.
	ConnectTimeout time.Duration
	// Dispatcher runs the device and point actors' mailboxes; nil:
	// protoactor's default (a goroutine per mailbox run).
	Dispatcher actor.Dispatcher

	// Control path. CommandSource is the Redis subscriber actor that
	// delivers this channel's cmd:{ch}:control commands (nil: no control).
	CommandSource *actor.PID
	Seen          IdempotencyStore
	Commands      CommandSink
	// Dedupe is this node's durable record of executed command ids (nil:
	// Redis's cmd:seen only).
	Dedupe LocalDedupe
	// CommandKey, when set, makes the channel refuse commands without a
	// valid signature (auth.command_key).
	CommandKey *messages.CommandKey
	// MaxQueuedCommands bounds the commands waiting for the I/O lane;
	// default 64, more are rejected.
	MaxQueuedCommands int

	// Guard, when set, is asked before every poll and, through the I/O
	// context (drivers.WithGuard), before every request a driver sends:
	// false (this node's lease on the channel may have expired, e.g.
	// after a stall) skips the poll or the rest of it. In a cluster it is
	// the channel's lease.
	Guard func() bool
}

// channelSpec is what the channel's actors share (read-only).
type channelSpec struct {
	ch    *config.Channel
	opt   Options
	node  string
	index map[messages.PointKey]int // point key -> index in ch.Points
}

// pointName is the actor name of point i: its type and id, e.g. "m:10001".
func pointName(p *config.Point) string {
	return p.Type.String() + ":" + strconv.FormatUint(uint64(p.ID), 10)
}

// pointByName finds the point an actor of that name (the last path element
// of its PID) stands for.
func (s *channelSpec) pointByName(id string) (*config.Point, bool) {
	name := id[strings.LastIndexByte(id, '/')+1:]
	t, pt, ok := strings.Cut(name, ":")
	if !ok || len(t) != 1 {
		return nil, false
	}
	n, err := strconv.ParseUint(pt, 10, 32)
	if err != nil {
		return nil, false
	}
	i, ok := s.index[messages.PointKey{Channel: s.ch.ID, Type: messages.PointType(t[0]), Point: uint32(n)}]
	if !ok {
		return nil, false
	}
	return &s.ch.Points[i], true
}

// NewChannelProps returns the props of a channel actor. The actor's own
// supervisor strategy (for its device actors) is opt.Supervisor.
func NewChannelProps(opt Options) *actor.Props {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	opt.Log = opt.Log.With("channel", opt.Channel.ID)
	if opt.Metrics == nil {
		opt.Metrics = NewMetrics(nil)
	}
	if opt.NewDriver == nil {
		opt.NewDriver = drivers.New
	}
	if opt.ReconnectDelay == nil {
		opt.ReconnectDelay = defaultReconnectDelay
	}
	if opt.ConnectTimeout <= 0 {
		opt.ConnectTimeout = 5 * time.Second
	}
	if opt.MaxQueuedCommands <= 0 {
		opt.MaxQueuedCommands = 64
	}
	spec := &channelSpec{ch: opt.Channel, opt: opt, node: opt.Node, index: make(map[messages.PointKey]int, len(opt.Channel.Points))}
	for i := range opt.Channel.Points {
		spec.index[opt.Channel.Points[i].Key(opt.Channel.ID)] = i
	}
	props := []actor.PropsOption{}
	if opt.Supervisor != nil {
		props = append(props, actor.WithSupervisor(opt.Supervisor))
	}
	return actor.PropsFromProducer(func() actor.Actor { return newChannelActor(spec) }, props...)
}

func defaultReconnectDelay(n int) time.Duration {
	d := 100 * time.Millisecond
	for i := 1; i < n && d < 30*time.Second; i++ {
		d *= 2
	}
	d = min(d, 30*time.Second)
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}

// Messages the channel actor sends itself. epoch ties an I/O result to the
// connection it was started on, so a late result of an old connection is
// ignored.
type (
	connectTick struct{ epoch uint64 }
	connectDone struct {
		epoch uint64
		err   error
	}
	pollTick struct{ epoch uint64 }
	pollDone struct {
		epoch   uint64
		samples []drivers.Sample
		err     error
		started time.Time
		took    time.Duration
	}
	staleTick     struct{}
	reconcileDone struct {
		u   unknownOutcome
		rb  float64
		err error
	}
)

// unknownOutcome is a command whose write went out unanswered: it waits
// for the device to answer again, then the point is read back to decide.
type unknownOutcome struct {
	p     pendingCommand
	ready bool // the device answered for this point since
}

// channelActor polls one channel. Its state is touched only on its own
// goroutine; driver I/O runs in a goroutine that reports back by message.
type channelActor struct {
	spec *channelSpec
	m    channelMetrics
	log  *slog.Logger

	drv       drivers.Driver
	devices   []*actor.PID // by device slot
	deviceOf  []int        // point index -> device slot
	slotIndex [][]int      // device slot -> point indexes

	epoch     uint64
	connected bool
	polling   bool // a Read is in flight
	writing   bool // a command is in flight (the lane is one operation at a time)
	pollDue   bool // a poll was due while the lane was busy
	commands  []pendingCommand
	unknown   []unknownOutcome // commands whose outcome is to be reconciled, oldest first
	failures  int
	buf       []drivers.Sample

	lastRefresh []int64 // ms of the last sample of each point
	stale       []bool

	pid     string // own PID id, the root of this channel's actors
	status  messages.ChannelStatus
	timers  [timerKinds]*time.Timer
	cancel  context.CancelFunc
	ctxIO   context.Context
	sendTo  func(msg any)
	stopped bool
}

func newChannelActor(spec *channelSpec) *channelActor {
	return &channelActor{spec: spec, m: spec.opt.Metrics.forChannel(spec.ch.ID), log: spec.opt.Log}
}

func (c *channelActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		c.start(ctx)
	case *actor.Stopping, *actor.Restarting:
		c.stop()
	case *writeDone:
		if c.stopped { // the write ended with the channel: its result still counts
			c.spec.opt.Commands.CommandDone(m.p.cmd, &m.res)
			return
		}
		c.internal(ctx, m)
	case *reconcileDone:
		if !c.stopped {
			c.reconcileDone(ctx, m)
		}
	case *connectTick, *connectDone, *pollTick, *pollDone, *staleTick:
		if !c.stopped { // I/O cancelled by the stop reports back: ignore it
			c.internal(ctx, m)
		}
	case *messages.ControlCommand:
		if !c.stopped {
			c.command(m)
		}
	case *messages.GetChannelStatus:
		ctx.Respond(c.statusNow())
	case *messages.GetPoint:
		for i := range c.spec.ch.Points {
			if c.spec.ch.Points[i].Key(c.spec.ch.ID) == m.Key {
				ctx.Forward(c.devices[c.deviceOf[i]])
				return
			}
		}
		ctx.Respond(&messages.PointValue{Key: m.Key})
	}
}

func (c *channelActor) internal(ctx actor.Context, msg any) {
	switch m := msg.(type) {
	case *connectTick:
		if m.epoch == c.epoch {
			c.connect()
		}
	case *connectDone:
		if m.epoch == c.epoch {
			c.onConnect(ctx, m.err)
		}
	case *pollTick:
		if m.epoch == c.epoch {
			c.poll()
		}
	case *pollDone:
		if m.epoch == c.epoch {
			c.pollDone(ctx, m)
		}
	case *staleTick:
		c.checkStale(ctx)
		c.after(timerStale, c.spec.ch.PollInterval, &staleTick{})
	case *writeDone:
		c.commandDone(ctx, m)
	}
}

func (c *channelActor) start(ctx actor.Context) {
	ch := c.spec.ch
	self, root := ctx.Self(), ctx.ActorSystem().Root
	c.pid = self.Id
	c.sendTo = func(msg any) { root.Send(self, msg) }
	c.ctxIO, c.cancel = context.WithCancel(context.Background())
	if g := c.spec.opt.Guard; g != nil {
		c.ctxIO = drivers.WithGuard(c.ctxIO, g)
	}
	c.status = messages.ChannelStatus{ID: ch.ID, Name: ch.Name, Protocol: ch.Protocol, Points: len(ch.Points)}
	c.lastRefresh = make([]int64, len(ch.Points))
	c.stale = make([]bool, len(ch.Points))
	c.spawnDevices(ctx)
	if c.spec.opt.CommandSource != nil {
		ctx.Request(c.spec.opt.CommandSource, &messages.SubscribeCommands{ChannelID: ch.ID})
	}

	drv, err := c.spec.opt.NewDriver(ch, c.log)
	if err != nil {
		// A driver that cannot be built will not get better by retrying.
		c.status.LastError = err.Error()
		c.log.Error("channel driver unavailable", "err", err)
		c.markAll(ctx, messages.CommLost)
		return
	}
	c.drv = drv
	c.m.connected.Set(0)
	c.connect()
	c.after(timerStale, ch.PollInterval, &staleTick{})
}

// spawnDevices groups points by slave id (one device actor each) and spawns
// the device actors, which spawn their point actors.
func (c *channelActor) spawnDevices(ctx actor.Context) {
	ch := c.spec.ch
	slots := map[uint8]int{}
	c.deviceOf = make([]int, len(ch.Points))
	for i := range ch.Points {
		s, ok := slots[ch.Points[i].SlaveID]
		if !ok {
			s = len(c.slotIndex)
			slots[ch.Points[i].SlaveID] = s
			c.slotIndex = append(c.slotIndex, nil)
		}
		c.deviceOf[i] = s
		c.slotIndex[s] = append(c.slotIndex[s], i)
	}
	// One Props for all point actors of the channel: a point actor finds
	// its configuration from its own name on Started (per-point Props and
	// producer closures cost about 350 bytes a point).
	// The lock-free mailbox costs ~200 bytes less per actor than the ring
	// buffer of the default one; a point actor rarely holds more than one
	// message.
	opts := []actor.PropsOption{actor.WithMailbox(actor.UnboundedLockfree())}
	if c.spec.opt.Dispatcher != nil {
		opts = append(opts, actor.WithDispatcher(c.spec.opt.Dispatcher))
	}
	if len(c.spec.opt.PointMiddleware) > 0 {
		opts = append(opts, actor.WithReceiverMiddleware(c.spec.opt.PointMiddleware...))
	}
	spec := c.spec
	pointProps := actor.PropsFromProducer(func() actor.Actor { return &pointActor{spec: spec} }, opts...)
	devProps := []actor.PropsOption{}
	if c.spec.opt.Dispatcher != nil {
		devProps = append(devProps, actor.WithDispatcher(c.spec.opt.Dispatcher))
	}
	if c.spec.opt.Supervisor != nil {
		devProps = append(devProps, actor.WithSupervisor(c.spec.opt.Supervisor))
	}
	c.devices = make([]*actor.PID, len(c.slotIndex))
	slaveOf := make([]uint8, len(c.slotIndex))
	for slave, s := range slots {
		slaveOf[s] = slave
	}
	for s, idx := range c.slotIndex {
		name := "slave-" + strconv.Itoa(int(slaveOf[s]))
		pid, err := ctx.SpawnNamed(actor.PropsFromProducer(func() actor.Actor {
			return &deviceActor{spec: c.spec, indexes: idx, pointProp: pointProps}
		}, devProps...), name)
		if err != nil {
			panic(fmt.Sprintf("channel %d: spawn device %s: %v", ch.ID, name, err))
		}
		c.devices[s] = pid
	}
}

func (c *channelActor) stop() {
	c.stopped = true
	for _, p := range c.commands { // never executed: say so rather than let them time out
		res := messages.ResultOf(p.cmd, messages.StatusFailed, fmt.Sprintf("channel %d stopped before the command was executed", c.spec.ch.ID), time.Now())
		c.spec.opt.Commands.CommandDone(p.cmd, &res)
	}
	c.commands = nil
	for _, u := range c.unknown {
		c.log.Warn("channel stopped with a command whose outcome is unknown (not reconciled)", "id", u.p.cmd.ID, "point", u.p.cmd.Key().String())
	}
	c.unknown = nil
	for _, t := range c.timers {
		if t != nil {
			t.Stop()
		}
	}
	if c.cancel != nil {
		c.cancel()
	}
	if c.drv != nil {
		if err := c.drv.Close(); err != nil {
			c.log.Debug("close driver", "err", err)
		}
	}
	c.m.connected.Set(0)
}

// Kinds of self-scheduled messages; at most one of each is pending.
const (
	timerConnect = iota
	timerPoll
	timerStale
	timerKinds
)

// after sends msg to the actor itself after d (self-scheduled, never a
// repeating timer), replacing a pending message of the same kind.
func (c *channelActor) after(kind int, d time.Duration, msg any) {
	if c.stopped {
		return
	}
	if t := c.timers[kind]; t != nil {
		t.Stop()
	}
	c.timers[kind] = time.AfterFunc(d, func() { c.sendTo(msg) })
}

func (c *channelActor) connect() {
	epoch := c.epoch
	conn, ok := c.drv.(drivers.Connector)
	if !ok {
		c.sendTo(&connectDone{epoch: epoch})
		return
	}
	ctx, timeout := c.ctxIO, c.spec.opt.ConnectTimeout
	go func() {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		err := conn.Connect(cctx)
		c.sendTo(&connectDone{epoch: epoch, err: err})
	}()
}

func (c *channelActor) onConnect(ctx actor.Context, err error) {
	if err != nil {
		c.failed(ctx, fmt.Errorf("connect: %w", err))
		return
	}
	if c.failures > 0 {
		c.log.Info("channel reconnected", "after_failures", c.failures)
	}
	c.connected = true
	c.status.Connected = true
	c.m.connected.Set(1)
	if c.status.Polls == 0 {
		// Spread the channels' poll cycles over the interval instead of
		// polling every channel of a node at the same instant.
		c.after(timerPoll, pollPhase(c.spec.ch.ID, c.spec.ch.PollInterval), &pollTick{epoch: c.epoch})
		return
	}
	c.poll()
}

// pollPhase is a channel's offset of its first poll within the poll
// interval (at most 1 s): the fractional part of id times the golden ratio,
// which spreads consecutive ids evenly.
func pollPhase(id uint32, interval time.Duration) time.Duration {
	const phi = 0.6180339887498949
	f := float64(id) * phi
	f -= math.Floor(f)
	return time.Duration(f * float64(min(interval, time.Second)))
}

func (c *channelActor) poll() {
	if !c.connected || c.polling {
		return
	}
	if g := c.spec.opt.Guard; g != nil && !g() {
		// Not ours (any more): no request reaches the device; look again
		// next interval (the placement stops this actor meanwhile).
		c.after(timerPoll, c.spec.ch.PollInterval, &pollTick{epoch: c.epoch})
		return
	}
	if c.writing {
		c.pollDue = true
		return
	}
	c.polling = true
	epoch, drv, buf, ctx := c.epoch, c.drv, c.buf[:0], c.ctxIO
	c.buf = nil // owned by the I/O goroutine until pollDone
	go func() {
		start := time.Now()
		samples, err := drv.Read(ctx, buf)
		c.sendTo(&pollDone{epoch: epoch, samples: samples, err: err, started: start, took: time.Since(start)})
	}()
}

func (c *channelActor) pollDone(ctx actor.Context, m *pollDone) {
	c.polling = false
	c.buf = m.samples
	c.status.Polls++
	c.status.LastPoll = m.started
	c.status.LastLatency = m.took
	c.m.polls.Inc()
	c.m.pollTime.Observe(m.took.Seconds())
	if errors.Is(m.err, drivers.ErrNotOwner) {
		// The lease lapsed during the poll (a stall): the rest of it was
		// not sent, and nothing of it is published. The connection is
		// fine; the guard in poll decides about the next one.
		c.log.Warn("poll cut short: the channel's lease may have expired", "err", m.err)
		c.after(timerPoll, c.spec.ch.PollInterval, &pollTick{epoch: c.epoch})
		return
	}
	if m.err != nil {
		c.failed(ctx, m.err)
		c.pump() // waiting commands fail at once: not connected
		return
	}
	c.failures = 0
	c.status.BadPoints = c.dispatch(ctx, m.samples, m.started.UnixMilli())
	c.answered(m.samples)
	c.pump() // reconciliations and waiting commands go before the next poll
	next := c.spec.ch.PollInterval - time.Since(m.started)
	if next <= 0 {
		c.poll()
		return
	}
	c.after(timerPoll, next, &pollTick{epoch: c.epoch})
}

// dispatch sends the samples to the device actors, one batch per device,
// and returns how many are not good.
func (c *channelActor) dispatch(ctx actor.Context, samples []drivers.Sample, ts int64) int {
	batches := make([][]pointSample, len(c.devices))
	bad := 0
	for _, s := range samples {
		if s.Index < 0 || s.Index >= len(c.deviceOf) {
			continue
		}
		slot := c.deviceOf[s.Index]
		if batches[slot] == nil {
			batches[slot] = make([]pointSample, 0, len(c.slotIndex[slot]))
		}
		batches[slot] = append(batches[slot], pointSample{index: s.Index, value: s.Value, quality: s.Quality, ts: ts})
		c.lastRefresh[s.Index] = ts
		c.stale[s.Index] = false
		if s.Quality != messages.Good {
			bad++
		}
	}
	for slot, b := range batches {
		if len(b) > 0 {
			ctx.Send(c.devices[slot], &deviceSamples{samples: b})
		}
	}
	return bad
}

// command queues a control command for the I/O lane, or answers it at once
// when it cannot be executed here.
func (c *channelActor) command(cmd *messages.ControlCommand) {
	reject := func(format string, args ...any) {
		if c.spec.opt.Commands != nil {
			res := messages.ResultOf(cmd, messages.StatusRejected, fmt.Sprintf(format, args...), time.Now())
			c.spec.opt.Commands.CommandDone(cmd, &res)
		}
	}
	if c.spec.opt.Seen == nil || c.spec.opt.Commands == nil {
		c.log.Error("control command dropped: control path not wired", "id", cmd.ID)
		return
	}
	if err := c.spec.opt.CommandKey.Verify(cmd, time.Now()); err != nil {
		// Refused before anything else: its id is not claimed and no result
		// is stored under it (an unsigned message must not take an id).
		res := messages.ResultOf(cmd, messages.StatusRejected, "refused: "+err.Error(), time.Now())
		c.log.Warn("control command refused", "id", cmd.ID, "point", cmd.Key().String(), "err", err)
		c.spec.opt.Commands.CommandRefused(cmd, &res)
		return
	}
	if err := cmd.Validate(); err != nil {
		reject("invalid command: %v", err)
		return
	}
	idx, ok := c.spec.index[cmd.Key()]
	if !ok {
		reject("unknown point %s", cmd.Key())
		return
	}
	if len(c.commands) >= c.spec.opt.MaxQueuedCommands {
		reject("channel %d busy: %d commands already waiting", c.spec.ch.ID, len(c.commands))
		return
	}
	c.commands = append(c.commands, pendingCommand{cmd: cmd, index: idx})
	c.pump()
}

// pump starts the next operation of the I/O lane when it is free: first
// the reconciliation of a command whose outcome is unknown once the device
// answers again (or before another command writes the same point), then
// the next waiting command. The I/O runs off the actor's goroutine and
// reports back with reconcileDone or writeDone.
func (c *channelActor) pump() {
	if c.polling || c.writing {
		return
	}
	online := c.connected && c.drv != nil
	if r, ok := c.drv.(drivers.PointReader); ok && online {
		for i, u := range c.unknown {
			if u.ready || len(c.commands) > 0 && c.commands[0].index == u.p.index {
				c.unknown = append(c.unknown[:i], c.unknown[i+1:]...)
				c.reconcile(r, u)
				return
			}
		}
	}
	if len(c.commands) == 0 {
		return
	}
	p := c.commands[0]
	c.commands = c.commands[1:]
	c.writing = true
	w, _ := c.drv.(drivers.Writer)
	cp := controlPath{w: w, seen: c.spec.opt.Seen, local: c.spec.opt.Dedupe, sink: c.spec.opt.Commands,
		point: &c.spec.ch.Points[p.index], now: time.Now, online: online, reason: c.status.LastError}
	sink, local, ctx := c.spec.opt.Commands, c.spec.opt.Dedupe, c.ctxIO
	go func() {
		res, rb := executeCommand(ctx, p, cp)
		recordLocal(local, &res)
		if ctx.Err() != nil { // the channel is stopping: record the result here, its actor may be gone
			if res.Status != "" {
				sink.CommandDone(p.cmd, &res)
			}
			return
		}
		c.sendTo(&writeDone{p: p, res: res, readback: rb})
	}()
}

// reconcile reads back the point of a command whose outcome was unknown.
// A driver that cannot read a single point is reconciled from the poll's
// sample instead (answered).
func (c *channelActor) reconcile(r drivers.PointReader, u unknownOutcome) {
	c.writing = true
	ctx := c.ctxIO
	go func() {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		rb, err := r.ReadPoint(rctx, u.p.index)
		cancel()
		c.sendTo(&reconcileDone{u: u, rb: rb, err: err})
	}()
}

// answered marks the commands of unknown outcome whose point the device
// just answered for as ready to reconcile; without a PointReader the
// sample itself decides.
func (c *channelActor) answered(samples []drivers.Sample) {
	if len(c.unknown) == 0 {
		return
	}
	_, canRead := c.drv.(drivers.PointReader)
	kept := c.unknown[:0]
	for _, u := range c.unknown {
		i := slices.IndexFunc(samples, func(s drivers.Sample) bool { return s.Index == u.p.index && s.Quality == messages.Good })
		switch {
		case i < 0:
			kept = append(kept, u)
		case canRead:
			u.ready = true
			kept = append(kept, u)
		default:
			res := reconciled(u.p.cmd, &c.spec.ch.Points[u.p.index], samples[i].Value, time.Now())
			c.finishReconcile(u, &res)
		}
	}
	c.unknown = kept
}

// reconcileDone publishes the follow-up result of an unknown outcome, or
// keeps waiting when the device did not answer the read.
func (c *channelActor) reconcileDone(ctx actor.Context, m *reconcileDone) {
	c.writing = false
	switch {
	case errors.Is(m.err, drivers.ErrNotOwner):
		c.log.Warn("reconciliation not done: this node lost the channel's lease", "id", m.u.p.cmd.ID)
	case m.err != nil && len(c.commands) > 0 && c.commands[0].index == m.u.p.index:
		// Another command is about to write the point: the old outcome
		// cannot be read any more.
		c.log.Warn("outcome stays unknown: the point could not be read back before the next command writes it",
			"id", m.u.p.cmd.ID, "next", c.commands[0].cmd.ID, "err", m.err)
	case m.err != nil:
		m.u.ready = false // wait for the device to answer again
		c.unknown = append(c.unknown, m.u)
		c.log.Warn("reconciliation read failed; retried when the device answers again", "id", m.u.p.cmd.ID, "err", m.err)
	default:
		res := reconciled(m.u.p.cmd, &c.spec.ch.Points[m.u.p.index], m.rb, time.Now())
		c.finishReconcile(m.u, &res)
		c.dispatch(ctx, []drivers.Sample{{Index: m.u.p.index, Value: m.rb, Quality: messages.Good}}, res.Timestamp)
	}
	c.pump()
	if !c.writing && c.pollDue {
		c.pollDue = false
		c.poll()
	}
}

func (c *channelActor) finishReconcile(u unknownOutcome, res *messages.CommandResult) {
	c.log.Info("command outcome reconciled", "id", u.p.cmd.ID, "point", u.p.cmd.Key().String(), "status", res.Status, "readback", *res.Readback)
	recordLocal(c.spec.opt.Dedupe, res)
	c.spec.opt.Commands.CommandDone(u.p.cmd, res)
}

// commandDone records a command's result, shows the value read back on the
// point, and hands the lane to the next command or the due poll.
func (c *channelActor) commandDone(ctx actor.Context, m *writeDone) {
	c.writing = false
	if m.res.Status == "" { // fenced: another node owns the channel
		c.log.Warn("control command not executed: this node lost the channel's lease", "id", m.p.cmd.ID)
		c.pump()
		return
	}
	c.spec.opt.Commands.CommandDone(m.p.cmd, &m.res)
	if m.res.Status == messages.StatusUnknown {
		c.log.Warn("command outcome unknown: the write went out unanswered; reconciling by reading the point back", "id", m.p.cmd.ID, "err", m.res.Error)
		c.unknown = append(c.unknown, unknownOutcome{p: m.p})
		if max := c.spec.opt.MaxQueuedCommands; len(c.unknown) > max {
			drop := c.unknown[0]
			c.unknown = c.unknown[1:]
			c.log.Error("too many commands of unknown outcome; the oldest stays unknown", "id", drop.p.cmd.ID)
		}
	}
	if m.readback != nil {
		c.dispatch(ctx, []drivers.Sample{{Index: m.p.index, Value: *m.readback, Quality: messages.Good}}, m.res.Timestamp)
	}
	c.pump()
	if !c.writing && c.pollDue {
		c.pollDue = false
		c.poll()
	}
}

// failed handles a lost or failed connection: comm_lost, close, retry later.
func (c *channelActor) failed(ctx actor.Context, err error) {
	c.failures++
	c.status.Errors++
	c.status.LastError = err.Error()
	c.m.errors.Inc()
	if c.connected || c.failures == 1 {
		c.log.Warn("channel connection lost", "err", err)
		c.markAll(ctx, messages.CommLost)
	}
	c.connected = false
	c.status.Connected = false
	c.m.connected.Set(0)
	if err := c.drv.Close(); err != nil {
		c.log.Debug("close driver after failure", "err", err)
	}
	c.epoch++
	delay := c.spec.opt.ReconnectDelay(c.failures)
	c.status.Reconnects++
	c.m.reconnects.Inc()
	c.after(timerConnect, delay, &connectTick{epoch: c.epoch})
}

func (c *channelActor) markAll(ctx actor.Context, q messages.Quality) {
	mq := &markQuality{quality: q, ts: time.Now().UnixMilli()}
	for _, d := range c.devices {
		ctx.Send(d, mq)
	}
}

// checkStale marks points not refreshed within 3 poll intervals as stale
// (while connected; a disconnected channel's points are comm_lost).
func (c *channelActor) checkStale(ctx actor.Context) {
	if !c.connected {
		return
	}
	now := time.Now().UnixMilli()
	limit := now - 3*c.spec.ch.PollInterval.Milliseconds()
	var perDevice map[int][]int
	for i, t := range c.lastRefresh {
		if t == 0 {
			t = c.status.LastPoll.UnixMilli() // never read: count from connect
			if c.status.LastPoll.IsZero() {
				continue
			}
		}
		if t < limit && !c.stale[i] {
			c.stale[i] = true
			if perDevice == nil {
				perDevice = map[int][]int{}
			}
			perDevice[c.deviceOf[i]] = append(perDevice[c.deviceOf[i]], i)
		}
	}
	for slot, idx := range perDevice {
		ctx.Send(c.devices[slot], &markQuality{quality: messages.Stale, ts: now, indexes: idx})
	}
}

func (c *channelActor) statusNow() *messages.ChannelStatus {
	s := c.status
	s.Running, s.Node = true, c.spec.node
	if c.spec.opt.Restarts != nil {
		s.Restarts = c.spec.opt.Restarts(c.pid)
	}
	return &s
}
