package placement

import (
	"time"

	"github.com/asynkron/protoactor-go/actor"

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
	Status   func() Status // nil: a node without placement
}

// NewRemoteProps returns the props of the remote actor.
func NewRemoteProps(node string, channels *actor.PID, status func() Status) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor {
		return &RemoteActor{Node: node, Channels: channels, Status: status}
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
