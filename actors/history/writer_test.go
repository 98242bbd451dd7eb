package history

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

// TestWriterSetsAsideRejectedBatch: InfluxDB answers a batch with a 4xx
// (a field type conflict); the writer sets the batch aside in the spool,
// counts it, and the points after it keep flowing.
func TestWriterSetsAsideRejectedBatch(t *testing.T) {
	influx := testenv.StartInfluxDB(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	store, err := NewInflux(config.InfluxDB{URL: influx.URL(), Bucket: "ems/autogen", Measurement: "point"}, log)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := OpenSpool(filepath.Join(t.TempDir(), "spool.db"), 64<<20, log)
	if err != nil {
		t.Fatal(err)
	}
	w := NewWriter(store, sp, WriterOptions{BatchSize: 10, FlushInterval: 50 * time.Millisecond, Log: log})
	w.Start()
	t.Cleanup(w.Stop)

	// A month ago someone wrote "value" as a string: a late float sample
	// from then is a type conflict (InfluxDB 1.x fixes field types per
	// measurement and shard; shards of the default policy span 7 days).
	late := time.Now().Add(-30 * 24 * time.Hour).UnixMilli()
	if err := influx.WriteLines(`point,channel=9,type=m,point=1 value="text" ` + strconv.FormatInt(late*1e6, 10)); err != nil {
		t.Fatal(err)
	}
	w.Publish(&messages.PointUpdate{Key: messages.PointKey{Channel: 9, Type: 'm', Point: 1}, Value: 1.5, Timestamp: late + 1})
	ts := time.Now().UnixMilli()
	pub := func(pt uint32, v float64) {
		ts++
		w.Publish(&messages.PointUpdate{Key: messages.PointKey{Channel: 9, Type: 'm', Point: pt}, Value: v, Timestamp: ts})
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return sp.Stats().Rejected == 1 }, "the conflicting batch set aside")
	for i := 0; i < 20; i++ {
		pub(2, float64(i))
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return influx.Count(t, "point") == 20 }, // the 20 floats
		"the writer goes on after a rejected batch (count %d)", influx.Count(t, "point"))
	if st := sp.Stats(); st.Batches != 0 || st.Rejected != 1 {
		t.Fatalf("spool %+v: the rejected batch must not be retried", st)
	}
}

// TestWriterShedsBacklogToSpool: a burst far faster than the store takes
// it does not pile up in memory: beyond MaxBuffer the backlog goes to the
// spool (the warning says so) and every point reaches the store, in order.
func TestWriterShedsBacklogToSpool(t *testing.T) {
	var logs testenv.LogBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	dir := t.TempDir()
	store, err := OpenEmbedded(filepath.Join(dir, "h.db"), 0, log)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := OpenSpool(filepath.Join(dir, "spool.db"), 256<<20, log)
	if err != nil {
		t.Fatal(err)
	}
	w := NewWriter(store, sp, WriterOptions{BatchSize: 500, MaxBuffer: 2000, FlushInterval: 20 * time.Millisecond, Log: log})
	key := messages.PointKey{Channel: 9, Type: 'm', Point: 1}
	const n = 100_000
	t0 := time.Now().Add(-time.Hour).UnixMilli()
	for i := 0; i < n; i++ { // before Start: the whole burst is waiting
		w.Publish(&messages.PointUpdate{Key: key, Value: float64(i), Timestamp: t0 + int64(i)})
	}
	w.Start()
	t.Cleanup(w.Stop)
	q := Query{Points: []messages.PointKey{key}, Start: time.UnixMilli(t0), End: time.UnixMilli(t0 + n), Every: time.Millisecond, Fn: FnLast}
	var got []Sample
	testenv.Eventually(t, 20*time.Second, func() bool {
		ss, err := store.Query(context.Background(), q)
		if err != nil || len(ss) != 1 {
			return false
		}
		got = ss[0].Points
		return len(got) == n && sp.Stats().Batches == 0
	}, "all %d points in the store (have %d)", n, len(got))
	for i, s := range got {
		if s.Value != float64(i) {
			t.Fatalf("point %d is %v: out of order or lost", i, s.Value)
		}
	}
	if !strings.Contains(logs.String(), "the backlog goes to the spool") {
		t.Fatalf("the backlog was not shed to the spool:\n%s", logs.String())
	}
}
