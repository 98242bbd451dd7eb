package acquisition

import (
	"strconv"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/voltage-ems/voltage/messages"
)

// ChannelsActor supervises the channel actors (one-for-one, with the
// strategy given in its props) and routes requests about a channel or a
// point to the channel that owns it.
type ChannelsActor struct {
	channels []Options
	placed   bool // channels start on StartChannel only (cluster placement)
	pids     map[uint32]*actor.PID
}

// StartChannel starts channel ID on this node (it now holds the channel's
// lease): Guard and Seen replace the channel's options (the lease check
// before each poll, the fenced idempotency claim before each command).
// Answered with *ChannelStarted when the channel actor runs.
type StartChannel struct {
	ID    uint32
	Guard func() bool
	Seen  IdempotencyStore
}

// StopChannel stops channel ID on this node (its lease is lost or handed
// over); answered with *ChannelStopped once the actor has stopped.
type StopChannel struct{ ID uint32 }

// ChannelStarted and ChannelStopped answer StartChannel and StopChannel.
type (
	ChannelStarted struct{ ID uint32 }
	ChannelStopped struct{ ID uint32 }
)

// NewPlacedChannelsProps is NewChannelsProps for a cluster node: no channel
// runs until the placement sends StartChannel.
func NewPlacedChannelsProps(channels []Options, strategy actor.SupervisorStrategy) *actor.Props {
	opts := []actor.PropsOption{}
	if strategy != nil {
		opts = append(opts, actor.WithSupervisor(strategy))
	}
	return actor.PropsFromProducer(func() actor.Actor { return &ChannelsActor{channels: channels, placed: true} }, opts...)
}

// NewChannelsProps returns the props of the channels supervisor. strategy
// supervises the channel actors; each Options.Supervisor supervises below.
func NewChannelsProps(channels []Options, strategy actor.SupervisorStrategy) *actor.Props {
	opts := []actor.PropsOption{}
	if strategy != nil {
		opts = append(opts, actor.WithSupervisor(strategy))
	}
	return actor.PropsFromProducer(func() actor.Actor { return &ChannelsActor{channels: channels} }, opts...)
}

// Receive implements actor.Actor.
func (a *ChannelsActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.pids = make(map[uint32]*actor.PID, len(a.channels))
		if a.placed {
			return
		}
		for _, o := range a.channels {
			pid, err := ctx.SpawnNamed(NewChannelProps(o), strconv.FormatUint(uint64(o.Channel.ID), 10))
			if err != nil {
				panic("spawn channel actor: " + err.Error())
			}
			a.pids[o.Channel.ID] = pid
		}
	case *StartChannel:
		if a.pids[m.ID] != nil {
			ctx.Respond(&ChannelStarted{ID: m.ID})
			return
		}
		for _, o := range a.channels {
			if o.Channel.ID != m.ID {
				continue
			}
			o.Guard = m.Guard
			if m.Seen != nil {
				o.Seen = m.Seen
			}
			pid, err := ctx.SpawnNamed(NewChannelProps(o), strconv.FormatUint(uint64(m.ID), 10))
			if err != nil {
				ctx.Logger().Error("start channel", "channel", m.ID, "err", err)
				return
			}
			a.pids[m.ID] = pid
			ctx.Respond(&ChannelStarted{ID: m.ID})
			return
		}
	case *StopChannel:
		pid := a.pids[m.ID]
		delete(a.pids, m.ID)
		if pid == nil {
			ctx.Respond(&ChannelStopped{ID: m.ID})
			return
		}
		// Stop, not poison: a channel that lost its lease must not run the
		// polls and commands still queued. The answer waits for the stop.
		sender := ctx.Sender()
		ctx.ReenterAfter(ctx.StopFuture(pid), func(any, error) {
			if sender != nil {
				ctx.Send(sender, &ChannelStopped{ID: m.ID})
			}
		})
	case *messages.GetChannelStatus:
		if pid := a.pids[m.ChannelID]; pid != nil {
			ctx.Forward(pid)
			return
		}
		for _, o := range a.channels {
			if o.Channel.ID == m.ChannelID {
				ctx.Respond(&messages.ChannelStatus{ID: m.ChannelID, Name: o.Channel.Name, Protocol: string(o.Channel.Protocol),
					LastError: "not running on this node (another node holds its lease, or none yet)"})
				return
			}
		}
		ctx.Respond(&messages.ChannelStatus{ID: m.ChannelID, LastError: "unknown channel"})
	case *messages.GetPoint:
		if pid := a.pids[m.Key.Channel]; pid != nil {
			ctx.Forward(pid)
			return
		}
		ctx.Respond(&messages.PointValue{Key: m.Key})
	}
}
