// Command alarms measures the alarm engine against a real redis-server,
// wired as `voltage run` wires it: a session.Feed flushing every 5 ms into
// the alarms actor (voltage/alarms), one rule actor per rule on the node's
// PoolDispatcher under the supervisor strategy, the Store writing states and
// events to Redis (LPUSH alarm:events, PUBLISH alarm:event).
//
// Sustained: 10,000 rules on 10,000 points (> >= < <= and ISA bands, with
// and without deadband, 10 % with an on or off delay) and 50,000 updates/s
// offered; about 1 % of the updates cross a threshold (a few hundred events
// a second), the others move inside the normal range. It reports the
// evaluations/s (voltage_alarm_evaluations_total), the events/s received on
// SUBSCRIBE alarm:event, the latency from the send time of the update that
// crossed the threshold to its event received on the subscription (rules
// without delay: event seq n is the n-th crossing of the rule), the Store
// queue, CPU and memory.
//
// Flood: 5,000 rules cross their threshold in one batch (one PointUpdates
// message to the alarms actor, as one feed flush delivers it): the time
// until all 5,000 raise events are in alarm:events and received on
// alarm:event, checked for loss by distinct event_id; then all clear at
// once, checked the same way.
//
//	go run ./bench/alarms [-rules 10000] [-rate 50000] [-duration 20s] [-flood 5000] [-redis redis://...]
//	                      [-cpuprofile file] [-floodprofile file]
//
// With -redis, the harness deletes alarm:events, idx:alarm:active,
// alarm:store:bench and the alarm:bench-* hashes of that database: use a
// scratch one.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/actors/alarm"
	"github.com/voltage-ems/voltage/actors/node"
	"github.com/voltage-ems/voltage/actors/session"
	"github.com/voltage-ems/voltage/bench/benchnode"
	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/supervisor"
)

// Crossing probabilities per update: a normal point goes into alarm with
// pRaise, an alarmed one back to normal with pClear. At 5 updates/s per
// point that is an alarm every ~40 s per point lasting ~2 s; ~1 % of the
// updates cross (2·pRaise·pClear/(pRaise+pClear)), ~5 % of the rules are
// active at a time.
const (
	pRaise = 0.005
	pClear = 0.1
)

func main() {
	rules := flag.Int("rules", 10000, "alarm rules, one per point")
	rate := flag.Int("rate", 50000, "point updates per second offered")
	duration := flag.Duration("duration", 20*time.Second, "sustained measurement time (after a 2 s warm-up)")
	flood := flag.Int("flood", 5000, "rules raising (then clearing) in one batch; 0 skips the flood")
	redisURL := flag.String("redis", "", "use this Redis (a scratch database: its alarm keys are deleted) instead of starting a redis-server")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the sustained phase to `file`")
	floodProfile := flag.String("floodprofile", "", "write a CPU profile of the flood to `file`")
	flag.Parse()
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50) // as `voltage run` does
	}
	if err := run(*rules, *rate, *duration, *flood, *redisURL, *cpuProfile, *floodProfile); err != nil {
		fmt.Fprintln(os.Stderr, "alarms:", err)
		os.Exit(1)
	}
}

// Kinds of rules, by i % 20.
const (
	kindAbove   = iota // > or >= 100: alarm values 101..115
	kindBelow          // < or <= 10: alarm values 0..9
	kindBands          // hihi 120, hi 100, lo 10, lolo 0
	kindOnDelay        // > 100, on_delay 1s
	kindOffDly         // < 10, off_delay 1s
)

func kindOf(i int) int {
	switch k := i % 20; {
	case k < 9:
		return kindAbove
	case k < 13:
		return kindBelow
	case k < 18:
		return kindBands
	case k == 18:
		return kindOnDelay
	default:
		return kindOffDly
	}
}

func delayed(kind int) bool { return kind == kindOnDelay || kind == kindOffDly }

func ruleID(i int) string { return fmt.Sprintf("bench-%05d", i) }

