package acquisition_test

import (
	"fmt"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/voltage-ems/voltage/actors/acquisition"
	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers/modbus/simulator"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

const virtualTable = `point_id,type,name,unit,signal,min,max,period
1,m,ramp_a,kW,ramp,0,1000,2s
2,m,ramp_b,kW,ramp,0,1000,3s
3,m,ramp_c,kW,ramp,0,1000,4s
1,s,square,,square,,,1s
`

func TestVirtualChannelWritesRedis(t *testing.T) {
	r := testenv.StartRedis(t)
	cfg := loadConfig(t, `
node: {name: test}
channels:
  - {id: 5, name: virt, protocol: virtual, poll_interval: 50ms, points: v.csv}
`, map[string]string{"v.csv": virtualTable})
	h := startNode(t, cfg, r.URL())
	for _, k := range []messages.PointKey{pk(5, 'm', 1), pk(5, 'm', 2), pk(5, 'm', 3), pk(5, 's', 1)} {
		testenv.Eventually(t, 5*time.Second, func() bool { return h.hget(k, ":q") == "good" }, "point %v good in redis", k)
		if ts, _ := strconv.ParseInt(h.hget(k, ":ts"), 10, 64); time.Since(time.UnixMilli(ts)) > 5*time.Second {
			t.Fatalf("point %v: ts %d not recent", k, ts)
		}
	}
	// Values keep moving: the ramp is refreshed in Redis.
	k := messages.PointKey{Channel: 5, Type: 'm', Point: 1}
	first := h.hget(k, ":ts")
	testenv.Eventually(t, 5*time.Second, func() bool { return h.hget(k, ":ts") != first }, "ramp refreshed")
	st := h.status(t, 5)
	if !st.Connected || st.Polls == 0 || st.Points != 4 {
		t.Fatalf("status %+v", st)
	}
}

// TestPointPanicRestartsAlone makes one point actor panic twice (through a
// receiver middleware, the hook point actors have for metrics) and checks
// that it restarts alone, with a backoff that doubles, while its siblings
// keep updating.
func TestPointPanicRestartsAlone(t *testing.T) {
	r := testenv.StartRedis(t)
	cfg := loadConfig(t, `
channels:
  - {id: 6, name: virt, protocol: virtual, poll_interval: 20ms, points: v.csv}
`, map[string]string{"v.csv": virtualTable})
	var (
		mu       sync.Mutex
		panics   int
		panicAt  []time.Time
		resumeAt []time.Time // first message handled after each panic
	)
	victim := "voltage/channels/6/slave-0/m:2"
	mw := func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(c actor.ReceiverContext, env *actor.MessageEnvelope) {
			if c.Self().Id == victim {
				if _, isSys := env.Message.(actor.SystemMessage); !isSys {
					if _, ok := env.Message.(*actor.Started); !ok {
						mu.Lock()
						if len(resumeAt) < len(panicAt) {
							resumeAt = append(resumeAt, time.Now())
						}
						if panics < 2 {
							panics++
							panicAt = append(panicAt, time.Now())
							mu.Unlock()
							panic(fmt.Sprintf("injected failure %d", panics))
						}
						mu.Unlock()
					}
				}
			}
			next(c, env)
		}
	}
	h := startNode(t, cfg, r.URL(), mw)
	sibling := messages.PointKey{Channel: 6, Type: 'm', Point: 1}
	failing := messages.PointKey{Channel: 6, Type: 'm', Point: 2}

	// While the victim is down (mailbox suspended for the backoff), its
	// sibling keeps being refreshed.
	testenv.Eventually(t, 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return panics == 1 }, "first injected panic")
	ts0 := h.hget(sibling, ":ts")
	testenv.Eventually(t, 5*time.Second, func() bool { return h.hget(sibling, ":ts") != ts0 }, "sibling updates while the victim restarts")

	testenv.Eventually(t, 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(resumeAt) == 2 }, "victim resumed after two restarts")
	testenv.Eventually(t, 5*time.Second, func() bool { return h.hget(failing, ":q") == "good" }, "victim publishes again")
	if n := h.stats.For(victim); n != 2 {
		t.Fatalf("victim restarts = %d, want 2", n)
	}
	if n := h.stats.Total(); n != 2 {
		t.Fatalf("total restarts = %d, want 2 (only the victim)", n)
	}
	if n := h.status(t, 6).Restarts; n != 2 {
		t.Fatalf("channel status shows %d restarts, want the victim's 2", n)
	}
	mu.Lock()
	defer mu.Unlock()
	gap1, gap2 := resumeAt[0].Sub(panicAt[0]), resumeAt[1].Sub(panicAt[1])
	if gap1 < 90*time.Millisecond || gap2 < 180*time.Millisecond {
		t.Fatalf("restart delays %v then %v: want about 100 ms then 200 ms (backoff)", gap1, gap2)
	}
}

