package history

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/voltage-ems/voltage/actors/durable"
	"github.com/voltage-ems/voltage/messages"
)

// Spool layout (one bbolt file):
//
//	bucket "pending":  key = batch id, 8 bytes big-endian (so cursor order is
//	                   FIFO order); value = uvarint point count, then the
//	                   batch's records (record.go)
//	bucket "rejected": key = batch id; value = uvarint len(reason), reason,
//	                   varint Unix ms when it was set aside, then the pending
//	                   value unchanged
//	bucket "meta":     "version" = 1; "seq" = 8 bytes big-endian, the last
//	                   batch id given out (ids never repeat, across restarts too)
var (
	spoolPending  = []byte("pending")
	spoolRejected = []byte("rejected")
	spoolMeta     = []byte("meta")
	metaVersion   = []byte("version")
	metaSeq       = []byte("seq")
)

const spoolVersion = 1

// errSpoolClosed is returned by the methods of a closed Spool.
var errSpoolClosed = errors.New("history spool is closed")

// Spool is a durable FIFO of batches of point updates in a bbolt file: the
// batches the store could not take wait here, oldest first, across process
// restarts. Its size is bounded: when a new batch would take it over the
// bound, the oldest batches are dropped, counted and logged. Memory does not
// grow with the spool: counters live in memory, batches on disk, and only
// one batch is read at a time. Safe for concurrent use.
type Spool struct {
	log      *slog.Logger
	maxBytes int64
	damage   *durable.Damage

	mu     sync.Mutex
	db     *bolt.DB // nil once closed
	seq    uint64   // last id given out
	buf    []byte   // encoding buffer of Append
	stats  SpoolStats
	rejPts int64 // points in set-aside batches
	rejB   int64 // bytes of set-aside batches
}

// OpenSpool opens (or creates) the spool file at path, creating its
// directory, and rebuilds its counters by scanning the keys. maxBytes bounds
// the bytes of the batches kept, pending and set aside (keys and values;
// the file itself takes somewhat more, and bbolt files never shrink); 0 or
// less means no bound.
//
// The file is checked first (durable.OpenBolt): a damaged one is moved
// aside, logged, and the spool starts empty; Damage says what happened. A
// batch that does not decode is no damage of the file: Oldest sets it
// aside.
func OpenSpool(path string, maxBytes int64, log *slog.Logger) (*Spool, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, damage, err := openChecked(path, checkSpool, log, "history spool")
	if err != nil {
		return nil, fmt.Errorf("history spool %s: %w", path, err)
	}
	s := &Spool{log: log, maxBytes: maxBytes, db: db, damage: damage}
	if err := db.Update(s.load); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("history spool %s: %w", path, err)
	}
	return s, nil
}

// openChecked opens a bbolt file with durable commits through
// durable.OpenBolt, creating its directory, and logs the damage it found.
func openChecked(path string, check durable.CheckFunc, log *slog.Logger, what string) (*bolt.DB, *durable.Damage, error) {
	db, d, err := durable.OpenBolt(path, durable.BoltOptions{
		Check:   check,
		Timeout: 2 * time.Second, // another handle holds the file
	})
	if err != nil {
		return nil, nil, err
	}
	if d != nil && d.MovedTo != "" {
		log.Error(what+": damaged file moved aside, starting empty", "file", path, "moved_to", d.MovedTo, "reason", d.Reason)
	} else if d != nil {
		log.Error(what+": damaged meta page skipped, file kept", "file", path, "reason", d.Reason)
	}
	return db, d, nil
}

// Damage is what the check at open found wrong with the file (nil: it was
// intact, new or missing).
func (s *Spool) Damage() *durable.Damage { return s.damage }

// checkSpool validates one entry of the file for durable.OpenBolt: the
// layout above and the format version (batches are decoded when read).
func checkSpool(path [][]byte, k, v []byte) error {
	switch len(path) {
	case 0:
		if !bytes.Equal(k, spoolPending) && !bytes.Equal(k, spoolRejected) && !bytes.Equal(k, spoolMeta) {
			return errors.New("unexpected top-level bucket (not a history spool)")
		}
	case 1:
		switch {
		case v == nil:
			return errors.New("unexpected nested bucket (not a history spool)")
		case bytes.Equal(path[0], spoolMeta):
			if bytes.Equal(k, metaVersion) && (len(v) != 1 || v[0] != spoolVersion) {
				return fmt.Errorf("format version %x, this voltage reads %d", v, spoolVersion)
			}
			if bytes.Equal(k, metaSeq) && len(v) != 8 {
				return fmt.Errorf("batch sequence of %d bytes, want 8", len(v))
			}
		case len(k) != 8:
			return fmt.Errorf("batch id of %d bytes, want 8", len(k))
		}
	default:
		return errors.New("buckets nested too deep (not a history spool)")
	}
	return nil
}