// configYAML is a channel of n virtual points and one rule on each.
func configYAML(n int) (yaml, csv string) {
	var c, y strings.Builder
	c.WriteString("point_id,type,name,unit,signal,min,max,period\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&c, "%d,m,p%d,kW,sine,0,100,60s\n", i, i)
	}
	y.WriteString("node: {name: bench}\nchannels:\n  - {id: 1, name: field, protocol: virtual, points: p.csv}\nalarms:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&y, "  - {id: %s, point: \"1:m:%d\"", ruleID(i), i+1)
		db := ""
		if i%2 == 0 {
			db = ", deadband: 2"
		}
		switch k := i % 20; kindOf(i) {
		case kindAbove:
			op := ">"
			if k >= 7 {
				op = ">="
			}
			fmt.Fprintf(&y, ", condition: %q, threshold: 100%s", op, db)
			if k%3 == 0 {
				y.WriteString(`, level: critical, message: "{name} at {value} {unit}, above {threshold} {unit}"`)
			}
		case kindBelow:
			op := "<"
			if k >= 11 {
				op = "<="
			}
			fmt.Fprintf(&y, ", condition: %q, threshold: 10%s, level: minor", op, db)
		case kindBands:
			fmt.Fprintf(&y, ", condition: bands, bands: {hihi: 120, hi: 100, lo: 10, lolo: {threshold: 0, level: major}}%s", db)
		case kindOnDelay:
			y.WriteString(`, condition: ">", threshold: 100, deadband: 1, on_delay: 1s`)
		case kindOffDly:
			y.WriteString(`, condition: "<", threshold: 10, off_delay: 1s, level: warning`)
		}
		y.WriteString("}\n")
	}
	return y.String(), c.String()
}

// Sides of a point as the generator drives it.
const (
	sideNormal = iota
	sideHi     // above 100 (hi band, or the > limit)
	sideHiHi   // above 120
	sideLo     // below 10 (lo band, or the < limit)
	sideLoLo   // below 0
)

// gen drives the points: values inside the normal range (20..90) and, now
// and then, a crossing into a band and back. Only the generator goroutine
// uses side and rnd.
type gen struct {
	kinds []int
	side  []int
	rnd   *rand.Rand
}

func (g *gen) alarmSide(i int) int {
	switch g.kinds[i] {
	case kindAbove, kindOnDelay:
		return sideHi
	case kindBelow, kindOffDly:
		return sideLo
	}
	return sideHi + g.rnd.IntN(4) // bands: hi hihi lo lolo
}

func (g *gen) value(s int) float64 {
	switch s {
	case sideHi:
		return 101 + 14*g.rnd.Float64()
	case sideHiHi:
		return 121 + 9*g.rnd.Float64()
	case sideLo:
		return 1 + 8*g.rnd.Float64()
	case sideLoLo:
		return -10 + 9*g.rnd.Float64()
	}
	return 20 + 70*g.rnd.Float64()
}

// next is point i's next value and whether it crosses a threshold.
func (g *gen) next(i int) (float64, bool) {
	cross := false
	if g.side[i] == sideNormal {
		if g.rnd.Float64() < pRaise {
			g.side[i], cross = g.alarmSide(i), true
		}
	} else if g.rnd.Float64() < pClear {
		g.side[i], cross = sideNormal, true
	}
	return g.value(g.side[i]), cross
}

// event is the part of an event JSON the harness reads.
type event struct {
	EventID string `json:"event_id"`
	AlarmID string `json:"alarm_id"`
	Type    string `json:"type"`
}

// scanEvent reads event_id, alarm_id and type without a full decode (they
// are plain strings: ids are [A-Za-z0-9._-]), so that the subscriber takes
// little of the CPU it measures.
func scanEvent(s string) (event, bool) {
	field := func(name string) (string, bool) {
		i := strings.Index(s, `"`+name+`":"`)
		if i < 0 {
			return "", false
		}
		rest := s[i+len(name)+4:]
		j := strings.IndexByte(rest, '"')
		if j < 0 || strings.IndexByte(rest[:j], '\\') >= 0 {
			return "", false
		}
		return rest[:j], true
	}
	id, ok1 := field("event_id")
	alarmID, ok2 := field("alarm_id")
	typ, ok3 := field("type")
	return event{EventID: id, AlarmID: alarmID, Type: typ}, ok1 && ok2 && ok3
}

