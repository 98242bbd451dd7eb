package alarm

import (
	"context"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/supervisor"
	"github.com/voltage-ems/voltage/test/testenv"
)

// TestNaNValueIsACommunicationAlarm: a NaN (a never-read point reported
// comm_lost, or a device's NaN pattern) is not compared with a threshold:
// it raises the communication alarm, and its event is valid JSON in Redis
// and in the live frames.
func TestNaNValueIsACommunicationAlarm(t *testing.T) {
	log := itLog(t)
	r := testenv.StartRedis(t)
	c := itClient(t, r.Addr())
	n := startNode(t, itConfig(t, 4, lifecycleRules), c, log, itOptions{})
	n.waitReady("over")
	nan := upd(1, math.NaN())
	nan.Quality = messages.CommLost
	n.send(nan)
	good := upd(2, math.Inf(1))
	n.send(good)
	n.waitLive(2)
	testenv.Eventually(t, 5*time.Second, func() bool { return llen(c) == 2 }, "2 events written (%v)", llenOf(c))
	raw, evs := redisEvents(t, c)
	for i, e := range evs {
		if e.Type != EvRaise || e.Band != BandComm || !json.Valid([]byte(raw[i])) {
			t.Fatalf("event %d: %s", i, raw[i])
		}
	}
	if _, err := json.Marshal(n.live.events()); err != nil {
		t.Fatalf("live events do not encode: %v", err)
	}
	// A good value brings the rule back: the comm alarm clears.
	n.send(upd(1, 240))
	n.waitLive(3)
	if e := n.live.events()[2]; e.AlarmID != "over" || e.Type != EvClear {
		t.Fatalf("after a good value: %+v", e)
	}
}

// TestRedisRestartedEmptyGetsStatesBack: Redis loses everything while
// alarms are active and nothing changes afterwards; the store notices
// (its marker is gone) and writes every state and the active index again.
func TestRedisRestartedEmptyGetsStatesBack(t *testing.T) {
	log := itLog(t)
	r := testenv.StartRedis(t) // its own redis-server, restarted empty below
	c := itClient(t, r.Addr())
	n := startNode(t, itConfig(t, 4, lifecycleRules), c, log, itOptions{check: 100 * time.Millisecond})
	n.waitReady("over")
	n.send(upd(1, 251), upd(2, 5))
	n.waitLive(2)
	testenv.Eventually(t, 5*time.Second, func() bool { return len(activeIndex(t, c)) == 2 }, "both alarms in the index")
	r.Restart()
	testenv.Eventually(t, 10*time.Second, func() bool {
		idx, err := c.SMembers(context.Background(), ActiveIndex).Result()
		return err == nil && len(idx) == 2
	}, "the active index written again")
	if h := hash(t, c, "under"); h["state"] != ActiveUnacked || h["seq"] != "1" || h["level"] != "minor" {
		t.Fatalf("alarm:under after the restart: %v", h)
	}
	if h := hash(t, c, "quiet"); h["state"] != Normal {
		t.Fatalf("a rule never raised, after the restart: %v", h)
	}
	if n.live.len() != 2 {
		t.Fatalf("the rewrite produced events: %s", eventIDs(n.live.events()))
	}
}

// TestPendingDelaySurvivesRestart: a rule actor that panics while its
// on-delay runs restarts with the delay still pending and raises when it
// ends, though no new value arrives.
func TestPendingDelaySurvivesRestart(t *testing.T) {
	log := itLog(t)
	r := testenv.StartRedis(t)
	c := itClient(t, r.Addr())
	panicked := make(chan struct{})
	mw := func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
			if _, ok := env.Message.(*tick); ok {
				select {
				case <-panicked:
				default:
					close(panicked)
					panic("injected fault on the first tick")
				}
			}
			next(ctx, env)
		}
	}
	sup := supervisor.NewStrategy(fastPolicy, nil)
	n := startNode(t, itConfig(t, 1, `
  - {id: slow, point: "1:m:1", condition: ">", threshold: 250, on_delay: 300ms}
`), c, log, itOptions{mw: []actor.ReceiverMiddleware{mw}, supervisor: sup})
	n.waitReady("slow")
	start := time.Now()
	n.send(upd(1, 251))
	select {
	case <-panicked:
	case <-time.After(5 * time.Second):
		t.Fatal("the on-delay timer never fired")
	}
	n.waitLive(1)
	if e := n.live.events()[0]; e.Type != EvRaise || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("after the restart: %+v (%v after the value)", e, time.Since(start))
	}
}
