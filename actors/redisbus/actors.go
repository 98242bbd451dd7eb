package redisbus

import (
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

// SubscriberActor runs a Subscriber and fans its batches out to registered
// consumers as *messages.PointUpdates (one shared, read-only batch per
// delivery).
type SubscriberActor struct {
	newSub    func(deliver func([]messages.PointUpdate)) *Subscriber
	sub       *Subscriber
	consumers []*actor.PID
}

// NewSubscriberActor returns a producer for the subscriber actor. newSub
// builds the Subscriber with the deliver function the actor supplies.
func NewSubscriberActor(newSub func(deliver func([]messages.PointUpdate)) *Subscriber) actor.Producer {
	return func() actor.Actor { return &SubscriberActor{newSub: newSub} }
}

type remoteBatch struct{ updates []messages.PointUpdate }

// Receive implements actor.Actor.
func (a *SubscriberActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		self, root := ctx.Self(), ctx.ActorSystem().Root
		a.sub = a.newSub(func(us []messages.PointUpdate) {
			root.Send(self, &remoteBatch{updates: append([]messages.PointUpdate(nil), us...)})
		})
		a.sub.Start()
	case *actor.Stopping, *actor.Restarting:
		if a.sub != nil {
			a.sub.Stop()
		}
	case *RegisterConsumer:
		a.consumers = append(a.consumers, m.PID)
		ctx.Watch(m.PID)
	case *actor.Terminated:
		for i, c := range a.consumers {
			if c.Equal(m.Who) {
				a.consumers = append(a.consumers[:i], a.consumers[i+1:]...)
				break
			}
		}
	case *remoteBatch:
		msg := &messages.PointUpdates{Updates: m.updates}
		for _, c := range a.consumers {
			ctx.Send(c, msg)
		}
	}
}
