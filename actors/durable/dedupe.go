package durable

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
)

// Dedupe store layout (one bbolt file, data_dir/dedupe.db):
//
//	bucket "ids":     command id -> 8 bytes big-endian Unix ms of the claim,
//	                  then the final result (JSON) once Done, else nothing
//	bucket "by_time": 8 bytes big-endian Unix ms of the claim + id -> empty
//	                  (claim order: the sweep and the eviction of the oldest)
//	bucket "meta":    "version" = 1; "count" = 8 bytes big-endian, the ids
var (
	dedupeIDs     = []byte("ids")
	dedupeByTime  = []byte("by_time")
	dedupeMeta    = []byte("meta")
	dedupeVersion = []byte("version")
	dedupeCount   = []byte("count")
)

// Defaults of DedupeOptions.
const (
	DefaultDedupeWindow     = 24 * time.Hour
	DefaultDedupeMaxIDs     = 1_000_000
	DefaultDedupeSweepEvery = time.Minute
	DefaultDedupeBatchDelay = time.Millisecond
	// MaxDedupeIDLen bounds the length of a command id.
	MaxDedupeIDLen = 256
)

const (
	dedupeFormat     = 1
	dedupeSweepChunk = 10_000
)

// ErrNotClaimed is returned by Done for an id that was never claimed (or
// has expired since).
var ErrNotClaimed = errors.New("command id not claimed")

// DedupeOptions configure a Dedupe store; zero values take the defaults.
type DedupeOptions struct {
	// Window is how long an id is remembered (24 h).
	Window time.Duration
	// MaxIDs bounds the ids kept (1,000,000): beyond it the oldest go,
	// counted in voltage_dedupe_evicted_total and logged.
	MaxIDs int
	// SweepEvery is the period of the pass that removes expired ids (1 min).
	SweepEvery time.Duration
	// BatchDelay is how long a claim waits for others to share its commit
	// (bbolt's MaxBatchDelay; 1 ms).
	BatchDelay time.Duration
	Log        *slog.Logger
	// Registerer exports voltage_dedupe_* metrics (nil: not exported).
	Registerer prometheus.Registerer
	// Now is the clock of the sweep (default time.Now).
	Now func() time.Time
}