// load creates the buckets and rebuilds the counters: one pass over the
// keys and the headers of the values, nothing kept.
func (s *Spool) load(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(spoolMeta)
	if err != nil {
		return err
	}
	if v := meta.Get(metaVersion); v == nil {
		if err := meta.Put(metaVersion, []byte{spoolVersion}); err != nil {
			return err
		}
	} else if len(v) != 1 || v[0] != spoolVersion {
		return fmt.Errorf("spool format version %v, want %d", v, spoolVersion)
	}
	if v := meta.Get(metaSeq); len(v) == 8 {
		s.seq = binary.BigEndian.Uint64(v)
	}
	pend, err := tx.CreateBucketIfNotExists(spoolPending)
	if err != nil {
		return err
	}
	rej, err := tx.CreateBucketIfNotExists(spoolRejected)
	if err != nil {
		return err
	}
	c := pend.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		s.stats.Batches++
		s.stats.Points += batchPoints(v)
		s.stats.Bytes += int64(len(k) + len(v))
		s.seq = max(s.seq, keyID(k))
	}
	c = rej.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		s.stats.Rejected++
		s.rejPts += batchPoints(rejectedBatch(v))
		s.rejB += int64(len(k) + len(v))
		s.seq = max(s.seq, keyID(k))
	}
	return nil
}

// Append adds a batch at the end of the spool, in one durable transaction.
// When the spool would exceed its bound, set-aside batches are dropped
// first, then the oldest pending ones; a batch bigger than the bound on its
// own is dropped itself. Every drop is counted in DroppedPoints and logged
// at warn. An update with an unknown point type or quality is an error and
// nothing is written.
func (s *Spool) Append(points []messages.PointUpdate) error {
	if len(points) == 0 {
		return nil
	}
	if err := validRecords(points); err != nil {
		return fmt.Errorf("history spool: append: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return errSpoolClosed
	}
	v := binary.AppendUvarint(s.buf[:0], uint64(len(points)))
	v = appendRecords(v, points)
	s.buf = v // bbolt keeps v until commit; the next Append reuses it after
	id := s.seq + 1
	size := int64(8 + len(v))

	// Counters change only once the transaction has committed.
	var d dropped
	stored := true
	err := s.db.Update(func(tx *bolt.Tx) error {
		d = dropped{}
		stored = true
		if s.maxBytes > 0 {
			over := s.stats.Bytes + s.rejB + size - s.maxBytes
			var err error
			if over > 0 {
				over, err = d.dropOldest(tx.Bucket(spoolRejected), over, true)
				if err != nil {
					return err
				}
			}
			if over > 0 {
				over, err = d.dropOldest(tx.Bucket(spoolPending), over, false)
				if err != nil {
					return err
				}
			}
			if over > 0 { // bigger than the bound on its own
				stored = false
			}
		}
		if stored {
			if err := tx.Bucket(spoolPending).Put(idKey(id), v); err != nil {
				return err
			}
		}
		return tx.Bucket(spoolMeta).Put(metaSeq, idKey(id))
	})
	if err != nil {
		return fmt.Errorf("history spool: append batch %d (%d points): %w", id, len(points), err)
	}
	s.seq = id
	s.stats.Batches -= d.batches
	s.stats.Points -= d.points
	s.stats.Bytes -= d.bytes
	s.stats.Rejected -= d.rejBatches
	s.rejPts -= d.rejPoints
	s.rejB -= d.rejBytes
	s.stats.DroppedPoints += d.points + d.rejPoints
	if stored {
		s.stats.Batches++
		s.stats.Points += int64(len(points))
		s.stats.Bytes += size
	} else {
		s.stats.DroppedPoints += int64(len(points))
		s.log.Warn("history spool full: dropped a batch bigger than the whole spool",
			"batch", id, "points", len(points), "bytes", size, "max_bytes", s.maxBytes,
			"dropped_total", s.stats.DroppedPoints)
	}
	if d.batches > 0 {
		s.log.Warn("history spool full: dropped the oldest batches",
			"batches", d.batches, "points", d.points, "bytes", d.bytes, "max_bytes", s.maxBytes,
			"dropped_total", s.stats.DroppedPoints)
	}
	if d.rejBatches > 0 {
		s.log.Warn("history spool full: dropped set-aside batches",
			"batches", d.rejBatches, "points", d.rejPoints, "bytes", d.rejBytes, "max_bytes", s.maxBytes,
			"dropped_total", s.stats.DroppedPoints)
	}
	return nil
}

// dropped counts what one Append dropped.
type dropped struct {
	batches, rejBatches int
	points, rejPoints   int64
	bytes, rejBytes     int64
}

// dropOldest deletes the first batches of b until over bytes are freed or b
// is empty, and returns how many bytes are still over.
func (d *dropped) dropOldest(b *bolt.Bucket, over int64, rejected bool) (int64, error) {
	c := b.Cursor()
	for k, v := c.First(); k != nil && over > 0; k, v = c.First() {
		n := int64(len(k) + len(v))
		if rejected {
			d.rejBatches++
			d.rejPoints += batchPoints(rejectedBatch(v))
			d.rejBytes += n
		} else {
			d.batches++
			d.points += batchPoints(v)
			d.bytes += n
		}
		if err := c.Delete(); err != nil {
			return over, err
		}
		over -= n
	}
	return over, nil
}

// Oldest returns the oldest pending batch; ok is false when there is none.
// Only that batch is read. A batch that cannot be decoded is set aside (and
// logged) and the next one returned.
func (s *Spool) Oldest() (id uint64, points []messages.PointUpdate, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.db == nil {
			return 0, nil, false, errSpoolClosed
		}
		var bad error
		err = s.db.View(func(tx *bolt.Tx) error {
			k, v := tx.Bucket(spoolPending).Cursor().First()
			if k == nil {
				return nil
			}
			ok = true
			id = keyID(k)
			points, bad = decodeBatch(v)
			return nil
		})
		if err != nil {
			return 0, nil, false, fmt.Errorf("history spool: read oldest batch: %w", err)
		}
		if bad == nil {
			return id, points, ok, nil
		}
		s.log.Warn("history spool: corrupt batch set aside", "batch", id, "err", bad)
		if err := s.setAside(id, "corrupt: "+bad.Error()); err != nil {
			return 0, nil, false, err
		}
		ok, points = false, nil
	}
}

