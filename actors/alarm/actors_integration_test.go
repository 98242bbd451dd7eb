package alarm

// Integration tests of the alarm actors: a real redis-server (test/testenv),
// a real actor system with the Manager and its rule actors, a real Store and,
// for webhooks, a real notify.Notifier and HTTP server. Nothing is mocked;
// every wait is for a condition (testenv.Eventually or a Redis subscription).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/actors/alarm/notify"
	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/supervisor"
	"github.com/voltage-ems/voltage/test/testenv"
)

// fastPolicy retries (Redis writes, restarts) after 20ms doubling to 100ms.
var fastPolicy = supervisor.Policy{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond}

// itConfig parses alarmsYAML (the items of `alarms:`) with a virtual
// channel 1 whose points 1..points are named pN, unit V.
func itConfig(t testing.TB, points int, alarmsYAML string) *config.Config {
	t.Helper()
	var csv strings.Builder
	csv.WriteString("point_id,type,name,unit,signal,min,max,period\n")
	for p := 1; p <= points; p++ {
		fmt.Fprintf(&csv, "%d,m,p%d,V,sine,0,1,60s\n", p, p)
	}
	yaml := "node: {name: it}\nchannels:\n  - {id: 1, name: field, protocol: virtual, points: v.csv}\nalarms:\n" + alarmsYAML
	cfg, err := config.Parse([]byte(yaml), "/cfg/node.yaml", func(name string) ([]byte, error) {
		if strings.HasSuffix(name, "/v.csv") {
			return []byte(csv.String()), nil
		}
		return nil, fmt.Errorf("no file %s", name)
	})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// itLog returns a logger whose output is shown only if the test fails. Call
// it first: its cleanup then runs last, after everything has stopped.
func itLog(t *testing.T) *slog.Logger {
	buf := &testenv.LogBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// itClient is a client that fails fast while Redis is down (the Store
// retries on its own). It is closed after the nodes started later stop.
func itClient(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// liveRec is an Options.Live that keeps every frame. With hold set, it
// takes no frame before hold is closed (a slow WebSocket hub).
type liveRec struct {
	hold   chan struct{}
	mu     sync.Mutex
	evs    []Event
	frames []int
}

func (l *liveRec) add(evs []Event) {
	if l.hold != nil {
		<-l.hold
	}
	l.mu.Lock()
	l.evs = append(l.evs, evs...)
	l.frames = append(l.frames, len(evs))
	l.mu.Unlock()
}

func (l *liveRec) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.evs)
}

func (l *liveRec) events() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.evs)
}

func (l *liveRec) frameSizes() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.frames)
}

// itNode is one running alarms actor with its Store.
type itNode struct {
	t       *testing.T
	sys     *actor.ActorSystem
	pid     *actor.PID
	store   *Store
	metrics *Metrics
	live    *liveRec
	req     Requests
	once    sync.Once
}

type itOptions struct {
	holdLive   chan struct{}
	notifier   Notifier
	mw         []actor.ReceiverMiddleware
	supervisor actor.SupervisorStrategy
	check      time.Duration // the Store's marker check interval
}

func startNode(t *testing.T, cfg *config.Config, rdb redis.UniversalClient, log *slog.Logger, o itOptions) *itNode {
	t.Helper()
	n := &itNode{t: t, live: &liveRec{hold: o.holdLive}}
	n.metrics = NewMetrics(prometheus.NewRegistry(), func() float64 { return float64(n.store.Queued()) })
	n.store = NewStore(rdb, StoreOptions{Log: log, Metrics: n.metrics, Policy: fastPolicy, CheckInterval: o.check})
	n.sys = actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return log }))
	sup := o.supervisor
	if sup == nil {
		sup = supervisor.NewStrategy(fastPolicy, nil)
	}
	var err error
	n.pid, err = n.sys.Root.SpawnNamed(NewProps(Options{Config: cfg, Node: "it", Redis: rdb, Store: n.store,
		Notifier: o.notifier, Live: n.live.add, Log: log, Metrics: n.metrics, Supervisor: sup,
		RuleMiddleware: o.mw}), "alarms")
	if err != nil {
		t.Fatal(err)
	}
	n.req = Requests{Root: n.sys.Root, PID: n.pid, Timeout: 5 * time.Second}
	t.Cleanup(n.stop)
	return n
}

// stop stops the actors (rule actors first), then the Store after writing
// what it holds, as `voltage run` does. Idempotent.
func (n *itNode) stop() {
	n.once.Do(func() {
		if err := n.sys.Root.PoisonFuture(n.pid).Wait(); err != nil {
			n.t.Errorf("stop alarms actor: %v", err)
		}
		n.store.Stop(2 * time.Second)
		n.sys.Shutdown()
	})
}

func (n *itNode) send(ups ...messages.PointUpdate) {
	n.sys.Root.Send(n.pid, &messages.PointUpdates{Updates: ups})
}

