package messages

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// PointType is the kind of a point: measurement, signal, control or adjustment.
type PointType byte

// Point types as they appear in keys and payloads.
const (
	Measurement PointType = 'm'
	Signal      PointType = 's'
	Control     PointType = 'c'
	Adjustment  PointType = 'a'
)

// String returns the one-letter form used in keys ("m", "s", "c", "a").
func (t PointType) String() string {
	switch t {
	case Measurement, Signal, Control, Adjustment:
		return string(rune(t))
	}
	return fmt.Sprintf("PointType(%d)", byte(t))
}

// Valid reports whether t is one of the four point types.
func (t PointType) Valid() bool {
	return t == Measurement || t == Signal || t == Control || t == Adjustment
}

// ParsePointType accepts m/s/c/a, T/S/C/A and telemetry/signal/control/adjustment
// (and measurement/setpoint), in any case.
func ParsePointType(s string) (PointType, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "m", "t", "telemetry", "measurement":
		return Measurement, nil
	case "s", "signal":
		return Signal, nil
	case "c", "control":
		return Control, nil
	case "a", "adjustment", "setpoint":
		return Adjustment, nil
	}
	return 0, fmt.Errorf("unknown point type %q (want m, s, c, a or T, S, C, A)", s)
}

// Quality says how far a value can be trusted.
type Quality uint8

// Qualities of the contract. The zero value is Good.
const (
	Good      Quality = iota
	Bad               // device error or exception
	CommLost          // channel disconnected; the value is the last known
	Uncertain         // computed from a non-good input
	Stale             // not refreshed within 3 poll intervals
)

var qualityNames = [...]string{"good", "bad", "comm_lost", "uncertain", "stale"}

// String returns the contract name of q.
func (q Quality) String() string {
	if int(q) < len(qualityNames) {
		return qualityNames[q]
	}
	return "unknown"
}

// ParseQuality parses a contract quality name.
func ParseQuality(s string) (Quality, error) {
	for i, n := range qualityNames {
		if n == s {
			return Quality(i), nil
		}
	}
	return 0, fmt.Errorf("unknown quality %q", s)
}

// PointKey addresses one point: {channel_id}:{type}:{point_id}.
type PointKey struct {
	Channel uint32
	Type    PointType
	Point   uint32
}

// String returns the key as "1001:m:10001".
func (k PointKey) String() string {
	return string(k.AppendTo(make([]byte, 0, 24)))
}

// AppendTo appends the textual key to b.
func (k PointKey) AppendTo(b []byte) []byte {
	b = strconv.AppendUint(b, uint64(k.Channel), 10)
	b = append(b, ':', byte(k.Type), ':')
	return strconv.AppendUint(b, uint64(k.Point), 10)
}

// ErrBadKey is wrapped by ParsePointKey errors.
var ErrBadKey = errors.New("bad point key")

// ParsePointKey parses "1001:m:10001" (the type may be any accepted spelling).
func ParsePointKey(s string) (PointKey, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return PointKey{}, fmt.Errorf("%w %q: want channel:type:point", ErrBadKey, s)
	}
	ch, err := strconv.ParseUint(parts[0], 10, 32)
	if err != nil {
		return PointKey{}, fmt.Errorf("%w %q: channel id %q is not a number", ErrBadKey, s, parts[0])
	}
	t, err := ParsePointType(parts[1])
	if err != nil {
		return PointKey{}, fmt.Errorf("%w %q: %v", ErrBadKey, s, err)
	}
	pt, err := strconv.ParseUint(parts[2], 10, 32)
	if err != nil {
		return PointKey{}, fmt.Errorf("%w %q: point id %q is not a number", ErrBadKey, s, parts[2])
	}
	return PointKey{Channel: uint32(ch), Type: t, Point: uint32(pt)}, nil
}

// PointUpdate is one changed point, as published on point:update.
type PointUpdate struct {
	Key       PointKey
	Value     float64
	Timestamp int64 // Unix milliseconds of the sample
	Quality   Quality
	Node      string // name of the node that produced the update
}

// AppendValue appends v as the shortest round-trip decimal ("230.5", "1",
// "-0.25"), the form used in Redis hashes. NaN and infinities, which have no
// decimal form, are written as "NaN", "+Inf" and "-Inf".
func AppendValue(b []byte, v float64) []byte {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return strconv.AppendFloat(b, v, 'g', -1, 64)
	}
	if v == 0 {
		return append(b, '0') // no "-0"
	}
	return strconv.AppendFloat(b, v, 'f', -1, 64)
}

// AppendJSON appends the point:update JSON payload of u to b without
// allocating (beyond growing b). A NaN or infinite value is written as null.
func (u *PointUpdate) AppendJSON(b []byte) []byte {
	b = append(b, `{"channel_id":`...)
	b = strconv.AppendUint(b, uint64(u.Key.Channel), 10)
	b = append(b, `,"point_type":"`...)
	b = append(b, byte(u.Key.Type))
	b = append(b, `","point_id":`...)
	b = strconv.AppendUint(b, uint64(u.Key.Point), 10)
	b = append(b, `,"value":`...)
	if math.IsNaN(u.Value) || math.IsInf(u.Value, 0) {
		b = append(b, "null"...)
	} else {
		b = AppendValue(b, u.Value)
	}
	b = append(b, `,"timestamp":`...)
	b = strconv.AppendInt(b, u.Timestamp, 10)
	b = append(b, `,"quality":"`...)
	b = append(b, u.Quality.String()...)
	b = append(b, `","node":`...)
	b = strconv.AppendQuote(b, u.Node)
	return append(b, '}')
}

// PointUpdates is a batch of updates delivered to local consumers.
type PointUpdates struct {
	Updates []PointUpdate
}

// GetPoint asks for the current value of a point held by its actor.
type GetPoint struct{ Key PointKey }

// PointValue answers GetPoint. Found is false when the point has no value yet
// or is unknown.
type PointValue struct {
	Key       PointKey
	Found     bool
	Value     float64
	Timestamp int64
	Quality   Quality
}
