package dag

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/config"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// step is one call: x at t0+at; want is the result (NaN for NaN).
type step struct {
	at   time.Duration
	x    float64
	want float64
}

func runSteps(t *testing.T, call config.StatefulCall, tol float64, steps []step) {
	t.Helper()
	s := NewState([]config.StatefulCall{call})
	for i, st := range steps {
		got := s.Call(0, st.x, t0.Add(st.at))
		if !same(got, st.want, tol) {
			t.Fatalf("%s: step %d (x=%v at %v): got %v, want %v", call.Func, i, st.x, st.at, got, st.want)
		}
	}
}

func same(got, want, tol float64) bool {
	if math.IsNaN(want) {
		return math.IsNaN(got)
	}
	return math.Abs(got-want) <= tol
}

// lastOnly calls at 0, d, ..., n*d with x(i) and checks only the last result.
func lastOnly(t *testing.T, call config.StatefulCall, d time.Duration, n int, x func(i int) float64, want, tol float64) {
	t.Helper()
	s := NewState([]config.StatefulCall{call})
	var got float64
	for i := 0; i <= n; i++ {
		got = s.Call(0, x(i), t0.Add(time.Duration(i)*d))
	}
	if !same(got, want, tol) {
		t.Fatalf("%s: got %v, want %v", call.Func, got, want)
	}
}

func TestIntegrate(t *testing.T) {
	integrate := config.StatefulCall{Func: config.FuncIntegrate}

	// 10 kW for 30 minutes, sampled every minute: 5 kWh. Each step adds
	// 10/60 kWh, which is not exact in binary: a tolerance of a few ulps.
	lastOnly(t, integrate, time.Minute, 30, func(int) float64 { return 10 }, 5, 1e-12)
	// A ramp 0..60 kW over an hour: the trapezoid is exact for a line, 30 kWh.
	lastOnly(t, integrate, time.Minute, 60, func(i int) float64 { return float64(i) }, 30, 1e-12)
	// -5 kW (export) for 2 hours in 15 minute steps: -10 kWh.
	lastOnly(t, integrate, 15*time.Minute, 8, func(int) float64 { return -5 }, -10, 1e-12)

	runSteps(t, integrate, 0, []step{
		{0, 4, 0},                           // first call: no interval yet
		{30 * time.Minute, 8, 3},            // (4+8)/2 * 0.5h
		{30 * time.Minute, 100, 3},          // dt = 0: nothing added, 100 is now the previous
		{90 * time.Minute, 0, 53},           // (100+0)/2 * 1h
		{90 * time.Minute, math.NaN(), nan}, // NaN: state unchanged
		{90 * time.Minute, math.Inf(1), nan},
		{150 * time.Minute, 10, 58},      // (0+10)/2 * 1h, from the last finite sample
		{120 * time.Minute, 20, 58},      // clock back: nothing added
		{180 * time.Minute, 20, 58 + 20}, // (20+20)/2 * 1h
		{180*time.Minute + 36*time.Second, // 0.01 h
			40, 78 + 0.3},
	})
}

var nan = math.NaN()

func TestRate(t *testing.T) {
	runSteps(t, config.StatefulCall{Func: config.FuncRate}, 0, []step{
		{0, 100, 0},                     // first call
		{2 * time.Second, 110, 5},       // 10 / 2s
		{4 * time.Second, 100, -5},      // -10 / 2s
		{4 * time.Second, 50, 0},        // dt = 0
		{5 * time.Second, nan, nan},     // NaN: state unchanged
		{6 * time.Second, 56, 3},        // (56-50) / 2s, from the last finite sample
		{5 * time.Second, 0, 0},         // clock back
		{5500 * time.Millisecond, 1, 2}, // 1 / 0.5s
		{time.Hour + 5500*time.Millisecond, 3601, 1},
	})
}

