package placement

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/voltage-ems/voltage/actors/alarm"
	"github.com/voltage-ems/voltage/messages"
)

// RemoteName is the name of the actor that answers other nodes, under the
// root: its PID on node N is {N's remote address}/voltage/remote.
const RemoteName = "remote"

// RemoteActor answers other nodes' requests, in protobuf only (a plain
// struct from a peer is dropped by protoactor remote): a channel's status
// from the local channels actor, and what this node runs.
type RemoteActor struct {
	Node     string
	Channels *actor.PID
	Alarms   *actor.PID    // the local alarms actor (runs here when this node holds the alarm group)
	Status   func() Status // nil: a node without placement
}

// NewRemoteProps returns the props of the remote actor.
func NewRemoteProps(node string, channels, alarms *actor.PID, status func() Status) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor {
		return &RemoteActor{Node: node, Channels: channels, Alarms: alarms, Status: status}
	})
}

// Receive implements actor.Actor.
func (a *RemoteActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *messages.ChannelStatusRequest:
		sender := ctx.Sender()
		if sender == nil || a.Channels == nil {
			return
		}
		f := ctx.RequestFuture(a.Channels, &messages.GetChannelStatus{ChannelID: m.ChannelId}, time.Second)
		ctx.ReenterAfter(f, func(res any, err error) {
			reply := &messages.ChannelStatusReply{Id: m.ChannelId, Node: a.Node}
			if st, ok := res.(*messages.ChannelStatus); ok && err == nil {
				reply = StatusReply(st, a.Node)
			} else if err != nil {
				reply.LastError = "status unavailable on " + a.Node + ": " + err.Error()
			}
			ctx.Send(sender, reply)
		})
	case *messages.AlarmActionRequest:
		a.alarmAction(ctx, m)
	case *messages.OwnershipRequest:
		reply := &messages.OwnershipReply{Node: a.Node}
		if a.Status != nil {
			st := a.Status()
			reply.Owned, reply.Missing, reply.RedisDown = st.Owned, st.Missing, st.RedisDown
		}
		ctx.Respond(reply)
	}
}

// StatusReply converts a channel status for the wire.
func StatusReply(st *messages.ChannelStatus, node string) *messages.ChannelStatusReply {
	r := &messages.ChannelStatusReply{Id: st.ID, Name: st.Name, Protocol: st.Protocol, Connected: st.Connected,
		LastLatencyNs: int64(st.LastLatency), Polls: st.Polls, Errors: st.Errors, LastError: st.LastError,
		Reconnects: st.Reconnects, Restarts: int32(st.Restarts), Points: int32(st.Points), BadPoints: int32(st.BadPoints),
		Node: node, Running: st.Running}
	if !st.LastPoll.IsZero() {
		r.LastPollUnixMs = st.LastPoll.UnixMilli()
	}
	return r
}

// StatusOf converts a status from the wire.
func StatusOf(r *messages.ChannelStatusReply) *messages.ChannelStatus {
	st := &messages.ChannelStatus{ID: r.Id, Name: r.Name, Protocol: r.Protocol, Connected: r.Connected,
		LastLatency: time.Duration(r.LastLatencyNs), Polls: r.Polls, Errors: r.Errors, LastError: r.LastError,
		Reconnects: r.Reconnects, Restarts: int(r.Restarts), Points: int(r.Points), BadPoints: int(r.BadPoints),
		Node: r.Node, Running: r.Running}
	if r.LastPollUnixMs > 0 {
		st.LastPoll = time.UnixMilli(r.LastPollUnixMs)
	}
	return st
}

// alarmErrKinds maps the alarm actors' errors to the wire and back.
var alarmErrKinds = []struct {
	kind string
	err  error
}{
	{"unknown", alarm.ErrUnknown}, {"not_ready", alarm.ErrNotReady}, {"not_active", alarm.ErrNotActive},
	{"already_acked", alarm.ErrAlreadyAcked}, {"not_shelved", alarm.ErrNotShelved},
}

// AlarmReply converts an alarm action's outcome for the wire.
func AlarmReply(st alarm.State, err error) *messages.AlarmActionReply {
	if err != nil {
		r := &messages.AlarmActionReply{ErrorKind: "failed", Error: err.Error()}
		for _, k := range alarmErrKinds {
			if errors.Is(err, k.err) {
				r.ErrorKind = k.kind
			}
		}
		return r
	}
	b, _ := json.Marshal(st)
	return &messages.AlarmActionReply{StateJson: b}
}

// AlarmOutcome converts a reply from the wire.
func AlarmOutcome(r *messages.AlarmActionReply) (alarm.State, error) {
	if r.ErrorKind != "" {
		for _, k := range alarmErrKinds {
			if k.kind == r.ErrorKind {
				return alarm.State{}, k.err
			}
		}
		return alarm.State{}, errors.New(r.Error)
	}
	var st alarm.State
	err := json.Unmarshal(r.StateJson, &st)
	return st, err
}

func (a *RemoteActor) alarmAction(ctx actor.Context, m *messages.AlarmActionRequest) {
	sender := ctx.Sender()
	if sender == nil {
		return
	}
	if a.Alarms == nil {
		ctx.Send(sender, AlarmReply(alarm.State{}, alarm.ErrNotReady))
		return
	}
	var msg any
	switch m.Action {
	case "ack":
		msg = &alarm.Ack{ID: m.Id, User: m.User, Comment: m.Comment}
	case "shelve":
		msg = &alarm.Shelve{ID: m.Id, User: m.User, Reason: m.Reason, For: time.Duration(m.ForMs) * time.Millisecond}
	case "unshelve":
		msg = &alarm.Unshelve{ID: m.Id, User: m.User}
	default:
		ctx.Send(sender, AlarmReply(alarm.State{}, errors.New("unknown alarm action "+m.Action)))
		return
	}
	f := ctx.RequestFuture(a.Alarms, msg, 5*time.Second)
	ctx.ReenterAfter(f, func(res any, err error) {
		if rep, ok := res.(*alarm.Reply); ok && err == nil {
			ctx.Send(sender, AlarmReply(rep.State, rep.Err))
			return
		}
		if err == nil {
			err = errors.New("unexpected reply")
		}
		ctx.Send(sender, AlarmReply(alarm.State{}, fmt.Errorf("alarms on %s: %w", a.Node, err)))
	})
}
