package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/voltage-ems/voltage/actors/redisbus"
	"github.com/voltage-ems/voltage/actors/session"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/supervisor"
	"github.com/voltage-ems/voltage/test/testenv"
)

// wsEnv is the HTTP handler with live sessions: the session hub actor, a
// feed of point updates into it and a real redis-server for snapshots.
type wsEnv struct {
	restarts *supervisor.Stats
	rdb      *redis.Client
	srv      *httptest.Server
	sys      *actor.ActorSystem
	hub      *actor.PID
	feed     *session.Feed
}

func newWSEnv(t *testing.T, idle time.Duration, backlog ...int) *wsEnv {
	t.Helper()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	cfg := loadTestConfig(t, testYAML)
	var known []messages.PointKey
	for i := range cfg.Channels {
		for j := range cfg.Channels[i].Points {
			known = append(known, cfg.Channels[i].Points[j].Key(cfg.Channels[i].ID))
		}
	}
	e := &wsEnv{rdb: rdb, sys: actor.NewActorSystem()}
	read := func(keys []messages.PointKey) ([]messages.PointUpdate, error) {
		return redisbus.ReadPoints(context.Background(), rdb, messages.Keys{}, keys)
	}
	var err error
	e.restarts = supervisor.NewStats(nil)
	strategy := supervisor.NewStrategy(supervisor.DefaultPolicy(), e.restarts) // as `voltage run` does
	e.hub, err = e.sys.Root.SpawnNamed(session.NewHubProps(known, read, strategy), "sessions")
	if err != nil {
		t.Fatal(err)
	}
	e.feed = session.NewFeed(func(b *messages.PointUpdates) { e.sys.Root.Send(e.hub, b) }, 20*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	h := NewHandler(Deps{Config: cfg, Redis: rdb, Gatherer: prometheus.NewRegistry(), Version: "test",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Context: ctx,
		Sessions: session.NewOpener(e.sys.Root, e.hub), WSIdle: idle, WSBacklog: append(backlog, 0)[0]})
	e.srv = httptest.NewServer(h)
	t.Cleanup(func() {
		e.srv.CloseClientConnections()
		e.srv.Close()
		cancel()
		e.feed.Stop()
		_ = e.sys.Root.PoisonFuture(e.hub).Wait()
	})
	return e
}

func (e *wsEnv) dial(t *testing.T, token string) *websocket.Conn {
	t.Helper()
	c, resp, err := e.tryDial(token)
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (e *wsEnv) tryDial(token string) (*websocket.Conn, *http.Response, error) {
	url := "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/ws"
	if token != "" {
		url += "?token=" + token
	}
	return websocket.DefaultDialer.Dial(url, nil)
}

func (e *wsEnv) sessions(t *testing.T) int {
	res, err := e.sys.Root.RequestFuture(e.hub, &session.GetStats{}, time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	return res.(*session.Stats).Sessions
}

func (e *wsEnv) update(key string, v float64) {
	k, _ := messages.ParsePointKey(key)
	e.feed.Publish(&messages.PointUpdate{Key: k, Value: v, Timestamp: time.Now().UnixMilli(), Quality: messages.Good, Node: "n"})
}

type frame struct {
	Type     string   `json:"type" msgpack:"type"`
	Code     string   `json:"code" msgpack:"code"`
	Message  string   `json:"message" msgpack:"message"`
	Patterns []string `json:"patterns" msgpack:"patterns"`
	Points   any      `json:"points" msgpack:"points"`
}

type wirePt struct {
	Key   string   `json:"key" msgpack:"key"`
	Value *float64 `json:"value" msgpack:"value"`
	TS    int64    `json:"ts" msgpack:"ts"`
	Q     string   `json:"q" msgpack:"q"`
}

// read returns the next frame (JSON or msgpack) within d.
func read(t *testing.T, c *websocket.Conn, d time.Duration) (frame, []wirePt) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	typ, data, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	var f frame
	var pts struct {
		Points []wirePt `json:"points" msgpack:"points"`
	}
	if typ == websocket.BinaryMessage {
		if err := msgpack.Unmarshal(data, &f); err != nil {
			t.Fatalf("msgpack frame: %v", err)
		}
		if f.Type == "snapshot" || f.Type == "update" {
			_ = msgpack.Unmarshal(data, &pts)
		}
	} else {
		if err := json.Unmarshal(data, &f); err != nil {
			t.Fatalf("frame %s: %v", data, err)
		}
		if f.Type == "snapshot" || f.Type == "update" {
			_ = json.Unmarshal(data, &pts)
		}
	}
	return f, pts.Points
}

func send(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

func TestWSSnapshotThenCoalescedUpdates(t *testing.T) {
	e := newWSEnv(t, 0)
	e.rdb.HSet(context.Background(), "comsrv:1001:m", "10001", "230.5")
	e.rdb.HSet(context.Background(), "comsrv:1001:m:ts", "10001", "1764090000000")
	e.rdb.HSet(context.Background(), "comsrv:1001:m:q", "10001", "good")
	c := e.dial(t, viewerToken)
	send(t, c, `{"op":"subscribe","patterns":["1001:m:*","1001:s:20001"]}`)
	f, _ := read(t, c, 2*time.Second)
	if f.Type != "subscribed" || len(f.Patterns) != 2 || f.Points != float64(2) {
		t.Fatalf("first frame: %+v", f)
	}
	f, pts := read(t, c, 2*time.Second)
	if f.Type != "snapshot" || len(pts) != 2 {
		t.Fatalf("snapshot: %+v %+v", f, pts)
	}
	byKey := map[string]wirePt{}
	for _, p := range pts {
		byKey[p.Key] = p
	}
	if p := byKey["1001:m:10001"]; p.Value == nil || *p.Value != 230.5 || p.TS != 1764090000000 || p.Q != "good" {
		t.Fatalf("snapshot of 1001:m:10001: %+v", p)
	}
	if p := byKey["1001:s:20001"]; p.Value != nil {
		t.Fatalf("a never-read point has a value: %+v", p)
	}

	// A burst of changes while the client reads: frames at most every
	// 100 ms, the newest value of each point, only subscribed points.
	type got struct {
		at  time.Time
		pts []wirePt
		typ string
	}
	frames := make(chan got, 100)
	go func() { // not the test goroutine: no t.Fatal here
		defer close(frames)
		for {
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, data, err := c.ReadMessage()
			var f struct {
				Type   string   `json:"type"`
				Points []wirePt `json:"points"`
			}
			if err != nil || json.Unmarshal(data, &f) != nil {
				return
			}
			frames <- got{time.Now(), f.Points, f.Type}
			if len(f.Points) == 1 && f.Points[0].Value != nil && *f.Points[0].Value == 30 {
				return
			}
		}
	}()
	for i := 1; i <= 30; i++ {
		e.update("1001:m:10001", float64(i))
		e.update("1002:m:1", float64(i))  // not subscribed
		time.Sleep(10 * time.Millisecond) // a 300 ms burst of production (not a synchronisation)
	}
	var times []time.Time
	last := 0.0
	for g := range frames {
		if g.typ != "update" || len(g.pts) != 1 || g.pts[0].Key != "1001:m:10001" {
			t.Fatalf("unexpected %s frame with %+v", g.typ, g.pts)
		}
		times = append(times, g.at)
		last = *g.pts[0].Value
	}
	if last != 30 {
		t.Fatalf("last value seen %v, want 30", last)
	}
	if len(times) > 5 || len(times) < 2 {
		t.Fatalf("%d frames for 300 ms of changes, want 2 to 5 (one per 100 ms)", len(times))
	}
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < 80*time.Millisecond {
			t.Fatalf("frames %v apart", gap)
		}
	}

	// Ping and unsubscribe.
	send(t, c, `{"op":"ping"}`)
	if f, _ := read(t, c, 2*time.Second); f.Type != "pong" {
		t.Fatalf("ping answered %+v", f)
	}
	send(t, c, `{"op":"unsubscribe","patterns":["1001:m:*"]}`)
	if f, _ := read(t, c, 2*time.Second); f.Type != "subscribed" || len(f.Patterns) != 1 || f.Points != float64(1) {
		t.Fatalf("after unsubscribe: %+v", f)
	}
	e.update("1001:m:10001", 99)
	e.update("1001:s:20001", 1)
	if _, pts := read(t, c, 2*time.Second); len(pts) != 1 || pts[0].Key != "1001:s:20001" {
		t.Fatalf("after unsubscribe got %+v", pts)
	}
}

func TestWSMsgpack(t *testing.T) {
	e := newWSEnv(t, 0)
	c := e.dial(t, viewerToken)
	send(t, c, `{"op":"subscribe","patterns":["1002:*"],"format":"msgpack"}`)
	if f, _ := read(t, c, 2*time.Second); f.Type != "subscribed" {
		t.Fatalf("%+v", f)
	}
	if f, pts := read(t, c, 2*time.Second); f.Type != "snapshot" || len(pts) != 3 {
		t.Fatalf("snapshot %+v %+v", f, pts)
	}
	e.update("1002:m:1", 321.25)
	f, pts := read(t, c, 2*time.Second)
	if f.Type != "update" || len(pts) != 1 || *pts[0].Value != 321.25 || pts[0].Q != "good" {
		t.Fatalf("msgpack update %+v %+v", f, pts)
	}
}

func TestWSBadInput(t *testing.T) {
	e := newWSEnv(t, 0)
	if _, resp, err := e.tryDial(""); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("no token: %v %v", err, resp)
	}
	if _, resp, err := e.tryDial("wrong-token-000000000"); err == nil || resp.StatusCode != 401 {
		t.Fatalf("bad token: %v %v", err, resp)
	}
	c := e.dial(t, viewerToken)
	many := make([]string, 101)
	for i := range many {
		many[i] = fmt.Sprintf(`"%d:m:*"`, i)
	}
	cases := []struct{ msg, code, fragment string }{
		{`{"op":`, "bad_json", "not a valid JSON"},
		{`[1,2]`, "bad_json", "not a valid JSON"},
		{`{"op":"subscribe","patterns":["1:m:*"],"extra":1}`, "bad_json", "extra"},
		{`{"op":"explode"}`, "unknown_op", `"explode"`},
		{`{}`, "unknown_op", "no \"op\""},
		{`{"op":"subscribe","patterns":["[1001"]}`, "bad_pattern", "syntax error"},
		{`{"op":"subscribe","patterns":[]}`, "bad_pattern", "non-empty"},
		{`{"op":"subscribe","patterns":["*"],"format":"xml"}`, "bad_format", "xml"},
		{`{"op":"subscribe","patterns":[` + strings.Join(many, ",") + `]}`, "too_many_patterns", "at most 100"},
	}
	for _, tc := range cases {
		send(t, c, tc.msg)
		f, _ := read(t, c, 2*time.Second)
		if f.Type != "error" || f.Code != tc.code || !strings.Contains(f.Message, tc.fragment) {
			t.Errorf("%s: got %+v, want error %s containing %q", tc.msg, f, tc.code, tc.fragment)
		}
	}
	// The session survives its errors.
	send(t, c, `{"op":"ping"}`)
	if f, _ := read(t, c, 2*time.Second); f.Type != "pong" {
		t.Fatalf("after errors: %+v", f)
	}
	// An oversized message closes the connection with 1009. The server
	// may close while the client is still writing the 70 KiB: then the
	// client's write fails (reset) and the close frame can be lost with
	// the connection; the session must be gone all the same.
	werr := c.WriteMessage(websocket.TextMessage, []byte(`{"op":"ping","pad":"`+strings.Repeat("x", 70<<10)+`"}`))
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	switch {
	case errors.As(err, &ce):
		if ce.Code != websocket.CloseMessageTooBig {
			t.Fatalf("oversized message: closed with %d, want 1009", ce.Code)
		}
	case werr == nil || err == nil:
		t.Fatalf("oversized message: read %v after write %v, want close 1009", err, werr)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return e.sessions(t) == 0 }, "session stopped")
}

