package messages

import (
	"encoding/json"
	"math"
	"testing"
)

func TestAppendValue(t *testing.T) {
	f := func(v float64, want string) {
		t.Helper()
		if got := string(AppendValue(nil, v)); got != want {
			t.Errorf("AppendValue(%v) = %q, want %q", v, got, want)
		}
	}
	f(230.5, "230.5")
	f(1, "1")
	f(-0.25, "-0.25")
	f(0, "0")
	f(math.Copysign(0, -1), "0")
	a, b := 0.1, 0.2
	f(a+b, "0.30000000000000004") // shortest round trip, not rounded
	f(12.3, "12.3")
	f(1e21, "1000000000000000000000")
	f(1.5e-7, "0.00000015")
	f(math.NaN(), "NaN")
	f(math.Inf(1), "+Inf")
}

func TestPointUpdateJSON(t *testing.T) {
	u := PointUpdate{Key: PointKey{Channel: 1001, Type: Measurement, Point: 10001}, Value: 230.5,
		Timestamp: 1764090000000, Quality: Good, Node: "sub-a"}
	const want = `{"channel_id":1001,"point_type":"m","point_id":10001,"value":230.5,"timestamp":1764090000000,"quality":"good","node":"sub-a"}`
	if got := string(u.AppendJSON(nil)); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	var back PointUpdate
	if err := json.Unmarshal([]byte(want), &back); err != nil || back != u {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	// Odd node names are escaped; NaN is null and decodes as NaN.
	u.Node, u.Value, u.Quality = "a\"b\\c", math.NaN(), CommLost
	b := u.AppendJSON(nil)
	if !json.Valid(b) {
		t.Fatalf("invalid JSON %s", b)
	}
	if err := json.Unmarshal(b, &back); err != nil || !math.IsNaN(back.Value) || back.Node != u.Node || back.Quality != CommLost {
		t.Fatalf("round trip of %s: %+v, %v", b, back, err)
	}
}

func TestPointUpdateUnmarshalRejects(t *testing.T) {
	for _, in := range []string{
		`not json`,
		`{"point_type":"m","point_id":1}`,
		`{"channel_id":1,"point_type":"x","point_id":1}`,
		`{"channel_id":1,"point_type":"m","point_id":1,"quality":"fine"}`,
		`{"channel_id":-1,"point_type":"m","point_id":1}`,
		`{"channel_id":1,"point_type":"m","point_id":1,"value":"12"}`,
	} {
		var u PointUpdate
		if err := json.Unmarshal([]byte(in), &u); err == nil {
			t.Errorf("accepted %s as %+v", in, u)
		}
	}
}

func TestParsePointKey(t *testing.T) {
	f := func(in string, want PointKey, ok bool) {
		t.Helper()
		got, err := ParsePointKey(in)
		if (err == nil) != ok || ok && got != want {
			t.Errorf("ParsePointKey(%q) = %v, %v", in, got, err)
		}
		if ok && mustParse(t, got.String()) != want {
			t.Errorf("String() of %v does not parse back", got)
		}
	}
	f("1001:m:10001", PointKey{Channel: 1001, Type: Measurement, Point: 10001}, true)
	f("1001:T:1", PointKey{Channel: 1001, Type: Measurement, Point: 1}, true)
	f("7:signal:3", PointKey{Channel: 7, Type: Signal, Point: 3}, true)
	f("7:A:3", PointKey{Channel: 7, Type: Adjustment, Point: 3}, true)
	f("1001:m", PointKey{}, false)
	f("x:m:1", PointKey{}, false)
	f("1:q:1", PointKey{}, false)
	f("1:m:-1", PointKey{}, false)
	f("1:m:4294967296", PointKey{}, false)
}

func mustParse(t *testing.T, s string) PointKey {
	k, err := ParsePointKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func BenchmarkAppendJSON(b *testing.B) {
	u := PointUpdate{Key: PointKey{Channel: 1001, Type: Measurement, Point: 10001}, Value: 230.517,
		Timestamp: 1764090000000, Quality: Good, Node: "sub-a"}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = u.AppendJSON(buf[:0])
	}
}

func FuzzPointUpdateJSON(f *testing.F) {
	f.Add(`{"channel_id":1001,"point_type":"m","point_id":10001,"value":230.5,"timestamp":1764090000000,"quality":"good","node":"sub-a"}`)
	f.Add(`{"channel_id":1,"point_type":"s","point_id":2,"value":null}`)
	f.Add(`{}`)
	f.Fuzz(func(t *testing.T, in string) {
		var u PointUpdate
		if err := json.Unmarshal([]byte(in), &u); err != nil {
			return
		}
		// Whatever parses re-encodes to valid JSON that parses to the same update.
		b := u.AppendJSON(nil)
		var back PointUpdate
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("re-encoded %s does not parse: %v", b, err)
		}
		if back.Key != u.Key || back.Quality != u.Quality || back.Node != u.Node || back.Timestamp != u.Timestamp ||
			!(back.Value == u.Value || math.IsNaN(back.Value) && (math.IsNaN(u.Value) || math.IsInf(u.Value, 0))) {
			t.Fatalf("round trip changed %+v into %+v", u, back)
		}
	})
}
