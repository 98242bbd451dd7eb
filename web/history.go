package web

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/voltage-ems/voltage/actors/history"
	"github.com/voltage-ems/voltage/messages"
)

// HistoryQuerier answers history queries (a history.Store).
type HistoryQuerier interface {
	Query(ctx context.Context, q history.Query) ([]history.Series, error)
}

// Limits of a history query.
const (
	maxHistoryPoints  = 20
	maxHistoryRange   = 366 * 24 * time.Hour
	maxHistoryWindows = 10000
	autoWindows       = 300
)

// niceSteps are the windows chosen when a query gives no "every".
var niceSteps = []time.Duration{time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute,
	5 * time.Minute, 10 * time.Minute, 30 * time.Minute, time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour}

type historyPoint struct {
	T int64   `json:"t"` // window start, Unix ms
	V float64 `json:"v"`
}

type historySeries struct {
	Key    string         `json:"key"`
	Name   string         `json:"name"`
	Unit   string         `json:"unit"`
	Points []historyPoint `json:"points"`
}

// history answers GET /api/history?point=1001:m:10001&start=-1h&end=now&every=1m&fn=mean.
func (s *server) history(c *gin.Context) {
	if s.d.History == nil {
		abort(c, http.StatusServiceUnavailable, "unavailable", "history is not running on this node")
		return
	}
	q, infos, herr := s.parseHistory(c, time.Now())
	if herr != nil {
		abort(c, herr.status, herr.code, herr.msg)
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), 15*time.Second)
	defer cancel()
	series, err := s.d.History.Query(ctx, q)
	if err != nil {
		abort(c, http.StatusServiceUnavailable, "history_unavailable", "history store: "+err.Error())
		return
	}
	out := make([]historySeries, len(infos))
	for i, p := range infos {
		out[i] = historySeries{Key: p.keyStr, Name: p.name, Unit: p.unit, Points: []historyPoint{}}
		for _, sr := range series {
			if sr.Key != p.key {
				continue
			}
			for _, smp := range sr.Points {
				if !math.IsNaN(smp.Value) && !math.IsInf(smp.Value, 0) {
					out[i].Points = append(out[i].Points, historyPoint{T: smp.Time.UnixMilli(), V: smp.Value})
				}
			}
		}
	}
	c.JSON(http.StatusOK, gin.H{"start": q.Start.UnixMilli(), "end": q.End.UnixMilli(), "every": q.Every.String(),
		"fn": q.Fn, "series": out})
}

func (s *server) parseHistory(c *gin.Context, now time.Time) (history.Query, []*pointInfo, *httpError) {
	var q history.Query
	var infos []*pointInfo
	for _, v := range c.QueryArray("point") {
		for _, k := range strings.Split(v, ",") {
			k = strings.TrimSpace(k)
			if k == "" {
				continue
			}
			key, err := messages.ParsePointKey(k)
			if err != nil {
				return q, nil, badRequest("bad_request", "point: %v", err)
			}
			p := s.points.get(key)
			if p == nil {
				return q, nil, badRequest("unknown_point", "point: unknown point %s", key)
			}
			q.Points = append(q.Points, key)
			infos = append(infos, p)
		}
	}
	switch {
	case len(q.Points) == 0:
		return q, nil, badRequest("bad_request", "point: at least one point is required, e.g. point=1001:m:10001")
	case len(q.Points) > maxHistoryPoints:
		return q, nil, badRequest("bad_request", "point: at most %d points per query, got %d", maxHistoryPoints, len(q.Points))
	}
	var err error
	if q.Start, err = parseHistoryTime(c.DefaultQuery("start", "-1h"), now); err != nil {
		return q, nil, badRequest("bad_request", "start: %v", err)
	}
	if q.End, err = parseHistoryTime(c.DefaultQuery("end", "now"), now); err != nil {
		return q, nil, badRequest("bad_request", "end: %v", err)
	}
	span := q.End.Sub(q.Start)
	switch {
	case span <= 0:
		return q, nil, badRequest("bad_request", "end %s is not after start %s", q.End.Format(time.RFC3339), q.Start.Format(time.RFC3339))
	case span > maxHistoryRange:
		return q, nil, badRequest("bad_request", "range of %s is longer than the %d days a query may span", span.Round(time.Hour), int(maxHistoryRange.Hours()/24))
	}
	if e := c.Query("every"); e != "" {
		if q.Every, err = parseSpan(e); err != nil {
			return q, nil, badRequest("bad_request", "every: %v", err)
		}
		if q.Every < time.Second {
			return q, nil, badRequest("bad_request", "every: must be at least 1s, got %q", e)
		}
	} else {
		q.Every = niceSteps[len(niceSteps)-1]
		for _, st := range niceSteps {
			if span/st <= autoWindows {
				q.Every = st
				break
			}
		}
	}
	if n := span / q.Every; n > maxHistoryWindows {
		return q, nil, badRequest("bad_request", "every: %s over %s makes %d windows, more than %d: choose a larger every", q.Every, span, n, maxHistoryWindows)
	}
	q.Fn = c.DefaultQuery("fn", history.FnMean)
	switch q.Fn {
	case history.FnMean, history.FnMin, history.FnMax, history.FnLast, history.FnCount:
	default:
		return q, nil, badRequest("bad_request", "fn: unknown function %q (want mean, min, max, last or count)", q.Fn)
	}
	return q, infos, nil
}

// parseHistoryTime accepts "now", "-1h" or "now-1h" (relative to now, units
// ms s m h d), RFC 3339, or Unix milliseconds.
func parseHistoryTime(v string, now time.Time) (time.Time, error) {
	v = strings.TrimSpace(v)
	switch {
	case v == "now":
		return now, nil
	case strings.HasPrefix(v, "now-"):
		v = v[3:]
		fallthrough
	case strings.HasPrefix(v, "-"):
		d, err := parseSpan(v[1:])
		if err != nil {
			return time.Time{}, err
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.UnixMilli(ms), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time: want now, -1h, now-30m, RFC 3339 or Unix milliseconds", v)
}

// parseSpan is time.ParseDuration plus days ("7d").
func parseSpan(v string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(v, "d"); ok {
		days, err := strconv.ParseFloat(n, 64)
		if err != nil || days < 0 || days > 3660 {
			return 0, fmt.Errorf("%q is not a duration", v)
		}
		return time.Duration(days * 24 * float64(time.Hour)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a duration (e.g. 30s, 5m, 1h, 7d)", v)
	}
	return d, nil
}
