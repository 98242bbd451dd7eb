package redisbus

import (
	"context"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/voltage-ems/voltage/messages"
)

// WriterActor places a Writer in the actor tree: the flush loop starts on
// Started and is flushed and stopped on Stopping. Updates can also be sent to
// it as *messages.PointUpdate (the hot path calls Writer.Publish directly).
type WriterActor struct{ W *Writer }

// Receive implements actor.Actor.
func (a *WriterActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.W.Start()
	case *actor.Stopping:
		a.W.Stop(2 * time.Second)
	case *messages.PointUpdate:
		a.W.Publish(m)
	case *messages.PointUpdates:
		for i := range m.Updates {
			a.W.Publish(&m.Updates[i])
		}
	}
}

// RegisterConsumer asks the subscriber actor to deliver remote updates to PID.
type RegisterConsumer struct{ PID *actor.PID }

// SubscriberActor runs a Subscriber, fans its batches out to registered
// consumers as *messages.PointUpdates (one shared, read-only batch per
// delivery) and routes control commands to the channel actor that
// subscribed to them.
type SubscriberActor struct {
	newSub    func(deliver func([]messages.PointUpdate)) *Subscriber
	sub       *Subscriber
	consumers []*actor.PID
	commands  map[uint32]*actor.PID
}

// NewSubscriberActor returns a producer for the subscriber actor. newSub
// builds the Subscriber with the deliver function the actor supplies.
func NewSubscriberActor(newSub func(deliver func([]messages.PointUpdate)) *Subscriber) actor.Producer {
	return func() actor.Actor { return &SubscriberActor{newSub: newSub} }
}

type remoteBatch struct{ updates []messages.PointUpdate }

type remoteCommand struct{ cmd *messages.ControlCommand }

// Receive implements actor.Actor.
func (a *SubscriberActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		self, root := ctx.Self(), ctx.ActorSystem().Root
		a.commands = map[uint32]*actor.PID{}
		a.sub = a.newSub(func(us []messages.PointUpdate) {
			root.Send(self, &remoteBatch{updates: append([]messages.PointUpdate(nil), us...)})
		})
		a.sub.OnControl(func(c *messages.ControlCommand) { root.Send(self, &remoteCommand{cmd: c}) })
		a.sub.Start()
	case *actor.Stopping, *actor.Restarting:
		if a.sub != nil {
			a.sub.Stop()
		}
	case *RegisterConsumer:
		a.consumers = append(a.consumers, m.PID)
		ctx.Watch(m.PID)
	case *messages.SubscribeCommands:
		if ctx.Sender() == nil {
			return
		}
		a.commands[m.ChannelID] = ctx.Sender()
		ctx.Watch(ctx.Sender())
		// Recorded by go-redis even if Redis is down now: subscribed on reconnect.
		if err := a.sub.AddChannels(context.Background(), a.sub.keys.Control(m.ChannelID)); err != nil {
			ctx.Logger().Warn("subscribe to control channel (will retry on reconnect)", "channel", m.ChannelID, "err", err)
		}
	case *remoteCommand:
		if pid := a.commands[m.cmd.ChannelID]; pid != nil {
			ctx.Send(pid, m.cmd)
		}
	case *actor.Terminated:
		for i, c := range a.consumers {
			if c.Equal(m.Who) {
				a.consumers = append(a.consumers[:i], a.consumers[i+1:]...)
				break
			}
		}
		for ch, pid := range a.commands {
			if pid.Equal(m.Who) {
				delete(a.commands, ch)
				_ = a.sub.RemoveChannels(context.Background(), a.sub.keys.Control(ch))
			}
		}
	case *remoteBatch:
		msg := &messages.PointUpdates{Updates: m.updates}
		for _, c := range a.consumers {
			ctx.Send(c, msg)
		}
	}
}
