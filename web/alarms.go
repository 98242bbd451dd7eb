package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/actors/alarm"
	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

// AlarmActions carries the operator actions to the alarm actors; the
// errors are alarm.ErrUnknown, ErrNotReady, ErrNotActive, ErrAlreadyAcked,
// ErrNotShelved or a failure to reach them.
type AlarmActions interface {
	Ack(ctx context.Context, id, user, comment string) (alarm.State, error)
	Shelve(ctx context.Context, id, user, reason string, d time.Duration) (alarm.State, error)
	Unshelve(ctx context.Context, id, user string) (alarm.State, error)
}

// alarmView is one alarm as the API shows it (docs/alarms.md).
type alarmView struct {
	ID           string  `json:"id"`
	Point        string  `json:"point"`
	Name         string  `json:"name"`
	Unit         string  `json:"unit"`
	Condition    string  `json:"condition"`
	Threshold    float64 `json:"threshold"`
	State        string  `json:"state"`
	Level        string  `json:"level"`
	Band         string  `json:"band"`
	Value        float64 `json:"value"`
	Since        int64   `json:"since"`
	Message      string  `json:"message"`
	AckedBy      string  `json:"acked_by"`
	AckedAt      int64   `json:"acked_at"`
	Shelved      bool    `json:"shelved"`
	ShelvedUntil int64   `json:"shelved_until"`
	ShelvedBy    string  `json:"shelved_by"`
	ShelveReason string  `json:"shelve_reason"`
	Escalations  int     `json:"escalations"`
	Updated      int64   `json:"updated"`
}

const maxAlarmBody = 4 << 10

func (s *server) alarmRules() map[string]*alarm.Rule {
	s.alarmOnce.Do(func() {
		s.rules = map[string]*alarm.Rule{}
		for _, r := range alarm.NewRules(s.d.Config) {
			s.rules[r.ID] = r
		}
	})
	return s.rules
}

func viewOf(r *alarm.Rule, st alarm.State, now int64) alarmView {
	v := alarmView{ID: r.ID, Point: r.PointStr, Name: r.Name, Unit: r.Unit, Condition: r.Condition,
		Threshold: r.Threshold, State: st.State, Level: st.Level, Band: st.Band, Value: st.Value,
		Since: st.Since, Message: st.Message, AckedBy: st.AckedBy, AckedAt: st.AckedAt,
		Shelved: st.Shelved(now), ShelvedUntil: st.ShelvedUntil, ShelvedBy: st.ShelvedBy,
		ShelveReason: st.ShelveReason, Escalations: st.Escalations, Updated: st.Updated}
	if st.Band != "" && st.Band != alarm.BandComm {
		v.Threshold = st.Threshold
	}
	if v.Level == "" {
		v.Level = r.Level
		if r.Condition != config.ConditionBands && len(r.Limits) > 0 {
			v.Level = r.Limits[0].Level
		}
	}
	if !v.Shelved {
		v.ShelvedUntil, v.ShelvedBy, v.ShelveReason = 0, "", ""
	}
	return v
}

// errAlarmStatesMissing: Redis holds no state for some rules.
var errAlarmStatesMissing = errors.New("redis holds no state for these alarms (it lost them, or the alarm group has not written them yet; they are written again within a second of redis coming back)")

// alarmReadError answers a failed read of alarm states.
func alarmReadError(c *gin.Context, err error) {
	if errors.Is(err, errAlarmStatesMissing) {
		abort(c, http.StatusServiceUnavailable, "alarm_states_missing", err.Error())
		return
	}
	abort(c, http.StatusServiceUnavailable, "redis_unavailable", "reading alarms from redis: "+err.Error())
}

// readAlarms reads the states of rules from Redis.
func readAlarms(ctx context.Context, rdb redis.UniversalClient, keys messages.Keys, rules []*alarm.Rule) ([]alarm.State, error) {
	cmds := make([]*redis.MapStringStringCmd, len(rules))
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, r := range rules {
			cmds[i] = p.HGetAll(ctx, keys.Alarm(r.ID))
		}
		return nil
	}); err != nil {
		return nil, err
	}
	out := make([]alarm.State, len(rules))
	var missing []string
	for i := range cmds {
		if len(cmds[i].Val()) == 0 {
			missing = append(missing, rules[i].ID)
		}
	}
	if len(missing) > 0 {
		// The alarm store writes every rule's hash: a missing one is a
		// Redis that lost the states (restarted empty) before the store
		// wrote them again. Never show such an alarm as normal.
		if len(missing) > 5 {
			missing = append(missing[:5], fmt.Sprintf("and %d more", len(missing)-5))
		}
		return nil, fmt.Errorf("%w: %s", errAlarmStatesMissing, strings.Join(missing, ", "))
	}
	for i := range cmds {
		st, err := alarm.ParseState(cmds[i].Val())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", keys.Alarm(rules[i].ID), err)
		}
		out[i] = st
	}
	return out, nil
}

