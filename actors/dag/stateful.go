package dag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/voltage-ems/voltage/config"
)

// maxAvgSamples bounds the samples one avg call site keeps: beyond it the
// oldest are dropped even if they are still inside the window. At one sample
// a second it covers a window of 2h46m.
const maxAvgSamples = 10_000

// stateVersion is the first byte of the encoding of a State.
const stateVersion = 1

// ErrCallsChanged is returned (wrapped) by UnmarshalBinary when the stored
// state belongs to other stateful call sites than the State's: the
// expression was edited since it was saved. The State is left unchanged
// (fresh); the caller logs it and carries on.
var ErrCallsChanged = errors.New("stateful calls changed")

// State is the state of every stateful call site of one computation, indexed
// by the site number the compiled program passes (see
// config.Computation.StatefulCalls). Its zero value has no sites.
//
// Call evaluates one site:
//
//   - integrate(x): the trapezoidal integral of x over time, in hours (kWh
//     from kW): each call adds (xPrev+x)/2 * dt in hours and returns the
//     running total. The first call returns 0 (no interval yet).
//   - rate(x): (x - xPrev) / dt in seconds. The first call returns 0.
//   - delta(x): x - xPrev. The first call returns 0.
//   - avg(x, window): the plain (not time-weighted) mean of the samples of
//     the last window, the current one included: samples older than
//     now-window (at now-window exactly, too) are dropped, and so are the
//     oldest beyond 10,000 samples. Each call costs time linear in the
//     samples kept.
//
// A non-finite x (NaN, or ±Inf as from a division by zero) makes Call return
// NaN and leaves the site's state as it was: the next finite x is measured
// against the last finite one, so a NaN does not reset an energy counter,
// and an interval spanning NaNs is integrated as the straight line between
// the finite samples around it.
//
// Time is the wall clock of now (its monotonic reading is ignored), so the
// state can be persisted and restored on another process. If now is not
// after the previous call of a site (dt <= 0: the same timestamp twice, or a
// clock stepped back), integrate adds nothing and rate returns 0; the
// sample still becomes the previous one. avg keeps samples in call order and
// drops them from the oldest on, stopping at the first inside the window: a
// sample given after a clock step back stays until those before it go.
//
// A State is not safe for concurrent use.
type State struct {
	sites []site
}

// site is the state of one call site.
type site struct {
	fn      byte // funcIntegrate, ...
	window  int64
	hasPrev bool
	prevT   int64   // unix nanoseconds of the previous finite sample
	prevX   float64 // the previous finite sample
	total   float64 // integrate's running total
	samples []sample
}

type sample struct {
	t int64 // unix nanoseconds
	x float64
}

// Function codes, as encoded.
const (
	funcUnknown byte = iota
	funcIntegrate
	funcRate
	funcAvg
	funcDelta
)

func funcCode(name string) byte {
	switch name {
	case config.FuncIntegrate:
		return funcIntegrate
	case config.FuncRate:
		return funcRate
	case config.FuncAvg:
		return funcAvg
	case config.FuncDelta:
		return funcDelta
	}
	return funcUnknown
}

// NewState returns a fresh State for the call sites calls (a computation's
// StatefulCalls). Call returns NaN at a site of an unknown function, and
// MarshalBinary fails while there is one.
func NewState(calls []config.StatefulCall) *State {
	s := &State{sites: make([]site, len(calls))}
	for i, c := range calls {
		s.sites[i] = site{fn: funcCode(c.Func)}
		if s.sites[i].fn == funcAvg {
			s.sites[i].window = int64(c.Window)
		}
	}
	return s
}

// Call evaluates the stateful function of site with the value x at time now
// and returns its result (see State). It returns NaN for a site out of range.
func (s *State) Call(site int, x float64, now time.Time) float64 {
	if site < 0 || site >= len(s.sites) || math.IsNaN(x) || math.IsInf(x, 0) {
		return math.NaN()
	}
	return s.sites[site].call(x, now.UnixNano())
}

func (st *site) call(x float64, t int64) float64 {
	if st.fn == funcAvg {
		return st.avg(x, t)
	}
	if st.fn == funcUnknown {
		return math.NaN()
	}
	first, prevX, dt := !st.hasPrev, st.prevX, seconds(st.prevT, t)
	st.hasPrev, st.prevT, st.prevX = true, t, x
	switch st.fn {
	case funcIntegrate:
		if !first && dt > 0 {
			st.total += (prevX + x) / 2 * dt / 3600
		}
		return st.total
	case funcRate:
		if first || dt <= 0 {
			return 0
		}
		return (x - prevX) / dt
	default: // funcDelta
		if first {
			return 0
		}
		return x - prevX
	}
}

func (st *site) avg(x float64, t int64) float64 {
	cut := 0
	for cut < len(st.samples) && !after(st.samples[cut].t, t, st.window) {
		cut++
	}
	if n := len(st.samples) - cut + 1; n > maxAvgSamples {
		cut += n - maxAvgSamples
	}
	st.samples = append(st.samples[cut:], sample{t, x})
	var sum float64
	for _, p := range st.samples {
		sum += p.x
	}
	return sum / float64(len(st.samples))
}

// after reports whether a sample at t is inside the window that ends at now:
// t > now - window, computed without overflow.
func after(t, now, window int64) bool {
	if d := now - t; (d >= 0) == (now >= t) { // no overflow
		return d < window
	}
	return t > now // the difference overflows: t is far in the past or future
}

// seconds returns to - from in seconds, without overflow.
func seconds(from, to int64) float64 {
	if d := to - from; (d >= 0) == (to >= from) {
		return float64(d) / 1e9
	}
	return (float64(to) - float64(from)) / 1e9
}

