package web

import (
	"context"
	"fmt"
	"math"
	"path"
	"sort"
	"strconv"

	"github.com/redis/go-redis/v9"

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
// hashes with one HMGET per hash, in one pipeline.
func readPoints(ctx context.Context, rdb redis.UniversalClient, ps []*pointInfo) ([]pointJSON, error) {
	out := make([]pointJSON, len(ps))
	type group struct {
		fields []string
		idx    []int
	}
	groups := map[string]*group{}
	var order []string
	for i, p := range ps {
		out[i] = pointJSON{Key: p.keyStr, ChannelID: p.key.Channel, PointType: p.key.Type.String(), PointID: p.key.Point, Name: p.name, Unit: p.unit}
		h := "comsrv:" + strconv.FormatUint(uint64(p.key.Channel), 10) + ":" + p.key.Type.String()
		g := groups[h]
		if g == nil {
			g = &group{}
			groups[h] = g
			order = append(order, h)
		}
		g.fields = append(g.fields, strconv.FormatUint(uint64(p.key.Point), 10))
		g.idx = append(g.idx, i)
	}
	if len(ps) == 0 {
		return out, nil
	}
	pipe := rdb.Pipeline()
	cmds := make([][3]*redis.SliceCmd, len(order))
	for gi, h := range order {
		g := groups[h]
		cmds[gi] = [3]*redis.SliceCmd{pipe.HMGet(ctx, h, g.fields...), pipe.HMGet(ctx, h+":ts", g.fields...), pipe.HMGet(ctx, h+":q", g.fields...)}
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, err
	}
	for gi, h := range order {
		g := groups[h]
		vals, tss, qs := cmds[gi][0].Val(), cmds[gi][1].Val(), cmds[gi][2].Val()
		for j, i := range g.idx {
			if s, ok := vals[j].(string); ok {
				if v, err := strconv.ParseFloat(s, 64); err == nil && !math.IsNaN(v) && !math.IsInf(v, 0) {
					out[i].Value = &v
				}
			}
			if s, ok := tss[j].(string); ok {
				out[i].Timestamp, _ = strconv.ParseInt(s, 10, 64)
			}
			if s, ok := qs[j].(string); ok {
				out[i].Quality = s
			}
		}
	}
	return out, nil
}
