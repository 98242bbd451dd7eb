package session

import (
	"encoding/json"
	"math"
	"path"
	"strconv"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/voltage-ems/voltage/messages"
)

// Limits of one session.
const (
	MaxPatterns      = 100
	maxPatternLength = 256
	MaxMessageBytes  = 64 << 10
)

// clientMessage is what a client sends.
type clientMessage struct {
	Op       string   `json:"op"`
	Patterns []string `json:"patterns"`
	Format   string   `json:"format"`
}

// wirePoint is one point in snapshot and update frames.
type wirePoint struct {
	Key   string   `json:"key" msgpack:"key"`
	Value *float64 `json:"value" msgpack:"value"`
	TS    int64    `json:"ts" msgpack:"ts"`
	Q     string   `json:"q" msgpack:"q"`
}

type pointsFrame struct {
	Type   string      `json:"type" msgpack:"type"`
	Points []wirePoint `json:"points" msgpack:"points"`
}

type subscribedFrame struct {
	Type     string   `json:"type" msgpack:"type"`
	Patterns []string `json:"patterns" msgpack:"patterns"`
	Points   int      `json:"points" msgpack:"points"`
}

type errorFrame struct {
	Type    string `json:"type" msgpack:"type"`
	Code    string `json:"code" msgpack:"code"`
	Message string `json:"message" msgpack:"message"`
}

type pongFrame struct {
	Type string `json:"type" msgpack:"type"`
}

// encoder writes frames as JSON text or MessagePack binary.
type encoder struct{ msgpack bool }

// encode returns the frame and whether it is binary.
func (e encoder) encode(v any) ([]byte, bool) {
	if e.msgpack {
		b, err := msgpack.Marshal(v)
		if err != nil { // only our own frame types get here
			panic("session: msgpack encode: " + err.Error())
		}
		return b, true
	}
	if f, ok := v.(*pointsFrame); ok {
		return appendPointsJSON(make([]byte, 0, 64+len(f.Points)*72), f), false
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic("session: json encode: " + err.Error())
	}
	return b, false
}

// appendPointsJSON is the hot path: update frames, by hand, one allocation.
func appendPointsJSON(b []byte, f *pointsFrame) []byte {
	b = append(b, `{"type":"`...)
	b = append(b, f.Type...)
	b = append(b, `","points":[`...)
	for i := range f.Points {
		p := &f.Points[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"key":"`...)
		b = append(b, p.Key...) // digits and one letter: no escaping needed
		b = append(b, `","value":`...)
		if p.Value == nil {
			b = append(b, "null"...)
		} else {
			b = messages.AppendValue(b, *p.Value)
		}
		b = append(b, `,"ts":`...)
		b = strconv.AppendInt(b, p.TS, 10)
		b = append(b, `,"q":"`...)
		b = append(b, p.Q...)
		b = append(b, `"}`...)
	}
	return append(b, "]}"...)
}

func toWire(u *messages.PointUpdate) wirePoint {
	w := wirePoint{Key: u.Key.String(), TS: u.Timestamp, Q: u.Quality.String()}
	if !math.IsNaN(u.Value) && !math.IsInf(u.Value, 0) {
		v := u.Value
		w.Value = &v
	}
	return w
}

// checkPattern validates a glob over {ch}:{type}:{pt} keys.
func checkPattern(p string) error {
	if p == "" || len(p) > maxPatternLength {
		return errPattern(p, "must have 1 to 256 characters")
	}
	if _, err := path.Match(p, ""); err != nil {
		return errPattern(p, err.Error())
	}
	return nil
}

type patternError struct{ pattern, why string }

func (e *patternError) Error() string { return "pattern " + strconv.Quote(e.pattern) + ": " + e.why }

func errPattern(p, why string) error { return &patternError{p, why} }

// matchAny reports whether key matches one of patterns (checked already).
func matchAny(patterns []string, key string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, key); ok {
			return true
		}
	}
	return false
}
