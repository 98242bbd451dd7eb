package virtual_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/drivers/virtual"
	"github.com/voltage-ems/voltage/messages"
)

func ptr(v float64) *float64 { return &v }

// Indexes of the points of testChannel.
const (
	idxSine = iota
	idxRamp
	idxWalk
	idxSquare
	idxConstant
	idxStatus
	idxControl
	idxAdjustment
)

func testChannel() *config.Channel {
	return &config.Channel{ID: 1001, Protocol: config.ProtocolVirtual, Points: []config.Point{
		{ID: 10001, Type: messages.Measurement, Signal: "sine", Min: ptr(200), Max: ptr(240), Period: 10 * time.Second},
		{ID: 10002, Type: messages.Measurement, Signal: "ramp", Period: 10 * time.Second},
		{ID: 10003, Type: messages.Measurement, Signal: "random_walk", Min: ptr(-5), Max: ptr(5)},
		{ID: 10004, Type: messages.Measurement, Signal: "Square", Min: ptr(1), Max: ptr(2), Period: 5 * time.Second},
		{ID: 10005, Type: messages.Measurement, Signal: "constant", Min: ptr(49.9), Max: ptr(50.1)},
		{ID: 20001, Type: messages.Signal, Period: 2 * time.Second},
		{ID: 1, Type: messages.Control},
		{ID: 2, Type: messages.Adjustment, Min: ptr(0), Max: ptr(100)},
	}}
}