// MarshalBinary encodes the state: a version byte, the number of sites and,
// for each, its function and window (so that UnmarshalBinary can tell an
// edited expression), the previous sample, integrate's total and avg's
// samples. Timestamps are varints (an avg's as differences), values 8 bytes,
// so an avg site takes about 10 bytes a sample.
func (s *State) MarshalBinary() ([]byte, error) {
	b := []byte{stateVersion}
	b = binary.AppendUvarint(b, uint64(len(s.sites)))
	for i := range s.sites {
		st := &s.sites[i]
		if st.fn == funcUnknown {
			return nil, fmt.Errorf("stateful call site %d: unknown function", i)
		}
		b = append(b, st.fn)
		switch st.fn {
		case funcAvg:
			b = binary.AppendVarint(b, st.window)
			b = binary.AppendUvarint(b, uint64(len(st.samples)))
			var last int64
			for _, p := range st.samples {
				b = binary.AppendVarint(b, p.t-last) // wraps, and wraps back when read
				b = binary.LittleEndian.AppendUint64(b, math.Float64bits(p.x))
				last = p.t
			}
		default:
			if !st.hasPrev {
				b = append(b, 0)
				continue
			}
			b = append(b, 1)
			b = binary.AppendVarint(b, st.prevT)
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(st.prevX))
			if st.fn == funcIntegrate {
				b = binary.LittleEndian.AppendUint64(b, math.Float64bits(st.total))
			}
		}
	}
	return b, nil
}

// UnmarshalBinary restores a state encoded by MarshalBinary, which then
// continues exactly where the encoded one was. The encoded sites must be
// s's sites (same functions in the same order, same avg windows), or the
// error wraps ErrCallsChanged. On any error s is left unchanged.
func (s *State) UnmarshalBinary(b []byte) error {
	d, err := decodeState(b)
	if err != nil {
		return err
	}
	if len(d.sites) != len(s.sites) {
		return fmt.Errorf("%w: stored state has %d call sites, want %d", ErrCallsChanged, len(d.sites), len(s.sites))
	}
	for i := range s.sites {
		if d.sites[i].fn != s.sites[i].fn || d.sites[i].window != s.sites[i].window {
			return fmt.Errorf("%w: call site %d was %s, now %s", ErrCallsChanged, i, d.sites[i].describe(), s.sites[i].describe())
		}
	}
	s.sites = d.sites
	return nil
}

func (st *site) describe() string {
	switch st.fn {
	case funcIntegrate:
		return config.FuncIntegrate
	case funcRate:
		return config.FuncRate
	case funcAvg:
		return fmt.Sprintf("%s %s", config.FuncAvg, time.Duration(st.window))
	case funcDelta:
		return config.FuncDelta
	}
	return "unknown"
}

// decodeState decodes an encoding of MarshalBinary, with its own sites.
func decodeState(b []byte) (*State, error) {
	r := reader{b: b}
	if v := r.byte(); r.err == nil && v != stateVersion {
		return nil, fmt.Errorf("decode stateful state: version %d, want %d", v, stateVersion)
	}
	n := r.uvarint()
	if r.err == nil && n > uint64(len(r.b)) { // each site takes at least a byte
		r.err = fmt.Errorf("%d call sites in %d bytes", n, len(r.b))
	}
	var s State
	if r.err == nil {
		s.sites = make([]site, n)
	}
	for i := 0; r.err == nil && i < len(s.sites); i++ {
		st := &s.sites[i]
		st.fn = r.byte()
		switch st.fn {
		case funcAvg:
			st.window = r.varint()
			if r.err == nil && st.window <= 0 {
				r.fail("call site %d: avg window %d is not positive", i, st.window)
			}
			n := r.uvarint()
			if r.err == nil && (n > maxAvgSamples || n*9 > uint64(len(r.b))) {
				r.fail("call site %d: %d avg samples", i, n)
			}
			if r.err != nil {
				break
			}
			st.samples = make([]sample, n)
			var last int64
			for j := range st.samples {
				last += r.varint()
				st.samples[j] = sample{last, r.finite()}
			}
		case funcIntegrate, funcRate, funcDelta:
			switch r.byte() {
			case 0:
			case 1:
				st.hasPrev = true
				st.prevT = r.varint()
				st.prevX = r.finite()
				if st.fn == funcIntegrate {
					st.total = r.float()
					if r.err == nil && math.IsNaN(st.total) {
						r.fail("call site %d: integral is NaN", i)
					}
				}
			default:
				r.fail("call site %d: bad flag", i)
			}
		default:
			r.fail("call site %d: unknown function %d", i, st.fn)
		}
	}
	if r.err == nil && len(r.b) > 0 {
		r.fail("%d bytes after the end", len(r.b))
	}
	if r.err != nil {
		return nil, fmt.Errorf("decode stateful state: %w", r.err)
	}
	return &s, nil
}

// reader reads an encoding; after the first error every read returns 0.
type reader struct {
	b   []byte
	err error
}

var errShort = errors.New("truncated")

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.err = errShort
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errors.New("bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errors.New("bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) float() float64 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 8 {
		r.err = errShort
		return 0
	}
	v := math.Float64frombits(binary.LittleEndian.Uint64(r.b))
	r.b = r.b[8:]
	return v
}

// finite reads a sample value, which Call only keeps if it is finite.
func (r *reader) finite() float64 {
	v := r.float()
	if r.err == nil && (math.IsNaN(v) || math.IsInf(v, 0)) {
		r.fail("sample value %v", v)
	}
	return v
}