func TestDelta(t *testing.T) {
	runSteps(t, config.StatefulCall{Func: config.FuncDelta}, 0, []step{
		{0, 7, 0}, // first call
		{time.Second, 10, 3},
		{time.Second, 4, -6}, // dt does not matter
		{0, 4, 0},
		{2 * time.Second, math.Inf(-1), nan},
		{3 * time.Second, 5.5, 1.5},
	})
}

func TestAvg(t *testing.T) {
	m := time.Minute
	runSteps(t, config.StatefulCall{Func: config.FuncAvg, Window: 5 * m}, 0, []step{
		{0, 1, 1},
		{1 * m, 2, 1.5},
		{2 * m, 3, 2},
		{4 * m, 5, 2.75},              // 1 2 3 5
		{5 * m, 6, 4},                 // the sample at 0 is at now-window exactly: dropped; 2 3 5 6
		{5 * m, nan, nan},             // NaN: not a sample
		{6*m + 30*time.Second, 10, 6}, // 3(2m) is out since 1m30s; 3 5 6 10 -> 24/4
		{20 * m, 8, 8},                // all old ones dropped
		{21 * m, 2, 5},
		{15 * m, 5, 5},  // clock back: kept; 8 2 5
		{25 * m, 11, 6}, // 8 at 20m is at the edge: dropped; 2 at 21m stays, and so does 5 at 15m, behind it: 2 5 11
	})
}

func TestAvgBounded(t *testing.T) {
	s := NewState([]config.StatefulCall{{Func: config.FuncAvg, Window: 24 * time.Hour}})
	// maxAvgSamples zeros, then maxAvgSamples/2 ones: the oldest zeros go.
	for i := range maxAvgSamples {
		s.Call(0, 0, t0.Add(time.Duration(i)*time.Second))
	}
	var got float64
	for i := range maxAvgSamples / 2 {
		got = s.Call(0, 1, t0.Add(time.Duration(maxAvgSamples+i)*time.Second))
	}
	if got != 0.5 || len(s.sites[0].samples) != maxAvgSamples {
		t.Fatalf("got %v with %d samples, want 0.5 with %d", got, len(s.sites[0].samples), maxAvgSamples)
	}
}

func TestCallBadSite(t *testing.T) {
	s := NewState([]config.StatefulCall{{Func: config.FuncDelta}, {Func: "nope"}})
	for _, site := range []int{-1, 1, 2} {
		if got := s.Call(site, 1, t0); !math.IsNaN(got) {
			t.Fatalf("site %d: got %v, want NaN", site, got)
		}
	}
	if _, err := s.MarshalBinary(); err == nil {
		t.Fatal("MarshalBinary with an unknown function: no error")
	}
	if got := new(State).Call(0, 1, t0); !math.IsNaN(got) {
		t.Fatalf("zero State: got %v, want NaN", got)
	}
}

// mixed are call sites of every kind, and feed gives them a stream of
// samples with gaps, repeats and NaNs.
var mixed = []config.StatefulCall{
	{Func: config.FuncIntegrate},
	{Func: config.FuncRate},
	{Func: config.FuncAvg, Window: 5 * time.Minute},
	{Func: config.FuncDelta},
	{Func: config.FuncAvg, Window: 90 * time.Second},
	{Func: config.FuncIntegrate},
}

func feed(i int) (x float64, at time.Time) {
	x = 3*math.Sin(float64(i)/7) + float64(i%5)
	if i%11 == 10 {
		x = math.NaN()
	}
	at = t0.Add(time.Duration(i)*17*time.Second + time.Duration(i%3)*time.Millisecond)
	if i%13 == 12 {
		at = at.Add(-time.Minute) // a clock step back
	}
	return x, at
}

func step1(s *State, i int) []float64 {
	out := make([]float64, len(mixed))
	for site := range mixed {
		x, at := feed(i)
		out[site] = s.Call(site, x+float64(site), at)
	}
	return out
}