// listAlarms answers GET /api/alarms?state=active|shelved|all&level=a,b.
func (s *server) listAlarms(c *gin.Context) {
	state := c.DefaultQuery("state", "active")
	if state != "active" && state != "shelved" && state != "all" {
		abort(c, http.StatusBadRequest, "bad_request", fmt.Sprintf("query parameter state: %q is not active, shelved or all", state))
		return
	}
	var levels []string
	if l := c.Query("level"); l != "" {
		for _, lv := range strings.Split(l, ",") {
			lv = strings.TrimSpace(lv)
			if config.LevelRank(lv) < 0 {
				abort(c, http.StatusBadRequest, "bad_request", fmt.Sprintf("query parameter level: unknown level %q (want %s)", lv, strings.Join(config.Levels, ", ")))
				return
			}
			levels = append(levels, lv)
		}
	}
	if s.d.Redis == nil {
		abort(c, http.StatusServiceUnavailable, "unavailable", "alarms need redis")
		return
	}
	rules := make([]*alarm.Rule, 0, len(s.alarmRules()))
	for i := range s.d.Config.Alarms { // config order: stable output
		rules = append(rules, s.alarmRules()[s.d.Config.Alarms[i].ID])
	}
	states, err := readAlarms(c.Request.Context(), s.d.Redis, s.d.Keys, rules)
	if err != nil {
		alarmReadError(c, err)
		return
	}
	now := time.Now().UnixMilli()
	out := make([]alarmView, 0, len(rules))
	for i, r := range rules {
		v := viewOf(r, states[i], now)
		switch {
		case state == "active" && (v.State == alarm.Normal || v.Shelved):
			continue
		case state == "shelved" && !v.Shelved:
			continue
		case levels != nil && !slices.Contains(levels, v.Level):
			continue
		}
		out = append(out, v)
	}
	slices.SortStableFunc(out, func(a, b alarmView) int {
		if d := config.LevelRank(b.Level) - config.LevelRank(a.Level); d != 0 && state != "all" {
			return d
		}
		if state == "all" {
			return 0
		}
		return int(b.Since - a.Since)
	})
	c.JSON(http.StatusOK, out)
}

// getAlarm answers GET /api/alarms/{id}.
func (s *server) getAlarm(c *gin.Context) {
	r := s.alarmRules()[c.Param("id")]
	if r == nil {
		abort(c, http.StatusNotFound, "not_found", "unknown alarm "+strconv.Quote(c.Param("id")))
		return
	}
	if s.d.Redis == nil {
		abort(c, http.StatusServiceUnavailable, "unavailable", "alarms need redis")
		return
	}
	states, err := readAlarms(c.Request.Context(), s.d.Redis, s.d.Keys, []*alarm.Rule{r})
	if err != nil {
		alarmReadError(c, err)
		return
	}
	c.JSON(http.StatusOK, viewOf(r, states[0], time.Now().UnixMilli()))
}

// alarmEvents answers GET /api/alarms/events?limit=N, newest first.
func (s *server) alarmEvents(c *gin.Context) {
	limit := 100
	if l := c.Query("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > alarm.EventsKept {
			abort(c, http.StatusBadRequest, "bad_request", fmt.Sprintf("query parameter limit: %q is not a number from 1 to %d", l, alarm.EventsKept))
			return
		}
		limit = n
	}
	if s.d.Redis == nil {
		abort(c, http.StatusServiceUnavailable, "unavailable", "alarms need redis")
		return
	}
	raw, err := s.d.Redis.LRange(c.Request.Context(), s.d.Keys.AlarmEvents(), 0, int64(limit-1)).Result()
	if err != nil {
		abort(c, http.StatusServiceUnavailable, "redis_unavailable", "reading alarm events from redis: "+err.Error())
		return
	}
	out := make([]json.RawMessage, 0, len(raw))
	for _, r := range raw {
		if json.Valid([]byte(r)) {
			out = append(out, json.RawMessage(r))
		}
	}
	c.JSON(http.StatusOK, out)
}

