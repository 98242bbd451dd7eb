package session

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/voltage-ems/voltage/messages"
)

// FrameInterval is the shortest time between two update frames of a session.
const FrameInterval = 100 * time.Millisecond

// state is a session's state. It belongs to the connection, not to one
// incarnation of the actor: a session actor that panics is restarted with
// its subscriptions and pending updates intact.
type state struct {
	conn     Conn
	user     string
	read     PointReader
	enc      encoder
	patterns []string

	pending   map[messages.PointKey]messages.PointUpdate
	lastFrame time.Time
	armed     bool // a flush is scheduled
	loading   int  // snapshots being read: updates wait for them
	closed    bool
}

func newState(conn Conn, user string, read PointReader) *state {
	return &state{conn: conn, user: user, read: read, pending: map[messages.PointKey]messages.PointUpdate{}}
}

type sessionActor struct{ st *state }

type flushTick struct{}

type snapshotDone struct {
	points []messages.PointUpdate
	err    error
}

// Receive implements actor.Actor.
func (a *sessionActor) Receive(ctx actor.Context) {
	st := a.st
	switch m := ctx.Message().(type) {
	case *actor.Started:
		st.armed = false
		if len(st.patterns) > 0 { // restarted: make sure the hub still has us
			ctx.Request(ctx.Parent(), &subscribeReq{patterns: st.patterns})
		}
		if len(st.pending) > 0 {
			a.arm(ctx)
		}
	case *Client:
		a.client(ctx, m.Data)
	case *subscribedResp:
		a.subscribed(ctx, m)
	case *snapshotDone:
		a.snapshot(ctx, m)
	case *sessionUpdates:
		for _, u := range m.updates {
			if old, ok := st.pending[u.Key]; !ok || old.Timestamp <= u.Timestamp {
				st.pending[u.Key] = u
			}
		}
		a.arm(ctx)
	case *flushTick:
		st.armed = false
		a.flush(ctx)
	case *Broadcast:
		a.send(ctx, m.Frame)
	case *Gone:
		st.closed = true
		ctx.Stop(ctx.Self())
	case *actor.Stopping:
		st.conn.Close(1001, "session ended")
	}
}

func (a *sessionActor) send(ctx actor.Context, v any) bool {
	st := a.st
	if st.closed {
		return false
	}
	b, binary := st.enc.encode(v)
	if st.conn.Send(b, binary) {
		return true
	}
	st.closed = true
	st.conn.Close(1008, "slow consumer: too many frames waiting to be read")
	ctx.Stop(ctx.Self())
	return false
}

func (a *sessionActor) fail(ctx actor.Context, code, format string, args ...any) {
	a.send(ctx, &errorFrame{Type: "error", Code: code, Message: fmt.Sprintf(format, args...)})
}

// client handles one message from the client.
func (a *sessionActor) client(ctx actor.Context, data []byte) {
	var m clientMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		a.fail(ctx, "bad_json", "message is not a valid JSON command: %v", err)
		return
	}
	switch m.Op {
	case "ping":
		a.send(ctx, &pongFrame{Type: "pong"})
	case "subscribe", "unsubscribe":
		if len(m.Patterns) == 0 {
			a.fail(ctx, "bad_pattern", "%s needs a non-empty \"patterns\" list", m.Op)
			return
		}
		var errs []string
		for _, p := range m.Patterns {
			if err := checkPattern(p); err != nil {
				errs = append(errs, err.Error())
			}
		}
		if len(errs) > 0 {
			a.fail(ctx, "bad_pattern", "%s", strings.Join(errs, "; "))
			return
		}
		if m.Op == "subscribe" {
			switch m.Format {
			case "", "json":
				a.st.enc.msgpack = false
			case "msgpack":
				a.st.enc.msgpack = true
			default:
				a.fail(ctx, "bad_format", "format %q: want json or msgpack", m.Format)
				return
			}
			if n := countNew(a.st.patterns, m.Patterns); len(a.st.patterns)+n > MaxPatterns {
				a.fail(ctx, "too_many_patterns", "a session may have at most %d patterns (has %d, adding %d)", MaxPatterns, len(a.st.patterns), n)
				return
			}
		}
		a.st.loading++ // hold updates until the snapshot of the new keys is out
		ctx.Request(ctx.Parent(), &subscribeReq{patterns: m.Patterns, remove: m.Op == "unsubscribe"})
	case "":
		a.fail(ctx, "unknown_op", "message has no \"op\" (want subscribe, unsubscribe or ping)")
	default:
		a.fail(ctx, "unknown_op", "unknown op %q (want subscribe, unsubscribe or ping)", m.Op)
	}
}

