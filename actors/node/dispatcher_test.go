package node

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

type count struct{}

// TestPoolDispatcherRunsActors sends many messages to many actors on a small
// pool (forcing the overflow path too) and checks every message is handled.
func TestPoolDispatcherRunsActors(t *testing.T) {
	d := NewPoolDispatcher(2, 10)
	defer d.Stop()
	sys := actor.NewActorSystem()
	var n atomic.Int64
	props := actor.PropsFromFunc(func(c actor.Context) {
		if _, ok := c.Message().(*count); ok {
			n.Add(1)
		}
	}, actor.WithDispatcher(d))
	const actors, msgs = 2000, 100
	pids := make([]*actor.PID, actors)
	for i := range pids {
		pids[i] = sys.Root.Spawn(props)
	}
	m := &count{}
	for j := 0; j < msgs; j++ {
		for _, p := range pids {
			sys.Root.Send(p, m)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for n.Load() != actors*msgs && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := n.Load(); got != actors*msgs {
		t.Fatalf("handled %d of %d messages", got, actors*msgs)
	}
	// A request still round-trips through the pool.
	echo := sys.Root.Spawn(actor.PropsFromFunc(func(c actor.Context) {
		if s, ok := c.Message().(string); ok {
			c.Respond(s + "!")
		}
	}, actor.WithDispatcher(d)))
	res, err := sys.Root.RequestFuture(echo, "hi", time.Second).Result()
	if err != nil || res != "hi!" {
		t.Fatalf("request: %v %v", res, err)
	}
}
