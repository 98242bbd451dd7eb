package redisbus

import (
	"context"
	"math"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/messages"
)

// ReadPoints fetches the current value, timestamp and quality of keys from
// the comsrv hashes: one HMGET per hash, all in one pipeline. A point Redis
// has no value for comes back with Value NaN and Timestamp 0 (quality as
// stored, or good when none).
func ReadPoints(ctx context.Context, rdb redis.UniversalClient, names messages.Keys, keys []messages.PointKey) ([]messages.PointUpdate, error) {
	out := make([]messages.PointUpdate, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	type group struct {
		base   string
		fields []string
		idx    []int
	}
	groups := map[hashID]*group{}
	var order []*group
	for i, k := range keys {
		out[i] = messages.PointUpdate{Key: k, Value: math.NaN()}
		id := hashID{k.Channel, k.Type}
		g := groups[id]
		if g == nil {
			g = &group{base: names.PointHash(k.Channel, k.Type)}
			groups[id] = g
			order = append(order, g)
		}
		g.fields = append(g.fields, strconv.FormatUint(uint64(k.Point), 10))
		g.idx = append(g.idx, i)
	}
	pipe := rdb.Pipeline()
	cmds := make([][3]*redis.SliceCmd, len(order))
	for gi, g := range order {
		cmds[gi] = [3]*redis.SliceCmd{pipe.HMGet(ctx, g.base, g.fields...),
			pipe.HMGet(ctx, g.base+":ts", g.fields...), pipe.HMGet(ctx, g.base+":q", g.fields...)}
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, err
	}
	for gi, g := range order {
		vals, tss, qs := cmds[gi][0].Val(), cmds[gi][1].Val(), cmds[gi][2].Val()
		for j, i := range g.idx {
			if s, ok := vals[j].(string); ok {
				if v, err := strconv.ParseFloat(s, 64); err == nil {
					out[i].Value = v
				}
			}
			if s, ok := tss[j].(string); ok {
				out[i].Timestamp, _ = strconv.ParseInt(s, 10, 64)
			}
			if s, ok := qs[j].(string); ok {
				if q, err := messages.ParseQuality(s); err == nil {
					out[i].Quality = q
				}
			}
		}
	}
	return out, nil
}
