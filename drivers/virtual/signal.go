package virtual

import (
	"fmt"
	"math"
	"strings"
)

// signal is the waveform of a generated point.
type signal uint8

const (
	sine signal = iota
	ramp
	randomWalk
	square
	constant
	stored // c and a points: the last value written
)

func (s signal) String() string {
	switch s {
	case sine:
		return "sine"
	case ramp:
		return "ramp"
	case randomWalk:
		return "random_walk"
	case square:
		return "square"
	case constant:
		return "constant"
	case stored:
		return "stored"
	}
	return fmt.Sprintf("signal(%d)", uint8(s))
}

// parseSignal parses a signal column; empty means def.
func parseSignal(s string, def signal) (signal, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "":
		return def, nil
	case "sine":
		return sine, nil
	case "ramp":
		return ramp, nil
	case "random_walk":
		return randomWalk, nil
	case "square":
		return square, nil
	case "constant":
		return constant, nil
	}
	return 0, fmt.Errorf("unknown signal %q (want sine, ramp, random_walk, square or constant)", s)
}

// wave returns the value of a periodic signal at phase in [0, 1) between
// lo and hi: sine starts at the middle going up, ramp rises from lo to hi,
// square is hi for the first half and lo for the second, constant is lo.
// randomWalk and stored are not periodic and return lo.
func wave(s signal, phase, lo, hi float64) float64 {
	switch s {
	case sine:
		return (lo+hi)/2 + (hi-lo)/2*math.Sin(2*math.Pi*phase)
	case ramp:
		return lo + (hi-lo)*phase
	case square:
		if phase < 0.5 {
			return hi
		}
		return lo
	}
	return lo
}

// phaseAt returns where time t (Unix ns) falls within a period of
// periodNs, shifted by offset (a fraction of the period), in [0, 1).
func phaseAt(t, periodNs int64, offset float64) float64 {
	m := t % periodNs
	if m < 0 {
		m += periodNs
	}
	p := float64(m)/float64(periodNs) + offset
	if p >= 1 {
		p--
	}
	return p
}

// step moves a random walk at v by r (uniform in [0, 1)) times 2 % of the
// range, centred (so at most ±1 %), reflecting at the bounds.
func step(v, r, lo, hi float64) float64 {
	v += (hi - lo) * 0.02 * (r - 0.5)
	if v > hi {
		v = 2*hi - v
	}
	if v < lo {
		v = 2*lo - v
	}
	return min(max(v, lo), hi)
}

// phaseOffset spreads points over the period by their id (golden-ratio
// sequence), so that the points of a channel do not all move in step.
func phaseOffset(id uint32) float64 {
	const phi = 0.6180339887498949
	_, f := math.Modf(float64(id) * phi)
	return f
}
