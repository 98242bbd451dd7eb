package history

import (
	"fmt"
	"math"
	"time"
)

// aggregator turns samples fed in time order into one Sample per non-empty
// window: windows are [start + i*every, start + (i+1)*every), each answered
// at its start with the mean, min, max, last value or count of its samples.
// A sample exactly on a boundary belongs to the window that starts there.
// Samples before start, NaN values and samples older than the current
// window (out of order) are ignored. The zero value is not usable: see
// newAggregator.
type aggregator struct {
	fn    string
	start time.Time
	every time.Duration

	win int64   // index of the current window; valid when n > 0
	n   int64   // samples in the current window
	acc float64 // sum (mean), min, max or last of the current window
	out []Sample
}

// newAggregator returns an aggregator of fn (FnMean, FnMin, FnMax, FnLast
// or FnCount) over windows of every aligned to start.
func newAggregator(fn string, start time.Time, every time.Duration) (*aggregator, error) {
	switch fn {
	case FnMean, FnMin, FnMax, FnLast, FnCount:
	default:
		return nil, fmt.Errorf("unknown aggregation function %q (want %s, %s, %s, %s or %s)", fn, FnMean, FnMin, FnMax, FnLast, FnCount)
	}
	if every <= 0 {
		return nil, fmt.Errorf("window %v: must be positive", every)
	}
	return &aggregator{fn: fn, start: start.Round(0), every: every}, nil // no monotonic reading
}

// add feeds one sample.
func (a *aggregator) add(t time.Time, v float64) {
	if math.IsNaN(v) {
		return
	}
	d := t.Sub(a.start) // saturates instead of overflowing
	if d < 0 {
		return
	}
	w := int64(d / a.every)
	if a.n > 0 && w != a.win {
		if w < a.win {
			return
		}
		a.flush()
	}
	a.win = w
	a.n++
	switch a.fn {
	case FnMean:
		if a.n == 1 {
			a.acc = 0
		}
		a.acc += v
	case FnMin:
		if a.n == 1 || v < a.acc {
			a.acc = v
		}
	case FnMax:
		if a.n == 1 || v > a.acc {
			a.acc = v
		}
	case FnLast:
		a.acc = v
	}
}

// flush closes the current window.
func (a *aggregator) flush() {
	if a.n == 0 {
		return
	}
	v := a.acc
	switch a.fn {
	case FnMean:
		v = a.acc / float64(a.n)
	case FnCount:
		v = float64(a.n)
	}
	a.out = append(a.out, Sample{Time: a.start.Add(time.Duration(a.win) * a.every), Value: v})
	a.n = 0
}

// finish closes the last window and returns the samples, one per non-empty
// window in time order (nil when no sample was fed).
func (a *aggregator) finish() []Sample {
	a.flush()
	return a.out
}