// alarmBody reads an optional JSON object body with the given fields,
// strictly (strictjson.go).
func alarmBody(c *gin.Context, dst any, required bool) *httpError {
	data, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, maxAlarmBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &httpError{http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("body larger than %d bytes", maxAlarmBody)}
		}
		return badRequest("bad_request", "reading body: %v", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		if required {
			return badRequest("bad_request", `empty body: want a JSON object such as {"for":"1h","reason":"sensor maintenance"}`)
		}
		return nil
	}
	if err := decodeStrict(data, dst); err != nil {
		return badRequest("bad_request", "%v", err)
	}
	return nil
}

func (s *server) alarmAction(c *gin.Context, act func(ctx context.Context, r *alarm.Rule, user string) (alarm.State, error)) {
	r := s.alarmRules()[c.Param("id")]
	if r == nil {
		abort(c, http.StatusNotFound, "not_found", "unknown alarm "+strconv.Quote(c.Param("id")))
		return
	}
	if s.d.Alarms == nil {
		abort(c, http.StatusServiceUnavailable, "unavailable", "alarms are not running on this node")
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), 5*time.Second)
	defer cancel()
	st, err := act(ctx, r, principalOf(c).name)
	switch {
	case errors.Is(err, alarm.ErrUnknown):
		abort(c, http.StatusNotFound, "not_found", "unknown alarm "+strconv.Quote(r.ID))
	case errors.Is(err, alarm.ErrNotActive), errors.Is(err, alarm.ErrAlreadyAcked), errors.Is(err, alarm.ErrNotShelved):
		abort(c, http.StatusConflict, "conflict", r.ID+": "+err.Error())
	case errors.Is(err, alarm.ErrNotReady):
		abort(c, http.StatusServiceUnavailable, "unavailable", err.Error())
	case err != nil:
		abort(c, http.StatusServiceUnavailable, "unavailable", "alarms: "+err.Error())
	default:
		c.JSON(http.StatusOK, viewOf(r, st, time.Now().UnixMilli()))
	}
}

func (s *server) ackAlarm(c *gin.Context) {
	var body struct {
		Comment string `json:"comment"`
	}
	if herr := alarmBody(c, &body, false); herr != nil {
		abort(c, herr.status, herr.code, herr.msg)
		return
	}
	if len(body.Comment) > 500 {
		abort(c, http.StatusBadRequest, "bad_request", "comment: longer than 500 characters")
		return
	}
	s.alarmAction(c, func(ctx context.Context, r *alarm.Rule, user string) (alarm.State, error) {
		return s.d.Alarms.Ack(ctx, r.ID, user, body.Comment)
	})
}

func (s *server) shelveAlarm(c *gin.Context) {
	var body struct {
		For    *string `json:"for"`
		Reason *string `json:"reason"`
	}
	if herr := alarmBody(c, &body, true); herr != nil {
		abort(c, herr.status, herr.code, herr.msg)
		return
	}
	if body.For == nil {
		abort(c, http.StatusBadRequest, "bad_request", `for: required, a duration such as "1h" (at most 7 days)`)
		return
	}
	d, err := time.ParseDuration(*body.For)
	if err != nil || d < time.Second || d > config.MaxShelve {
		abort(c, http.StatusBadRequest, "bad_request", fmt.Sprintf("for: %q is not a duration from 1s to 168h", *body.For))
		return
	}
	if body.Reason == nil || strings.TrimSpace(*body.Reason) == "" {
		abort(c, http.StatusBadRequest, "bad_request", "reason: required (why the alarm is shelved, for the log)")
		return
	}
	if len(*body.Reason) > 500 {
		abort(c, http.StatusBadRequest, "bad_request", "reason: longer than 500 characters")
		return
	}
	s.alarmAction(c, func(ctx context.Context, r *alarm.Rule, user string) (alarm.State, error) {
		return s.d.Alarms.Shelve(ctx, r.ID, user, strings.TrimSpace(*body.Reason), d)
	})
}

func (s *server) unshelveAlarm(c *gin.Context) {
	var body struct{}
	if herr := alarmBody(c, &body, false); herr != nil {
		abort(c, herr.status, herr.code, herr.msg)
		return
	}
	s.alarmAction(c, func(ctx context.Context, r *alarm.Rule, user string) (alarm.State, error) {
		return s.d.Alarms.Unshelve(ctx, r.ID, user)
	})
}
