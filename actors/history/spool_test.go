package history

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

// batch returns n measurements of channel 1001 starting at ms ts0, one per
// point, values from v0.
func spoolBatch(n int, ts0 int64, v0 float64) []messages.PointUpdate {
	us := make([]messages.PointUpdate, n)
	for i := range us {
		us[i] = messages.PointUpdate{
			Key:       messages.PointKey{Channel: 1001, Type: messages.Measurement, Point: uint32(10001 + i%100)},
			Value:     v0 + float64(i),
			Timestamp: ts0 + int64(i/100)*1000,
			Node:      "sub-a",
		}
	}
	return us
}

func openSpool(t testing.TB, path string, maxBytes int64, log *slog.Logger) *Spool {
	t.Helper()
	s, err := OpenSpool(path, maxBytes, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustOldest(t *testing.T, s *Spool) (uint64, []messages.PointUpdate) {
	t.Helper()
	id, pts, ok, err := s.Oldest()
	if err != nil || !ok {
		t.Fatalf("Oldest: ok %v, err %v", ok, err)
	}
	return id, pts
}

func TestSpoolFIFO(t *testing.T) {
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), 0, nil)
	if _, _, ok, err := s.Oldest(); ok || err != nil {
		t.Fatalf("empty spool: ok %v, err %v", ok, err)
	}
	if err := s.Append(nil); err != nil {
		t.Fatal(err)
	}
	b1, b2, b3 := spoolBatch(3, 1000, 1), spoolBatch(2, 2000, 10), spoolBatch(1, 3000, 100)
	for _, b := range [][]messages.PointUpdate{b1, b2, b3} {
		if err := s.Append(b); err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.Batches != 3 || st.Points != 6 || st.Bytes <= 0 || st.DroppedPoints != 0 || st.Rejected != 0 {
		t.Fatalf("stats %+v", st)
	}
	var prev uint64
	for i, want := range [][]messages.PointUpdate{b1, b2, b3} {
		id, got := mustOldest(t, s)
		if id <= prev {
			t.Fatalf("batch %d: id %d after %d", i, id, prev)
		}
		prev = id
		// Oldest is stable until Remove.
		if id2, _ := mustOldest(t, s); id2 != id {
			t.Fatalf("Oldest moved from %d to %d without Remove", id, id2)
		}
		if !sameUpdates(got, want) {
			t.Fatalf("batch %d: got %+v, want %+v", i, got, want)
		}
		if got[0].Node != "" {
			t.Fatalf("node kept: %q", got[0].Node)
		}
		if err := s.Remove(id); err != nil {
			t.Fatal(err)
		}
		if err := s.Remove(id); err != nil { // twice is fine
			t.Fatal(err)
		}
	}
	if _, _, ok, _ := s.Oldest(); ok {
		t.Fatal("spool not empty after removing everything")
	}
	if st := s.Stats(); st.Batches != 0 || st.Points != 0 || st.Bytes != 0 {
		t.Fatalf("stats after draining %+v", st)
	}
}

func TestSpoolSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "spool.db") // directory created
	s, err := OpenSpool(path, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := s.Append(spoolBatch(10, int64(i)*10_000, float64(i))); err != nil {
			t.Fatal(err)
		}
	}
	id1, _ := mustOldest(t, s)
	if err := s.Remove(id1); err != nil {
		t.Fatal(err)
	}
	id2, _ := mustOldest(t, s)
	if err := s.SetAside(id2, "type conflict"); err != nil {
		t.Fatal(err)
	}
	before := s.Stats()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	if err := s.Append(spoolBatch(1, 0, 0)); err == nil {
		t.Fatal("Append after Close succeeded")
	}
	if _, _, _, err := s.Oldest(); err == nil {
		t.Fatal("Oldest after Close succeeded")
	}

	s = openSpool(t, path, 0, nil)
	if d := s.Damage(); d != nil {
		t.Fatalf("intact spool reported damaged: %v", d)
	}
	if after := s.Stats(); after != before {
		t.Fatalf("stats after reopen %+v, before %+v", after, before)
	}
	id3, got := mustOldest(t, s)
	if !sameUpdates(got, spoolBatch(10, 2*10_000, 2)) {
		t.Fatalf("oldest after reopen: %+v", got)
	}
	// The sequence continues, even past the batches that are gone.
	if err := s.Append(spoolBatch(1, 99, 99)); err != nil {
		t.Fatal(err)
	}
	var last uint64
	for {
		id, _, ok, err := s.Oldest()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		last = id
		if err := s.Remove(id); err != nil {
			t.Fatal(err)
		}
	}
	if last != id3+2 {
		t.Fatalf("new batch got id %d, want %d", last, id3+2)
	}
	// An empty spool still continues the sequence after a restart.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openSpool(t, path, 0, nil)
	if err := s.Append(spoolBatch(1, 0, 0)); err != nil {
		t.Fatal(err)
	}
	if id, _ := mustOldest(t, s); id != last+1 {
		t.Fatalf("after restart with an empty spool: id %d, want %d", id, last+1)
	}
}