func (e *event) seq() int {
	n, _ := strconv.Atoi(e.EventID[strings.LastIndexByte(e.EventID, ':')+1:])
	return n
}

// recorder takes the events received on alarm:event.
type recorder struct {
	byID       map[string]int
	kinds      []int
	mu         sync.Mutex
	crossings  [][]int64 // send time (ns) of each crossing of each rule
	t0, t1     int64     // sustained window (send times, ns)
	measuring  bool
	lat        []time.Duration
	winEvents  map[string]int // events received in the window, by type
	received   []int          // events received per rule (all time)
	mismatch   int            // type not the expected one for its seq
	unknown    int
	last       time.Time
	total      int
	flood      map[string]bool // event_ids received during a flood
	floodType  map[string]int
	firstFlood time.Time
}

func (r *recorder) take(now time.Time, payload string) {
	ev, ok := scanEvent(payload)
	if !ok && json.Unmarshal([]byte(payload), &ev) != nil {
		r.mu.Lock()
		r.unknown++
		r.mu.Unlock()
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last = now
	r.total++
	i, ok := r.byID[ev.AlarmID]
	if !ok {
		r.unknown++
		return
	}
	r.received[i]++
	if r.flood != nil {
		if len(r.flood) == 0 {
			r.firstFlood = now
		}
		r.flood[ev.EventID] = true
		r.floodType[ev.Type]++
		return
	}
	ns := now.UnixNano()
	if r.measuring && ns >= r.t0 && ns < r.t1 {
		r.winEvents[ev.Type]++
	}
	if delayed(r.kinds[i]) {
		return
	}
	n := ev.seq()
	if n < 1 || n > len(r.crossings[i]) {
		r.unknown++
		return
	}
	want := "raise"
	if n%2 == 0 {
		want = "clear"
	}
	if ev.Type != want {
		r.mismatch++
	}
	if sent := r.crossings[i][n-1]; sent >= r.t0 && sent < r.t1 {
		r.lat = append(r.lat, time.Duration(ns-sent))
	}
}

func run(nRules, rate int, duration time.Duration, flood int, redisURL, cpuProfile, floodProfile string) error {
	// Redis.
	var redisNote string
	if redisURL == "" {
		r, dir, err := benchnode.StartRedis()
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		defer r.Stop()
		redisURL, redisNote = r.URL(), "started by the harness"
	} else {
		redisNote = "given with -redis"
	}
	ro, err := redis.ParseURL(redisURL)
	if err != nil {
		return fmt.Errorf("redis url: %w", err)
	}
	ctx := context.Background()
	rdb := redis.NewClient(ro)
	defer rdb.Close()
	ids := make([]string, nRules)
	byID := make(map[string]int, nRules)
	kinds := make([]int, nRules)
	for i := range ids {
		ids[i], kinds[i] = ruleID(i), kindOf(i)
		byID[ids[i]] = i
	}
	if err := clean(ctx, rdb, ids); err != nil {
		return err
	}
	redisPID, redisVersion := redisInfo(ctx, rdb)
	if h, _, _ := strings.Cut(ro.Addr, ":"); h != "127.0.0.1" && h != "localhost" && h != "::1" {
		redisPID = 0 // not this machine's process
	}

	// Config: one virtual channel, one rule per point.
	start := time.Now()
	yml, csv := configYAML(nRules)
	cfg, err := config.Parse([]byte(yml), "/bench/node.yaml", func(string) ([]byte, error) { return []byte(csv), nil })
	if err != nil {
		return err
	}
	keys := make([]messages.PointKey, nRules)
	for i := range keys {
		keys[i] = messages.PointKey{Channel: 1, Type: messages.Measurement, Point: uint32(i + 1)}
	}

	// Subscribe before anything can raise. RESP2: the RESP3 reader of
	// go-redis v9.17 dropped a pub/sub message whose header ended a read
	// (redis/go-redis#3839), which a burst of events hits; the loss count
	// must not depend on the client's version.
	subOpt := *ro
	subOpt.Protocol = 2
	subClient := redis.NewClient(&subOpt)
	defer subClient.Close()
	rec := &recorder{byID: byID, kinds: kinds, crossings: make([][]int64, nRules), received: make([]int, nRules),
		winEvents: map[string]int{}}
	sub := subClient.Subscribe(ctx, alarm.EventChannel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		return fmt.Errorf("subscribe %s: %w", alarm.EventChannel, err)
	}
	subDone := make(chan struct{})
	go func() {
		defer close(subDone)
		for {
			m, err := sub.ReceiveMessage(ctx)
			if err != nil {
				return // closed
			}
			rec.take(time.Now(), m.Payload)
		}
	}()
	defer func() { _ = sub.Close(); <-subDone }()

	// The node's wiring of the alarms (cmd/voltage/run.go).
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return log }))
	reg := prometheus.NewRegistry()
	alarmRedis := redis.NewClient(ro)
	defer alarmRedis.Close()
	var store *alarm.Store
	metrics := alarm.NewMetrics(reg, func() float64 { return float64(store.Queued()) })
	store = alarm.NewStore(alarmRedis, alarm.StoreOptions{Node: "bench", Log: log, Metrics: metrics})
	defer store.Stop(5 * time.Second)
	dispatcher := node.NewPoolDispatcher(2*runtime.GOMAXPROCS(0), 300)
	defer dispatcher.Stop()
	stats := supervisor.NewStats(nil)
	strategy := supervisor.NewStrategy(supervisor.DefaultPolicy(), supervisor.Observers(stats, supervisor.Log(log)))
	alarmsPID := sys.NewLocalPID("voltage/alarms")
	feed := session.NewFeed(func(b *messages.PointUpdates) { sys.Root.Send(alarmsPID, b) }, 5*time.Millisecond)
	defer feed.Stop()
	var live atomic.Int64
	root, err := sys.Root.SpawnNamed(node.NewRootProps([]node.Child{
		{Name: "alarms", Props: alarm.NewProps(alarm.Options{Config: cfg, Node: "bench", Redis: alarmRedis, Store: store,
			Metrics: metrics, Live: func(evs []alarm.Event) { live.Add(int64(len(evs))) }, Log: log,
			Supervisor: strategy, Dispatcher: dispatcher})},
	}, strategy), "voltage")
	if err != nil {
		return err
	}
	defer func() { _ = sys.Root.PoisonFuture(root).Wait() }()
	reqs := alarm.Requests{Root: sys.Root, PID: alarmsPID, Timeout: time.Second}
	for {
		_, err := reqs.Ack(ctx, ids[0], "bench", "")
		if errors.Is(err, alarm.ErrNotActive) {
			break
		}
		if time.Since(start) > time.Minute {
			return fmt.Errorf("alarms not running after a minute: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	counts := map[int]int{}
	for _, k := range kinds {
		counts[k]++
	}
	fmt.Printf("machine: %s\n", benchnode.Machine())
	fmt.Printf("redis: redis-server %s on %s (%s)\n", redisVersion, ro.Addr, redisNote)
	fmt.Printf("rules: %d on %d points (%d > >=, %d < <=, %d bands hihi/hi/lo/lolo, %d on_delay 1s, %d off_delay 1s; half with a deadband): config parsed, rules spawned in %v\n",
		nRules, nRules, counts[kindAbove], counts[kindBelow], counts[kindBands], counts[kindOnDelay], counts[kindOffDly], time.Since(start).Round(time.Millisecond))

	// Sustained.
	var prof *os.File
	if cpuProfile != "" {
		if prof, err = os.Create(cpuProfile); err != nil {
			return err
		}
		defer prof.Close()
	}
	g := &gen{kinds: kinds, side: make([]int, nRules), rnd: rand.New(rand.NewPCG(1, 2))}
	order := rand.Perm(nRules)
	var (
		sent, sentWin  int64
		queueMax       int
		rssPeak        uint64
		crossWin       int64
		evals0, evals1 float64
		cpu0, rcpu0    time.Duration
		t0             time.Time
		pos            int
	)
	stopSample := make(chan struct{})
	sampled := make(chan struct{})
	var sampleOn atomic.Bool
	go func() { // store queue and RSS
		defer close(sampled)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for n := 0; ; n++ {
			select {
			case <-stopSample:
				return
			case <-t.C:
			}
			if !sampleOn.Load() {
				continue
			}
			queueMax = max(queueMax, store.Queued())
			if n%50 == 0 {
				rssPeak = max(rssPeak, benchnode.RSS())
			}
		}
	}()
	warm := 2 * time.Second
	begin := time.Now()
	end := begin.Add(warm + duration)
	for {
		now := time.Now()
		if !now.Before(end) {
			break
		}
		if t0.IsZero() && now.Sub(begin) >= warm {
			t0 = now
			rec.mu.Lock()
			rec.t0, rec.t1, rec.measuring = now.UnixNano(), end.UnixNano(), true
			rec.mu.Unlock()
			evals0 = counter(reg, "voltage_alarm_evaluations_total")
			cpu0, rcpu0 = benchnode.CPUTime(), benchnode.ProcCPU(redisPID)
			sampleOn.Store(true)
			if prof != nil {
				if err := pprof.StartCPUProfile(prof); err != nil {
					return err
				}
			}
		}
		due := int64(float64(rate) * now.Sub(begin).Seconds())
		ns, ms := now.UnixNano(), now.UnixMilli()
		for ; sent < due; sent++ {
			i := order[pos]
			if pos++; pos == nRules {
				pos = 0
			}
			v, cross := g.next(i)
			if cross {
				rec.mu.Lock()
				rec.crossings[i] = append(rec.crossings[i], ns)
				rec.mu.Unlock()
				if !t0.IsZero() {
					crossWin++
				}
			}
			feed.Publish(&messages.PointUpdate{Key: keys[i], Value: v, Timestamp: ms})
			if !t0.IsZero() {
				sentWin++
			}
		}
		time.Sleep(500 * time.Microsecond)
	}
	el := time.Since(t0)
	if prof != nil {
		pprof.StopCPUProfile()
	}
	cpu, rcpu := benchnode.CPUTime()-cpu0, benchnode.ProcCPU(redisPID)-rcpu0
	// Evaluations still queued count toward the rate only if they are done
	// within the window: read the counter now.
	evals1 = counter(reg, "voltage_alarm_evaluations_total")
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)

	// Drain: every crossing of a rule without delay has its event.
	expected := 0
	for i := range kinds {
		if !delayed(kinds[i]) {
			expected += len(rec.crossings[i])
		}
	}
	gotAll := func() (int, int) {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		n := 0
		for i, k := range kinds {
			if !delayed(k) {
				n += min(rec.received[i], len(rec.crossings[i]))
			}
		}
		return n, rec.mismatch
	}
	waitFor(10*time.Second, func() bool { n, _ := gotAll(); return n == expected })
	waitQuiet(rec, 1500*time.Millisecond, 10*time.Second) // the delayed rules' timers fire too
	close(stopSample)
	<-sampled
	rssPeak = max(rssPeak, benchnode.RSS())
	matched, mismatch := gotAll()

	rec.mu.Lock()
	rec.measuring = false
	lat := append([]time.Duration(nil), rec.lat...)
	win := map[string]int{}
	winTotal := 0
	for k, v := range rec.winEvents {
		win[k] = v
		winTotal += v
	}
	unknown := rec.unknown
	rec.mu.Unlock()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(p*float64(len(lat)-1))]
	}
	sec := el.Seconds()
	evalRate := (evals1 - evals0) / sec
	fmt.Printf("\nsustained: %v after a %v warm-up, updates through a 5 ms session.Feed\n", el.Round(time.Millisecond), warm)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  offered\t%.0f updates/s (%.2f %% cross a threshold: %.0f crossings/s)\n", float64(sentWin)/sec, 100*float64(crossWin)/float64(max(sentWin, 1)), float64(crossWin)/sec)
	fmt.Fprintf(tw, "  evaluations\t%.0f /s (voltage_alarm_evaluations_total)\n", evalRate)
	fmt.Fprintf(tw, "  events\t%.0f /s received on %s (raise %d, clear %d, change %d in the window)\n", float64(winTotal)/sec, alarm.EventChannel, win["raise"], win["clear"], win["change"])
	fmt.Fprintf(tw, "  latency\tp50 %v  p90 %v  p99 %v  max %v  (update sent -> event received on %s; %d events of rules without delay)\n",
		ms1(q(0.5)), ms1(q(0.9)), ms1(q(0.99)), ms1(q(1)), alarm.EventChannel, len(lat))
	fmt.Fprintf(tw, "  store\tqueue max %d events; voltage_alarm_event_latency_seconds mean %.1f ms (sample ts -> written; all rules, the delayed ones included)\n", queueMax, 1000*histMean(reg, "voltage_alarm_event_latency_seconds"))
	fmt.Fprintf(tw, "  CPU\tthis process %.0f %% of one core (alarms + load generator + subscriber), redis-server %.0f %%\n", 100*cpu.Seconds()/sec, 100*rcpu.Seconds()/sec)
	fmt.Fprintf(tw, "  memory\tGo heap in use %.0f MB, RSS peak %.0f MB, goroutines %d\n", mb(mem.HeapInuse), mb(rssPeak), runtime.NumGoroutine())
	fmt.Fprintf(tw, "  check\t%d of %d crossings of rules without delay gave their event, %d of the wrong type, %d unexpected events; %d events handed to Live since start\n", matched, expected, mismatch, unknown, live.Load())
	_ = tw.Flush()
	lost := expected - matched
	p99 := q(0.99)

	// Flood.
	var floodRes [2]floodResult
	if flood > 0 {
		var sel []int
		for i, k := range kinds {
			if !delayed(k) && len(sel) < flood {
				sel = append(sel, i)
			}
		}
		if len(sel) < flood {
			return fmt.Errorf("-flood %d: only %d rules without delay", flood, len(sel))
		}
		// Bring them to normal first (the active ones clear), then wait.
		normal := make([]messages.PointUpdate, len(sel))
		for j, i := range sel {
			normal[j] = messages.PointUpdate{Key: keys[i], Value: 50, Timestamp: time.Now().UnixMilli()}
		}
		sys.Root.Send(alarmsPID, &messages.PointUpdates{Updates: normal})
		waitQuiet(rec, 500*time.Millisecond, 10*time.Second)
		if floodProfile != "" {
			f, err := os.Create(floodProfile)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
		}
		fmt.Printf("\nflood: %d rules cross their threshold in one batch (one PointUpdates to voltage/alarms)\n", len(sel))
		tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  \tfirst received\tall in alarm:events\tall received on alarm:event\tdistinct event_ids (list / subscription)\tLLEN\tstore queue max\tCPU (this process / redis)\tPING max\tcheck\n")
		for phase, typ := range []string{"raise", "clear"} {
			ups := make([]messages.PointUpdate, len(sel))
			for j, i := range sel {
				v := 50.0
				if typ == "raise" {
					v = g.value(g.alarmSide(i))
				}
				ups[j] = messages.PointUpdate{Key: keys[i], Value: v}
			}
			res, err := floodOnce(ctx, rdb, redisPID, rec, store, func() {
				ms := time.Now().UnixMilli()
				for j := range ups {
					ups[j].Timestamp = ms
				}
				sys.Root.Send(alarmsPID, &messages.PointUpdates{Updates: ups})
			}, len(sel), typ)
			if err != nil {
				return err
			}
			floodRes[phase] = res
			check := "none lost"
			if !res.ok() {
				check = "LOST OR WRONG"
			}
			fmt.Fprintf(tw, "  %s\t%v\t%v\t%v\t%d / %d %s\t%d\t%d\t%v / %v\t%v\t%s\n", typ, ms1(res.first), ms1(res.listed), ms1(res.received),
				res.distinctList, res.distinctSub, typ, res.llen, res.queueMax, res.cpu.Round(10*time.Millisecond), res.redisCPU.Round(10*time.Millisecond), ms1(res.stall), check)
			if len(res.missing) > 0 {
				fmt.Fprintf(tw, "  \tnot received: %s\n", strings.Join(res.missing, " "))
			}
		}
		_ = tw.Flush()
		if floodProfile != "" {
			pprof.StopCPUProfile()
		}
	}

	// Summary.
	verdict := "met"
	if p99 >= 50*time.Millisecond || evalRate < 0.98*float64(sentWin)/sec {
		verdict = "MISSED"
	}
	floodSum := "no flood"
	floodOK := true
	if flood > 0 {
		floodOK = floodRes[0].ok() && floodRes[1].ok()
		state := "none lost"
		if !floodOK {
			state = "EVENTS LOST"
		}
		floodSum = fmt.Sprintf("flood %d raise in %v / clear in %v (all received), %s", flood,
			ms1(max(floodRes[0].listed, floodRes[0].received)), ms1(max(floodRes[1].listed, floodRes[1].received)), state)
	}
	fmt.Printf("\nsummary: %d rules, %.0f updates/s offered, %.0f evaluations/s, %.0f events/s, latency p50 %v p99 %v (target p99 < 50 ms: %s), %d sustained events lost, %s; CPU %.0f %%, RSS %.0f MB\n",
		nRules, float64(sentWin)/sec, evalRate, float64(winTotal)/sec, ms1(q(0.5)), ms1(p99), verdict, lost, floodSum,
		100*cpu.Seconds()/sec, mb(rssPeak))
	if lost > 0 || mismatch > 0 || !floodOK {
		return errors.New("events lost or wrong: see above")
	}
	return nil
}

