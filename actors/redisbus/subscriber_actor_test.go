package redisbus

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

// TestSubscriberActorFansOut checks the wiring: another node's update
// published on Redis reaches every registered consumer actor; this node's own
// update reaches none.
func TestSubscriberActorFansOut(t *testing.T) {
	r := testenv.StartRedis(t)
	ro, _ := redis.ParseURL(r.URL())
	sys := actor.NewActorSystem()
	ready := make(chan struct{})
	var mu sync.Mutex
	got := map[string][]messages.PointUpdate{}
	consumer := func(name string) *actor.PID {
		return sys.Root.Spawn(actor.PropsFromFunc(func(c actor.Context) {
			if m, ok := c.Message().(*messages.PointUpdates); ok {
				mu.Lock()
				got[name] = append(got[name], m.Updates...)
				mu.Unlock()
			}
		}))
	}
	sub := sys.Root.Spawn(actor.PropsFromProducer(NewSubscriberActor(func(deliver func([]messages.PointUpdate)) *Subscriber {
		s := NewSubscriber(ro, "me", messages.Keys{}, deliver, nil, nil)
		go func() { <-s.Ready(); close(ready) }()
		return s
	})))
	t.Cleanup(func() { _ = sys.Root.PoisonFuture(sub).Wait() })
	sys.Root.Send(sub, &RegisterConsumer{PID: consumer("a")})
	sys.Root.Send(sub, &RegisterConsumer{PID: consumer("b")})
	testenv.Eventually(t, 5*time.Second, func() bool {
		select {
		case <-ready:
			return true
		default:
			return false
		}
	}, "subscribed")
	c := redis.NewClient(ro)
	defer c.Close()
	for _, node := range []string{"me", "other"} {
		u := messages.PointUpdate{Key: messages.PointKey{Channel: 1, Type: 'm', Point: 1}, Value: 5, Node: node}
		c.Publish(context.Background(), UpdateChannel, u.AppendJSON(nil))
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got["a"]) == 1 && len(got["b"]) == 1
	}, "both consumers got the foreign update")
	mu.Lock()
	defer mu.Unlock()
	if got["a"][0].Node != "other" || got["b"][0].Node != "other" {
		t.Fatalf("delivered %+v", got)
	}
}
