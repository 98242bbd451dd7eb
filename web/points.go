package web

import (
	"context"
	"fmt"
	"math"
	"path"
	"sort"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/actors/redisbus"
	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

// pointInfo is a configured point as the API shows it.
type pointInfo struct {
	key     messages.PointKey
	keyStr  string
	name    string
	unit    string
	channel string
}

// pointIndex lists the configured points in key order.
type pointIndex struct {
	all   []*pointInfo
	byKey map[messages.PointKey]*pointInfo
}

func newPointIndex(cfg *config.Config) *pointIndex {
	ix := &pointIndex{byKey: map[messages.PointKey]*pointInfo{}}
	for ci := range cfg.Channels {
		ch := &cfg.Channels[ci]
		for pi := range ch.Points {
			p := &ch.Points[pi]
			k := p.Key(ch.ID)
			info := &pointInfo{key: k, keyStr: k.String(), name: p.Name, unit: p.Unit, channel: ch.Name}
			ix.all = append(ix.all, info)
			ix.byKey[k] = info
		}
	}
	sort.Slice(ix.all, func(i, j int) bool {
		a, b := ix.all[i].key, ix.all[j].key
		if a.Channel != b.Channel {
			return a.Channel < b.Channel
		}
		if a.Type != b.Type {
			return a.Type < b.Type
		}
		return a.Point < b.Point
	})
	return ix
}

func (ix *pointIndex) get(k messages.PointKey) *pointInfo { return ix.byKey[k] }

func (ix *pointIndex) match(m func(string) bool) []*pointInfo {
	var out []*pointInfo
	for _, p := range ix.all {
		if m(p.keyStr) {
			out = append(out, p)
		}
	}
	return out
}

// compilePattern checks a glob over "{ch}:{type}:{pt}" keys ("1001:m:*",
// "*:s:*", an exact key) and returns its matcher.
func compilePattern(p string) (func(string) bool, error) {
	if len(p) > 256 {
		return nil, fmt.Errorf("pattern longer than 256 characters")
	}
	if _, err := path.Match(p, ""); err != nil {
		return nil, fmt.Errorf("invalid glob %q: %v", p, err)
	}
	return func(k string) bool { ok, _ := path.Match(p, k); return ok }, nil
}

// pointJSON is one point's current value.
type pointJSON struct {
	Key       string   `json:"key"`
	ChannelID uint32   `json:"channel_id"`
	PointType string   `json:"point_type"`
	PointID   uint32   `json:"point_id"`
	Name      string   `json:"name"`
	Unit      string   `json:"unit"`
	Value     *float64 `json:"value"`
	Timestamp int64    `json:"timestamp"`
	Quality   string   `json:"quality"`
}

// readPoints fetches value, ts and quality of the points from the comsrv
// hashes (redisbus.ReadPoints) and adds the configured name and unit.
func readPoints(ctx context.Context, rdb redis.UniversalClient, names messages.Keys, ps []*pointInfo) ([]pointJSON, error) {
	keys := make([]messages.PointKey, len(ps))
	for i, p := range ps {
		keys[i] = p.key
	}
	vals, err := redisbus.ReadPoints(ctx, rdb, names, keys)
	if err != nil {
		return nil, err
	}
	out := make([]pointJSON, len(ps))
	for i, p := range ps {
		u := &vals[i]
		out[i] = pointJSON{Key: p.keyStr, ChannelID: p.key.Channel, PointType: p.key.Type.String(), PointID: p.key.Point,
			Name: p.name, Unit: p.unit, Timestamp: u.Timestamp}
		if u.Timestamp != 0 || !math.IsNaN(u.Value) {
			out[i].Quality = u.Quality.String()
		}
		if !math.IsNaN(u.Value) && !math.IsInf(u.Value, 0) {
			v := u.Value
			out[i].Value = &v
		}
	}
	return out, nil
}