type floodResult struct {
	want                      int
	listed, received          time.Duration
	distinctList, distinctSub int
	typeList, typeSub         int // events of the expected type
	llen                      int64
	queueMax                  int
	first                     time.Duration // first event received
	stall                     time.Duration // longest PING round trip of another client meanwhile
	cpu, redisCPU             time.Duration // of this process and of redis-server, until all are in
	missing                   []string      // in the list, not received (a few)
}

func (f floodResult) ok() bool {
	return f.distinctList == f.want && f.distinctSub == f.want && f.typeList == f.want && f.typeSub == f.want && f.llen == int64(f.want)
}

// floodOnce empties alarm:events, sends the batch and waits until want
// events are in the list and on the subscription.
func floodOnce(ctx context.Context, rdb *redis.Client, redisPID int, rec *recorder, store *alarm.Store, send func(), want int, typ string) (floodResult, error) {
	res := floodResult{want: want}
	if err := rdb.Del(ctx, alarm.EventsList).Err(); err != nil {
		return res, err
	}
	rec.mu.Lock()
	rec.flood, rec.floodType = map[string]bool{}, map[string]int{}
	rec.mu.Unlock()
	defer func() {
		rec.mu.Lock()
		rec.flood, rec.floodType = nil, nil
		rec.mu.Unlock()
	}()
	// Another client pings all along: how long Redis keeps everyone else
	// waiting while it runs the Store's transactions.
	probe := redis.NewClient(rdb.Options())
	defer probe.Close()
	if err := probe.Ping(ctx).Err(); err != nil {
		return res, err
	}
	probeStop, probeDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(probeDone)
		for {
			select {
			case <-probeStop:
				return
			default:
			}
			t := time.Now()
			_ = probe.Ping(ctx).Err()
			res.stall = max(res.stall, time.Since(t))
			time.Sleep(time.Millisecond)
		}
	}()
	cpu0, rcpu0 := benchnode.CPUTime(), benchnode.ProcCPU(redisPID)
	t0 := time.Now()
	send()
	deadline := t0.Add(60 * time.Second)
	for time.Now().Before(deadline) && (res.listed == 0 || res.received == 0) {
		if res.listed > 0 && time.Since(t0) > res.listed+5*time.Second {
			break // some are not coming
		}
		res.queueMax = max(res.queueMax, store.Queued())
		if res.listed == 0 {
			n, err := rdb.LLen(ctx, alarm.EventsList).Result()
			if err != nil {
				return res, err
			}
			if n >= int64(want) {
				res.listed = time.Since(t0)
			}
		}
		if res.received == 0 {
			rec.mu.Lock()
			if res.first == 0 && len(rec.flood) > 0 {
				res.first = rec.firstFlood.Sub(t0)
			}
			if len(rec.flood) >= want {
				res.received = rec.last.Sub(t0)
			}
			rec.mu.Unlock()
		}
		time.Sleep(500 * time.Microsecond)
	}
	res.cpu, res.redisCPU = benchnode.CPUTime()-cpu0, benchnode.ProcCPU(redisPID)-rcpu0
	close(probeStop)
	<-probeDone
	waitQuiet(rec, 300*time.Millisecond, 5*time.Second) // anything extra would show
	var err error
	if res.llen, err = rdb.LLen(ctx, alarm.EventsList).Result(); err != nil {
		return res, err
	}
	items, err := rdb.LRange(ctx, alarm.EventsList, 0, -1).Result()
	if err != nil {
		return res, err
	}
	seen := map[string]bool{}
	for _, it := range items {
		var ev event
		if json.Unmarshal([]byte(it), &ev) == nil {
			seen[ev.EventID] = true
			if ev.Type == typ {
				res.typeList++
			}
		}
	}
	res.distinctList = len(seen)
	rec.mu.Lock()
	res.distinctSub, res.typeSub = len(rec.flood), rec.floodType[typ]
	for id := range seen {
		if !rec.flood[id] && len(res.missing) < 5 {
			res.missing = append(res.missing, id)
		}
	}
	if res.received == 0 && !rec.last.Before(t0) {
		res.received = rec.last.Sub(t0) // the last one, not all
	}
	rec.mu.Unlock()
	return res, nil
}