// clock is a manually set clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newDriver(t *testing.T, ch *config.Channel, c *clock) *virtual.Driver {
	t.Helper()
	d, err := virtual.NewDriver(ch, nil, virtual.WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func readAll(t *testing.T, d *virtual.Driver) []drivers.Sample {
	t.Helper()
	s, err := d.Read(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRegistered(t *testing.T) {
	d, err := drivers.New(testChannel(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := d.(*virtual.Driver); !ok {
		t.Fatalf("drivers.New for protocol virtual built %T", d)
	}
}

func TestReadFollowsSignalsOverAPeriod(t *testing.T) {
	c := &clock{t: time.Unix(1764090000, 0)}
	d := newDriver(t, testChannel(), c)

	lo := map[int]float64{}
	hi := map[int]float64{}
	for i := range 1000 {
		c.t = c.t.Add(10 * time.Millisecond) // 10 s, one period of sine and ramp
		for _, s := range readAll(t, d) {
			if i == 0 || s.Value < lo[s.Index] {
				lo[s.Index] = s.Value
			}
			if i == 0 || s.Value > hi[s.Index] {
				hi[s.Index] = s.Value
			}
			if s.Quality != messages.Good {
				t.Fatalf("sample %+v not good", s)
			}
		}
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 0.1 }
	f := func(idx int, wantLo, wantHi float64) {
		t.Helper()
		if !near(lo[idx], wantLo) || !near(hi[idx], wantHi) {
			t.Errorf("point index %d ranged [%v, %v], want about [%v, %v]", idx, lo[idx], hi[idx], wantLo, wantHi)
		}
	}
	f(idxSine, 200, 240)
	f(idxRamp, 0, 100)
	f(idxSquare, 1, 2)
	f(idxConstant, 49.9, 49.9)
	f(idxStatus, 0, 1)
	f(idxControl, 0, 0)
	f(idxAdjustment, 0, 0)
	if lo[idxWalk] < -5 || hi[idxWalk] > 5 || hi[idxWalk]-lo[idxWalk] < 0.5 {
		t.Errorf("random walk ranged [%v, %v], want a move within [-5, 5]", lo[idxWalk], hi[idxWalk])
	}
}

func TestReadIsAFunctionOfTime(t *testing.T) {
	c := &clock{t: time.Unix(1764090000, 123456789)}
	d := newDriver(t, testChannel(), c)
	first := readAll(t, d)

	// One period later every periodic point has the same value.
	c.t = c.t.Add(10 * time.Second)
	again := readAll(t, d)
	for _, i := range []int{idxSine, idxRamp, idxSquare, idxConstant, idxStatus} {
		if math.Abs(first[i].Value-again[i].Value) > 1e-9 {
			t.Errorf("point index %d: %v then %v one period later", i, first[i].Value, again[i].Value)
		}
	}
	// Moving signals change at every Read as the clock moves.
	c.t = c.t.Add(time.Millisecond)
	next := readAll(t, d)
	for _, i := range []int{idxSine, idxRamp, idxWalk} {
		if next[i].Value == again[i].Value {
			t.Errorf("point index %d did not move: %v", i, next[i].Value)
		}
	}
	// Status points are 0 or 1.
	for range 100 {
		c.t = c.t.Add(37 * time.Millisecond)
		if v := readAll(t, d)[idxStatus].Value; v != 0 && v != 1 {
			t.Fatalf("status point = %v, want 0 or 1", v)
		}
	}
}

func TestRandomWalkIsSeededByChannel(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	a, b := newDriver(t, testChannel(), c), newDriver(t, testChannel(), c)
	other := testChannel()
	other.ID = 1002
	o := newDriver(t, other, c)
	same, differ := true, false
	for range 10 {
		va, vb, vo := readAll(t, a)[idxWalk].Value, readAll(t, b)[idxWalk].Value, readAll(t, o)[idxWalk].Value
		same = same && va == vb
		differ = differ || va != vo
	}
	if !same || !differ {
		t.Errorf("same channel same walk: %v; other channel other walk: %v", same, differ)
	}
}

func TestWrite(t *testing.T) {
	ch := testChannel()
	ch.Points = append(ch.Points,
		config.Point{ID: 3, Type: messages.Adjustment, Min: ptr(10)},                // initial 10
		config.Point{ID: 4, Type: messages.Control, DataType: config.Float32},       // not bool
		config.Point{ID: 5, Type: messages.Adjustment, DataType: config.Bool},       // bool
		config.Point{ID: 6, Type: messages.Adjustment, Max: ptr(-20)},               // initial -20
		config.Point{ID: 7, Type: messages.Control, Min: ptr(5), DataType: "int16"}, // initial 5
	)
	d := newDriver(t, ch, &clock{t: time.Unix(0, 0)})
	ctx := context.Background()

	initial := readAll(t, d)
	for i, want := range map[int]float64{8: 10, 9: 0, 10: 0, 11: -20, 12: 5} {
		if initial[i].Value != want {
			t.Errorf("initial value of index %d = %v, want %v", i, initial[i].Value, want)
		}
	}

	f := func(idx int, v float64, wantErr error) {
		t.Helper()
		rb, err := d.Write(ctx, idx, v)
		if !errors.Is(err, wantErr) {
			t.Fatalf("Write(%d, %v) error %v, want %v", idx, v, err, wantErr)
		}
		if err != nil {
			if msg := err.Error(); msg != strings.ToLower(msg[:1])+msg[1:] {
				t.Errorf("error %q does not start lowercase", msg)
			}
			return
		}
		if rb != v {
			t.Errorf("Write(%d, %v) read back %v", idx, v, rb)
		}
		if got := readAll(t, d)[idx].Value; got != v {
			t.Errorf("Read after Write(%d, %v) = %v", idx, v, got)
		}
	}
	f(idxControl, 1, nil)
	f(idxControl, 0, nil)
	f(idxControl, 0.5, virtual.ErrOutOfRange)
	f(idxControl, 2, virtual.ErrOutOfRange)
	f(idxAdjustment, 100, nil)
	f(idxAdjustment, 0, nil)
	f(idxAdjustment, 37.25, nil)
	f(idxAdjustment, 100.001, virtual.ErrOutOfRange)
	f(idxAdjustment, -1, virtual.ErrOutOfRange)
	f(idxAdjustment, math.NaN(), virtual.ErrOutOfRange)
	f(idxAdjustment, math.Inf(1), virtual.ErrOutOfRange)
	f(8, 1e9, nil) // no max
	f(8, 9.99, virtual.ErrOutOfRange)
	f(9, 12.5, nil) // float control
	f(10, 1, nil)
	f(10, 3, virtual.ErrOutOfRange)
	f(idxSine, 1, virtual.ErrNotWritable)
	f(idxStatus, 1, virtual.ErrNotWritable)
	f(-1, 1, virtual.ErrNoPoint)
	f(len(ch.Points), 1, virtual.ErrNoPoint)

	// A failed write leaves the stored value alone.
	if got := readAll(t, d)[idxAdjustment].Value; got != 37.25 {
		t.Errorf("adjustment after rejected writes = %v, want 37.25", got)
	}
}

func TestFailReadsAndRecover(t *testing.T) {
	d := newDriver(t, testChannel(), &clock{t: time.Unix(0, 0)})
	ctx := context.Background()
	gone := errors.New("cable cut")

	d.FailReads(gone)
	if _, err := d.Read(ctx, nil); !errors.Is(err, gone) {
		t.Fatalf("Read while failing: %v, want %v", err, gone)
	}
	if _, err := d.Write(ctx, idxAdjustment, 1); !errors.Is(err, gone) {
		t.Fatalf("Write while failing: %v, want %v", err, gone)
	}
	if err := d.Connect(ctx); !errors.Is(err, gone) {
		t.Fatalf("Connect while failing: %v, want %v", err, gone)
	}

	d.Recover()
	if _, err := d.Read(ctx, nil); err != nil {
		t.Fatalf("Read after Recover: %v", err)
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Read(ctx, nil); !errors.Is(err, virtual.ErrClosed) {
		t.Fatalf("Read after Close: %v, want ErrClosed", err)
	}
	if err := d.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Read(ctx, nil); err != nil {
		t.Fatalf("Read after Connect: %v", err)
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := d.Read(cancelled, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Read with cancelled context: %v", err)
	}
}

func TestNewDriverRejectsBadPoints(t *testing.T) {
	ch := &config.Channel{ID: 7, Points: []config.Point{
		{ID: 1, Type: messages.Measurement, Signal: "triangle", Line: 2},
		{ID: 2, Type: messages.Measurement, Min: ptr(10), Max: ptr(5), Line: 3},
		{ID: 3, Type: messages.Measurement, Min: ptr(150), Line: 4}, // above default max
		{ID: 4, Type: messages.Measurement, Period: -time.Second, Line: 5},
		{ID: 5, Type: messages.Measurement, Max: ptr(math.Inf(1)), Line: 6},
		{ID: 6, Type: 'x', Line: 7},
		{ID: 7, Type: messages.Adjustment, Min: ptr(150), Line: 8}, // fine: no max to check
		{ID: 8, Type: messages.Adjustment, Min: ptr(3), Max: ptr(2), Line: 9},
	}}
	_, err := virtual.NewDriver(ch, nil)
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{
		`point 1 (line 2): unknown signal "triangle"`,
		"point 2 (line 3): min 10 is above max 5",
		"point 3 (line 4): min 150 is above max 100",
		"point 4 (line 5): negative period",
		"point 5 (line 6): min and max must be finite",
		"point 6 (line 7): unknown point type",
		"point 8 (line 9): min 3 is above max 2",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "point 7 ") {
		t.Errorf("error mentions point 7:\n%s", msg)
	}
}