const modbusTable = `point_id,type,name,unit,slave_id,function_code,register_address,data_type,byte_order,bit_position,scale,offset,deadband,reverse
1,m,voltage,V,1,3,0,float32,ABCD,,1,0,0,
2,m,current,A,1,3,2,int16,,,0.1,0,0,
3,m,power,kW,2,4,0,int32,CDAB,,0.01,0,0,
1,s,breaker,,1,1,0,bool,,,,,,
`

// TestDeviceGoneAndBack stops the simulated device mid-run: its points go
// comm_lost keeping their values, the virtual channel next to it keeps its
// poll rate and latency, and when the device is back the points recover
// without a restart.
func TestDeviceGoneAndBack(t *testing.T) {
	r := testenv.StartRedis(t)
	port := testenv.FreePort(t)
	cfg := loadConfig(t, fmt.Sprintf(`
channels:
  - {id: 10, name: pcs, protocol: modbus_tcp, poll_interval: 50ms, points: m.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 200ms}}
  - {id: 11, name: virt, protocol: virtual, poll_interval: 20ms, points: v.csv}
`, port), map[string]string{"m.csv": modbusTable, "v.csv": virtualTable})
	sim, addr := serveFrozen(t, cfg.Channels[0].Points, port)
	h := startNode(t, cfg, r.URL())
	keys := []messages.PointKey{pk(10, 'm', 1), pk(10, 'm', 2), pk(10, 'm', 3), pk(10, 's', 1)}
	matchesDevice := func() bool { return h.matches(sim, keys) }
	testenv.Eventually(t, 5*time.Second, matchesDevice, "redis holds the device's values")
	before, _ := h.value(keys[0])

	var maxLatency atomic.Int64
	stopWatch := make(chan struct{})
	go func() { // watch the other channel's poll latency during the outage
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if st := h.status(t, 11); int64(st.LastLatency) > maxLatency.Load() {
				maxLatency.Store(int64(st.LastLatency))
			}
		}
	}()
	polls0 := h.status(t, 11).Polls

	sim.Close()
	for _, k := range keys {
		testenv.Eventually(t, 5*time.Second, func() bool { return h.hget(k, ":q") == "comm_lost" }, "%v comm_lost", k)
	}
	if v, _ := h.value(keys[0]); v != before {
		t.Fatalf("comm_lost changed the last known value: %v -> %v", before, v)
	}
	st := h.status(t, 10)
	if st.Connected || st.Errors == 0 || st.LastError == "" {
		t.Fatalf("channel status during outage: %+v", st)
	}
	// Stay down through several reconnect attempts.
	testenv.Eventually(t, 5*time.Second, func() bool { return h.status(t, 10).Reconnects >= 4 }, "reconnect attempts while the device is gone")

	// The device comes back with new values; the channel reconnects by itself.
	if err := sim.SetValue(0, 241.5); err != nil {
		t.Fatal(err)
	}
	if _, err := sim.Serve(addr); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, matchesDevice, "points recover to the device's values")
	if v, _ := h.value(keys[0]); v != 241.5 {
		t.Fatalf("voltage after recovery = %v, want 241.5", v)
	}
	close(stopWatch)
	polls1 := h.status(t, 11).Polls
	if lat := time.Duration(maxLatency.Load()); lat > 20*time.Millisecond {
		t.Fatalf("virtual channel poll latency reached %v during the other channel's outage", lat)
	}
	if polls1-polls0 < 10 {
		t.Fatalf("virtual channel polled only %d times during the outage", polls1-polls0)
	}
	if n := h.stats.Total(); n != 0 {
		t.Fatalf("%d actor restarts: a lost device must not restart actors", n)
	}
}