// TestWSSlowClient: a client that reads far slower than its frames come is
// disconnected with a reason once its backlog (8 frames here) is full, while
// another session keeps its pace.
func TestWSSlowClient(t *testing.T) {
	e := newWSEnv(t, 0, 8)
	slow := e.dial(t, viewerToken)
	send(t, slow, `{"op":"subscribe","patterns":["77:m:*"]}`)
	if f, _ := read(t, slow, 2*time.Second); f.Type != "subscribed" {
		t.Fatal(f)
	}
	good := e.dial(t, viewerToken)
	send(t, good, `{"op":"subscribe","patterns":["1001:m:10001"]}`)
	read(t, good, 2*time.Second) // subscribed
	read(t, good, 2*time.Second) // snapshot

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // big frames for the slow client: 20000 points every 20 ms
		defer wg.Done()
		for v := 0.0; ; v++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			for p := 1; p <= 20000; p++ {
				e.update(fmt.Sprintf("77:m:%d", p), v)
			}
			e.update("1001:m:10001", v)
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	// The healthy session keeps receiving while the slow one backs up.
	var frames atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_ = good.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, _, err := good.ReadMessage(); err != nil {
				return
			}
			frames.Add(1)
		}
	}()
	// The slow client reads one frame every 300 ms (three times too slow).
	slowErr := make(chan error, 1)
	go func() {
		for {
			_ = slow.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, _, err := slow.ReadMessage(); err != nil {
				slowErr <- err
				return
			}
			time.Sleep(300 * time.Millisecond) // the slowness under test
		}
	}()
	testenv.Eventually(t, 60*time.Second, func() bool { return e.sessions(t) == 1 }, "slow session disconnected")
	if n := frames.Load(); n < 10 {
		t.Fatalf("the healthy session got only %d frames meanwhile", n)
	}
	select {
	case err := <-slowErr:
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, "slow consumer") {
			t.Fatalf("slow client closed with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the slow client never got the close frame")
	}
	good.Close()
	<-done
}

