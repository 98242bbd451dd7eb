package history

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/voltage-ems/voltage/messages"
)

// The on-disk encoding of a batch of point updates, used by the spool. Each
// update is one record, records follow each other with no separator:
//
//	channel    uvarint   (at most 2^32-1)
//	type       1 byte    'm', 's', 'c' or 'a'
//	point      uvarint   (at most 2^32-1)
//	timestamp  varint    Unix ms, minus the timestamp of the previous record
//	                     of the batch (the first record is relative to 0)
//	value      8 bytes   IEEE 754 bits, big-endian
//	quality    1 byte    messages.Quality
//
// The node name is not kept: a spooled batch is always this node's to write.
// A typical record takes 18 to 20 bytes.

// minRecordLen is the size of the smallest possible record.
const minRecordLen = 1 + 1 + 1 + 1 + 8 + 1

// errCorruptRecord is wrapped by every decodeRecords error.
var errCorruptRecord = errors.New("corrupt history record")

// appendRecords appends the encoding of us to b. The keys of us must be
// valid (a known point type, a known quality), as every update built from a
// configured point is; validRecords checks it.
func appendRecords(b []byte, us []messages.PointUpdate) []byte {
	var prev int64
	for i := range us {
		u := &us[i]
		b = binary.AppendUvarint(b, uint64(u.Key.Channel))
		b = append(b, byte(u.Key.Type))
		b = binary.AppendUvarint(b, uint64(u.Key.Point))
		// Wraps on overflow; decoding wraps back to the same value.
		b = binary.AppendVarint(b, u.Timestamp-prev)
		prev = u.Timestamp
		b = binary.BigEndian.AppendUint64(b, math.Float64bits(u.Value))
		b = append(b, byte(u.Quality))
	}
	return b
}

// validRecords reports the first update of us that decodeRecords would
// refuse after appendRecords: an unknown point type or quality.
func validRecords(us []messages.PointUpdate) error {
	for i := range us {
		u := &us[i]
		if !u.Key.Type.Valid() {
			return fmt.Errorf("update %d (%s): point type %q is not m, s, c or a", i, u.Key, byte(u.Key.Type))
		}
		if u.Quality > messages.Stale {
			return fmt.Errorf("update %d (%s): unknown quality %d", i, u.Key, u.Quality)
		}
	}
	return nil
}

// decodeRecords decodes the records of b, appends them to out and returns
// the extended slice. Node is left empty. Any malformed record (truncated,
// overlong varint, id out of range, unknown type or quality) is an error
// wrapping errCorruptRecord; the updates decoded before it are returned with
// it.
func decodeRecords(b []byte, out []messages.PointUpdate) ([]messages.PointUpdate, error) {
	var prev int64
	for off, i := 0, 0; off < len(b); i++ {
		start := off
		ch, n := binary.Uvarint(b[off:])
		if n <= 0 {
			return out, corrupt(i, start, "bad channel varint")
		}
		if ch > math.MaxUint32 {
			return out, corrupt(i, start, fmt.Sprintf("channel %d out of range", ch))
		}
		off += n
		if off >= len(b) {
			return out, corrupt(i, start, "truncated after channel")
		}
		t := messages.PointType(b[off])
		if !t.Valid() {
			return out, corrupt(i, start, fmt.Sprintf("point type %q is not m, s, c or a", byte(t)))
		}
		off++
		pt, n := binary.Uvarint(b[off:])
		if n <= 0 {
			return out, corrupt(i, start, "bad point varint")
		}
		if pt > math.MaxUint32 {
			return out, corrupt(i, start, fmt.Sprintf("point %d out of range", pt))
		}
		off += n
		d, n := binary.Varint(b[off:])
		if n <= 0 {
			return out, corrupt(i, start, "bad timestamp varint")
		}
		off += n
		if len(b)-off < 9 {
			return out, corrupt(i, start, "truncated value or quality")
		}
		v := math.Float64frombits(binary.BigEndian.Uint64(b[off:]))
		q := messages.Quality(b[off+8])
		if q > messages.Stale {
			return out, corrupt(i, start, fmt.Sprintf("unknown quality %d", q))
		}
		off += 9
		prev += d
		out = append(out, messages.PointUpdate{
			Key:       messages.PointKey{Channel: uint32(ch), Type: t, Point: uint32(pt)},
			Value:     v,
			Timestamp: prev,
			Quality:   q,
		})
	}
	return out, nil
}

func corrupt(record, at int, what string) error {
	return fmt.Errorf("%w: record %d at byte %d: %s", errCorruptRecord, record, at, what)
}
