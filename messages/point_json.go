package messages

import (
	"encoding/json"
	"fmt"
	"math"
)

type pointUpdateJSON struct {
	ChannelID *uint32  `json:"channel_id"`
	PointType string   `json:"point_type"`
	PointID   *uint32  `json:"point_id"`
	Value     *float64 `json:"value"`
	Timestamp int64    `json:"timestamp"`
	Quality   string   `json:"quality"`
	Node      string   `json:"node"`
}

// UnmarshalJSON parses a point:update payload, rejecting missing ids and
// unknown types or qualities. A null value decodes as NaN.
func (u *PointUpdate) UnmarshalJSON(data []byte) error {
	var j pointUpdateJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return fmt.Errorf("point update: %w", err)
	}
	if j.ChannelID == nil || j.PointID == nil {
		return fmt.Errorf("point update: channel_id and point_id are required")
	}
	t, err := ParsePointType(j.PointType)
	if err != nil {
		return fmt.Errorf("point update: point_type: %w", err)
	}
	q := Good
	if j.Quality != "" {
		if q, err = ParseQuality(j.Quality); err != nil {
			return fmt.Errorf("point update: quality: %w", err)
		}
	}
	v := math.NaN()
	if j.Value != nil {
		v = *j.Value
	}
	*u = PointUpdate{Key: PointKey{Channel: *j.ChannelID, Type: t, Point: *j.PointID},
		Value: v, Timestamp: j.Timestamp, Quality: q, Node: j.Node}
	return nil
}

// MarshalJSON encodes u as the point:update payload.
func (u PointUpdate) MarshalJSON() ([]byte, error) {
	return u.AppendJSON(make([]byte, 0, 128)), nil
}