// Dedupe remembers the command ids this node executed, on disk, so that an
// id is executed at most once within the window even when Redis lost its
// data. Safe for concurrent use.
type Dedupe struct {
	db     *bolt.DB
	damage *Damage
	o      DedupeOptions
	log    *slog.Logger

	ids       atomic.Int64
	claims    *prometheus.CounterVec
	evicted   prometheus.Counter
	expired   prometheus.Counter
	lastWarn  atomic.Int64 // Unix ns of the last eviction warning
	inflight  atomic.Int32 // claims between their read and their commit
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// OpenDedupe opens (or creates) the dedupe store at path through OpenBolt
// (a damaged file is moved aside and the store starts empty: Damage says
// so), removes the expired ids, and sweeps again every SweepEvery until
// Close.
func OpenDedupe(path string, o DedupeOptions) (*Dedupe, error) {
	if o.Window <= 0 {
		o.Window = DefaultDedupeWindow
	}
	if o.MaxIDs <= 0 {
		o.MaxIDs = DefaultDedupeMaxIDs
	}
	if o.SweepEvery <= 0 {
		o.SweepEvery = DefaultDedupeSweepEvery
	}
	if o.BatchDelay <= 0 {
		o.BatchDelay = DefaultDedupeBatchDelay
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	var n int64 // ids counted by the walk
	db, damage, err := OpenBolt(path, BoltOptions{Check: func(p [][]byte, k, v []byte) error {
		err := checkDedupe(p, k, v)
		if err == nil && len(p) == 1 && bytes.Equal(p[0], dedupeIDs) {
			n++
		}
		return err
	}})
	if err != nil {
		return nil, fmt.Errorf("dedupe store %s: %w", path, err)
	}
	if damage != nil && damage.MovedTo != "" {
		n = 0
		o.Log.Error("dedupe store: damaged file moved aside, starting empty (ids executed before are forgotten)",
			"file", path, "moved_to", damage.MovedTo, "reason", damage.Reason)
	} else if damage != nil {
		o.Log.Error("dedupe store: damaged meta page skipped, file kept", "file", path, "reason", damage.Reason)
	}
	d := &Dedupe{db: db, damage: damage, o: o, log: o.Log,
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voltage_dedupe_claims_total",
			Help: "Command ids claimed in the durable dedupe store, by result: first (execute it) or duplicate (executed before)."}, []string{"result"}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_dedupe_evicted_total",
			Help: "Command ids forgotten before the end of the window because the store was full."}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_dedupe_expired_total",
			Help: "Command ids removed by the sweep at the end of the window."}),
	}
	d.claims.WithLabelValues("first")
	d.claims.WithLabelValues("duplicate")
	if o.Registerer != nil {
		o.Registerer.MustRegister(d.claims, d.evicted, d.expired, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "voltage_dedupe_ids", Help: "Command ids in the durable dedupe store."}, func() float64 { return float64(d.ids.Load()) }))
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(dedupeMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(dedupeVersion, []byte{dedupeFormat}); err != nil {
			return err
		}
		// The walk counted the ids: the count is right even if it was not.
		if err := meta.Put(dedupeCount, binary.BigEndian.AppendUint64(nil, uint64(n))); err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(dedupeIDs); err != nil {
			return err
		}
		_, err = tx.CreateBucketIfNotExists(dedupeByTime)
		return err
	})
	if err != nil {
		closeQuietly(db)
		return nil, fmt.Errorf("dedupe store %s: %w", path, err)
	}
	d.ids.Store(n)
	db.MaxBatchDelay = o.BatchDelay
	if _, err := d.Sweep(o.Now()); err != nil {
		d.log.Error("dedupe store: sweep failed", "err", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.wg.Add(1)
	go d.sweepLoop(ctx)
	return d, nil
}

// checkDedupe validates one entry of the file for OpenBolt.
func checkDedupe(path [][]byte, k, v []byte) error {
	switch len(path) {
	case 0:
		if !bytes.Equal(k, dedupeIDs) && !bytes.Equal(k, dedupeByTime) && !bytes.Equal(k, dedupeMeta) {
			return errors.New("unexpected top-level bucket (not a dedupe store)")
		}
	case 1:
		switch {
		case v == nil:
			return errors.New("unexpected nested bucket (not a dedupe store)")
		case bytes.Equal(path[0], dedupeMeta):
			if bytes.Equal(k, dedupeVersion) && (len(v) != 1 || v[0] != dedupeFormat) {
				return fmt.Errorf("format version %x, this voltage reads %d", v, dedupeFormat)
			}
		case bytes.Equal(path[0], dedupeIDs):
			if len(k) == 0 || len(k) > MaxDedupeIDLen || len(v) < 8 {
				return fmt.Errorf("id of %d bytes with a value of %d bytes", len(k), len(v))
			}
		case len(k) <= 8 || len(v) != 0:
			return fmt.Errorf("claim-time key of %d bytes with a value of %d bytes", len(k), len(v))
		}
	default:
		return errors.New("buckets nested too deep (not a dedupe store)")
	}
	return nil
}

// Damage is what the check at open found wrong with the file (nil: it was
// intact, new or missing).
func (d *Dedupe) Damage() *Damage { return d.damage }

func validID(id string) error {
	if id == "" || len(id) > MaxDedupeIDLen {
		return fmt.Errorf("command id of %d bytes: want 1 to %d", len(id), MaxDedupeIDLen)
	}
	return nil
}

func timeKey(ms int64, id []byte) []byte {
	k := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(id)), uint64(ms))
	return append(k, id...)
}

// Claim records id as executed at now, unless it already is within the
// window. first is true when the caller is the first to claim it (and must
// execute the command); the claim is committed and fsync'd before Claim
// returns true. Concurrent claims share one commit.
func (d *Dedupe) Claim(id string, now time.Time) (first bool, err error) {
	if err := validID(id); err != nil {
		return false, err
	}
	key := []byte(id)
	ms := now.UnixMilli()
	horizon := ms - d.o.Window.Milliseconds()
	// A duplicate needs no commit: answer it from a read transaction (the
	// write below checks again for claims racing with this one).
	var dup bool
	if err := d.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(dedupeIDs).Get(key)
		dup = v != nil && int64(binary.BigEndian.Uint64(v)) > horizon
		return nil
	}); err != nil {
		return false, fmt.Errorf("dedupe store: claim %q: %w", id, err)
	}
	if dup {
		d.claims.WithLabelValues("duplicate").Inc()
		return false, nil
	}
	val := binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(ms))
	tk := timeKey(ms, key)
	var evicted, delta int64
	// A claim alone commits at once; claims that overlap share commits
	// through Batch (whose delay would only slow a lone claim down).
	commit := d.db.Batch
	if d.inflight.Add(1) == 1 {
		commit = d.db.Update
	}
	defer d.inflight.Add(-1)
	err = commit(func(tx *bolt.Tx) error {
		first, evicted, delta = false, 0, 0 // the function may run again
		ids, byTime, meta := tx.Bucket(dedupeIDs), tx.Bucket(dedupeByTime), tx.Bucket(dedupeMeta)
		count := int64(binary.BigEndian.Uint64(meta.Get(dedupeCount)))
		before := count
		if v := ids.Get(key); v != nil {
			at := int64(binary.BigEndian.Uint64(v))
			if at > horizon {
				return nil // executed within the window
			}
			// Expired, not swept yet: forget the old claim.
			if err := byTime.Delete(timeKey(at, key)); err != nil {
				return err
			}
			count--
		}
		if err := ids.Put(key, val); err != nil {
			return err
		}
		if err := byTime.Put(tk, nil); err != nil {
			return err
		}
		count++
		c := byTime.Cursor()
		for k, _ := c.First(); k != nil && count > int64(d.o.MaxIDs); k, _ = c.First() {
			if err := ids.Delete(k[8:]); err != nil {
				return err
			}
			if err := c.Delete(); err != nil {
				return err
			}
			count--
			evicted++
		}
		first, delta = true, count-before
		return meta.Put(dedupeCount, binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(count)))
	})
	if err != nil {
		return false, fmt.Errorf("dedupe store: claim %q: %w", id, err)
	}
	if !first {
		d.claims.WithLabelValues("duplicate").Inc()
		return false, nil
	}
	d.claims.WithLabelValues("first").Inc()
	d.ids.Add(delta)
	if evicted > 0 {
		d.evicted.Add(float64(evicted))
		d.warnEvicted(evicted)
	}
	return true, nil
}

