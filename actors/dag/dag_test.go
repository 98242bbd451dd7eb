package dag

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/supervisor"
	"github.com/voltage-ems/voltage/test/testenv"
)

type collect struct {
	mu  sync.Mutex
	ups []messages.PointUpdate
}

func (c *collect) Publish(u *messages.PointUpdate) {
	c.mu.Lock()
	c.ups = append(c.ups, *u)
	c.mu.Unlock()
}

func (c *collect) of(key string) []messages.PointUpdate {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []messages.PointUpdate
	for _, u := range c.ups {
		if u.Key.String() == key {
			out = append(out, u)
		}
	}
	return out
}

func (c *collect) last(key string) (messages.PointUpdate, bool) {
	us := c.of(key)
	if len(us) == 0 {
		return messages.PointUpdate{}, false
	}
	return us[len(us)-1], true
}

const dagYAML = `
channels:
  - {id: 1, name: field, protocol: virtual, points: v.csv}
  - {id: 9, name: computed, protocol: compute}
computations:
  - {output: "9:m:1", name: diff, expression: "a - b", inputs: {a: "1:m:1", b: "1:m:2"}}
  - {output: "9:m:2", name: double, expression: "input1 * 2", inputs: ["9:m:1"]}
  - {output: "9:m:3", name: energy, expression: "integrate(input1)", inputs: ["1:m:3"]}
  - {output: "9:m:4", name: ratio, expression: "input1 / input2", inputs: ["1:m:1", "1:m:2"]}
`

func loadDAGConfig(t *testing.T) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(dagYAML), "/cfg/node.yaml", func(name string) ([]byte, error) {
		if strings.HasSuffix(name, "/v.csv") {
			return []byte("point_id,type,name,unit,signal,min,max,period\n1,m,a,kW,sine,0,1,60s\n2,m,b,kW,sine,0,1,60s\n3,m,p,kW,sine,0,1,60s\n"), nil
		}
		return nil, fmt.Errorf("no file %s", name)
	})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

type dagEnv struct {
	sys   *actor.ActorSystem
	pid   *actor.PID
	sink  *collect
	stats *supervisor.Stats
}

func startDAG(t *testing.T, store StateStore, mw ...actor.ReceiverMiddleware) *dagEnv {
	t.Helper()
	e := &dagEnv{sys: actor.NewActorSystem(), sink: &collect{}, stats: supervisor.NewStats(nil)}
	strategy := supervisor.NewStrategy(supervisor.DefaultPolicy(), e.stats)
	var err error
	e.pid, err = e.sys.Root.SpawnNamed(NewProps(Options{Config: loadDAGConfig(t), Node: "n", Sink: e.sink, Store: store,
		Supervisor: strategy, NodeMiddleware: mw, LevelTimeout: 300 * time.Millisecond}, e.stats.For), "dag")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.sys.Root.PoisonFuture(e.pid).Wait() })
	return e
}

func (e *dagEnv) send(us ...messages.PointUpdate) {
	e.sys.Root.Send(e.pid, &messages.PointUpdates{Updates: us})
}

func up(key string, v float64, q messages.Quality) messages.PointUpdate {
	k, _ := messages.ParsePointKey(key)
	return messages.PointUpdate{Key: k, Value: v, Quality: q, Timestamp: time.Now().UnixMilli()}
}

// TestWavesAreGlitchFree: both inputs of a-b change in one wave; the
// output and its reader each see one recompute with the final inputs,
// never a half-updated value.
func TestWavesAreGlitchFree(t *testing.T) {
	e := startDAG(t, nil)
	e.send(up("1:m:1", 5, messages.Good), up("1:m:2", 2, messages.Good))
	testenv.Eventually(t, 2*time.Second, func() bool { u, ok := e.sink.last("9:m:2"); return ok && u.Value == 6 }, "first wave")
	e.send(up("1:m:1", 10, messages.Good), up("1:m:2", 7, messages.Good)) // a-b stays 3
	e.send(up("1:m:1", 20, messages.Good), up("1:m:2", 10, messages.Good))
	testenv.Eventually(t, 2*time.Second, func() bool { u, ok := e.sink.last("9:m:2"); return ok && u.Value == 20 }, "third wave")
	for _, u := range e.sink.of("9:m:1") {
		if u.Value != 3 && u.Value != 10 {
			t.Fatalf("glitch: 9:m:1 published %v", u.Value)
		}
	}
	if n := len(e.sink.of("9:m:1")); n != 2 { // 3, (3 unchanged: not published), 10
		t.Fatalf("9:m:1 published %d times, want 2", n)
	}
	if n := len(e.sink.of("9:m:2")); n != 2 {
		t.Fatalf("9:m:2 published %d times, want 2", n)
	}
}