func TestWSIdleConnectionClosed(t *testing.T) {
	e := newWSEnv(t, 600*time.Millisecond)
	c, _, err := e.tryDial(viewerToken)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// This client never reads, so it never answers the server's pings.
	testenv.Eventually(t, 1*time.Second, func() bool { return e.sessions(t) == 1 }, "session open")
	testenv.Eventually(t, 5*time.Second, func() bool { return e.sessions(t) == 0 }, "idle session closed and stopped")
}

func TestWS1000Sessions(t *testing.T) {
	e := newWSEnv(t, 0)
	const n = 1000
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = e.dial(t, viewerToken)
		send(t, conns[i], `{"op":"subscribe","patterns":["1002:m:1"]}`)
	}
	for _, c := range conns { // subscribed + snapshot
		read(t, c, 10*time.Second)
		read(t, c, 10*time.Second)
	}
	if s := e.sessions(t); s != n {
		t.Fatalf("%d sessions", s)
	}
	e.update("1002:m:1", 42)
	var wg sync.WaitGroup
	var got atomic.Int64
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, data, err := c.ReadMessage(); err == nil && strings.Contains(string(data), `"value":42`) {
				got.Add(1)
			}
		}()
	}
	wg.Wait()
	if got.Load() != n {
		t.Fatalf("%d of %d sessions got the update", got.Load(), n)
	}
	for _, c := range conns {
		c.Close()
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return e.sessions(t) == 0 }, "every session stopped after its client left")
}