// state reads rule id's in-memory state through an Unshelve that is
// refused (the rule is not shelved): it goes through the manager and the
// rule's mailbox after everything sent before it.
func (n *itNode) state(id string) (State, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := n.req.Unshelve(ctx, id, "probe")
	if errors.Is(err, ErrNotShelved) {
		err = nil
	}
	return st, err
}

// waitReady waits until the manager has loaded the states and spawned the
// rule actors.
func (n *itNode) waitReady(id string) {
	n.t.Helper()
	var err error
	testenv.Eventually(n.t, 5*time.Second, func() bool { _, err = n.state(id); return err == nil },
		"alarms ready (last answer %v)", lazy(func() any { return err }))
}

func (n *itNode) ack(id, user, comment string) (State, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.req.Ack(ctx, id, user, comment)
}

func (n *itNode) waitLive(want int) {
	n.t.Helper()
	testenv.Eventually(n.t, 5*time.Second, func() bool { return n.live.len() >= want },
		"%d live events (have %v)", want, lazy(func() any { return n.live.len() }))
	if got := n.live.len(); got != want {
		n.t.Fatalf("%d live events, want %d: %s", got, want, eventIDs(n.live.events()))
	}
}

// lazy is an argument of a failure message computed when it is printed.
type lazy func() any

func (f lazy) String() string { return fmt.Sprint(f()) }

func upd(point uint32, v float64) messages.PointUpdate {
	return messages.PointUpdate{Key: messages.PointKey{Channel: 1, Type: messages.PointType('m'), Point: point},
		Value: v, Quality: messages.Good, Timestamp: time.Now().UnixMilli()}
}

// subRec collects the messages of alarm:event.
type subRec struct {
	mu   sync.Mutex
	msgs []string
}

func (s *subRec) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

func (s *subRec) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

// subscribe listens on alarm:event; the subscription is active when it
// returns. (go-redis before v9.20.1 dropped a RESP3 pub/sub message now and
// then, redis/go-redis#3839, which the flood test caught; go.mod has the fix.)
func subscribe(t *testing.T, addr string) *subRec {
	t.Helper()
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	ps := c.Subscribe(ctx, EventChannel)
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	s := &subRec{}
	ch := ps.Channel(redis.WithChannelSize(20000))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range ch {
			s.mu.Lock()
			s.msgs = append(s.msgs, m.Payload)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { _ = ps.Close(); <-done })
	return s
}

func llen(c *redis.Client) int64 { return c.LLen(context.Background(), EventsList).Val() }

// llenOf is llen(c) for a failure message.
func llenOf(c *redis.Client) lazy { return func() any { return llen(c) } }