func TestQualityPropagation(t *testing.T) {
	e := startDAG(t, nil)
	e.send(up("1:m:1", 4, messages.Good), up("1:m:2", 2, messages.Good))
	testenv.Eventually(t, 2*time.Second, func() bool { u, ok := e.sink.last("9:m:2"); return ok && u.Quality == messages.Good }, "good")
	e.send(up("1:m:2", 0, messages.CommLost))
	testenv.Eventually(t, 2*time.Second, func() bool {
		a, _ := e.sink.last("9:m:1")
		b, _ := e.sink.last("9:m:2")
		return a.Quality == messages.Uncertain && a.Value == 2 && b.Quality == messages.Uncertain
	}, "an input comm_lost makes the outputs uncertain, keeping the last input value")
	e.send(up("1:m:2", 4, messages.Good))
	testenv.Eventually(t, 2*time.Second, func() bool {
		a, _ := e.sink.last("9:m:1")
		return a.Quality == messages.Good && a.Value == 0
	}, "recovered")
	// Division by zero: bad, with the error shown, the last value kept.
	testenv.Eventually(t, 2*time.Second, func() bool { u, ok := e.sink.last("9:m:4"); return ok && u.Value == 1 }, "ratio")
	e.send(up("1:m:2", 0, messages.Good))
	testenv.Eventually(t, 2*time.Second, func() bool { u, _ := e.sink.last("9:m:4"); return u.Quality == messages.Bad && u.Value == 1 }, "ratio bad")
	res, err := e.sys.Root.RequestFuture(e.pid, &GetComputations{}, time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	var ratio ComputationInfo
	for _, it := range res.(*Computations).Items {
		if it.Output == "9:m:4" {
			ratio = it
		}
	}
	if !strings.Contains(ratio.LastError, "Inf") || ratio.Quality != "bad" || ratio.Evaluations < 2 {
		t.Fatalf("ratio info %+v", ratio)
	}
}

// TestPanickingNodeRestartsAlone: one node's actor panics; it is restarted
// with backoff, its output is bad meanwhile, the others keep computing.
func TestPanickingNodeRestartsAlone(t *testing.T) {
	var panics atomic.Int64
	mw := func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(c actor.ReceiverContext, env *actor.MessageEnvelope) {
			if _, ok := env.Message.(*evaluate); ok && strings.HasSuffix(c.Self().Id, "/9:m:4") && panics.Add(1) == 2 {
				panic("injected")
			}
			next(c, env)
		}
	}
	e := startDAG(t, nil, mw)
	e.send(up("1:m:1", 4, messages.Good), up("1:m:2", 2, messages.Good))
	testenv.Eventually(t, 2*time.Second, func() bool { u, ok := e.sink.last("9:m:4"); return ok && u.Value == 2 }, "ratio")
	e.send(up("1:m:1", 8, messages.Good)) // the ratio node panics on this one
	testenv.Eventually(t, 2*time.Second, func() bool { u, _ := e.sink.last("9:m:4"); return u.Quality == messages.Bad }, "bad while restarting")
	if u, _ := e.sink.last("9:m:1"); u.Value != 6 || u.Quality != messages.Good {
		t.Fatalf("another node was affected: %+v", u)
	}
	e.send(up("1:m:1", 12, messages.Good))
	testenv.Eventually(t, 3*time.Second, func() bool { u, _ := e.sink.last("9:m:4"); return u.Quality == messages.Good && u.Value == 6 }, "ratio back")
	if n := e.stats.Total(); n != 1 {
		t.Fatalf("%d restarts, want 1", n)
	}
}

// TestStateSurvivesRestart: an energy counter continues after its node
// actor restarts (state saved in Redis and loaded again).
func TestStateSurvivesRestart(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { rdb.Close() }) // after the DAG has stopped and saved
	var boom atomic.Bool
	mw := func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(c actor.ReceiverContext, env *actor.MessageEnvelope) {
			if _, ok := env.Message.(*evaluate); ok && strings.HasSuffix(c.Self().Id, "/9:m:3") && boom.CompareAndSwap(true, false) {
				panic("injected")
			}
			next(c, env)
		}
	}
	e := startDAG(t, RedisStateStore{Client: rdb}, mw)
	// About 3,600,000 kW for a few 50 ms steps: about 50 kWh per step
	// (computations run when an input changes: the power moves a little).
	for i := 0; i < 6; i++ {
		e.send(up("1:m:3", 3.6e6+float64(i), messages.Good))
		time.Sleep(50 * time.Millisecond) // the integral needs time to pass (not a synchronisation)
	}
	testenv.Eventually(t, 2*time.Second, func() bool { u, ok := e.sink.last("9:m:3"); return ok && u.Value > 150 }, "energy grows")
	before, _ := e.sink.last("9:m:3")
	boom.Store(true)
	e.send(up("1:m:3", 3.6e6+100, messages.Good)) // the node panics, saving its state on the way down
	testenv.Eventually(t, 2*time.Second, func() bool { return e.stats.Total() == 1 }, "restarted")
	for i := 0; i < 3; i++ {
		time.Sleep(50 * time.Millisecond)
		e.send(up("1:m:3", 3.6e6+200+float64(i), messages.Good))
	}
	testenv.Eventually(t, 3*time.Second, func() bool {
		u, _ := e.sink.last("9:m:3")
		return u.Quality == messages.Good && u.Value > before.Value
	}, "the counter continues from %v after the restart", before.Value)
	if n, _ := rdb.HLen(context.Background(), "dag:state").Result(); n != 1 {
		t.Fatalf("dag:state has %d fields", n)
	}
}
