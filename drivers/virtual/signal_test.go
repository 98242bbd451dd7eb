package virtual

import (
	"math"
	"testing"
	"time"
)

func TestWave(t *testing.T) {
	f := func(s signal, phase, want float64) {
		t.Helper()
		if got := wave(s, phase, 10, 20); math.Abs(got-want) > 1e-9 {
			t.Errorf("wave(%v, %v, 10, 20) = %v, want %v", s, phase, got, want)
		}
	}
	f(sine, 0, 15)
	f(sine, 0.25, 20)
	f(sine, 0.5, 15)
	f(sine, 0.75, 10)
	f(ramp, 0, 10)
	f(ramp, 0.5, 15)
	f(ramp, 0.999, 19.99)
	f(square, 0, 20)
	f(square, 0.4999, 20)
	f(square, 0.5, 10)
	f(constant, 0.3, 10)
}

func TestPhaseAt(t *testing.T) {
	p := int64(10 * time.Second)
	f := func(tNs int64, offset, want float64) {
		t.Helper()
		if got := phaseAt(tNs, p, offset); math.Abs(got-want) > 1e-12 {
			t.Errorf("phaseAt(%d, %v) = %v, want %v", tNs, offset, got, want)
		}
	}
	f(0, 0, 0)
	f(int64(2500*time.Millisecond), 0, 0.25)
	f(int64(12500*time.Millisecond), 0, 0.25)
	f(-int64(2500*time.Millisecond), 0, 0.75)
	f(int64(7500*time.Millisecond), 0.5, 0.25)
}

func TestStepStaysInRange(t *testing.T) {
	f := func(v, r, want float64) {
		t.Helper()
		if got := step(v, r, 0, 100); math.Abs(got-want) > 1e-9 {
			t.Errorf("step(%v, %v) = %v, want %v", v, r, got, want)
		}
	}
	f(50, 0.5, 50)
	f(50, 1, 51)
	f(50, 0, 49)
	f(99.5, 1, 99.5) // 100.5 reflected
	f(0.25, 0, 0.75) // -0.75 reflected
}

func TestParseSignal(t *testing.T) {
	for name, want := range map[string]signal{"": ramp, "sine": sine, " Random_Walk ": randomWalk, "SQUARE": square, "constant": constant} {
		if got, err := parseSignal(name, ramp); err != nil || got != want {
			t.Errorf("parseSignal(%q) = %v, %v; want %v", name, got, err, want)
		}
	}
	if _, err := parseSignal("stored", sine); err == nil {
		t.Error(`parseSignal("stored") accepted`)
	}
}
