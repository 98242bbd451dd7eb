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
	pids     map[uint32]*actor.PID
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
		for _, o := range a.channels {
			pid, err := ctx.SpawnNamed(NewChannelProps(o), strconv.FormatUint(uint64(o.Channel.ID), 10))
			if err != nil {
				panic("spawn channel actor: " + err.Error())
			}
			a.pids[o.Channel.ID] = pid
		}
	case *messages.GetChannelStatus:
		if pid := a.pids[m.ChannelID]; pid != nil {
			ctx.Forward(pid)
			return
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