// TestRedisRestartMidRun kills Redis while the device keeps changing and
// checks that, once Redis is back (empty), every point's hash equals the
// device's current value and updates flow again.
func TestRedisRestartMidRun(t *testing.T) {
	r := testenv.StartRedis(t)
	cfg, port := modbusChannel(t, 12, "50ms")
	sim, _ := serveFrozen(t, cfg.Channels[0].Points, port)
	h := startNode(t, cfg, r.URL())
	keys := []messages.PointKey{pk(12, 'm', 1), pk(12, 'm', 2), pk(12, 'm', 3), pk(12, 's', 1)}
	matchesDevice := func() bool { return h.matches(sim, keys) }
	testenv.Eventually(t, 5*time.Second, matchesDevice, "initial values")

	r.Stop()
	for i, v := range []float64{230.25, 12.5, 1234.56} {
		if err := sim.SetValue(i, v); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // polls happen while Redis is down (not a synchronisation)
	r.Restart()
	testenv.Eventually(t, 10*time.Second, matchesDevice, "after the restart every hash equals the device")
	if err := sim.SetValue(0, 199); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { v, _ := h.value(keys[0]); return v == 199 }, "updates flow after the restart")
}

// serveFrozen serves points with a simulator whose values hold still.
// modbusChannel is a config with one Modbus TCP channel (modbusTable) to a
// free loopback port.
func modbusChannel(t *testing.T, id int, poll string) (*config.Config, int) {
	t.Helper()
	port := testenv.FreePort(t)
	return loadConfig(t, fmt.Sprintf(`
channels:
  - {id: %d, name: pcs, protocol: modbus_tcp, poll_interval: %s, points: m.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 200ms}}
`, id, poll, port), map[string]string{"m.csv": modbusTable}), port
}

func serveFrozen(t *testing.T, points []config.Point, port int) (*simulator.Simulator, string) {
	t.Helper()
	sim, err := simulator.New(points)
	if err != nil {
		t.Fatal(err)
	}
	sim.Freeze(true)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if _, err := sim.Serve(addr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim, addr
}

// matches reports whether Redis holds the simulator's current value of each
// point (keys[i] is point i of the table), with quality good.
func (h *harness) matches(sim *simulator.Simulator, keys []messages.PointKey) bool {
	for i, k := range keys {
		want, _ := sim.Value(i)
		got, ok := h.value(k)
		if !ok || math.Abs(got-want) > 1e-6*math.Max(1, math.Abs(want)) || h.hget(k, ":q") != "good" {
			return false
		}
	}
	return true
}

// TestGuardCutsPollShort: a channel's guard (in a cluster, its lease)
// turning false between two requests of a poll stops the rest of that poll
// and every later one before it reaches the device; the connection is not
// treated as lost (no comm_lost, no reconnect).
func TestGuardCutsPollShort(t *testing.T) {
	r := testenv.StartRedis(t)
	cfg, port := modbusChannel(t, 10, "20ms")
	sim, err := simulator.New(cfg.Channels[0].Points, simulator.WithRequestLog())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sim.Serve(net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	// The table needs 3 requests per poll; the guard is asked once before
	// each poll and once before each request: 4 times per poll. It allows
	// 3 whole polls, then the 4th poll and its first request only.
	const perPoll, requests = 4, 3
	var asked atomic.Int64
	guard := func() bool { return asked.Add(1) <= 3*perPoll+2 }
	h := startNodeWith(t, cfg, r.URL(), func(o *acquisition.Options) { o.Guard = guard })
	testenv.Eventually(t, 5*time.Second, func() bool { return asked.Load() > 3*perPoll+2 }, "the guard turning false")
	// Several poll intervals more: later polls are skipped before any
	// request (the guard keeps being asked).
	n := asked.Load()
	testenv.Eventually(t, 5*time.Second, func() bool { return asked.Load() >= n+5 }, "later polls asking the guard")
	if got, want := len(sim.RequestLog()), 3*requests+1; got != want {
		t.Fatalf("the device got %d requests, want %d (3 polls and the first request of the 4th)", got, want)
	}
	st := h.status(t, 10)
	if !st.Connected || st.Reconnects != 0 || st.Errors != 0 {
		t.Fatalf("channel status after the guard turned false: %+v (want connected, no errors, no reconnects)", st)
	}
	if q := h.hget(pk(10, 'm', 1), ":q"); q == "comm_lost" {
		t.Fatal("points marked comm_lost: a lapsed lease is not a lost connection")
	}
}