func TestSpoolBoundDropsOldest(t *testing.T) {
	const t0 = 1764090000000 // all batches encode to the same size
	var logs testenv.LogBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	probe := openSpool(t, filepath.Join(t.TempDir(), "probe.db"), 0, nil)
	if err := probe.Append(spoolBatch(100, t0, 0)); err != nil {
		t.Fatal(err)
	}
	one := probe.Stats().Bytes // bytes of one batch of 100 points like the ones below

	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), 3*one, log)
	for i := range 5 {
		if err := s.Append(spoolBatch(100, t0+int64(i)*1000, 0)); err != nil {
			t.Fatal(err)
		}
		if st := s.Stats(); st.Bytes > 3*one {
			t.Fatalf("after batch %d: %d bytes, bound %d", i, st.Bytes, 3*one)
		}
	}
	st := s.Stats()
	if st.Batches != 3 || st.Points != 300 || st.DroppedPoints != 200 {
		t.Fatalf("stats %+v", st)
	}
	_, got := mustOldest(t, s)
	if got[0].Timestamp != t0+2000 {
		t.Fatalf("oldest kept batch starts at %d, want %d (the third)", got[0].Timestamp, t0+2000)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "dropped the oldest batches") ||
		!strings.Contains(logs.String(), "points=100") {
		t.Fatalf("drops not logged at warn:\n%s", logs.String())
	}

	// A batch bigger than the whole bound is dropped itself, counted, logged.
	if err := s.Append(spoolBatch(1000, t0, 0)); err != nil {
		t.Fatal(err)
	}
	st = s.Stats()
	if st.DroppedPoints != 200+300+1000 || st.Batches != 0 {
		t.Fatalf("after an oversized batch: %+v", st)
	}
	if !strings.Contains(logs.String(), "bigger than the whole spool") {
		t.Fatalf("oversized batch not logged:\n%s", logs.String())
	}
}

func TestSpoolBoundDropsSetAsideFirst(t *testing.T) {
	const t0 = 1764090000000
	probe := openSpool(t, filepath.Join(t.TempDir(), "probe.db"), 0, nil)
	if err := probe.Append(spoolBatch(100, t0, 0)); err != nil {
		t.Fatal(err)
	}
	one := probe.Stats().Bytes

	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), 3*one+100, nil)
	for i := range 3 {
		if err := s.Append(spoolBatch(100, t0+int64(i)*1000, 0)); err != nil {
			t.Fatal(err)
		}
	}
	id, _ := mustOldest(t, s)
	if err := s.SetAside(id, "x"); err != nil { // the reason fits in the 100 spare bytes
		t.Fatal(err)
	}
	if err := s.Append(spoolBatch(100, t0+3000, 0)); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Rejected != 0 || st.Batches != 3 || st.DroppedPoints != 100 {
		t.Fatalf("stats %+v: want the set-aside batch dropped, pending kept", st)
	}
	if _, got := mustOldest(t, s); got[0].Timestamp != t0+1000 {
		t.Fatalf("oldest pending starts at %d, want %d", got[0].Timestamp, t0+1000)
	}
}

func TestSpoolSetAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s := openSpool(t, path, 0, nil)
	for i := range 3 {
		if err := s.Append(spoolBatch(5, int64(i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	id, _ := mustOldest(t, s)
	if err := s.SetAside(id, "influxdb 400: field type conflict"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetAside(id, "again"); err != nil { // already aside: nothing to do
		t.Fatal(err)
	}
	if err := s.SetAside(12345, "unknown"); err == nil {
		t.Fatal("SetAside of an unknown batch succeeded")
	}
	if next, _ := mustOldest(t, s); next == id {
		t.Fatal("a set-aside batch came back from Oldest")
	}
	st := s.Stats()
	if st.Rejected != 1 || st.Batches != 2 || st.Points != 10 {
		t.Fatalf("stats %+v", st)
	}
	if err := s.Remove(id); err != nil { // Remove does not touch set-aside batches
		t.Fatal(err)
	}
	if st := s.Stats(); st.Rejected != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSpoolCorruptBatchSetAside(t *testing.T) {
	var logs testenv.LogBuffer
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), 0, slog.New(slog.NewTextHandler(&logs, nil)))
	if err := s.Append(spoolBatch(2, 0, 0)); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(spoolBatch(2, 5, 0)); err != nil {
		t.Fatal(err)
	}
	// Damage the first batch the way a torn write could.
	s.mu.Lock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(spoolPending).Cursor().First()
		return tx.Bucket(spoolPending).Put(k, append([]byte{}, v[:len(v)-3]...))
	})
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	_, got := mustOldest(t, s)
	if got[0].Timestamp != 5 {
		t.Fatalf("got %+v, want the second batch", got)
	}
	if st := s.Stats(); st.Rejected != 1 || st.Batches != 1 {
		t.Fatalf("stats %+v", st)
	}
	if !strings.Contains(logs.String(), "corrupt batch set aside") {
		t.Fatalf("not logged:\n%s", logs.String())
	}
}

func TestSpoolConcurrentAppendAndDrain(t *testing.T) {
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), 0, nil)
	const batches = 50
	done := make(chan error, 1)
	go func() {
		for i := range batches {
			if err := s.Append(spoolBatch(10, int64(i)*1000, float64(i))); err != nil {
				done <- err
				return
			}
			_ = s.Stats()
		}
		done <- nil
	}()
	var got []float64 // first value of each batch, in the order drained
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < batches && time.Now().Before(deadline) {
		id, pts, ok, err := s.Oldest()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			time.Sleep(time.Millisecond) // poll: the appender is still going
			continue
		}
		got = append(got, pts[0].Value)
		if err := s.Remove(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(got) != batches {
		t.Fatalf("drained %d batches, want %d", len(got), batches)
	}
	for i, v := range got {
		if v != float64(i) {
			t.Fatalf("batch %d drained out of order: %v", i, got)
		}
	}
	if st := s.Stats(); st.Batches != 0 || st.Points != 0 || st.Bytes != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSpoolRejectsInvalidUpdates(t *testing.T) {
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), 0, nil)
	b := spoolBatch(3, 0, 0)
	b[1].Key.Type = 'x'
	if err := s.Append(b); err == nil {
		t.Fatal("invalid point type accepted")
	}
	if st := s.Stats(); st.Batches != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSpoolOpenLockedFile(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the 2 s lock timeout")
	}
	path := filepath.Join(t.TempDir(), "spool.db")
	openSpool(t, path, 0, nil)
	// bbolt's flock is per open file description, so a second open in the
	// same process sees the lock too.
	if s, err := OpenSpool(path, 0, nil); err == nil {
		_ = s.Close()
		t.Fatal("opened a spool another handle holds")
	}
}

// heapInUse returns the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// rss returns the resident set size of the process, as /proc reports it
// (empty where there is no /proc). It includes the pages of the bbolt
// file's memory map that were touched, which the kernel can reclaim.
func rss() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// TestSpoolMillionPointsFlatHeap spools 1,000,000 points in batches of 5000
// and checks the heap does not grow with the spool, then drains it.
func TestSpoolMillionPointsFlatHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("spools a million points")
	}
	path := filepath.Join(t.TempDir(), "spool.db")
	s := openSpool(t, path, 0, nil)
	const perBatch, total = 5000, 1_000_000
	b := spoolBatch(perBatch, 1764090000000, 0)
	base := heapInUse()
	t.Logf("before: RSS %s", rss())
	var peak uint64
	for i := range total / perBatch {
		for j := range b {
			b[j].Timestamp += 50_000 // the next 50 s
			b[j].Value = float64(i*perBatch + j)
		}
		if err := s.Append(b); err != nil {
			t.Fatal(err)
		}
		if i%20 == 19 {
			peak = max(peak, heapInUse())
		}
	}
	st := s.Stats()
	if st.Points != total || st.Batches != total/perBatch {
		t.Fatalf("stats %+v", st)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("1M points spooled: heap in use %.1f MB before, peak %.1f MB; RSS %s; %d bytes of batches (%.1f B/point), file %.1f MB",
		float64(base)/1e6, float64(peak)/1e6, rss(), st.Bytes, float64(st.Bytes)/total, float64(fi.Size())/1e6)
	if peak > base+50<<20 {
		t.Fatalf("heap grew from %d to %d bytes while spooling", base, peak)
	}
	// Reopen (counters rebuilt by a scan) and drain: still flat.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openSpool(t, path, 0, nil)
	if got := s.Stats(); got != st {
		t.Fatalf("stats after reopen %+v, want %+v", got, st)
	}
	var n int64
	for {
		id, pts, ok, err := s.Oldest()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		n += int64(len(pts))
		if err := s.Remove(id); err != nil {
			t.Fatal(err)
		}
	}
	if n != total {
		t.Fatalf("drained %d points, want %d", n, total)
	}
	if h := heapInUse(); h > base+50<<20 {
		t.Fatalf("heap %d bytes after draining, was %d", h, base)
	}
}

