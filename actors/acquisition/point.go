package acquisition

import (
	"math"

	"github.com/voltage-ems/voltage/messages"
)

// Sink receives the updates that point actors publish. Publish must be safe
// for concurrent use and must not keep u.
type Sink interface {
	Publish(u *messages.PointUpdate)
}

// Tee is a Sink that hands every update to each of its sinks in turn (the
// Redis writer and the local consumers' feed).
type Tee []Sink

// Publish implements Sink.
func (t Tee) Publish(u *messages.PointUpdate) {
	for _, s := range t {
		s.Publish(u)
	}
}

// pointState decides which samples of one point are published: the first
// one, every quality change, and value changes larger than the deadband
// (measurements) or any value change (other types).
type pointState struct {
	key      messages.PointKey
	node     string
	deadband float64 // only for measurements

	has     bool
	value   float64 // last published value
	quality messages.Quality
	ts      int64
}

func newPointState(key messages.PointKey, node string, deadband float64) pointState {
	if key.Type != messages.Measurement {
		deadband = 0
	}
	return pointState{key: key, node: node, deadband: deadband}
}

// sample applies a reading. A Bad reading carries no usable value: the last
// known value is kept and only the quality changes.
func (s *pointState) sample(v float64, q messages.Quality, ts int64) (messages.PointUpdate, bool) {
	if q != messages.Good && q != messages.Uncertain {
		return s.mark(q, ts)
	}
	if s.has && q == s.quality && !s.moved(v) {
		return messages.PointUpdate{}, false
	}
	s.has, s.value, s.quality, s.ts = true, v, q, ts
	return s.update(), true
}

// mark changes only the quality (comm_lost, stale, bad), keeping the value.
func (s *pointState) mark(q messages.Quality, ts int64) (messages.PointUpdate, bool) {
	if s.quality == q && (s.has || q == messages.Good) {
		return messages.PointUpdate{}, false
	}
	if !s.has {
		s.value = math.NaN() // never read: no value to keep
	}
	s.has, s.quality, s.ts = true, q, ts
	return s.update(), true
}

func (s *pointState) moved(v float64) bool {
	last := s.value
	if math.IsNaN(v) || math.IsNaN(last) {
		return math.IsNaN(v) != math.IsNaN(last)
	}
	if s.deadband > 0 {
		return math.Abs(v-last) > s.deadband
	}
	return v != last
}

func (s *pointState) update() messages.PointUpdate {
	return messages.PointUpdate{Key: s.key, Value: s.value, Timestamp: s.ts, Quality: s.quality, Node: s.node}
}
