package durable

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"

	"github.com/voltage-ems/voltage/test/testenv"
)

func openDedupeT(t *testing.T, path string, o DedupeOptions) *Dedupe {
	t.Helper()
	d, err := OpenDedupe(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func claim(t *testing.T, d *Dedupe, id string, now time.Time) bool {
	t.Helper()
	first, err := d.Claim(id, now)
	if err != nil {
		t.Fatal(err)
	}
	return first
}

// TestDedupeClaimTwiceSurvivesReopen: an id is executed once, its result
// kept, across a close and reopen (a node restart with Redis emptied).
func TestDedupeClaimTwiceSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "dedupe.db")
	now := time.Now()
	d := openDedupeT(t, path, DedupeOptions{})
	if !claim(t, d, "cmd-1", now) {
		t.Fatal("first claim refused")
	}
	if claim(t, d, "cmd-1", now.Add(time.Second)) {
		t.Fatal("second claim accepted")
	}
	if res, claimed, err := d.Result("cmd-1"); err != nil || !claimed || res != nil {
		t.Fatalf("pending: %q %v %v", res, claimed, err)
	}
	if err := d.Done("cmd-1", []byte(`{"status":"success"}`)); err != nil {
		t.Fatal(err)
	}
	if err := d.Done("cmd-never", []byte(`{}`)); err == nil || !strings.Contains(err.Error(), ErrNotClaimed.Error()) {
		t.Fatalf("Done of an unclaimed id: %v", err)
	}
	if _, err := d.Claim("", now); err == nil {
		t.Fatal("empty id claimed")
	}
	if _, err := d.Claim(strings.Repeat("x", MaxDedupeIDLen+1), now); err == nil {
		t.Fatal("overlong id claimed")
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	d = openDedupeT(t, path, DedupeOptions{})
	if d.Damage() != nil || d.Len() != 1 {
		t.Fatalf("reopened: damage %v, %d ids", d.Damage(), d.Len())
	}
	if claim(t, d, "cmd-1", now.Add(time.Minute)) {
		t.Fatal("claimed again after a restart")
	}
	if res, claimed, err := d.Result("cmd-1"); err != nil || !claimed || string(res) != `{"status":"success"}` {
		t.Fatalf("result after reopen: %q %v %v", res, claimed, err)
	}
	if res, claimed, err := d.Result("cmd-2"); err != nil || claimed || res != nil {
		t.Fatalf("unknown id: %q %v %v", res, claimed, err)
	}
}

// TestDedupeExpiry: within the window an id is a duplicate; after it, it
// may run again (even before the sweep), and the sweep removes it.
func TestDedupeExpiry(t *testing.T) {
	reg := prometheus.NewRegistry()
	d := openDedupeT(t, filepath.Join(t.TempDir(), "dedupe.db"), DedupeOptions{Window: time.Hour, Registerer: reg})
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	claim(t, d, "a", t0)
	claim(t, d, "b", t0.Add(30*time.Minute))
	if claim(t, d, "a", t0.Add(59*time.Minute)) {
		t.Fatal("claimed again within the window")
	}
	if !claim(t, d, "a", t0.Add(61*time.Minute)) {
		t.Fatal("not claimable after the window")
	}
	if d.Len() != 2 {
		t.Fatalf("%d ids", d.Len())
	}
	// a was claimed again at t0+61m: at t0+100m only b is expired.
	if n, err := d.Sweep(t0.Add(100 * time.Minute)); err != nil || n != 1 {
		t.Fatalf("sweep removed %d (%v)", n, err)
	}
	if _, claimed, _ := d.Result("b"); claimed {
		t.Fatal("b still there after the sweep")
	}
	if _, claimed, _ := d.Result("a"); !claimed {
		t.Fatal("a swept within its window")
	}
	if d.Len() != 1 || testutil.ToFloat64(d.expired) != 1 {
		t.Fatalf("%d ids, %v expired", d.Len(), testutil.ToFloat64(d.expired))
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`# HELP voltage_dedupe_ids Command ids in the durable dedupe store.
# TYPE voltage_dedupe_ids gauge
voltage_dedupe_ids 1
`), "voltage_dedupe_ids"); err != nil {
		t.Fatal(err)
	}
}

