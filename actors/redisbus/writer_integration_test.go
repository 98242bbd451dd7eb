package redisbus

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

func newTestWriter(t *testing.T, url string) *Writer {
	t.Helper()
	ro, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	ro.MaxRetries = -1
	ro.DialTimeout = 200 * time.Millisecond
	w := NewWriter(ro, WriterOptions{Node: "n1", RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	w.Start()
	t.Cleanup(func() { w.Stop(time.Second) })
	return w
}

func client(t *testing.T, url string) *redis.Client {
	ro, _ := redis.ParseURL(url)
	c := redis.NewClient(ro)
	t.Cleanup(func() { c.Close() })
	return c
}

func upd(ch uint32, typ messages.PointType, pt uint32, v float64, ts int64, q messages.Quality) *messages.PointUpdate {
	return &messages.PointUpdate{Key: messages.PointKey{Channel: ch, Type: typ, Point: pt}, Value: v, Timestamp: ts, Quality: q, Node: "n1"}
}

func TestWriterStoresHashesAndPublishes(t *testing.T) {
	r := testenv.StartRedis(t)
	c := client(t, r.URL())
	ctx := context.Background()
	sub := c.Subscribe(ctx, UpdateChannel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	w := newTestWriter(t, r.URL())

	w.Publish(upd(1001, 'm', 10001, 230.5, 1764090000000, messages.Good))
	w.Publish(upd(1001, 's', 20001, 1, 1764090000001, messages.Good))
	w.Publish(upd(1001, 'm', 10002, -0.25, 1764090000002, messages.Bad))

	want := []string{
		`{"channel_id":1001,"point_type":"m","point_id":10001,"value":230.5,"timestamp":1764090000000,"quality":"good","node":"n1"}`,
		`{"channel_id":1001,"point_type":"s","point_id":20001,"value":1,"timestamp":1764090000001,"quality":"good","node":"n1"}`,
		`{"channel_id":1001,"point_type":"m","point_id":10002,"value":-0.25,"timestamp":1764090000002,"quality":"bad","node":"n1"}`,
	}
	for i, w := range want {
		m, err := sub.ReceiveMessage(ctxT(t, 2*time.Second))
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if m.Payload != w {
			t.Fatalf("message %d:\n got %s\nwant %s", i, m.Payload, w)
		}
	}
	check := func(key, field, want string) {
		t.Helper()
		got, err := c.HGet(ctx, key, field).Result()
		if err != nil || got != want {
			t.Fatalf("HGET %s %s = %q, %v; want %q", key, field, got, err, want)
		}
	}
	check("comsrv:1001:m", "10001", "230.5")
	check("comsrv:1001:m:ts", "10001", "1764090000000")
	check("comsrv:1001:m:q", "10001", "good")
	check("comsrv:1001:s", "20001", "1")
	check("comsrv:1001:m", "10002", "-0.25")
	check("comsrv:1001:m:q", "10002", "bad")
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestWriterRedisRestart kills Redis while points keep changing, restarts it
// empty, and checks that every point's hashes end at the newest value and
// that the newest values are published again.
func TestWriterRedisRestart(t *testing.T) {
	r := testenv.StartRedis(t)
	c := client(t, r.URL())
	w := newTestWriter(t, r.URL())
	const points = 200
	ts := int64(1764090000000)
	for p := uint32(1); p <= points; p++ {
		w.Publish(upd(7, 'm', p, float64(p), ts, messages.Good))
	}
	allEqual := func(val func(p uint32) string) func() bool {
		return func() bool {
			got, err := c.HGetAll(context.Background(), "comsrv:7:m").Result()
			if err != nil || len(got) != points {
				return false
			}
			for p := uint32(1); p <= points; p++ {
				if got[strconv.Itoa(int(p))] != val(p) {
					return false
				}
			}
			return true
		}
	}
	testenv.Eventually(t, 5*time.Second, allEqual(func(p uint32) string { return strconv.Itoa(int(p)) }), "initial values in redis")

	r.Stop()
	// Changes while Redis is down: several per point, only the newest must stick.
	for round := 1; round <= 3; round++ {
		ts += 1000
		for p := uint32(1); p <= points; p++ {
			w.Publish(upd(7, 'm', p, float64(p)+float64(round)/10, ts, messages.Good))
		}
		time.Sleep(30 * time.Millisecond) // let flushes fail in between (not a synchronisation)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return w.QueueDepth() == points },
		"writer coalesces the outage to one pending update per point (queue %d)", w.QueueDepth())

	r.Restart()
	c2 := client(t, r.URL())
	sub := c2.Subscribe(context.Background(), UpdateChannel)
	defer sub.Close()
	c = c2
	testenv.Eventually(t, 10*time.Second, allEqual(func(p uint32) string {
		return strconv.FormatFloat(float64(p)+0.3, 'f', -1, 64)
	}), "hashes equal the newest values after Redis came back empty")
	q, _ := c.HGet(context.Background(), "comsrv:7:m:q", "5").Result()
	if q != "good" {
		t.Fatalf("quality hash after restart: %q", q)
	}
	if d := w.QueueDepth(); d != 0 {
		t.Fatalf("queue depth after recovery: %d", d)
	}
	// Publishing resumes; whatever replay a subscriber sees comes in the
	// order it was produced and ends with the newest value of each point.
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	w.Publish(upd(7, 'm', 1, 99, ts+5000, messages.Good))
	lastTS := map[uint32]int64{}
	for {
		m, err := sub.ReceiveMessage(ctxT(t, 5*time.Second))
		if err != nil {
			t.Fatalf("no update published after recovery: %v", err)
		}
		var u messages.PointUpdate
		if err := json.Unmarshal([]byte(m.Payload), &u); err != nil {
			t.Fatal(err)
		}
		if u.Timestamp < lastTS[u.Key.Point] {
			t.Fatalf("point %d published out of order: %s", u.Key.Point, m.Payload)
		}
		lastTS[u.Key.Point] = u.Timestamp
		if u.Key.Point == 1 && u.Value == 99 {
			break
		}
	}
}

// TestWriterQuickRestartIsDetected restarts Redis between two flushes, so the
// writer never sees a failed command (go-redis reconnects transparently), and
// checks that the new, empty Redis still gets every point.
func TestWriterQuickRestartIsDetected(t *testing.T) {
	r := testenv.StartRedis(t)
	ro, _ := redis.ParseURL(r.URL())
	w := NewWriter(ro, WriterOptions{Node: "n1"}) // default retries
	w.Start()
	t.Cleanup(func() { w.Stop(time.Second) })
	c := client(t, r.URL())
	for p := uint32(1); p <= 50; p++ {
		w.Publish(upd(8, 's', p, 1, 1, messages.Good))
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return c.HLen(context.Background(), "comsrv:8:s").Val() == 50 }, "initial")
	r.Restart()
	w.Publish(upd(8, 's', 1, 0, 2, messages.Good)) // one change; the other 49 only exist in the writer
	testenv.Eventually(t, 5*time.Second, func() bool {
		return c.HLen(context.Background(), "comsrv:8:s").Val() == 50 && c.HGet(context.Background(), "comsrv:8:s", "1").Val() == "0"
	}, "all 50 points rewritten after an invisible restart (have %d)", c.HLen(context.Background(), "comsrv:8:s").Val())
}

func TestSubscriberDropsOwnNode(t *testing.T) {
	r := testenv.StartRedis(t)
	ro, _ := redis.ParseURL(r.URL())
	var mu sync.Mutex
	var got []messages.PointUpdate
	s := NewSubscriber(ro, "me", messages.Keys{}, func(us []messages.PointUpdate) {
		mu.Lock()
		got = append(got, us...)
		mu.Unlock()
	}, nil, nil)
	s.Start()
	t.Cleanup(s.Stop)
	select {
	case <-s.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("subscriber not ready")
	}
	c := client(t, r.URL())
	for i, node := range []string{"me", "other", "me", "other"} {
		u := upd(1, 'm', uint32(i), float64(i), int64(i), messages.Good)
		u.Node = node
		c.Publish(context.Background(), UpdateChannel, u.AppendJSON(nil))
	}
	c.Publish(context.Background(), UpdateChannel, "not json")
	c.Publish(context.Background(), UpdateChannel, `{"channel_id":1,"point_type":"x","point_id":1}`)
	testenv.Eventually(t, 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 2 }, "two foreign updates")
	mu.Lock()
	defer mu.Unlock()
	if got[0].Key.Point != 1 || got[1].Key.Point != 3 || got[0].Node != "other" {
		t.Fatalf("delivered %+v", got)
	}
}