func TestMarshalRoundTrip(t *testing.T) {
	const n = 120
	want := make([][]float64, n)
	whole := NewState(mixed)
	for i := range n {
		want[i] = step1(whole, i)
	}
	for _, cut := range []int{0, 1, 2, 10, 11, 12, 13, 57, n - 1} {
		s := NewState(mixed)
		for i := range cut {
			step1(s, i)
		}
		b, err := s.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		r := NewState(mixed)
		if err := r.UnmarshalBinary(b); err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		b2, err := r.MarshalBinary()
		if err != nil || string(b2) != string(b) {
			t.Fatalf("cut %d: re-encoding differs (%v)", cut, err)
		}
		for i := cut; i < n; i++ {
			got := step1(r, i)
			for site := range got {
				if math.Float64bits(got[site]) != math.Float64bits(want[i][site]) {
					t.Fatalf("cut %d, step %d, site %d (%s): got %v, want %v", cut, i, site, mixed[site].Func, got[site], want[i][site])
				}
			}
		}
	}
}

func TestUnmarshalCallsChanged(t *testing.T) {
	s := NewState(mixed)
	step1(s, 0)
	step1(s, 1)
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	f := func(calls []config.StatefulCall) {
		t.Helper()
		r := NewState(calls)
		before, _ := r.MarshalBinary()
		if err := r.UnmarshalBinary(b); !errors.Is(err, ErrCallsChanged) {
			t.Fatalf("%v: got %v, want ErrCallsChanged", calls, err)
		}
		if after, _ := r.MarshalBinary(); string(after) != string(before) {
			t.Fatalf("%v: state changed by a failed UnmarshalBinary", calls)
		}
	}
	f(nil)
	f(mixed[:5])
	f(append(mixed[:5:5], mixed[5], mixed[5]))
	changed := append([]config.StatefulCall(nil), mixed...)
	changed[2].Window = 15 * time.Minute
	f(changed)
	changed = append([]config.StatefulCall(nil), mixed...)
	changed[0], changed[3] = changed[3], changed[0]
	f(changed)
}

func TestUnmarshalGarbage(t *testing.T) {
	good, err := NewState(mixed).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	f := func(name string, b []byte) {
		t.Helper()
		if err := NewState(mixed).UnmarshalBinary(b); err == nil || errors.Is(err, ErrCallsChanged) {
			t.Fatalf("%s: got %v, want a decode error", name, err)
		}
	}
	f("empty", nil)
	f("version", append([]byte{9}, good[1:]...))
	f("truncated", good[:len(good)-1])
	f("trailing", append(good, 0))
	f("unknown function", []byte{stateVersion, 1, 9, 0})
	f("bad flag", []byte{stateVersion, 1, funcDelta, 2})
	f("too many sites", []byte{stateVersion, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f("too many samples", []byte{stateVersion, 1, funcAvg, 2, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f("zero window", []byte{stateVersion, 1, funcAvg, 0, 0})
	nanBits := []byte{1, 0, 0, 0, 0, 0, 0xf8, 0x7f}
	f("NaN sample", append([]byte{stateVersion, 1, funcDelta, 1, 2}, nanBits...))
}

func FuzzStateUnmarshal(f *testing.F) {
	for _, cut := range []int{0, 3, 30} {
		s := NewState(mixed)
		for i := range cut {
			step1(s, i)
		}
		b, err := s.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{stateVersion, 1, funcAvg, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = NewState(mixed).UnmarshalBinary(b)
		d, err := decodeState(b)
		if err != nil {
			return
		}
		// A decoded state encodes, decodes again to the same encoding, and runs.
		b1, err := d.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded state does not encode: %v", err)
		}
		d2, err := decodeState(b1)
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if b2, _ := d2.MarshalBinary(); string(b2) != string(b1) {
			t.Fatal("re-encoding is not stable")
		}
		for site := range d.sites {
			d.Call(site, 1, t0)
		}
	})
}
