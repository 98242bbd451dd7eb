package history

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/voltage-ems/voltage/actors/durable"
	"github.com/voltage-ems/voltage/messages"
)

// Embedded store layout (one bbolt file in data_dir):
//
//	bucket "meta":   "version" = 1
//	bucket "points": one nested bucket per point, named by its key
//	                 ("1001:m:10001"), holding its samples:
//	                   key   = 8 bytes big-endian Unix ms with the sign bit
//	                           flipped (so byte order is time order, before
//	                           1970 too), then 1 sequence byte that keeps up
//	                           to 256 distinct samples in the same ms apart
//	                   value = 8 bytes big-endian float64 bits, 1 quality byte
//
// A range query is one Seek and a forward scan in one bucket.
var (
	embMeta   = []byte("meta")
	embPoints = []byte("points")
)

const (
	embVersion = 1
	// DefaultRetention is how long the embedded store keeps samples when
	// OpenEmbedded is given no retention.
	DefaultRetention = 7 * 24 * time.Hour
	// pruneEvery is the period of the background retention pass.
	pruneEvery = time.Hour
	// pruneChunk bounds the deletions of one prune transaction.
	pruneChunk   = 50_000
	sampleKeyLen = 9
	sampleValLen = 9
)

// Embedded is the history Store used when no InfluxDB is configured: a bbolt
// file with one bucket per point, pruned to a retention period.
type Embedded struct {
	db        *bolt.DB
	damage    *durable.Damage
	retention time.Duration
	log       *slog.Logger

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

var _ Store = (*Embedded)(nil)

// OpenEmbedded opens (or creates) the embedded history at path, creating its
// directory, prunes samples older than retention (DefaultRetention when 0
// or less), and prunes again every hour until Close.
//
// The file is checked first (durable.OpenBolt, every sample decoded): a
// damaged one is moved aside, logged, and the store starts empty; Damage
// says what happened.
func OpenEmbedded(path string, retention time.Duration, log *slog.Logger) (*Embedded, error) {
	if retention <= 0 {
		retention = DefaultRetention
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, damage, err := openChecked(path, checkEmbedded, log, "embedded history")
	if err != nil {
		return nil, fmt.Errorf("embedded history %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(embMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(metaVersion); v == nil {
			if err := meta.Put(metaVersion, []byte{embVersion}); err != nil {
				return err
			}
		} else if len(v) != 1 || v[0] != embVersion {
			return fmt.Errorf("format version %v, want %d", v, embVersion)
		}
		_, err = tx.CreateBucketIfNotExists(embPoints)
		return err
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("embedded history %s: %w", path, err)
	}
	e := &Embedded{db: db, damage: damage, retention: retention, log: log}
	// The first pass runs before Open returns, so that what a caller writes
	// afterwards is only pruned by a later pass or its own Prune.
	e.prune(time.Now())
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.wg.Add(1)
	go e.pruneLoop(ctx)
	return e, nil
}

// Damage is what the check at open found wrong with the file (nil: it was
// intact, new or missing).
func (e *Embedded) Damage() *durable.Damage { return e.damage }

// checkEmbedded validates one entry of the file for durable.OpenBolt: the
// layout above, every sample's size and quality, the format version.
func checkEmbedded(path [][]byte, k, v []byte) error {
	switch len(path) {
	case 0:
		if !bytes.Equal(k, embMeta) && !bytes.Equal(k, embPoints) {
			return errors.New("unexpected top-level bucket (not a history store)")
		}
	case 1:
		if bytes.Equal(path[0], embMeta) {
			if bytes.Equal(k, metaVersion) && (len(v) != 1 || v[0] != embVersion) {
				return fmt.Errorf("format version %x, this voltage reads %d", v, embVersion)
			}
			return nil
		}
		if v != nil {
			return errors.New("a value where a point's bucket belongs")
		}
		if _, err := messages.ParsePointKey(string(k)); err != nil {
			return fmt.Errorf("bucket name: %w", err)
		}
	case 2:
		switch {
		case v == nil:
			return errors.New("a bucket among a point's samples")
		case len(k) != sampleKeyLen || len(v) != sampleValLen:
			return fmt.Errorf("sample of %d+%d bytes, want %d+%d", len(k), len(v), sampleKeyLen, sampleValLen)
		case messages.Quality(v[sampleValLen-1]) > messages.Stale:
			return fmt.Errorf("sample quality %d", v[sampleValLen-1])
		}
	default:
		return errors.New("buckets nested too deep (not a history store)")
	}
	return nil
}

func (e *Embedded) pruneLoop(ctx context.Context) {
	defer e.wg.Done()
	t := time.NewTicker(pruneEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			e.prune(now)
		}
	}
}

// prune runs Prune and logs its outcome.
func (e *Embedded) prune(now time.Time) {
	start := time.Now()
	n, err := e.Prune(now)
	if err != nil {
		e.log.Warn("embedded history: retention pass failed", "removed", n, "err", err)
		return
	}
	if n > 0 {
		e.log.Info("embedded history: retention pass", "removed", n, "retention", e.retention, "took", time.Since(start))
	}
}

// Prune deletes the samples older than now minus the retention and the
// buckets of points left without samples, in transactions of at most 50,000
// deletions, and returns how many samples it removed.
func (e *Embedded) Prune(now time.Time) (removed int, err error) {
	bound := sampleKey(make([]byte, 0, sampleKeyLen), now.Add(-e.retention).UnixMilli(), 0)
	var names [][]byte
	err = e.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(embPoints).ForEachBucket(func(k []byte) error {
			names = append(names, bytes.Clone(k))
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("embedded history: prune: %w", err)
	}
	for i := 0; i < len(names); {
		n := 0
		err = e.db.Update(func(tx *bolt.Tx) error {
			n = 0
			root := tx.Bucket(embPoints)
			budget := pruneChunk
			for ; i < len(names) && budget > 0; i++ {
				b := root.Bucket(names[i])
				if b == nil {
					continue
				}
				c := b.Cursor()
				k, _ := c.First()
				for ; k != nil && budget > 0 && bytes.Compare(k, bound) < 0; k, _ = c.First() {
					if err := c.Delete(); err != nil {
						return err
					}
					n++
					budget--
				}
				if k == nil {
					if err := root.DeleteBucket(names[i]); err != nil {
						return err
					}
				} else if budget == 0 && bytes.Compare(k, bound) < 0 {
					return nil // this point is not done: carry on in the next transaction
				}
			}
			return nil
		})
		if err != nil {
			return removed, fmt.Errorf("embedded history: prune: %w", err)
		}
		removed += n
	}
	return removed, nil
}

// Write stores a batch in one durable transaction. NaN and infinite values
// (never-read points; neither JSON nor InfluxDB can carry them) are skipped.
// Writing a sample again (same point, ms, value and quality) stores it once,
// so a replayed batch leaves no duplicates; a different sample in the same
// ms is kept after the first.
func (e *Embedded) Write(ctx context.Context, points []messages.PointUpdate) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// bbolt keeps values until commit: one arena for the whole batch.
	arena := make([]byte, 0, len(points)*sampleValLen)
	err := e.db.Update(func(tx *bolt.Tx) error {
		arena = arena[:0]
		root := tx.Bucket(embPoints)
		buckets := make(map[messages.PointKey]*bolt.Bucket)
		var name, key []byte
		for i := range points {
			u := &points[i]
			if math.IsNaN(u.Value) || math.IsInf(u.Value, 0) {
				continue
			}
			b := buckets[u.Key]
			if b == nil {
				name = u.Key.AppendTo(name[:0])
				var err error
				if b, err = root.CreateBucketIfNotExists(name); err != nil {
					return fmt.Errorf("point %s: %w", u.Key, err)
				}
				buckets[u.Key] = b
			}
			off := len(arena)
			arena = binary.BigEndian.AppendUint64(arena, math.Float64bits(u.Value))
			arena = append(arena, byte(u.Quality))
			key = sampleKey(key[:0], u.Timestamp, 0)
			if err := putSample(b, key, arena[off:]); err != nil {
				return fmt.Errorf("point %s: %w", u.Key, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("embedded history: write %d points: %w", len(points), err)
	}
	return nil
}

// putSample stores val at key (sequence byte 0) or, when that ms already
// holds other samples, after them; an identical sample is not stored twice.
func putSample(b *bolt.Bucket, key, val []byte) error {
	ms := key[:sampleKeyLen-1]
	c := b.Cursor()
	k, v := c.Seek(ms)
	if k == nil || !bytes.HasPrefix(k, ms) {
		return b.Put(key, val)
	}
	seq := 0
	for ; k != nil && bytes.HasPrefix(k, ms); k, v = c.Next() {
		if bytes.Equal(v, val) {
			return nil
		}
		seq = int(k[sampleKeyLen-1]) + 1
	}
	key[sampleKeyLen-1] = byte(min(seq, 255)) // the 257th sample of a ms replaces the 256th
	return b.Put(key, val)
}

// Query answers q from the samples in [q.Start, q.End), aggregated per
// window. An unknown point, or one without samples in the range, gives a
// Series without points.
func (e *Embedded) Query(ctx context.Context, q Query) ([]Series, error) {
	if !q.End.After(q.Start) {
		return nil, fmt.Errorf("embedded history: query: end %v is not after start %v", q.End, q.Start)
	}
	if _, err := newAggregator(q.Fn, q.Start, q.Every); err != nil {
		return nil, fmt.Errorf("embedded history: query: %w", err)
	}
	out := make([]Series, 0, len(q.Points))
	err := e.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket(embPoints)
		var name []byte
		lo := sampleKey(nil, q.Start.UnixMilli(), 0)
		for _, key := range q.Points {
			agg, _ := newAggregator(q.Fn, q.Start, q.Every)
			name = key.AppendTo(name[:0])
			if b := root.Bucket(name); b != nil {
				c := b.Cursor()
				n := 0
				for k, v := c.Seek(lo); k != nil; k, v = c.Next() {
					if len(k) != sampleKeyLen || len(v) != sampleValLen {
						return fmt.Errorf("point %s: corrupt sample (key %x, value %x)", key, k, v)
					}
					t := time.UnixMilli(sampleMs(k))
					if !t.Before(q.End) {
						break
					}
					agg.add(t, math.Float64frombits(binary.BigEndian.Uint64(v)))
					if n++; n%4096 == 0 {
						if err := ctx.Err(); err != nil {
							return err
						}
					}
				}
			}
			s := Series{Key: key, Points: agg.finish()}
			if s.Points == nil {
				s.Points = []Sample{}
			}
			out = append(out, s)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("embedded history: query: %w", err)
	}
	return out, nil
}

// Close stops the retention goroutine and closes the file. Idempotent.
func (e *Embedded) Close() error {
	e.closeOnce.Do(func() {
		e.cancel()
		e.wg.Wait()
		if err := e.db.Close(); err != nil {
			e.closeErr = fmt.Errorf("embedded history: close: %w", err)
		}
	})
	return e.closeErr
}

// sampleKey appends the key of a sample at ms with sequence byte seq.
func sampleKey(b []byte, ms int64, seq byte) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(ms)^(1<<63))
	return append(b, seq)
}

// sampleMs reads the ms of a sample key.
func sampleMs(k []byte) int64 {
	return int64(binary.BigEndian.Uint64(k) ^ (1 << 63))
}
