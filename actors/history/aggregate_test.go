package history

import (
	"math"
	"testing"
	"time"
)

func TestAggregator(t *testing.T) {
	start := time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return start.Add(time.Duration(s * float64(time.Second))) }
	type in struct {
		s float64 // seconds after start
		v float64
	}
	type out struct {
		s float64 // window start, seconds after start
		v float64
	}
	// Windows of 10 s: [0,10) 1, 2, 3; [10,20) 4 (on the boundary) and 6;
	// [20,30) nothing; [30,40) -1 on the boundary and 5 just before 40;
	// 40 on the boundary opens [40,50).
	series := []in{{0, 1}, {2.5, 2}, {9.999, 3}, {10, 4}, {15, 6}, {30, -1}, {39.999, 5}, {40, 7}}
	f := func(fn string, every time.Duration, samples []in, want []out) {
		t.Helper()
		a, err := newAggregator(fn, start, every)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range samples {
			a.add(at(s.s), s.v)
		}
		got := a.finish()
		if len(got) != len(want) {
			t.Fatalf("%s every %v: got %d samples %v, want %d %v", fn, every, len(got), got, len(want), want)
		}
		for i := range want {
			if !got[i].Time.Equal(at(want[i].s)) || got[i].Value != want[i].v {
				t.Fatalf("%s every %v: sample %d = %v %v, want %v %v", fn, every, i, got[i].Time, got[i].Value, at(want[i].s), want[i].v)
			}
		}
	}
	w := 10 * time.Second
	f(FnMean, w, series, []out{{0, 2}, {10, 5}, {30, 2}, {40, 7}})
	f(FnMin, w, series, []out{{0, 1}, {10, 4}, {30, -1}, {40, 7}})
	f(FnMax, w, series, []out{{0, 3}, {10, 6}, {30, 5}, {40, 7}})
	f(FnLast, w, series, []out{{0, 3}, {10, 6}, {30, 5}, {40, 7}})
	f(FnCount, w, series, []out{{0, 3}, {10, 2}, {30, 2}, {40, 1}})
	// One window over everything.
	f(FnMean, time.Hour, series, []out{{0, 27.0 / 8}})
	f(FnCount, time.Hour, series, []out{{0, 8}})
	// No samples: no windows.
	f(FnMean, w, nil, nil)
	// Before start, NaN and out-of-order samples are ignored; a window of
	// NaN only is left out.
	f(FnCount, w, []in{{-0.001, 9}, {-20, 9}, {1, math.NaN()}, {12, 1}, {3, 9}, {13, math.NaN()}, {14, 2}, {25, math.NaN()}},
		[]out{{10, 2}})
	f(FnMean, w, []in{{-5, 100}, {0, 1}, {1, math.NaN()}, {2, 3}}, []out{{0, 2}})
	// Negative values: min and max must not start from 0.
	f(FnMax, w, []in{{1, -5}, {2, -3}}, []out{{0, -3}})
	f(FnMin, w, []in{{1, 5}, {2, 3}}, []out{{0, 3}})
	// Sub-second windows, millisecond samples.
	f(FnLast, 250*time.Millisecond, []in{{0.249, 1}, {0.25, 2}, {0.5, 3}, {0.749, 4}, {1.0, 5}},
		[]out{{0, 1}, {0.25, 2}, {0.5, 4}, {1.0, 5}})
}

func TestAggregatorAlignedToStart(t *testing.T) {
	// Windows are aligned to start, not to the epoch.
	start := time.Date(2025, 11, 25, 12, 0, 7, 500_000_000, time.UTC)
	a, err := newAggregator(FnCount, start, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	a.add(start.Add(59*time.Second), 1)
	a.add(start.Add(time.Minute), 1)
	got := a.finish()
	if len(got) != 2 || !got[0].Time.Equal(start) || !got[1].Time.Equal(start.Add(time.Minute)) {
		t.Fatalf("got %v", got)
	}
}

func TestNewAggregatorErrors(t *testing.T) {
	if _, err := newAggregator("median", time.Time{}, time.Second); err == nil {
		t.Fatal("unknown function accepted")
	}
	if _, err := newAggregator(FnMean, time.Time{}, 0); err == nil {
		t.Fatal("zero window accepted")
	}
	if _, err := newAggregator(FnMean, time.Time{}, -time.Second); err == nil {
		t.Fatal("negative window accepted")
	}
}