// clean deletes what an earlier run left in Redis.
func clean(ctx context.Context, c *redis.Client, ids []string) error {
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, alarm.EventsList, alarm.ActiveIndex, "alarm:store:bench")
		for _, id := range ids {
			p.Del(ctx, alarm.Key(id))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("redis: clean alarm keys: %w", err)
	}
	return nil
}

// redisInfo is the server's pid (for its CPU time, 0 if not local) and version.
func redisInfo(ctx context.Context, c *redis.Client) (int, string) {
	info, _ := c.Info(ctx, "server").Result()
	pid, version := 0, "?"
	for _, l := range strings.Split(info, "\n") {
		l = strings.TrimSpace(l)
		if v, ok := strings.CutPrefix(l, "process_id:"); ok {
			pid, _ = strconv.Atoi(v)
		}
		if v, ok := strings.CutPrefix(l, "redis_version:"); ok {
			version = v
		}
	}
	return pid, version
}

// counter sums the values of a counter family.
func counter(g prometheus.Gatherer, name string) float64 {
	mfs, _ := g.Gather()
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// histMean is the mean of a histogram (0 if empty).
func histMean(g prometheus.Gatherer, name string) float64 {
	mfs, _ := g.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				if h := m.GetHistogram(); h.GetSampleCount() > 0 {
					return h.GetSampleSum() / float64(h.GetSampleCount())
				}
			}
		}
	}
	return 0
}

// waitQuiet waits until no event has been received for quiet, counted
// from its call at the earliest (at most limit).
func waitQuiet(rec *recorder, quiet, limit time.Duration) {
	start := time.Now()
	deadline := start.Add(limit)
	for time.Now().Before(deadline) {
		rec.mu.Lock()
		last := rec.last
		rec.mu.Unlock()
		if last.Before(start) {
			last = start
		}
		if time.Since(last) >= quiet {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitFor(limit time.Duration, cond func() bool) {
	deadline := time.Now().Add(limit)
	for !cond() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

func ms1(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + " ms"
}

func mb(b uint64) float64 { return float64(b) / (1 << 20) }