func countNew(have, add []string) int {
	n := 0
	for _, p := range add {
		if !contains(have, p) {
			n++
		}
	}
	return n
}

// subscribed confirms a (un)subscription and reads the snapshot of the keys
// it added, off the actor's goroutine.
func (a *sessionActor) subscribed(ctx actor.Context, m *subscribedResp) {
	st := a.st
	if st.loading == 0 { // a restart's re-registration: nothing to confirm
		st.patterns = m.patterns
		return
	}
	st.patterns = m.patterns
	if st.patterns == nil {
		st.patterns = []string{}
	}
	a.send(ctx, &subscribedFrame{Type: "subscribed", Patterns: st.patterns, Points: m.total})
	self, root, keys, read := ctx.Self(), ctx.ActorSystem().Root, m.added, st.read
	if len(keys) == 0 || read == nil {
		root.Send(self, &snapshotDone{})
		return
	}
	go func() {
		pts, err := read(keys)
		root.Send(self, &snapshotDone{points: pts, err: err})
	}()
}

func (a *sessionActor) snapshot(ctx actor.Context, m *snapshotDone) {
	st := a.st
	st.loading--
	if m.err != nil {
		a.fail(ctx, "snapshot_unavailable", "current values could not be read: %v", m.err)
	} else if len(m.points) > 0 {
		f := &pointsFrame{Type: "snapshot", Points: make([]wirePoint, 0, len(m.points))}
		for i := range m.points {
			p := &m.points[i]
			if u, ok := st.pending[p.Key]; ok && u.Timestamp >= p.Timestamp {
				continue // a newer update follows in the next frame
			}
			delete(st.pending, p.Key)
			f.Points = append(f.Points, toWire(p))
		}
		a.send(ctx, f)
	}
	if st.loading == 0 {
		a.arm(ctx)
	}
}

// arm schedules the next update frame, at least FrameInterval after the last.
func (a *sessionActor) arm(ctx actor.Context) {
	st := a.st
	if st.armed || st.loading > 0 || len(st.pending) == 0 || st.closed {
		return
	}
	st.armed = true
	self, root := ctx.Self(), ctx.ActorSystem().Root
	d := time.Until(st.lastFrame.Add(FrameInterval))
	if d <= 0 {
		root.Send(self, &flushTick{})
		return
	}
	time.AfterFunc(d, func() { root.Send(self, &flushTick{}) })
}

// flush sends the pending updates as one frame, newest value per point.
func (a *sessionActor) flush(ctx actor.Context) {
	st := a.st
	if len(st.pending) == 0 || st.loading > 0 {
		return
	}
	f := &pointsFrame{Type: "update", Points: make([]wirePoint, 0, len(st.pending))}
	for _, u := range st.pending {
		f.Points = append(f.Points, toWire(&u))
	}
	sort.Slice(f.Points, func(i, j int) bool { return f.Points[i].Key < f.Points[j].Key })
	clear(st.pending)
	st.lastFrame = time.Now()
	a.send(ctx, f)
}

// ErrHubUnavailable is returned by Opener when the hub does not answer.
var ErrHubUnavailable = errors.New("session hub unavailable")

// Opener starts sessions for a transport.
type Opener struct {
	root *actor.RootContext
	hub  *actor.PID
}

// NewOpener returns an Opener that asks hub for sessions.
func NewOpener(root *actor.RootContext, hub *actor.PID) *Opener { return &Opener{root: root, hub: hub} }

// Open starts a session on conn for user.
func (o *Opener) Open(conn Conn, user string) (*Handle, error) {
	res, err := o.root.RequestFuture(o.hub, &Open{Conn: conn, User: user}, 2*time.Second).Result()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHubUnavailable, err)
	}
	op, ok := res.(*Opened)
	if !ok || op.PID == nil {
		return nil, ErrHubUnavailable
	}
	return &Handle{root: o.root, pid: op.PID}, nil
}

// Handle is a transport's side of one session.
type Handle struct {
	root *actor.RootContext
	pid  *actor.PID
}

// Deliver passes a message the client sent to the session.
func (h *Handle) Deliver(data []byte) { h.root.Send(h.pid, &Client{Data: data}) }

// Gone tells the session the connection is closed; the session stops.
func (h *Handle) Gone() { h.root.Send(h.pid, &Gone{}) }