// warnEvicted logs evictions at most once a minute.
func (d *Dedupe) warnEvicted(n int64) {
	now := time.Now().UnixNano()
	last := d.lastWarn.Load()
	if now-last < int64(time.Minute) || !d.lastWarn.CompareAndSwap(last, now) {
		return
	}
	d.log.Warn("dedupe store full: forgot the oldest command ids before the end of their window",
		"evicted", n, "max_ids", d.o.MaxIDs, "window", d.o.Window)
}

// Done keeps the final result (JSON) of a claimed id, committed before it
// returns; Result gives it back for the rest of the window.
func (d *Dedupe) Done(id string, result []byte) error {
	if err := validID(id); err != nil {
		return err
	}
	key := []byte(id)
	var claimed bool
	err := d.db.Batch(func(tx *bolt.Tx) error {
		ids := tx.Bucket(dedupeIDs)
		v := ids.Get(key)
		if claimed = v != nil; !claimed {
			return nil
		}
		nv := make([]byte, 8+len(result))
		copy(nv, v[:8])
		copy(nv[8:], result)
		return ids.Put(key, nv)
	})
	if err != nil {
		return fmt.Errorf("dedupe store: result of %q: %w", id, err)
	}
	if !claimed {
		return fmt.Errorf("dedupe store: result of %q: %w", id, ErrNotClaimed)
	}
	return nil
}

// Result returns the final result kept by Done (nil while the command is
// pending) and whether id is claimed at all. Expired ids that were not
// swept yet still answer.
func (d *Dedupe) Result(id string) (result []byte, claimed bool, err error) {
	err = d.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(dedupeIDs).Get([]byte(id))
		if v == nil {
			return nil
		}
		claimed = true
		if len(v) > 8 {
			result = bytes.Clone(v[8:])
		}
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("dedupe store: read %q: %w", id, err)
	}
	return result, claimed, nil
}

// Len is the number of ids kept.
func (d *Dedupe) Len() int { return int(d.ids.Load()) }

// Sweep removes the ids claimed before now minus the window, in
// transactions of at most 10,000, and returns how many it removed.
func (d *Dedupe) Sweep(now time.Time) (removed int, err error) {
	bound := binary.BigEndian.AppendUint64(nil, uint64(now.Add(-d.o.Window).UnixMilli()+1))
	for {
		n := 0
		err := d.db.Update(func(tx *bolt.Tx) error {
			n = 0
			ids, meta := tx.Bucket(dedupeIDs), tx.Bucket(dedupeMeta)
			c := tx.Bucket(dedupeByTime).Cursor()
			for k, _ := c.First(); k != nil && n < dedupeSweepChunk && bytes.Compare(k[:8], bound) < 0; k, _ = c.First() {
				if err := ids.Delete(k[8:]); err != nil {
					return err
				}
				if err := c.Delete(); err != nil {
					return err
				}
				n++
			}
			if n == 0 {
				return nil
			}
			count := int64(binary.BigEndian.Uint64(meta.Get(dedupeCount))) - int64(n)
			return meta.Put(dedupeCount, binary.BigEndian.AppendUint64(nil, uint64(max(count, 0))))
		})
		if err != nil {
			return removed, fmt.Errorf("dedupe store: sweep: %w", err)
		}
		removed += n
		d.ids.Add(-int64(n))
		d.expired.Add(float64(n))
		if n < dedupeSweepChunk {
			return removed, nil
		}
	}
}

func (d *Dedupe) sweepLoop(ctx context.Context) {
	defer d.wg.Done()
	t := time.NewTicker(d.o.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := d.Sweep(d.o.Now()); err != nil {
				d.log.Error("dedupe store: sweep failed", "err", err)
			}
		}
	}
}

// Close stops the sweep and closes the file. Idempotent.
func (d *Dedupe) Close() error {
	d.closeOnce.Do(func() {
		d.cancel()
		d.wg.Wait()
		if err := d.db.Close(); err != nil {
			d.closeErr = fmt.Errorf("dedupe store: close: %w", err)
		}
	})
	return d.closeErr
}