// TestWSBroadcastFrames checks the hook alarm frames will use: a frame sent
// to the hub reaches every session, in each session's format.
func TestWSBroadcastFrames(t *testing.T) {
	e := newWSEnv(t, 0)
	js, mp := e.dial(t, viewerToken), e.dial(t, viewerToken)
	send(t, mp, `{"op":"subscribe","patterns":["1:m:1"],"format":"msgpack"}`)
	read(t, mp, 2*time.Second) // subscribed
	testenv.Eventually(t, 2*time.Second, func() bool { return e.sessions(t) == 2 }, "two sessions")
	type alarmFrame struct {
		Type string `json:"type" msgpack:"type"`
		ID   string `json:"id" msgpack:"id"`
	}
	e.sys.Root.Send(e.hub, &session.Broadcast{Frame: &alarmFrame{Type: "alarm", ID: "pcs1-overvoltage"}})
	for _, c := range []*websocket.Conn{js, mp} {
		if f, _ := read(t, c, 2*time.Second); f.Type != "alarm" {
			t.Fatalf("broadcast arrived as %+v", f)
		}
	}
}

// jsonOnly encodes as JSON but not as MessagePack: broadcasting it makes a
// msgpack session's actor panic.
type jsonOnly struct {
	Type string `json:"type"`
}

func (jsonOnly) EncodeMsgpack(*msgpack.Encoder) error { return errors.New("injected encoding failure") }

// TestWSFailingSessionRestartsAlone: a session actor that panics is
// restarted with its subscriptions, and other sessions never notice.
func TestWSFailingSessionRestartsAlone(t *testing.T) {
	e := newWSEnv(t, 0)
	js, mp := e.dial(t, viewerToken), e.dial(t, viewerToken)
	for _, c := range []*websocket.Conn{js, mp} {
		format := "json"
		if c == mp {
			format = "msgpack"
		}
		send(t, c, `{"op":"subscribe","patterns":["1002:m:1"],"format":"`+format+`"}`)
		read(t, c, 2*time.Second) // subscribed
		read(t, c, 2*time.Second) // snapshot
	}
	e.sys.Root.Send(e.hub, &session.Broadcast{Frame: jsonOnly{Type: "notice"}})
	if f, _ := read(t, js, 2*time.Second); f.Type != "notice" {
		t.Fatalf("json session got %+v", f)
	}
	testenv.Eventually(t, 2*time.Second, func() bool { return e.restarts.Total() == 1 }, "the msgpack session restarted")
	e.update("1002:m:1", 7)
	for _, c := range []*websocket.Conn{js, mp} {
		if f, pts := read(t, c, 2*time.Second); f.Type != "update" || len(pts) != 1 || *pts[0].Value != 7 {
			t.Fatalf("after the restart: %+v %+v", f, pts)
		}
	}
	if e.sessions(t) != 2 {
		t.Fatalf("%d sessions after the restart", e.sessions(t))
	}
}