// redisEvents returns alarm:events, newest first, raw and decoded.
func redisEvents(t *testing.T, c *redis.Client) ([]string, []Event) {
	t.Helper()
	raw, err := c.LRange(context.Background(), EventsList, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	evs := make([]Event, len(raw))
	for i, s := range raw {
		if err := json.Unmarshal([]byte(s), &evs[i]); err != nil {
			t.Fatalf("alarm:events[%d] %q: %v", i, s, err)
		}
	}
	return raw, evs
}

func reversed[S ~[]E, E any](s S) S {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}

func eventIDs(evs []Event) string {
	s := make([]string, len(evs))
	for i, e := range evs {
		s[i] = e.EventID + "/" + e.Type
	}
	return strings.Join(s, " ")
}

// byRule splits events (in their order) by alarm id.
func byRule(evs []Event) map[string][]Event {
	out := map[string][]Event{}
	for _, e := range evs {
		out[e.AlarmID] = append(out[e.AlarmID], e)
	}
	return out
}

func jsonOf(t *testing.T, e Event) string {
	t.Helper()
	b, err := json.Marshal(&e)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func hash(t *testing.T, c *redis.Client, id string) map[string]string {
	t.Helper()
	h, err := c.HGetAll(context.Background(), Key(id)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func activeIndex(t *testing.T, c *redis.Client) []string {
	t.Helper()
	m, err := c.SMembers(context.Background(), ActiveIndex).Result()
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(m)
	return m
}

// gathered sums the series of metric name in g whose labels include the
// given name/value pairs.
func gathered(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

const lifecycleRules = `
  - {id: over, point: "1:m:1", condition: ">", threshold: 250, deadband: 2, level: major,
     message: "{name} {value} {unit} above {threshold} {unit}"}
  - {id: under, point: "1:m:2", condition: "<", threshold: 10, level: minor}
  - id: volt
    point: "1:m:3"
    condition: bands
    bands: {hihi: {threshold: 260, level: critical}, hi: 250, lo: 210, lolo: 200}
    deadband: 1
  - {id: quiet, point: "1:m:4", condition: "==", threshold: 1}
`

// TestLifecycleThroughRedis follows raise, change, ack and clear of three
// rules through the actors into Redis: the hashes, the active index, the
// event list, the PUBLISHed events and the live frames agree, and the
// operator errors are the documented ones.
func TestLifecycleThroughRedis(t *testing.T) {
	log := itLog(t)
	r := testenv.StartRedis(t)
	c := itClient(t, r.Addr())
	sub := subscribe(t, r.Addr())
	n := startNode(t, itConfig(t, 4, lifecycleRules), c, log, itOptions{})
	n.waitReady("over")

	// Raise over and under; volt stays normal.
	n.send(upd(1, 251), upd(2, 5), upd(3, 230))
	testenv.Eventually(t, 5*time.Second, func() bool { return llen(c) == 2 && sub.len() == 2 },
		"2 events in alarm:events (%v) and published (%v)", llenOf(c), lazy(func() any { return sub.len() }))
	n.waitLive(2)
	live := byRule(n.live.events())
	raise := live["over"][0]
	if raise.EventID != "over:1" || raise.Type != EvRaise || raise.State != ActiveUnacked || raise.PrevState != Normal ||
		raise.Level != "major" || raise.Band != "limit" || raise.Value != 251 || raise.Threshold != 250 ||
		raise.Message != "p1 251 V above 250 V" || raise.Point != "1:m:1" || raise.Node != "it" || raise.Since != raise.TS {
		t.Fatalf("raise event %+v", raise)
	}
	if e := live["under"][0]; e.EventID != "under:1" || e.Type != EvRaise || e.Level != "minor" || e.Value != 5 {
		t.Fatalf("under's raise event %+v", e)
	}
	h := hash(t, c, "over")
	for _, k := range strings.Fields("state level band value since message acked_by acked_at shelved_until shelved_by shelve_reason seq updated escalations") {
		if _, ok := h[k]; !ok {
			t.Fatalf("alarm:over has no field %q: %v", k, h)
		}
	}
	ts := strconv.FormatInt(raise.TS, 10)
	want := map[string]string{"state": ActiveUnacked, "level": "major", "band": "limit", "value": "251",
		"threshold": "250", "since": ts, "updated": ts, "message": "p1 251 V above 250 V", "acked_by": "",
		"acked_at": "0", "seq": "1", "escalations": "0", "shelved_until": "0"}
	for k, v := range want {
		if h[k] != v {
			t.Fatalf("alarm:over %s = %q, want %q (hash %v)", k, h[k], v, h)
		}
	}
	if got := activeIndex(t, c); !slices.Equal(got, []string{"over", "under"}) {
		t.Fatalf("idx:alarm:active %v", got)
	}
	// Every rule has its hash, a rule never raised in state normal (so
	// that a missing hash means a Redis that lost the states).
	for _, id := range []string{"volt", "quiet"} {
		if h := hash(t, c, id); h["state"] != Normal || h["seq"] != "0" {
			t.Fatalf("alarm:%s of a rule never raised: %v", id, h)
		}
	}
	// The documented event fields are all there.
	var doc map[string]any
	if err := json.Unmarshal([]byte(sub.all()[0]), &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range strings.Fields("event_id alarm_id type state prev_state level band point value threshold message user reason shelved shelved_until since ts node") {
		if _, ok := doc[k]; !ok {
			t.Fatalf("event JSON has no %q: %s", k, sub.all()[0])
		}
	}

	// volt: hihi, then back to hi (a change, still active, same since).
	n.send(upd(3, 262))
	n.send(upd(3, 255))
	testenv.Eventually(t, 5*time.Second, func() bool { return llen(c) == 4 }, "volt's raise and change (%v events)", llenOf(c))
	h = hash(t, c, "volt")
	if h["state"] != ActiveUnacked || h["band"] != "hi" || h["level"] != "major" || h["threshold"] != "250" ||
		h["value"] != "255" || h["seq"] != "2" {
		t.Fatalf("alarm:volt after the change %v", h)
	}

	// Acknowledge, and the 409/404-class errors.
	st, err := n.ack("over", "alice", "seen")
	if err != nil || st.State != ActiveAcked || st.AckedBy != "alice" || st.AckedAt == 0 || st.Seq != 2 {
		t.Fatalf("ack over: %+v, %v", st, err)
	}
	if st2, err := n.ack("over", "bob", ""); !errors.Is(err, ErrAlreadyAcked) || st2.AckedBy != "alice" {
		t.Fatalf("second ack: %+v, %v; want ErrAlreadyAcked", st2, err)
	}
	if _, err := n.ack("quiet", "bob", ""); !errors.Is(err, ErrNotActive) {
		t.Fatalf("ack of a normal alarm: %v; want ErrNotActive", err)
	}
	if _, err := n.ack("nope", "bob", ""); !errors.Is(err, ErrUnknown) {
		t.Fatalf("ack of an unknown alarm: %v; want ErrUnknown", err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return llen(c) == 5 }, "the ack event (%v events)", llenOf(c))
	h = hash(t, c, "over")
	if h["state"] != ActiveAcked || h["acked_by"] != "alice" || h["acked_at"] != strconv.FormatInt(st.AckedAt, 10) || h["since"] != ts {
		t.Fatalf("alarm:over after the ack %v", h)
	}

	// 249 is inside the deadband: no event. 247.9 clears the acked alarm
	// to normal; under clears unacknowledged and stays listed until acked.
	n.send(upd(1, 249))
	n.send(upd(1, 247.9), upd(2, 11))
	testenv.Eventually(t, 5*time.Second, func() bool { return llen(c) == 7 }, "the clears (%v events)", llenOf(c))
	if got := activeIndex(t, c); !slices.Equal(got, []string{"under", "volt"}) {
		t.Fatalf("idx:alarm:active after the clears %v", got)
	}
	if h := hash(t, c, "under"); h["state"] != ClearedUnacked || h["seq"] != "2" {
		t.Fatalf("alarm:under after its clear %v", h)
	}
	if st, err := n.ack("under", "bob", ""); err != nil || st.State != Normal {
		t.Fatalf("ack of cleared-unacked: %+v, %v", st, err)
	}
	if _, err := n.ack("under", "bob", ""); !errors.Is(err, ErrNotActive) {
		t.Fatalf("ack of an alarm back to normal: %v; want ErrNotActive", err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return llen(c) == 8 && sub.len() == 8 }, "8 events (%v, %v published)", llenOf(c), lazy(func() any { return sub.len() }))
	if got := activeIndex(t, c); !slices.Equal(got, []string{"volt"}) {
		t.Fatalf("idx:alarm:active at the end %v", got)
	}
	if h := hash(t, c, "over"); h["state"] != Normal || h["band"] != "" || h["seq"] != "3" {
		t.Fatalf("alarm:over at the end %v", h)
	}

	// alarm:events is newest first and holds exactly what was published,
	// in the same order.
	raw, evs := redisEvents(t, c)
	if got, want := reversed(raw), sub.all(); !slices.Equal(got, want) {
		t.Fatalf("alarm:events (oldest first) and the published events differ:\n%q\n%q", got, want)
	}
	wantSeq := map[string]string{
		"over":  "over:1/raise over:2/ack over:3/clear",
		"under": "under:1/raise under:2/clear under:3/ack",
		"volt":  "volt:1/raise volt:2/change",
	}
	n.waitLive(8)
	stored := byRule(reversed(evs))
	live = byRule(n.live.events())
	for id, w := range wantSeq {
		if got := eventIDs(stored[id]); got != w {
			t.Fatalf("%s in alarm:events: %s, want %s", id, got, w)
		}
		if got := eventIDs(live[id]); got != w {
			t.Fatalf("%s live: %s, want %s", id, got, w)
		}
		for i := range stored[id] {
			if a, b := jsonOf(t, stored[id][i]), jsonOf(t, live[id][i]); a != b {
				t.Fatalf("live and stored event differ:\n%s\n%s", b, a)
			}
		}
	}
	if e := stored["over"][1]; e.User != "alice" || e.Reason != "seen" || e.PrevState != ActiveUnacked || e.State != ActiveAcked {
		t.Fatalf("ack event %+v", e)
	}
	if e := stored["over"][2]; e.State != Normal || e.PrevState != ActiveAcked || e.Band != "" || e.Since != raise.TS {
		t.Fatalf("clear event %+v", e)
	}
	if e := stored["volt"]; e[0].Band != "hihi" || e[0].Level != "critical" || e[1].Band != "hi" || e[1].Level != "major" ||
		e[1].PrevState != ActiveUnacked || e[1].Since != e[0].Since {
		t.Fatalf("volt events %+v", e)
	}

	// Metrics: 8 evaluations (over 3, under 2, volt 3), events by type, all written.
	m := n.metrics
	for typ, want := range map[string]float64{EvRaise: 3, EvChange: 1, EvAck: 2, EvClear: 2} {
		if got := testutil.ToFloat64(m.events.WithLabelValues(typ)); got != want {
			t.Fatalf("events_total{type=%s} = %v, want %v", typ, got, want)
		}
	}
	if got := testutil.ToFloat64(m.evaluations); got != 8 {
		t.Fatalf("evaluations_total = %v, want 8", got)
	}
	testenv.Eventually(t, 2*time.Second, func() bool { return testutil.ToFloat64(m.written) == 8 }, "written_total 8")
}

const restartRules = `
  - {id: over, point: "1:m:1", condition: ">", threshold: 250, deadband: 2}
`

// TestStateSurvivesRestart stops the node after a raise and starts a new one
// on the same Redis: the alarm is still active and unacknowledged with its
// since, a value still in alarm does not raise it again, and the event
// sequence goes on where it was.
func TestStateSurvivesRestart(t *testing.T) {
	log := itLog(t)
	r := testenv.StartRedis(t)
	c := itClient(t, r.Addr())
	cfg := itConfig(t, 1, restartRules)

	a := startNode(t, cfg, c, log, itOptions{})
	a.waitReady("over")
	a.send(upd(1, 251))
	testenv.Eventually(t, 5*time.Second, func() bool { return hash(t, c, "over")["state"] == ActiveUnacked && llen(c) == 1 },
		"raise written")
	since := hash(t, c, "over")["since"]
	a.stop()

	b := startNode(t, cfg, c, log, itOptions{})
	b.send(upd(1, 252)) // still in alarm; may arrive before the states are loaded
	b.waitReady("over")
	st, err := b.state("over")
	if err != nil || st.State != ActiveUnacked || strconv.FormatInt(st.Since, 10) != since || st.Seq != 1 || st.Value != 251 {
		t.Fatalf("restored state %+v, %v; want active-unacked since %s seq 1", st, err, since)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return testutil.ToFloat64(b.metrics.evaluations) == 1 }, "252 evaluated")
	if h := hash(t, c, "over"); h["state"] != ActiveUnacked || h["since"] != since || h["seq"] != "1" {
		t.Fatalf("alarm:over after the restart %v", h)
	}
	// The clear is the next event of the rule: had 252 raised again, it
	// would be over:3.
	b.send(upd(1, 240))
	testenv.Eventually(t, 5*time.Second, func() bool { return llen(c) == 2 }, "the clear written (%v events)", llenOf(c))
	_, evs := redisEvents(t, c)
	if got := eventIDs(evs); got != "over:2/clear over:1/raise" {
		t.Fatalf("alarm:events %s", got)
	}
	if e := evs[0]; e.PrevState != ActiveUnacked || e.State != ClearedUnacked || strconv.FormatInt(e.Since, 10) != since {
		t.Fatalf("clear after the restart %+v", e)
	}
	b.waitLive(1)
	if got := eventIDs(b.live.events()); got != "over:2/clear" {
		t.Fatalf("live events of the new node: %s", got)
	}
	if h := hash(t, c, "over"); h["state"] != ClearedUnacked || h["seq"] != "2" || h["since"] != since {
		t.Fatalf("alarm:over after the clear %v", h)
	}
}

const panicRules = `
  - {id: over, point: "1:m:1", condition: ">", threshold: 250, deadband: 2}
  - {id: under, point: "1:m:2", condition: "<", threshold: 10}
`

// gate holds a supervisor strategy's decisions until it is opened: while it
// is closed, a failed actor provably stays suspended.
type gate struct {
	inner actor.SupervisorStrategy
	held  atomic.Int64
	open  chan struct{}
	once  sync.Once
}

func (g *gate) HandleFailure(sys *actor.ActorSystem, sup actor.Supervisor, child *actor.PID,
	rs *actor.RestartStatistics, reason, msg interface{}) {
	g.held.Add(1)
	go func() { // the strategy itself restarts from a timer goroutine too
		<-g.open
		g.inner.HandleFailure(sys, sup, child, rs, reason, msg)
	}()
}

func (g *gate) release() { g.once.Do(func() { close(g.open) }) }

// TestPanickingRuleRestartsAlone: a rule actor panics on one input. While
// it waits for its restart, the other rule goes on evaluating and writing
// events; the restarted actor keeps its state (still active: the next
// input clears it as the next event of its sequence).
func TestPanickingRuleRestartsAlone(t *testing.T) {
	log := itLog(t)
	r := testenv.StartRedis(t)
	c := itClient(t, r.Addr())
	var panics atomic.Int64
	mw := func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
			if in, ok := env.Message.(*input); ok && in.v == 666 && strings.HasSuffix(ctx.Self().Id, "/over") {
				panics.Add(1)
				panic("injected fault")
			}
			next(ctx, env)
		}
	}
	stats := supervisor.NewStats(nil)
	g := &gate{inner: supervisor.NewStrategy(fastPolicy, stats), open: make(chan struct{})}
	t.Cleanup(g.release)
	n := startNode(t, itConfig(t, 2, panicRules), c, log, itOptions{mw: []actor.ReceiverMiddleware{mw}, supervisor: g})
	n.waitReady("over")

	n.send(upd(1, 251))
	n.waitLive(1)
	n.send(upd(1, 666), upd(2, 5)) // over panics, under raises
	testenv.Eventually(t, 5*time.Second, func() bool { return g.held.Load() == 1 }, "the panic reported to the supervisor")
	n.send(upd(1, 247))           // waits in over's suspended mailbox
	n.send(upd(2, 20), upd(2, 5)) // under clears and raises again meanwhile
	n.waitLive(4)
	testenv.Eventually(t, 5*time.Second, func() bool { return llen(c) == 4 }, "under's events written (%v)", llenOf(c))
	if got := eventIDs(n.live.events()); got != "over:1/raise under:1/raise under:2/clear under:3/raise" {
		t.Fatalf("live events while over is suspended: %s", got)
	}

	g.release()
	n.waitLive(5)
	if e := n.live.events()[4]; e.EventID != "over:2" || e.Type != EvClear || e.PrevState != ActiveUnacked || e.Value != 247 {
		t.Fatalf("first event after the restart %+v; want the clear of the still active alarm", e)
	}
	st, err := n.state("over")
	if err != nil || st.State != ClearedUnacked || st.Seq != 2 {
		t.Fatalf("state after the restart %+v, %v", st, err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return llen(c) == 5 }, "5 events written (%v)", llenOf(c))
	if h := hash(t, c, "over"); h["state"] != ClearedUnacked || h["seq"] != "2" {
		t.Fatalf("alarm:over %v", h)
	}
	if h := hash(t, c, "under"); h["state"] != ActiveUnacked || h["seq"] != "3" {
		t.Fatalf("alarm:under %v", h)
	}
	overPID, underPID := n.pid.Id+"/over", n.pid.Id+"/under"
	if stats.Total() != 1 || stats.For(overPID) != 1 || stats.For(underPID) != 0 || panics.Load() != 1 {
		t.Fatalf("restarts: total %d, over %d, under %d; panics %d", stats.Total(), stats.For(overPID), stats.For(underPID), panics.Load())
	}
	// 251, 247 for over (666 never reached it), 5, 20, 5 for under.
	if got := testutil.ToFloat64(n.metrics.evaluations); got != 5 {
		t.Fatalf("evaluations %v, want 5", got)
	}
}

// TestRedisOutage: Redis dies while alarms keep changing. Evaluation goes
// on (live events), the Store keeps every event, and once Redis is back
// (empty: nothing is saved) every event of the outage is in alarm:events,
// in order without a gap in any rule's sequence, and the states are current.
func TestRedisOutage(t *testing.T) {
	log := itLog(t)
	r := testenv.StartRedis(t)
	c := itClient(t, r.Addr())
	n := startNode(t, itConfig(t, 2, panicRules), c, log, itOptions{})
	n.waitReady("over")
	n.send(upd(1, 251), upd(2, 5))
	testenv.Eventually(t, 5*time.Second, func() bool { return llen(c) == 2 }, "raises written")
	n.waitLive(2)

	r.Stop()
	// 20 transitions while Redis is down: over and under clear and raise
	// again, 10 each.
	for i := range 10 {
		if i%2 == 0 {
			n.send(upd(1, 240), upd(2, 20))
		} else {
			n.send(upd(1, 251), upd(2, 5))
		}
		n.waitLive(2 + 2*(i+1))
		if i == 0 {
			testenv.Eventually(t, 5*time.Second, func() bool { return testutil.ToFloat64(n.metrics.storeFailures) > 0 },
				"a failed write while redis is down")
		}
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return n.store.Queued() == 20 }, "20 events queued (%v)", lazy(func() any { return n.store.Queued() }))
	if w := testutil.ToFloat64(n.metrics.written); w != 2 {
		t.Fatalf("written_total %v during the outage, want 2", w)
	}

	r.Restart()
	testenv.Eventually(t, 5*time.Second, func() bool { return llen(c) == 20 && n.store.Queued() == 0 },
		"the 20 events of the outage written after the restart (%v)", llenOf(c))
	_, evs := redisEvents(t, c)
	stored := byRule(reversed(evs))
	live := byRule(n.live.events())
	for _, id := range []string{"over", "under"} {
		got := stored[id]
		if len(got) != 10 {
			t.Fatalf("%s: %d events in alarm:events, want 10: %s", id, len(got), eventIDs(got))
		}
		for i, e := range got {
			if want := id + ":" + strconv.Itoa(i+2); e.EventID != want {
				t.Fatalf("%s: events out of order or with a gap: %s", id, eventIDs(got))
			}
			if a, b := jsonOf(t, e), jsonOf(t, live[id][i+1]); a != b {
				t.Fatalf("stored event differs from the live one:\n%s\n%s", a, b)
			}
		}
		last := got[len(got)-1]
		h := hash(t, c, id)
		if h["state"] != last.State || h["seq"] != "11" || h["since"] != strconv.FormatInt(last.Since, 10) {
			t.Fatalf("alarm:%s %v; want the state of %+v", id, h, last)
		}
	}
	if got := activeIndex(t, c); !slices.Equal(got, []string{"over", "under"}) { // both raised last
		t.Fatalf("idx:alarm:active %v", got)
	}
	// And the store goes on as usual.
	n.send(upd(1, 240))
	testenv.Eventually(t, 5*time.Second, func() bool { return llen(c) == 21 }, "event after recovery")
	if _, evs := redisEvents(t, c); evs[0].EventID != "over:12" || evs[0].Type != EvClear {
		t.Fatalf("newest event %+v", evs[0])
	}
}

// TestFloodOfRaises: 5000 rules raise in one batch; every event reaches
// alarm:events and the subscribers exactly once, and the live sessions in
// frames of at most 500, also when the hub was too slow to take them as
// they came.
func TestFloodOfRaises(t *testing.T) {
	const rules = 5000
	log := itLog(t)
	r := testenv.StartRedis(t)
	c := itClient(t, r.Addr())
	sub := subscribe(t, r.Addr())
	setup := time.Now()
	var y strings.Builder
	for i := 1; i <= rules; i++ {
		fmt.Fprintf(&y, "  - {id: f%d, point: \"1:m:%d\", condition: \">\", threshold: 0}\n", i, i)
	}
	hold := make(chan struct{})
	var release sync.Once
	n := startNode(t, itConfig(t, rules, y.String()), c, log, itOptions{holdLive: hold})
	t.Cleanup(func() { release.Do(func() { close(hold) }) })
	n.waitReady("f1")
	t.Logf("config of %d rules parsed and their actors running in %v", rules, time.Since(setup).Round(time.Millisecond))
	ups := make([]messages.PointUpdate, rules)
	for i := range ups {
		ups[i] = upd(uint32(i+1), 1)
	}
	start := time.Now()
	n.send(ups...)
	// The hub takes nothing until every rule has evaluated and emitted.
	testenv.Eventually(t, 20*time.Second, func() bool {
		return testutil.ToFloat64(n.metrics.evaluations) == rules && testutil.ToFloat64(n.metrics.events.WithLabelValues(EvRaise)) == rules
	}, "%d rules evaluated (%v)", rules, lazy(func() any { return testutil.ToFloat64(n.metrics.evaluations) }))
	release.Do(func() { close(hold) })
	testenv.Eventually(t, 20*time.Second, func() bool { return llen(c) >= rules && sub.len() >= rules && n.live.len() >= rules },
		"%d events in alarm:events (%v), published (%v) and live (%v)", rules, llenOf(c), lazy(func() any { return sub.len() }), lazy(func() any { return n.live.len() }))
	t.Logf("%d raises evaluated, written and published in %v", rules, time.Since(start).Round(time.Millisecond))

	_, evs := redisEvents(t, c)
	pub := sub.all()
	liveEvs := n.live.events()
	if len(evs) != rules || len(pub) != rules || len(liveEvs) != rules {
		t.Fatalf("%d stored, %d published, %d live; want %d each", len(evs), len(pub), len(liveEvs), rules)
	}
	check := func(where string, ids []string) {
		t.Helper()
		seen := make(map[string]bool, rules)
		for _, id := range ids {
			if seen[id] {
				t.Fatalf("%s: %s twice", where, id)
			}
			seen[id] = true
		}
		for i := 1; i <= rules; i++ {
			if id := "f" + strconv.Itoa(i) + ":1"; !seen[id] {
				t.Fatalf("%s: no %s", where, id)
			}
		}
	}
	ids := make([]string, 0, rules)
	for _, e := range evs {
		if e.Type != EvRaise {
			t.Fatalf("stored event %+v", e)
		}
		ids = append(ids, e.EventID)
	}
	check("alarm:events", ids)
	ids = ids[:0]
	for _, p := range pub {
		var e Event
		if err := json.Unmarshal([]byte(p), &e); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.EventID)
	}
	check("published", ids)
	ids = ids[:0]
	for _, e := range liveEvs {
		ids = append(ids, e.EventID)
	}
	check("live", ids)
	frames := n.live.frameSizes()
	for _, f := range frames {
		if f < 1 || f > 500 {
			t.Fatalf("live frame of %d events (frames %v)", f, frames)
		}
	}
	if slices.Max(frames) != 500 {
		t.Fatalf("thousands of events waited for the hub, yet no frame has 500 of them: %v", frames)
	}
	if got := c.SCard(context.Background(), ActiveIndex).Val(); got != rules {
		t.Fatalf("idx:alarm:active has %d ids, want %d", got, rules)
	}
	t.Logf("%d live frames", len(frames))
	stop := time.Now()
	n.stop()
	t.Logf("stopped in %v", time.Since(stop).Round(time.Millisecond))
}

// hookRec is a webhook receiver.
type hookRec struct {
	mu   sync.Mutex
	ids  []string
	body map[string]string
}

func (h *hookRec) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	h.ids = append(h.ids, r.Header.Get("X-Voltage-Event-Id"))
	h.body[r.Header.Get("X-Voltage-Event-Id")] = string(b)
	h.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// distinct returns the event ids received, each once, in the order of
// their first delivery.
func (h *hookRec) distinct() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, id := range h.ids {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// TestWebhookTargetDown: the webhook target is down; alarms are evaluated
// and written to Redis as usual while the notifier keeps retrying, and once
// the target listens every queued event is delivered, in order per rule.
// Events of a shelved alarm are not sent.
func TestWebhookTargetDown(t *testing.T) {
	log := itLog(t)
	r := testenv.StartRedis(t)
	c := itClient(t, r.Addr())
	port := testenv.FreePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/hook?token=secret", port)
	rules := fmt.Sprintf(`
  - {id: over, point: "1:m:1", condition: ">", threshold: 250, notify: [%q]}
  - {id: under, point: "1:m:2", condition: "<", threshold: 10, notify: [%q]}
`, url, url)
	hook := &hookRec{body: map[string]string{}}
	srv := &http.Server{Handler: hook, ReadHeaderTimeout: time.Second}
	t.Cleanup(func() { _ = srv.Close() }) // after the notifier stopped
	reg := prometheus.NewRegistry()
	notifier := notify.New(notify.Options{Log: log, Policy: supervisor.Policy{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond},
		Timeout: time.Second, Metrics: notify.NewMetrics(reg)})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		notifier.Stop(ctx)
	})
	n := startNode(t, itConfig(t, 2, rules), c, log, itOptions{notifier: notifier})
	n.waitReady("over")

	// Six transitions, each written to Redis promptly although no webhook
	// call succeeds.
	steps := [][]messages.PointUpdate{{upd(1, 251), upd(2, 5)}, {upd(1, 240), upd(2, 20)}, {upd(1, 260), upd(2, 1)}}
	for i, s := range steps {
		n.send(s...)
		testenv.Eventually(t, 2*time.Second, func() bool { return llen(c) == int64(2*(i+1)) },
			"events of step %d written while the webhook is down (%v)", i, llenOf(c))
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return gathered(t, reg, "voltage_alarm_notify_failures_total", "reason", "network") >= 3 },
		"failed webhook attempts counted")
	if sent := gathered(t, reg, "voltage_alarm_notify_sent_total"); sent != 0 || notifier.Pending() != 6 {
		t.Fatalf("while the target is down: %v sent, %d pending; want 0 and 6", sent, notifier.Pending())
	}
	n.waitLive(6)

	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("listen on the webhook port: %v", err)
	}
	go func() { _ = srv.Serve(ln) }()
	testenv.Eventually(t, 5*time.Second, func() bool { return len(hook.distinct()) == 6 && notifier.Pending() == 0 },
		"6 events delivered (%v)", lazy(func() any { return len(hook.distinct()) }))

	raw, evs := redisEvents(t, c)
	stored := map[string]string{}
	for i, e := range evs {
		stored[e.EventID] = raw[i]
	}
	got := map[string][]string{}
	for _, id := range hook.distinct() {
		rule, _, _ := strings.Cut(id, ":")
		got[rule] = append(got[rule], id)
		hook.mu.Lock()
		body := hook.body[id]
		hook.mu.Unlock()
		if body != stored[id] {
			t.Fatalf("webhook body of %s:\n%s\nin alarm:events:\n%s", id, body, stored[id])
		}
	}
	for _, id := range []string{"over", "under"} {
		if want := []string{id + ":1", id + ":2", id + ":3"}; !slices.Equal(got[id], want) {
			t.Fatalf("%s delivered %v, want %v in order", id, got[id], want)
		}
	}
	if sent := gathered(t, reg, "voltage_alarm_notify_sent_total"); sent < 6 {
		t.Fatalf("notify sent_total %v, want >= 6", sent)
	}

	// Shelved: the shelve and the raise are recorded but not sent; the
	// unshelve is. The queue is in order, so the unshelve arriving means
	// nothing before it was sent.
	ctx := context.Background()
	if _, err := n.req.Shelve(ctx, "under", "bob", "maintenance", time.Hour); err != nil {
		t.Fatal(err)
	}
	n.send(upd(2, 20))
	n.send(upd(2, 5))
	if _, err := n.req.Unshelve(ctx, "under", "bob"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return slices.Contains(hook.distinct(), "under:7") },
		"the unshelve delivered (%v)", lazy(func() any { return hook.distinct() }))
	if d := hook.distinct(); len(d) != 7 {
		t.Fatalf("delivered %v; want nothing of the shelved alarm but its unshelve (under:7)", d)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return llen(c) == 10 }, "shelve, clear, raise and unshelve recorded (%v)", llenOf(c))
	if _, evs := redisEvents(t, c); eventIDs(evs[:4]) != "under:7/unshelve under:6/raise under:5/clear under:4/shelve" || !evs[1].Shelved {
		t.Fatalf("alarm:events %s", eventIDs(evs[:4]))
	}
}