// BenchmarkSpoolAppend appends batches of 5000 points (one durable
// transaction each) and reports the bytes each point takes in the spool and
// the live heap at the end, which must not depend on b.N.
func BenchmarkSpoolAppend(b *testing.B) {
	path := filepath.Join(b.TempDir(), "spool.db")
	s := openSpool(b, path, 0, nil)
	const perBatch = 5000
	us := spoolBatch(perBatch, 1764090000000, 0)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		for j := range us {
			us[j].Timestamp += 50_000
		}
		if err := s.Append(us); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	st := s.Stats()
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(st.Points)/elapsed.Seconds(), "points/s")
	b.ReportMetric(float64(st.Bytes)/float64(st.Points), "B/point")
	b.ReportMetric(float64(fi.Size())/float64(st.Points), "file-B/point")
	b.ReportMetric(float64(heapInUse())/1e6, "heap-MB")
}

// BenchmarkSpoolReplay drains batches of 5000 points: Oldest, then Remove
// (one durable transaction), as the replayer does.
func BenchmarkSpoolReplay(b *testing.B) {
	path := filepath.Join(b.TempDir(), "spool.db")
	s := openSpool(b, path, 0, nil)
	const perBatch = 5000
	us := spoolBatch(perBatch, 1764090000000, 0)
	for range b.N {
		for j := range us {
			us[j].Timestamp += 50_000
		}
		if err := s.Append(us); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	var n int
	start := time.Now()
	for range b.N {
		id, pts, ok, err := s.Oldest()
		if err != nil || !ok {
			b.Fatalf("ok %v, err %v", ok, err)
		}
		n += len(pts)
		if err := s.Remove(id); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "points/s")
}

// TestSpoolDamagedFileStartsEmpty: a spool file damaged with the real dd
// and truncate opens empty and works; the damaged file is kept next to it.
func TestSpoolDamagedFileStartsEmpty(t *testing.T) {
	f := func(name string, damage func(t *testing.T, path string), want string) {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "spool.db")
			s, err := OpenSpool(path, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 20 {
				if err := s.Append(spoolBatch(100, int64(i)*1000, float64(i))); err != nil {
					t.Fatal(err)
				}
			}
			_ = s.Close()
			damage(t, path)
			var logs testenv.LogBuffer
			s = openSpool(t, path, 0, slog.New(slog.NewTextHandler(&logs, nil)))
			d := s.Damage()
			if d == nil || d.MovedTo == "" || !strings.Contains(d.Reason, want) {
				t.Fatalf("damage %+v, want a reason with %q", d, want)
			}
			if _, err := os.Stat(d.MovedTo); err != nil || !strings.HasPrefix(filepath.Base(d.MovedTo), "spool.db.corrupt-") {
				t.Fatalf("damaged file at %q: %v", d.MovedTo, err)
			}
			if !strings.Contains(logs.String(), "level=ERROR msg=\"history spool: damaged file moved aside, starting empty\"") {
				t.Fatalf("not logged as an error:\n%s", logs.String())
			}
			if st := s.Stats(); st.Batches != 0 {
				t.Fatalf("fresh spool stats %+v", st)
			}
			if err := s.Append(spoolBatch(3, 0, 0)); err != nil {
				t.Fatal(err)
			}
			if _, got := mustOldest(t, s); !sameUpdates(got, spoolBatch(3, 0, 0)) {
				t.Fatalf("fresh spool returns %+v", got)
			}
		})
	}
	f("dd over the pending batches' page", func(t *testing.T, path string) {
		page := bucketPage(t, path, "pending")
		damageSh(t, "dd", "if=/dev/urandom", "of="+path, "bs=4096", fmt.Sprint("seek=", page), "count=1", "conv=notrunc", "status=none")
	}, "bbolt panicked")
	f("truncated", func(t *testing.T, path string) {
		st, _ := os.Stat(path)
		damageSh(t, "truncate", "-s", fmt.Sprint(st.Size()/3), path)
	}, "truncated")
	f("zeros", func(t *testing.T, path string) {
		if err := os.WriteFile(path, make([]byte, 1<<16), 0o600); err != nil {
			t.Fatal(err)
		}
	}, "not a bbolt file")
}
