package history

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

func openEmbedded(t testing.TB, path string, retention time.Duration, log *slog.Logger) *Embedded {
	t.Helper()
	e, err := OpenEmbedded(path, retention, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

var (
	embKeyV  = messages.PointKey{Channel: 1001, Type: messages.Measurement, Point: 10001}
	embKeyI  = messages.PointKey{Channel: 1001, Type: messages.Measurement, Point: 10002}
	embKeyS  = messages.PointKey{Channel: 1001, Type: messages.Signal, Point: 10001}
	embNever = messages.PointKey{Channel: 4242, Type: messages.Measurement, Point: 1}
)

func embUpd(k messages.PointKey, ts time.Time, v float64) messages.PointUpdate {
	return messages.PointUpdate{Key: k, Timestamp: ts.UnixMilli(), Value: v, Node: "sub-a"}
}

func embQuery(t *testing.T, e *Embedded, q Query) []Series {
	t.Helper()
	s, err := e.Query(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != len(q.Points) {
		t.Fatalf("%d series for %d points", len(s), len(q.Points))
	}
	return s
}

// values returns the (seconds after start, value) pairs of a series.
func embValues(s Series, start time.Time) [][2]float64 {
	out := [][2]float64{}
	for _, p := range s.Points {
		out = append(out, [2]float64{p.Time.Sub(start).Seconds(), p.Value})
	}
	return out
}

func embEqualPairs(a, b [][2]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestEmbeddedWriteQuery(t *testing.T) {
	now := time.Now().Truncate(time.Hour)
	start := now.Add(-time.Hour)
	at := func(s float64) time.Time { return start.Add(time.Duration(s * float64(time.Second))) }
	e := openEmbedded(t, filepath.Join(t.TempDir(), "history.db"), 0, nil)
	ctx := context.Background()
	// Two batches, points interleaved, the second later in time.
	if err := e.Write(ctx, []messages.PointUpdate{
		embUpd(embKeyV, at(-1), 999), // before start
		embUpd(embKeyV, at(0), 230),
		embUpd(embKeyI, at(0), 10),
		embUpd(embKeyS, at(0), 1),
		embUpd(embKeyV, at(30), 232),
		embUpd(embKeyI, at(30), math.NaN()), // never read: skipped
		embUpd(embKeyV, at(59.999), 234),
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.Write(ctx, []messages.PointUpdate{
		embUpd(embKeyV, at(60), 240), // on the boundary: second window
		embUpd(embKeyI, at(61), math.Inf(1)),
		embUpd(embKeyI, at(125), 12),
		embUpd(embKeyV, at(3600), 999), // == End: excluded
	}); err != nil {
		t.Fatal(err)
	}
	q := Query{Points: []messages.PointKey{embKeyV, embKeyI, embKeyS, embNever}, Start: start, End: start.Add(time.Hour), Every: time.Minute}
	f := func(fn string, want ...[][2]float64) {
		t.Helper()
		q.Fn = fn
		got := embQuery(t, e, q)
		for i, w := range want {
			if got[i].Key != q.Points[i] {
				t.Fatalf("%s: series %d is %v, want %v", fn, i, got[i].Key, q.Points[i])
			}
			if g := embValues(got[i], start); !embEqualPairs(g, w) {
				t.Fatalf("%s %v: got %v, want %v", fn, got[i].Key, g, w)
			}
		}
		if got[3].Points == nil {
			t.Fatalf("%s: unknown point has nil points, want empty", fn)
		}
	}
	none := [][2]float64{}
	f(FnMean, [][2]float64{{0, 232}, {60, 240}}, [][2]float64{{0, 10}, {120, 12}}, [][2]float64{{0, 1}}, none)
	f(FnMin, [][2]float64{{0, 230}, {60, 240}}, [][2]float64{{0, 10}, {120, 12}}, [][2]float64{{0, 1}}, none)
	f(FnMax, [][2]float64{{0, 234}, {60, 240}}, [][2]float64{{0, 10}, {120, 12}}, [][2]float64{{0, 1}}, none)
	f(FnLast, [][2]float64{{0, 234}, {60, 240}}, [][2]float64{{0, 10}, {120, 12}}, [][2]float64{{0, 1}}, none)
	f(FnCount, [][2]float64{{0, 3}, {60, 1}}, [][2]float64{{0, 1}, {120, 1}}, [][2]float64{{0, 1}}, none)

	// A range with no data, and a window as long as the range.
	empty := embQuery(t, e, Query{Points: []messages.PointKey{embKeyV}, Start: start.Add(-48 * time.Hour), End: start.Add(-47 * time.Hour), Every: time.Minute, Fn: FnMean})
	if len(empty[0].Points) != 0 {
		t.Fatalf("empty range: %v", empty[0].Points)
	}
	whole := embQuery(t, e, Query{Points: []messages.PointKey{embKeyV}, Start: start, End: start.Add(time.Hour), Every: time.Hour, Fn: FnCount})
	if g := embValues(whole[0], start); !embEqualPairs(g, [][2]float64{{0, 4}}) {
		t.Fatalf("one window: %v", g)
	}
	// Windows aligned to a start with sub-ms precision: samples before it
	// in the same ms are out.
	sub := start.Add(30*time.Second + 500*time.Microsecond)
	got := embQuery(t, e, Query{Points: []messages.PointKey{embKeyV}, Start: sub, End: start.Add(time.Hour), Every: 30 * time.Second, Fn: FnCount})
	if len(got[0].Points) != 1 || !got[0].Points[0].Time.Equal(sub) || got[0].Points[0].Value != 2 {
		t.Fatalf("sub-ms start: %v", got[0].Points)
	}
}

func TestEmbeddedSameMillisecond(t *testing.T) {
	e := openEmbedded(t, filepath.Join(t.TempDir(), "history.db"), 0, nil)
	ctx := context.Background()
	ts := time.Now().Truncate(time.Second)
	b := []messages.PointUpdate{embUpd(embKeyV, ts, 1), embUpd(embKeyV, ts, 2), embUpd(embKeyV, ts, 3)}
	b[1].Quality = messages.Bad
	if err := e.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	// A replayed batch adds nothing; an identical value with another
	// quality is another sample.
	if err := e.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	b2 := embUpd(embKeyV, ts, 3)
	b2.Quality = messages.Stale
	if err := e.Write(ctx, []messages.PointUpdate{b2}); err != nil {
		t.Fatal(err)
	}
	q := Query{Points: []messages.PointKey{embKeyV}, Start: ts, End: ts.Add(time.Second), Every: time.Second}
	q.Fn = FnCount
	if got := embQuery(t, e, q)[0].Points; len(got) != 1 || got[0].Value != 4 {
		t.Fatalf("count %v, want 4", got)
	}
	q.Fn = FnLast // the order of writing is kept within a ms
	if got := embQuery(t, e, q)[0].Points; len(got) != 1 || got[0].Value != 3 {
		t.Fatalf("last %v, want 3", got)
	}
	q.Fn = FnMean
	if got := embQuery(t, e, q)[0].Points; len(got) != 1 || got[0].Value != 9.0/4 {
		t.Fatalf("mean %v, want 2.25", got)
	}
}

func TestEmbeddedNegativeTimestamps(t *testing.T) {
	e := openEmbedded(t, filepath.Join(t.TempDir(), "history.db"), 100*365*24*time.Hour, nil)
	ctx := context.Background()
	t0 := time.UnixMilli(-1500)
	if err := e.Write(ctx, []messages.PointUpdate{embUpd(embKeyV, t0, 1), embUpd(embKeyV, time.UnixMilli(-1), 2), embUpd(embKeyV, time.UnixMilli(0), 3), embUpd(embKeyV, time.UnixMilli(1), 4)}); err != nil {
		t.Fatal(err)
	}
	got := embQuery(t, e, Query{Points: []messages.PointKey{embKeyV}, Start: t0, End: time.UnixMilli(1000), Every: 500 * time.Millisecond, Fn: FnLast})
	if g := embValues(got[0], t0); !embEqualPairs(g, [][2]float64{{0, 1}, {1, 2}, {1.5, 4}}) {
		t.Fatalf("got %v", g)
	}
}

func TestEmbeddedBadQueries(t *testing.T) {
	e := openEmbedded(t, filepath.Join(t.TempDir(), "history.db"), 0, nil)
	now := time.Now()
	f := func(name string, q Query, want string) {
		t.Helper()
		if _, err := e.Query(context.Background(), q); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: err %v, want it to mention %q", name, err, want)
		}
	}
	pts := []messages.PointKey{embKeyV}
	f("end before start", Query{Points: pts, Start: now, End: now.Add(-time.Hour), Every: time.Minute, Fn: FnMean}, "not after start")
	f("empty range", Query{Points: pts, Start: now, End: now, Every: time.Minute, Fn: FnMean}, "not after start")
	f("every 0", Query{Points: pts, Start: now.Add(-time.Hour), End: now, Fn: FnMean}, "must be positive")
	f("unknown fn", Query{Points: pts, Start: now.Add(-time.Hour), End: now, Every: time.Minute, Fn: "median"}, "median")
	// Absurd but valid: years 1 to 9999, a 1 ns window; nothing stored, so
	// nothing to aggregate.
	got := embQuery(t, e, Query{Points: pts, Start: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), End: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), Every: 1, Fn: FnMean})
	if len(got[0].Points) != 0 {
		t.Fatalf("got %v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.Write(ctx, []messages.PointUpdate{embUpd(embKeyV, now, 1)}); err == nil {
		t.Fatal("Write with a cancelled context succeeded")
	}
}

func TestEmbeddedRetention(t *testing.T) {
	path := filepath.Join(t.TempDir(), "history.db")
	e := openEmbedded(t, path, 24*time.Hour, nil)
	ctx := context.Background()
	now := time.Now().Truncate(time.Second)
	var b []messages.PointUpdate
	for h := range 48 { // one sample per hour over two days, for two points
		b = append(b, embUpd(embKeyV, now.Add(-time.Duration(h)*time.Hour), float64(h)))
	}
	b = append(b, embUpd(embKeyI, now.Add(-30*time.Hour), 1), embUpd(embKeyI, now.Add(-40*time.Hour), 2))
	if err := e.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	// Samples at exactly now-24h are kept; older ones go.
	n, err := e.Prune(now)
	if err != nil {
		t.Fatal(err)
	}
	if n != 23+2 {
		t.Fatalf("removed %d, want 25", n)
	}
	if n, err := e.Prune(now); err != nil || n != 0 {
		t.Fatalf("second pass removed %d, %v", n, err)
	}
	q := Query{Points: []messages.PointKey{embKeyV, embKeyI}, Start: now.Add(-72 * time.Hour), End: now.Add(time.Second), Every: 73 * time.Hour, Fn: FnCount}
	got := embQuery(t, e, q)
	if len(got[0].Points) != 1 || got[0].Points[0].Value != 25 {
		t.Fatalf("kept %v, want 25 samples", got[0].Points)
	}
	if len(got[1].Points) != 0 {
		t.Fatalf("point with only old samples: %v", got[1].Points)
	}
	// Its bucket is gone.
	if err := e.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(embPoints).Bucket([]byte(embKeyI.String())) != nil {
			t.Error("empty point bucket left behind")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Open prunes with the wall clock: data older than the retention from a
	// previous run is gone once Open returns.
	if err := e.Write(ctx, []messages.PointUpdate{embUpd(embKeyI, time.Now().Add(-25*time.Hour), 1)}); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	if err := e.Write(ctx, b); err == nil {
		t.Fatal("Write after Close succeeded")
	}
	e = openEmbedded(t, path, 24*time.Hour, nil)
	got = embQuery(t, e, q)
	if len(got[1].Points) != 0 {
		t.Fatalf("old sample survived the pass on open: %v", got[1].Points)
	}
	if len(got[0].Points) != 1 || got[0].Points[0].Value < 24 {
		t.Fatalf("recent samples lost on reopen: %v", got[0].Points)
	}
}

func TestEmbeddedPruneInChunks(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 120,000 samples")
	}
	e := openEmbedded(t, filepath.Join(t.TempDir(), "history.db"), time.Hour, nil)
	now := time.Now()
	old := now.Add(-2 * time.Hour)
	const per = 60_000 // more than one prune transaction for one point
	for _, k := range []messages.PointKey{embKeyV, embKeyI} {
		b := make([]messages.PointUpdate, per)
		for i := range b {
			b[i] = embUpd(k, old.Add(time.Duration(i)*time.Millisecond), float64(i))
		}
		if err := e.Write(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
	n, err := e.Prune(now)
	if err != nil || n != 2*per {
		t.Fatalf("removed %d, %v; want %d", n, err, 2*per)
	}
}

func TestEmbeddedDefaultRetention(t *testing.T) {
	e := openEmbedded(t, filepath.Join(t.TempDir(), "history.db"), 0, nil)
	if e.retention != 7*24*time.Hour {
		t.Fatalf("retention %v", e.retention)
	}
}

func BenchmarkEmbeddedWrite(b *testing.B) {
	e := openEmbedded(b, filepath.Join(b.TempDir(), "history.db"), 0, nil)
	const perBatch = 5000 // 100 points, 50 samples each, 1 s apart
	us := spoolBatch(perBatch, time.Now().Add(-24*time.Hour).UnixMilli(), 0)
	ctx := context.Background()
	b.ReportAllocs()
	var n int
	start := time.Now()
	for b.Loop() {
		for j := range us {
			us[j].Timestamp += 50_000
		}
		if err := e.Write(ctx, us); err != nil {
			b.Fatal(err)
		}
		n += len(us)
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "points/s")
}

func BenchmarkEmbeddedQuery(b *testing.B) {
	e := openEmbedded(b, filepath.Join(b.TempDir(), "history.db"), 0, nil)
	// A day of one point at 1 s: 86,400 samples.
	t0 := time.Now().Add(-24 * time.Hour).Truncate(time.Hour)
	us := make([]messages.PointUpdate, 0, 86_400)
	for i := range 86_400 {
		us = append(us, embUpd(embKeyV, t0.Add(time.Duration(i)*time.Second), float64(i)))
	}
	if err := e.Write(context.Background(), us); err != nil {
		b.Fatal(err)
	}
	q := Query{Points: []messages.PointKey{embKeyV}, Start: t0, End: t0.Add(24 * time.Hour), Every: time.Minute, Fn: FnMean}
	b.ReportAllocs()
	start := time.Now()
	var n int
	for b.Loop() {
		s, err := e.Query(context.Background(), q)
		if err != nil || len(s[0].Points) != 1440 {
			b.Fatalf("%v, %d windows", err, len(s[0].Points))
		}
		n += 86_400
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "samples/s")
}

// damageSh runs dd or truncate on a history file.
func damageSh(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// bucketPage returns the root page of a nested bucket of the closed file.
func bucketPage(t *testing.T, path string, names ...string) uint64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var root uint64
	_ = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(names[0]))
		for _, n := range names[1:] {
			b = b.Bucket([]byte(n))
		}
		root = uint64(b.Root())
		return nil
	})
	if root == 0 {
		t.Fatalf("bucket %v is inline", names)
	}
	return root
}

// TestEmbeddedDamagedFileStartsEmpty damages a history file with the real
// dd and truncate, the way issue 12 found it (a garbage page panicked
// bbolt, a truncated file died with SIGBUS): the store opens empty and
// works, the damaged file is next to it, the error is logged.
func TestEmbeddedDamagedFileStartsEmpty(t *testing.T) {
	start := time.Now().Add(-time.Hour).Truncate(time.Second)
	fill := func(t *testing.T, path string) {
		e, err := OpenEmbedded(path, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		batch := make([]messages.PointUpdate, 0, 3000)
		for i := 0; i < 3000; i++ {
			batch = append(batch, embUpd(embKeyV, start.Add(time.Duration(i)*time.Second), float64(i)))
		}
		if err := e.Write(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}
	f := func(name string, damage func(t *testing.T, path string), want string) {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "history.db")
			fill(t, path)
			damage(t, path)
			var logs testenv.LogBuffer
			e := openEmbedded(t, path, 0, slog.New(slog.NewTextHandler(&logs, nil)))
			d := e.Damage()
			if d == nil || d.MovedTo == "" || !strings.Contains(d.Reason, want) {
				t.Fatalf("damage %+v, want a reason with %q", d, want)
			}
			if _, err := os.Stat(d.MovedTo); err != nil || filepath.Dir(d.MovedTo) != filepath.Dir(path) ||
				!strings.HasPrefix(filepath.Base(d.MovedTo), "history.db.corrupt-") {
				t.Fatalf("damaged file at %q: %v", d.MovedTo, err)
			}
			if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "damaged file moved aside") {
				t.Fatalf("not logged as an error:\n%s", logs.String())
			}
			q := Query{Points: []messages.PointKey{embKeyV}, Start: start.Add(-time.Hour), End: time.Now().Add(time.Hour), Every: 24 * time.Hour, Fn: FnCount}
			if got := embQuery(t, e, q); len(got[0].Points) != 0 {
				t.Fatalf("fresh store has samples: %v", got[0].Points)
			}
			if err := e.Write(context.Background(), []messages.PointUpdate{embUpd(embKeyV, time.Now(), 1)}); err != nil {
				t.Fatal(err)
			}
			if got := embQuery(t, e, q); len(got[0].Points) != 1 || got[0].Points[0].Value != 1 {
				t.Fatalf("fresh store: %v", got[0].Points)
			}
		})
	}
	f("dd over a point's page", func(t *testing.T, path string) {
		page := bucketPage(t, path, "points", embKeyV.String())
		damageSh(t, "dd", "if=/dev/urandom", "of="+path, "bs=4096", fmt.Sprint("seek=", page), "count=1", "conv=notrunc", "status=none")
	}, "bbolt panicked")
	f("truncated", func(t *testing.T, path string) {
		st, _ := os.Stat(path)
		damageSh(t, "truncate", "-s", fmt.Sprint(st.Size()/2), path)
	}, "truncated")
	f("replaced by text", func(t *testing.T, path string) {
		if err := os.WriteFile(path, []byte(strings.Repeat("not a database\n", 1000)), 0o600); err != nil {
			t.Fatal(err)
		}
	}, "not a bbolt file")
	f("a sample of the wrong size", func(t *testing.T, path string) {
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(embPoints).Bucket([]byte(embKeyV.String())).Put([]byte{1, 2, 3}, []byte{4})
		})
		_ = db.Close()
	}, "bucket points/1001:m:10001/0x010203: sample of 3+1 bytes, want 9+9")
	f("the spool's file", func(t *testing.T, path string) {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		s, err := OpenSpool(path, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Close()
	}, "not a history store")
}

// TestEmbeddedIntactFileKeepsSamples: the check at open finds nothing on
// an intact file and the samples are still there.
func TestEmbeddedIntactFileKeepsSamples(t *testing.T) {
	path := filepath.Join(t.TempDir(), "history.db")
	now := time.Now().Truncate(time.Second)
	e, err := OpenEmbedded(path, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Write(context.Background(), []messages.PointUpdate{embUpd(embKeyV, now, 230), embUpd(embKeyS, now, 1)}); err != nil {
		t.Fatal(err)
	}
	_ = e.Close()
	e = openEmbedded(t, path, 0, nil)
	if d := e.Damage(); d != nil {
		t.Fatalf("intact file: %v", d)
	}
	got := embQuery(t, e, Query{Points: []messages.PointKey{embKeyV, embKeyS}, Start: now.Add(-time.Minute), End: now.Add(time.Minute), Every: time.Hour, Fn: FnLast})
	if len(got[0].Points) != 1 || got[0].Points[0].Value != 230 || len(got[1].Points) != 1 {
		t.Fatalf("samples after reopen: %+v", got)
	}
}
