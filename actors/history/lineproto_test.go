package history

import (
	"math"
	"testing"

	"github.com/voltage-ems/voltage/messages"
)

func TestAppendLine(t *testing.T) {
	f := func(measurement string, u messages.PointUpdate, want string) {
		t.Helper()
		got := string(AppendLine([]byte("prefix\n"), measurement, &u))
		if got != "prefix\n"+want {
			t.Errorf("AppendLine(%q, %+v)\n got %q\nwant %q", measurement, u, got, "prefix\n"+want)
		}
	}
	key := messages.PointKey{Channel: 1001, Type: messages.Measurement, Point: 10001}
	const ts = 1764090000000 // ms

	f("point", messages.PointUpdate{Key: key, Value: 230.5, Timestamp: ts, Quality: messages.Good, Node: "sub-a"},
		"point,channel=1001,type=m,point=10001 value=230.5,quality=\"good\" 1764090000000000000\n")
	// Integers are written without "i": a float field, like every other value.
	f("point", messages.PointUpdate{Key: messages.PointKey{Channel: 1, Type: messages.Signal, Point: 2}, Value: 1, Timestamp: 1},
		"point,channel=1,type=s,point=2 value=1,quality=\"good\" 1000000\n")
	f("point", messages.PointUpdate{Key: messages.PointKey{Channel: 4294967295, Type: messages.Control, Point: 4294967295}, Value: -0.25, Timestamp: ts, Quality: messages.Bad},
		"point,channel=4294967295,type=c,point=4294967295 value=-0.25,quality=\"bad\" 1764090000000000000\n")
	f("point", messages.PointUpdate{Key: messages.PointKey{Channel: 7, Type: messages.Adjustment, Point: 0}, Value: math.Copysign(0, -1), Timestamp: 0, Quality: messages.CommLost},
		"point,channel=7,type=a,point=0 value=0,quality=\"comm_lost\" 0\n")
	f("point", messages.PointUpdate{Key: key, Value: 1e21, Timestamp: -1, Quality: messages.Uncertain},
		"point,channel=1001,type=m,point=10001 value=1e+21,quality=\"uncertain\" -1000000\n")
	f("point", messages.PointUpdate{Key: key, Value: math.MaxFloat64, Timestamp: ts, Quality: messages.Stale},
		"point,channel=1001,type=m,point=10001 value=1.7976931348623157e+308,quality=\"stale\" 1764090000000000000\n")
	f("point", messages.PointUpdate{Key: key, Value: 5e-324, Timestamp: ts, Quality: messages.Quality(42)},
		"point,channel=1001,type=m,point=10001 value=5e-324,quality=\"unknown\" 1764090000000000000\n")
	f("point", messages.PointUpdate{Key: key, Value: 999999999999999900000, Timestamp: ts},
		"point,channel=1001,type=m,point=10001 value=999999999999999900000,quality=\"good\" 1764090000000000000\n")
	f("point", messages.PointUpdate{Key: key, Value: -0.000001, Timestamp: ts},
		"point,channel=1001,type=m,point=10001 value=-0.000001,quality=\"good\" 1764090000000000000\n")
	f("point", messages.PointUpdate{Key: key, Value: -1.5e-7, Timestamp: ts},
		"point,channel=1001,type=m,point=10001 value=-1.5e-07,quality=\"good\" 1764090000000000000\n")
	// Measurement names escape commas and spaces only.
	f("my point,v2", messages.PointUpdate{Key: key, Value: 1, Timestamp: ts},
		"my\\ point\\,v2,channel=1001,type=m,point=10001 value=1,quality=\"good\" 1764090000000000000\n")
	f(`a=b"c`, messages.PointUpdate{Key: key, Value: 1, Timestamp: ts},
		"a=b\"c,channel=1001,type=m,point=10001 value=1,quality=\"good\" 1764090000000000000\n")

	// No storable value: skipped, b unchanged.
	f("point", messages.PointUpdate{Key: key, Value: math.NaN(), Timestamp: ts, Quality: messages.CommLost}, "")
	f("point", messages.PointUpdate{Key: key, Value: math.Inf(1), Timestamp: ts}, "")
	f("point", messages.PointUpdate{Key: key, Value: math.Inf(-1), Timestamp: ts}, "")
	f("point", messages.PointUpdate{Key: messages.PointKey{Channel: 1, Type: 'x', Point: 1}, Value: 1, Timestamp: ts}, "")
	f("point", messages.PointUpdate{Key: messages.PointKey{Channel: 1, Point: 1}, Value: 1, Timestamp: ts}, "")
}

func TestAppendLineAllocs(t *testing.T) {
	u := messages.PointUpdate{Key: messages.PointKey{Channel: 1001, Type: messages.Measurement, Point: 10001},
		Value: 230.5, Timestamp: 1764090000000, Quality: messages.Bad, Node: "sub-a"}
	b := make([]byte, 0, 256)
	if n := testing.AllocsPerRun(100, func() { b = AppendLine(b[:0], "my point", &u) }); n != 0 {
		t.Errorf("AppendLine allocates %v times per call, want 0", n)
	}
}
