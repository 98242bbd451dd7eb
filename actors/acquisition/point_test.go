package acquisition

import (
	"math"
	"testing"

	"github.com/voltage-ems/voltage/messages"
)

func TestPointStateDeadbandAndQuality(t *testing.T) {
	m := messages.PointKey{Channel: 1, Type: messages.Measurement, Point: 1}
	s := newPointState(m, "n", 0.5)
	type step struct {
		v       float64
		q       messages.Quality
		publish bool
		wantV   float64
		wantQ   messages.Quality
	}
	steps := []step{
		{230, messages.Good, true, 230, messages.Good},         // first sample
		{230.4, messages.Good, false, 0, 0},                    // within deadband
		{230.5, messages.Good, false, 0, 0},                    // exactly deadband: not "more than"
		{230.6, messages.Good, true, 230.6, messages.Good},     // moved more than 0.5 since last published
		{0, messages.Bad, true, 230.6, messages.Bad},           // bad keeps last value
		{0, messages.Bad, false, 0, 0},                         // no change
		{230.6, messages.Good, true, 230.6, messages.Good},     // quality back, same value: published
		{0, messages.CommLost, true, 230.6, messages.CommLost}, // comm lost keeps value
		{230.7, messages.Good, true, 230.7, messages.Good},     // recovery publishes even inside deadband
		{math.NaN(), messages.Good, true, math.NaN(), messages.Good},
		{math.NaN(), messages.Good, false, 0, 0},
	}
	for i, st := range steps {
		u, ok := s.sample(st.v, st.q, int64(i))
		if ok != st.publish {
			t.Fatalf("step %d (%v %v): publish=%v want %v", i, st.v, st.q, ok, st.publish)
		}
		if !ok {
			continue
		}
		if u.Quality != st.wantQ || !(u.Value == st.wantV || math.IsNaN(u.Value) && math.IsNaN(st.wantV)) {
			t.Fatalf("step %d: got %v %v, want %v %v", i, u.Value, u.Quality, st.wantV, st.wantQ)
		}
		if u.Key != m || u.Node != "n" || u.Timestamp != int64(i) {
			t.Fatalf("step %d: update %+v", i, u)
		}
	}
}

func TestPointStateSignalIgnoresDeadband(t *testing.T) {
	s := newPointState(messages.PointKey{Channel: 1, Type: messages.Signal, Point: 2}, "n", 5)
	if _, ok := s.sample(0, messages.Good, 1); !ok {
		t.Fatal("first sample not published")
	}
	if _, ok := s.sample(1, messages.Good, 2); !ok {
		t.Fatal("signal change 0->1 suppressed by a deadband that only applies to measurements")
	}
}

func TestPointStateMarkBeforeFirstSample(t *testing.T) {
	s := newPointState(messages.PointKey{Channel: 1, Type: messages.Measurement, Point: 3}, "n", 0)
	u, ok := s.mark(messages.CommLost, 5)
	if !ok || u.Quality != messages.CommLost || !math.IsNaN(u.Value) {
		t.Fatalf("comm_lost before any read: got %+v %v", u, ok)
	}
	if _, ok := s.mark(messages.CommLost, 6); ok {
		t.Fatal("repeated comm_lost published twice")
	}
}
