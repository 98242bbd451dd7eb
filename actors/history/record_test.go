package history

import (
	"errors"
	"math"
	"testing"

	"github.com/voltage-ems/voltage/messages"
)

func recUpd(ch uint32, t messages.PointType, pt uint32, ts int64, v float64, q messages.Quality) messages.PointUpdate {
	return messages.PointUpdate{Key: messages.PointKey{Channel: ch, Type: t, Point: pt}, Timestamp: ts, Value: v, Quality: q}
}

// sameUpdates compares updates bit for bit (NaN equals NaN), ignoring Node.
func sameUpdates(a, b []messages.PointUpdate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Key != y.Key || x.Timestamp != y.Timestamp || x.Quality != y.Quality ||
			math.Float64bits(x.Value) != math.Float64bits(y.Value) {
			return false
		}
	}
	return true
}

func TestRecordsRoundTrip(t *testing.T) {
	f := func(name string, in []messages.PointUpdate) {
		t.Helper()
		b := appendRecords(nil, in)
		got, err := decodeRecords(b, nil)
		if err != nil {
			t.Fatalf("%s: decode: %v", name, err)
		}
		if !sameUpdates(got, in) {
			t.Fatalf("%s: round trip\n got %+v\nwant %+v", name, got, in)
		}
	}
	f("empty", nil)
	f("one", []messages.PointUpdate{recUpd(1001, messages.Measurement, 10001, 1764090000000, 230.5, messages.Good)})
	f("all types and qualities", []messages.PointUpdate{
		recUpd(1001, messages.Measurement, 10001, 1764090000000, 230.5, messages.Good),
		recUpd(1001, messages.Signal, 1, 1764090000000, 1, messages.Bad),
		recUpd(1001, messages.Control, 1, 1764090000001, 0, messages.CommLost),
		recUpd(9001, messages.Adjustment, 7, 1764090000000, -0.25, messages.Uncertain),
		recUpd(0, messages.Measurement, 0, 0, 0, messages.Stale),
	})
	f("extremes", []messages.PointUpdate{
		recUpd(math.MaxUint32, messages.Measurement, math.MaxUint32, math.MaxInt64, math.MaxFloat64, messages.Good),
		recUpd(1, messages.Measurement, 1, math.MinInt64, math.Inf(-1), messages.Good),
		recUpd(1, messages.Measurement, 1, -1, math.NaN(), messages.Good),
		recUpd(1, messages.Measurement, 1, math.MaxInt64, math.Copysign(0, -1), messages.Good),
	})
	// Node is not kept.
	in := []messages.PointUpdate{recUpd(1, messages.Measurement, 2, 3, 4, messages.Good)}
	in[0].Node = "sub-a"
	got, err := decodeRecords(appendRecords(nil, in), nil)
	if err != nil || len(got) != 1 || got[0].Node != "" {
		t.Fatalf("node: got %+v, %v", got, err)
	}
}

func TestRecordsSize(t *testing.T) {
	// A typical measurement one second after the previous one.
	us := []messages.PointUpdate{
		recUpd(1001, messages.Measurement, 10001, 1764090000000, 230.5, messages.Good),
		recUpd(1001, messages.Measurement, 10002, 1764090001000, 231.5, messages.Good),
	}
	b := appendRecords(nil, us)
	first := 2 + 1 + 2 + 6 + 8 + 1
	second := 2 + 1 + 2 + 2 + 8 + 1
	if len(b) != first+second {
		t.Fatalf("encoded %d bytes, want %d", len(b), first+second)
	}
}

func TestDecodeRecordsAppends(t *testing.T) {
	prefix := []messages.PointUpdate{recUpd(5, messages.Signal, 6, 7, 8, messages.Good)}
	in := []messages.PointUpdate{recUpd(1, messages.Measurement, 2, 3, 4, messages.Good)}
	got, err := decodeRecords(appendRecords(nil, in), prefix[:1:1])
	if err != nil {
		t.Fatal(err)
	}
	if !sameUpdates(got, append(prefix, in...)) {
		t.Fatalf("got %+v", got)
	}
}

func TestDecodeRecordsCorrupt(t *testing.T) {
	good := appendRecords(nil, []messages.PointUpdate{recUpd(1001, messages.Measurement, 10001, 1764090000000, 230.5, messages.Good)})
	f := func(name string, b []byte, wantDecoded int) {
		t.Helper()
		got, err := decodeRecords(b, nil)
		if !errors.Is(err, errCorruptRecord) {
			t.Fatalf("%s: err = %v, want a corrupt record error", name, err)
		}
		if len(got) != wantDecoded {
			t.Fatalf("%s: decoded %d updates before the error, want %d", name, len(got), wantDecoded)
		}
	}
	for n := 1; n < len(good); n++ {
		f("truncated", good[:n], 0)
	}
	f("second truncated", append(append([]byte{}, good...), good[:5]...), 1)
	f("overlong channel varint", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 0)
	f("channel over 32 bits", append([]byte{0x80, 0x80, 0x80, 0x80, 0x10}, good[2:]...), 0)
	bad := append([]byte{}, good...)
	bad[2] = 'x'
	f("unknown type", bad, 0)
	bad = append([]byte{}, good...)
	bad[len(bad)-1] = 5
	f("unknown quality", bad, 0)
	f("point over 32 bits", []byte{0x01, 'm', 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0)
}

func BenchmarkRecords(b *testing.B) {
	us := make([]messages.PointUpdate, 5000)
	for i := range us {
		us[i] = recUpd(1001, messages.Measurement, uint32(10001+i%100), 1764090000000+int64(i/100)*1000, 230.5+float64(i), messages.Good)
	}
	buf := appendRecords(nil, us)
	out := make([]messages.PointUpdate, 0, len(us))
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for b.Loop() {
		buf = appendRecords(buf[:0], us)
		var err error
		if out, err = decodeRecords(buf, out[:0]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(buf))/float64(len(us)), "B/point")
}

func FuzzDecodeRecords(f *testing.F) {
	f.Add([]byte{})
	f.Add(appendRecords(nil, []messages.PointUpdate{
		recUpd(1001, messages.Measurement, 10001, 1764090000000, 230.5, messages.Good),
		recUpd(1001, messages.Signal, 1, 1764090000500, 1, messages.CommLost),
	}))
	f.Add(appendRecords(nil, []messages.PointUpdate{recUpd(math.MaxUint32, messages.Adjustment, math.MaxUint32, math.MinInt64, math.NaN(), messages.Stale)}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeRecords(b, nil)
		if err != nil {
			if !errors.Is(err, errCorruptRecord) {
				t.Fatalf("error does not wrap errCorruptRecord: %v", err)
			}
			return
		}
		if len(got) > len(b)/minRecordLen {
			t.Fatalf("%d records from %d bytes", len(got), len(b))
		}
		if err := validRecords(got); err != nil {
			t.Fatalf("decoded an invalid update: %v", err)
		}
		// What decodes re-encodes to something that decodes the same.
		again, err := decodeRecords(appendRecords(nil, got), nil)
		if err != nil || !sameUpdates(again, got) {
			t.Fatalf("re-encoding changed the updates: %v\n got %+v\nwant %+v", err, again, got)
		}
	})
}