// TestDedupeSweepLoop: the periodic sweep removes expired ids by itself.
func TestDedupeSweepLoop(t *testing.T) {
	var now atomic.Int64
	t0 := time.Now()
	now.Store(t0.UnixNano())
	d := openDedupeT(t, filepath.Join(t.TempDir(), "dedupe.db"), DedupeOptions{Window: time.Hour, SweepEvery: 10 * time.Millisecond,
		Now: func() time.Time { return time.Unix(0, now.Load()) }})
	for i := 0; i < 25; i++ {
		claim(t, d, fmt.Sprint("id-", i), t0)
	}
	now.Store(t0.Add(2 * time.Hour).UnixNano())
	testenv.Eventually(t, 5*time.Second, func() bool { return d.Len() == 0 }, "expired ids swept (%d left)", d.Len())
}

// TestDedupeBound: beyond MaxIDs the oldest ids go, counted and logged.
func TestDedupeBound(t *testing.T) {
	var logs testenv.LogBuffer
	d := openDedupeT(t, filepath.Join(t.TempDir(), "dedupe.db"), DedupeOptions{MaxIDs: 5, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	t0 := time.Now()
	for i := 0; i < 8; i++ {
		claim(t, d, fmt.Sprint("id-", i), t0.Add(time.Duration(i)*time.Second))
	}
	if d.Len() != 5 || testutil.ToFloat64(d.evicted) != 3 {
		t.Fatalf("%d ids, %v evicted", d.Len(), testutil.ToFloat64(d.evicted))
	}
	for i := 0; i < 8; i++ {
		_, claimed, _ := d.Result(fmt.Sprint("id-", i))
		if claimed != (i >= 3) {
			t.Fatalf("id-%d claimed %v", i, claimed)
		}
	}
	if !strings.Contains(logs.String(), "dedupe store full") {
		t.Fatalf("eviction not logged:\n%s", logs.String())
	}
}

// TestDedupeConcurrentClaims: of many concurrent claims of one id exactly
// one wins; concurrent claims of distinct ids all win.
func TestDedupeConcurrentClaims(t *testing.T) {
	d := openDedupeT(t, filepath.Join(t.TempDir(), "dedupe.db"), DedupeOptions{})
	now := time.Now()
	var wins atomic.Int32
	var wg sync.WaitGroup
	for g := 0; g < 50; g++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if first, err := d.Claim("same", now); err != nil {
				t.Error(err)
			} else if first {
				wins.Add(1)
			}
		}()
		go func() {
			defer wg.Done()
			if first, err := d.Claim(fmt.Sprint("own-", g), now); err != nil || !first {
				t.Errorf("own id: first %v, err %v", first, err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || d.Len() != 51 {
		t.Fatalf("%d winners of one id, %d ids", wins.Load(), d.Len())
	}
}

// TestDedupeDamagedFile: a dedupe.db overwritten with dd is moved aside,
// the store starts empty and works.
func TestDedupeDamagedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dedupe.db")
	d, err := OpenDedupe(path, DedupeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 300; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = d.Claim(fmt.Sprintf("command-%08d", i), time.Now()) }()
	}
	wg.Wait()
	_ = d.Close()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var root uint64
	_ = db.View(func(tx *bolt.Tx) error { root = uint64(tx.Bucket(dedupeIDs).Root()); return nil })
	_ = db.Close()
	ddPage(t, path, root)
	d = openDedupeT(t, path, DedupeOptions{})
	if dm := d.Damage(); dm == nil || dm.MovedTo == "" {
		t.Fatalf("damage %v", dm)
	}
	if d.Len() != 0 || !claim(t, d, "command-00000001", time.Now()) {
		t.Fatal("fresh store not usable")
	}
}
