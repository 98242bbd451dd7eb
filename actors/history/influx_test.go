package history

import (
	"context"
	"errors"
	"math"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

// startInflux starts an influxd for one test and a Store on it.
func startInflux(t testing.TB) (*testenv.Influx, *Influx) {
	t.Helper()
	srv := testenv.StartInfluxDB(t)
	s, err := NewInflux(config.InfluxDB{
		URL: srv.URL(), Bucket: testenv.InfluxDatabase + "/autogen", Measurement: "point",
		BatchSize: 5000, FlushInterval: time.Second,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return srv, s
}

var (
	keyA = messages.PointKey{Channel: 1001, Type: messages.Measurement, Point: 10001}
	keyB = messages.PointKey{Channel: 1001, Type: messages.Measurement, Point: 10002}
	keyC = messages.PointKey{Channel: 1002, Type: messages.Measurement, Point: 10001} // never written
	keyS = messages.PointKey{Channel: 1001, Type: messages.Signal, Point: 10001}      // same ids as keyA, other type
)

func TestInfluxWriteCount(t *testing.T) {
	t.Parallel()
	srv, s := startInflux(t)
	ctx := context.Background()
	t0 := time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC).UnixMilli()
	var batch []messages.PointUpdate
	for i := 0; i < 1000; i++ {
		batch = append(batch, messages.PointUpdate{
			Key:   messages.PointKey{Channel: 1001, Type: messages.Measurement, Point: uint32(i % 10)},
			Value: float64(i) / 4, Timestamp: t0 + int64(i), Quality: messages.Quality(i % 5), Node: "sub-a",
		})
	}
	// Never read: no value, skipped.
	batch = append(batch, messages.PointUpdate{Key: keyA, Value: math.NaN(), Timestamp: t0, Quality: messages.CommLost})
	if err := s.Write(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if n := srv.Count(t, "point"); n != 1000 {
		t.Fatalf("count = %d, want 1000", n)
	}
	if err := s.Write(ctx, nil); err != nil {
		t.Fatalf("empty batch: %v", err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestInfluxQuery writes known values at known times and checks every
// aggregation, with windows aligned to the query's start (20 s past a
// minute, so epoch-aligned windows would give other answers).
func TestInfluxQuery(t *testing.T) {
	t.Parallel()
	_, s := startInflux(t)
	ctx := context.Background()
	start := time.Date(2025, 11, 25, 12, 0, 20, 0, time.UTC)
	at := func(sec int) int64 { return start.Add(time.Duration(sec) * time.Second).UnixMilli() }
	var batch []messages.PointUpdate
	// keyA: value i at start+10i s for i in 0..17: windows of 1 min hold
	// 0..5, 6..11, 12..17.
	for i := 0; i < 18; i++ {
		batch = append(batch, messages.PointUpdate{Key: keyA, Value: float64(i), Timestamp: at(10 * i), Quality: messages.Quality(i % 2)})
	}
	// keyB: 2 and 4 in the first window, none in the second, -1.5 in the third.
	batch = append(batch,
		messages.PointUpdate{Key: keyB, Value: 4, Timestamp: at(0)},
		messages.PointUpdate{Key: keyB, Value: 2, Timestamp: at(59)},
		messages.PointUpdate{Key: keyB, Value: -1.5, Timestamp: at(150)},
	)
	// keyS shares channel and point id with keyA: it must not leak into A.
	batch = append(batch, messages.PointUpdate{Key: keyS, Value: 100, Timestamp: at(5)})
	// Outside [start, end): one before, one exactly at end.
	batch = append(batch,
		messages.PointUpdate{Key: keyA, Value: 1000, Timestamp: at(-1)},
		messages.PointUpdate{Key: keyA, Value: 1000, Timestamp: at(180)},
	)
	if err := s.Write(ctx, batch); err != nil {
		t.Fatal(err)
	}
	w := func(i int) time.Time { return start.Add(time.Duration(i) * time.Minute) }
	type want map[messages.PointKey][]Sample
	f := func(fn string, points []messages.PointKey, expected want) {
		t.Helper()
		got, err := s.Query(ctx, Query{Points: points, Start: start, End: start.Add(3 * time.Minute), Every: time.Minute, Fn: fn})
		if err != nil {
			t.Fatalf("%s: %v", fn, err)
		}
		if len(got) != len(points) {
			t.Fatalf("%s: %d series, want %d", fn, len(got), len(points))
		}
		for i, k := range points {
			if got[i].Key != k {
				t.Errorf("%s: series %d is %v, want %v", fn, i, got[i].Key, k)
			}
			if got[i].Points == nil {
				t.Errorf("%s %v: Points is nil, want empty", fn, k)
			}
			w := expected[k]
			if len(got[i].Points) != len(w) {
				t.Errorf("%s %v: got %v, want %v", fn, k, got[i].Points, w)
				continue
			}
			for j := range w {
				if !got[i].Points[j].Time.Equal(w[j].Time) || got[i].Points[j].Value != w[j].Value {
					t.Errorf("%s %v: got %v, want %v", fn, k, got[i].Points, w)
					break
				}
			}
		}
	}
	all := []messages.PointKey{keyA, keyB, keyC, keyS}
	f(FnMean, all, want{
		keyA: {{w(0), 2.5}, {w(1), 8.5}, {w(2), 14.5}},
		keyB: {{w(0), 3}, {w(2), -1.5}},
		keyS: {{w(0), 100}},
	})
	f(FnMin, all, want{
		keyA: {{w(0), 0}, {w(1), 6}, {w(2), 12}},
		keyB: {{w(0), 2}, {w(2), -1.5}},
		keyS: {{w(0), 100}},
	})
	f(FnMax, all, want{
		keyA: {{w(0), 5}, {w(1), 11}, {w(2), 17}},
		keyB: {{w(0), 4}, {w(2), -1.5}},
		keyS: {{w(0), 100}},
	})
	f(FnLast, all, want{
		keyA: {{w(0), 5}, {w(1), 11}, {w(2), 17}},
		keyB: {{w(0), 2}, {w(2), -1.5}},
		keyS: {{w(0), 100}},
	})
	f(FnCount, all, want{
		keyA: {{w(0), 6}, {w(1), 6}, {w(2), 6}},
		keyB: {{w(0), 2}, {w(2), 1}},
		keyS: {{w(0), 1}},
	})
	// One point, one window over everything; the order asked is kept.
	got, err := s.Query(ctx, Query{Points: []messages.PointKey{keyB, keyA}, Start: start, End: start.Add(3 * time.Minute), Every: 3 * time.Minute, Fn: FnCount})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Key != keyB || got[1].Key != keyA ||
		len(got[0].Points) != 1 || got[0].Points[0].Value != 3 || !got[0].Points[0].Time.Equal(start) ||
		len(got[1].Points) != 1 || got[1].Points[0].Value != 18 {
		t.Errorf("count over 3 min: %+v", got)
	}
	// The same point asked twice gets its series twice.
	got, err = s.Query(ctx, Query{Points: []messages.PointKey{keyA, keyA}, Start: start, End: start.Add(3 * time.Minute), Every: 3 * time.Minute, Fn: FnMax})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || len(got[0].Points) != 1 || len(got[1].Points) != 1 || got[0].Points[0] != got[1].Points[0] || got[1].Points[0].Value != 17 {
		t.Errorf("point asked twice: %+v", got)
	}
	// A window not aligned to the minute: 90 s windows from start+30s.
	got, err = s.Query(ctx, Query{Points: []messages.PointKey{keyA}, Start: start.Add(30 * time.Second), End: start.Add(210 * time.Second), Every: 90 * time.Second, Fn: FnCount})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || len(got[0].Points) != 2 ||
		!got[0].Points[0].Time.Equal(start.Add(30*time.Second)) || got[0].Points[0].Value != 9 || // 3..11
		!got[0].Points[1].Time.Equal(start.Add(120*time.Second)) || got[0].Points[1].Value != 7 { // 12..17 and the 1000 at 180 s
		t.Errorf("90 s windows: %+v", got)
	}
	// Nothing in range at all: every series empty.
	got, err = s.Query(ctx, Query{Points: all, Start: start.Add(-time.Hour), End: start.Add(-time.Minute), Every: time.Minute, Fn: FnMean})
	if err != nil {
		t.Fatal(err)
	}
	for _, sr := range got {
		if sr.Points == nil || len(sr.Points) != 0 {
			t.Errorf("empty range: %v has %v", sr.Key, sr.Points)
		}
	}
}

func TestInfluxQueryBad(t *testing.T) {
	s, err := NewInflux(config.InfluxDB{URL: "http://127.0.0.1:1", Bucket: "ems/autogen", Measurement: "point"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	f := func(q Query) {
		t.Helper()
		if _, err := s.Query(context.Background(), q); err == nil {
			t.Errorf("Query(%+v) succeeded", q)
		}
	}
	pts := []messages.PointKey{keyA}
	f(Query{Points: pts, Start: start, End: start.Add(time.Hour), Every: time.Minute, Fn: "median"})
	f(Query{Points: pts, Start: start, End: start.Add(time.Hour), Every: 0, Fn: FnMean})
	f(Query{Points: pts, Start: start, End: start, Every: time.Minute, Fn: FnMean})
	f(Query{Points: pts, Start: start, End: start.Add(-time.Hour), Every: time.Minute, Fn: FnMean})
	f(Query{Start: start, End: start.Add(time.Hour), Every: time.Minute, Fn: FnMean})
	f(Query{Points: []messages.PointKey{{Channel: 1, Point: 1}}, Start: start, End: start.Add(time.Hour), Every: time.Minute, Fn: FnMean})
}

func TestNewInfluxBadConfig(t *testing.T) {
	f := func(cfg config.InfluxDB) {
		t.Helper()
		if _, err := NewInflux(cfg, nil); err == nil {
			t.Errorf("NewInflux(%+v) succeeded", cfg)
		}
	}
	f(config.InfluxDB{Bucket: "ems/autogen", Measurement: "point"})
	f(config.InfluxDB{URL: "http://127.0.0.1:8086", Measurement: "point"})
	f(config.InfluxDB{URL: "http://127.0.0.1:8086", Bucket: "ems/autogen"})
	f(config.InfluxDB{URL: "http://127.0.0.1:8086", Bucket: "ems/autogen", Measurement: "#point"})
	f(config.InfluxDB{URL: "http://127.0.0.1:8086", Bucket: "ems/autogen", Measurement: "po\nint"})
}

// TestInfluxRejected provokes a field type conflict (value written as a
// string first, behind the store's back): the batch is refused with a 4xx,
// reported as ErrRejected, and other measurements still take writes.
func TestInfluxRejected(t *testing.T) {
	t.Parallel()
	srv, s := startInflux(t)
	ctx := context.Background()
	ts := time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)
	if err := srv.WriteLines(`point,channel=1001,type=m,point=10001 value="oops" ` + strconv.FormatInt(ts.UnixNano(), 10) + "\n"); err != nil {
		t.Fatal(err)
	}
	batch := []messages.PointUpdate{
		{Key: keyA, Value: 1, Timestamp: ts.UnixMilli() + 1},
		{Key: keyB, Value: 2, Timestamp: ts.UnixMilli() + 1},
	}
	err := s.Write(ctx, batch)
	if !errors.Is(err, ErrRejected) {
		t.Fatalf("Write after a type conflict: %v, want ErrRejected", err)
	}
	t.Logf("rejected: %v", err)
	if !strings.Contains(err.Error(), "field type conflict") {
		t.Errorf("error %q does not give the reason", err)
	}
	// Another measurement is not affected.
	other, err := NewInflux(config.InfluxDB{URL: srv.URL(), Bucket: "ems/autogen", Measurement: "point2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Write(ctx, batch); err != nil {
		t.Fatal(err)
	}
	// A database not created yet answers 404: the data is fine, the batch
	// is kept for a retry (not rejected), and succeeds once it exists.
	missing, err := NewInflux(config.InfluxDB{URL: srv.URL(), Bucket: "later/autogen", Measurement: "point"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer missing.Close()
	err = missing.Write(ctx, batch)
	if err == nil || errors.Is(err, ErrRejected) {
		t.Fatalf("write to a missing database: %v, want a retryable error", err)
	}
	t.Logf("missing database: %v", err)
	if err := srv.Exec("CREATE DATABASE later"); err != nil {
		t.Fatal(err)
	}
	if err := missing.Write(ctx, batch); err != nil {
		t.Fatalf("write once the database exists: %v", err)
	}
}

// TestInfluxDown: with influxd gone, Write fails fast with a retryable
// error; once it is back (same data dir), writes work again and the data
// from before survived.
func TestInfluxDown(t *testing.T) {
	t.Parallel()
	srv, s := startInflux(t)
	ctx := context.Background()
	ts := time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC).UnixMilli()
	batch := func(n int) []messages.PointUpdate {
		out := make([]messages.PointUpdate, 100)
		for i := range out {
			out[i] = messages.PointUpdate{Key: keyA, Value: float64(i), Timestamp: ts + int64(n*100+i)}
		}
		return out
	}
	if err := s.Write(ctx, batch(0)); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	t0 := time.Now()
	err := s.Write(ctx, batch(1))
	if err == nil || errors.Is(err, ErrRejected) {
		t.Fatalf("Write with influxd stopped: %v, want a retryable error", err)
	}
	if d := time.Since(t0); d > InfluxTimeout+time.Second {
		t.Errorf("Write with influxd stopped took %v", d)
	}
	t.Logf("influxd stopped: %v (after %v)", err, time.Since(t0))
	if err := s.Ping(ctx); err == nil {
		t.Error("Ping with influxd stopped succeeded")
	}
	if _, err := s.Query(ctx, Query{Points: []messages.PointKey{keyA}, Start: time.UnixMilli(ts), End: time.UnixMilli(ts + 1000), Every: time.Second, Fn: FnCount}); err == nil {
		t.Error("Query with influxd stopped succeeded")
	}
	srv.Restart()
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, batch(1)); err != nil {
		t.Fatalf("Write after restart: %v", err)
	}
	if n := srv.Count(t, "point"); n != 200 {
		t.Errorf("count = %d, want 200", n)
	}
	got, err := s.Query(ctx, Query{Points: []messages.PointKey{keyA}, Start: time.UnixMilli(ts), End: time.UnixMilli(ts + 1000), Every: time.Second, Fn: FnCount})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || len(got[0].Points) != 1 || got[0].Points[0].Value != 200 {
		t.Errorf("count query after restart: %+v", got)
	}
}

func TestInfluxCloseTwice(t *testing.T) {
	s, err := NewInflux(config.InfluxDB{URL: "http://127.0.0.1:1", Bucket: "ems/autogen", Measurement: "point"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestInfluxTimeout: a server that accepts and never answers costs the
// request timeout, then a retryable error.
func TestInfluxTimeout(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c) // read nothing, answer nothing
		}
	}()
	s, err := newInflux(config.InfluxDB{URL: "http://" + l.Addr().String(), Bucket: "ems/autogen", Measurement: "point"}, nil, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t0 := time.Now()
	err = s.Write(context.Background(), []messages.PointUpdate{{Key: keyA, Value: 1, Timestamp: 1}})
	if err == nil || errors.Is(err, ErrRejected) {
		t.Fatalf("Write to a silent server: %v, want a retryable error", err)
	}
	if d := time.Since(t0); d < 300*time.Millisecond || d > 3*time.Second {
		t.Errorf("Write to a silent server returned after %v, want about 300ms", d)
	}
	if err := s.Ping(context.Background()); err == nil {
		t.Error("Ping of a silent server succeeded")
	}
}

func TestRejectedStatus(t *testing.T) {
	f := func(status int, want bool) {
		t.Helper()
		if got := rejected(status); got != want {
			t.Errorf("rejected(%d) = %v, want %v", status, got, want)
		}
	}
	f(400, true)
	f(413, true)
	f(422, true)
	f(401, false)
	f(403, false)
	f(404, false)
	f(408, false)
	f(429, false)
	f(500, false)
	f(503, false)
}