// decodeBatch decodes a pending value.
func decodeBatch(v []byte) ([]messages.PointUpdate, error) {
	n, h := binary.Uvarint(v)
	if h <= 0 {
		return nil, fmt.Errorf("%w: bad batch header", errCorruptRecord)
	}
	// The header is not trusted for the allocation.
	points, err := decodeRecords(v[h:], make([]messages.PointUpdate, 0, min(n, uint64(len(v)/minRecordLen+1))))
	if err != nil {
		return nil, err
	}
	if uint64(len(points)) != n {
		return nil, fmt.Errorf("%w: batch header says %d points, found %d", errCorruptRecord, n, len(points))
	}
	return points, nil
}

// Remove deletes a pending batch (once written to the store). Removing a
// batch that is not pending does nothing.
func (s *Spool) Remove(id uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return errSpoolClosed
	}
	var pts, n int64
	err := s.db.Update(func(tx *bolt.Tx) error {
		pts, n = 0, 0
		b := tx.Bucket(spoolPending)
		k := idKey(id)
		v := b.Get(k)
		if v == nil {
			return nil
		}
		pts, n = batchPoints(v), int64(len(k)+len(v))
		return b.Delete(k)
	})
	if err != nil {
		return fmt.Errorf("history spool: remove batch %d: %w", id, err)
	}
	if n > 0 {
		s.stats.Batches--
		s.stats.Points -= pts
		s.stats.Bytes -= n
	}
	return nil
}

// SetAside moves a pending batch to the rejected bucket with the reason: it
// is counted in Stats().Rejected and never returned by Oldest again. Setting
// aside a batch already set aside does nothing; an unknown id is an error.
func (s *Spool) SetAside(id uint64, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return errSpoolClosed
	}
	return s.setAside(id, reason)
}

func (s *Spool) setAside(id uint64, reason string) error {
	var pts, n, rn int64
	err := s.db.Update(func(tx *bolt.Tx) error {
		pts, n, rn = 0, 0, 0
		pend, rej := tx.Bucket(spoolPending), tx.Bucket(spoolRejected)
		k := idKey(id)
		v := pend.Get(k)
		if v == nil {
			if rej.Get(k) != nil {
				return nil
			}
			return errors.New("no such batch")
		}
		r := binary.AppendUvarint(make([]byte, 0, 2*binary.MaxVarintLen64+len(reason)+len(v)), uint64(len(reason)))
		r = append(r, reason...)
		r = binary.AppendVarint(r, time.Now().UnixMilli())
		r = append(r, v...)
		pts, n, rn = batchPoints(v), int64(len(k)+len(v)), int64(len(k)+len(r))
		if err := rej.Put(k, r); err != nil {
			return err
		}
		return pend.Delete(k)
	})
	if err != nil {
		return fmt.Errorf("history spool: set aside batch %d: %w", id, err)
	}
	if n > 0 {
		s.stats.Batches--
		s.stats.Points -= pts
		s.stats.Bytes -= n
		s.stats.Rejected++
		s.rejPts += pts
		s.rejB += rn
	}
	return nil
}

// Stats returns the counters of the spool (no disk access).
func (s *Spool) Stats() SpoolStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Close closes the file. Idempotent.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	s.db = nil
	if err != nil {
		return fmt.Errorf("history spool: close: %w", err)
	}
	return nil
}

func idKey(id uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), id) }

func keyID(k []byte) uint64 {
	if len(k) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(k)
}

// batchPoints reads the point count of a pending value (0 when unreadable).
func batchPoints(v []byte) int64 {
	n, h := binary.Uvarint(v)
	if h <= 0 || n > uint64(len(v)) {
		return 0
	}
	return int64(n)
}

// rejectedBatch returns the pending value inside a rejected value (nil when
// unreadable).
func rejectedBatch(v []byte) []byte {
	n, h := binary.Uvarint(v)
	if h <= 0 || n > uint64(len(v)-h) {
		return nil
	}
	v = v[h+int(n):]
	if _, h = binary.Varint(v); h <= 0 {
		return nil
	}
	return v[h:]
}
