package alarm

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

// Alarm states (docs/alarms.md).
const (
	Normal         = "normal"
	ActiveUnacked  = "active-unacked"
	ActiveAcked    = "active-acked"
	ClearedUnacked = "cleared-unacked"
)

// Event types.
const (
	EvRaise    = "raise"
	EvChange   = "change"
	EvClear    = "clear"
	EvAck      = "ack"
	EvEscalate = "escalate"
	EvShelve   = "shelve"
	EvUnshelve = "unshelve"
)

// BandComm is the band of a rule whose point lost communication.
const BandComm = "comm"

// Errors of operator actions, mapped to HTTP 409 by the API.
var (
	ErrNotActive    = errors.New("the alarm is normal: nothing to acknowledge")
	ErrAlreadyAcked = errors.New("the alarm is already acknowledged")
	ErrNotShelved   = errors.New("the alarm is not shelved")
)

// Rule is one configured alarm rule, ready to evaluate.
type Rule struct {
	ID            string
	Point         messages.PointKey
	PointStr      string
	Name, Unit    string // of the point, for messages
	Condition     string
	Threshold     float64 // of a simple condition
	Limits        []config.BandLimit
	Deadband      float64
	OnDelay       time.Duration
	OffDelay      time.Duration
	EscalateAfter time.Duration
	Level         string // of a simple condition and of the comm band
	Message       string
	Notify        []string
}

// NewRules compiles the config's alarm rules.
func NewRules(cfg *config.Config) []*Rule {
	out := make([]*Rule, 0, len(cfg.Alarms))
	for i := range cfg.Alarms {
		a := &cfg.Alarms[i]
		k, _ := messages.ParsePointKey(a.Point)
		r := &Rule{ID: a.ID, Point: k, PointStr: k.String(), Condition: a.Condition, Threshold: a.Threshold,
			Limits: a.Limits(), Deadband: a.Deadband, OnDelay: a.OnDelay, OffDelay: a.OffDelay,
			EscalateAfter: a.EscalateAfter, Level: a.Level, Message: a.Message, Notify: a.Notify}
		if _, p := cfg.Point(k); p != nil {
			r.Name, r.Unit = p.Name, p.Unit
		}
		out = append(out, r)
	}
	return out
}

// State is the persisted state of one rule (the hash alarm:{id}).
type State struct {
	State        string  `json:"state"`
	Level        string  `json:"level"`
	Band         string  `json:"band"`
	Value        float64 `json:"value"`
	Threshold    float64 `json:"threshold"`
	Since        int64   `json:"since"` // ms: when the current (or last) activation was raised
	Message      string  `json:"message"`
	AckedBy      string  `json:"acked_by"`
	AckedAt      int64   `json:"acked_at"`
	ShelvedUntil int64   `json:"shelved_until"`
	ShelvedBy    string  `json:"shelved_by"`
	ShelveReason string  `json:"shelve_reason"`
	Seq          uint64  `json:"seq"`
	Updated      int64   `json:"updated"`
	Escalations  int     `json:"escalations"`
	EscalatedAt  int64   `json:"escalated_at"`
}

// Active reports whether the alarm is not normal.
func (s *State) Active() bool { return s.State != "" && s.State != Normal }

// Shelved reports whether the alarm is shelved at now (ms).
func (s *State) Shelved(now int64) bool { return s.ShelvedUntil > now }

// Event is one transition (docs/alarms.md).
type Event struct {
	EventID      string  `json:"event_id" msgpack:"event_id"`
	AlarmID      string  `json:"alarm_id" msgpack:"alarm_id"`
	Type         string  `json:"type" msgpack:"type"`
	State        string  `json:"state" msgpack:"state"`
	PrevState    string  `json:"prev_state" msgpack:"prev_state"`
	Level        string  `json:"level" msgpack:"level"`
	Band         string  `json:"band" msgpack:"band"`
	Point        string  `json:"point" msgpack:"point"`
	Value        float64 `json:"value" msgpack:"value"`
	Threshold    float64 `json:"threshold" msgpack:"threshold"`
	Message      string  `json:"message" msgpack:"message"`
	User         string  `json:"user" msgpack:"user"`
	Reason       string  `json:"reason" msgpack:"reason"`
	Shelved      bool    `json:"shelved" msgpack:"shelved"`
	ShelvedUntil int64   `json:"shelved_until" msgpack:"shelved_until"`
	Since        int64   `json:"since" msgpack:"since"`
	TS           int64   `json:"ts" msgpack:"ts"`
	Node         string  `json:"node" msgpack:"node"`
	// SampleTS is the sample time of the update that caused it (0 for
	// operator actions and timers); for latency metrics, not serialised.
	SampleTS int64 `json:"-" msgpack:"-"`
}

// Eval is the plain evaluation logic of one rule: hysteresis, delays,
// acknowledgement, shelving and escalation. It is not safe for concurrent
// use; its actor owns it. Times are passed in, so tests control them.
type Eval struct {
	R    *Rule
	S    State
	Node string

	// the latest input
	value    float64
	quality  messages.Quality
	sampleTS int64
	has      bool

	// a transition waiting for its on/off delay
	pending   bool
	pendBand  string
	pendUp    bool
	pendSince time.Time
}

// NewEval starts a rule from its persisted state (zero: normal).
func NewEval(r *Rule, s State, node string) *Eval {
	if s.State == "" {
		s.State = Normal
	}
	if s.Level == "" {
		s.Level = r.baseLevel()
	}
	return &Eval{R: r, S: s, Node: node}
}

func (r *Rule) baseLevel() string {
	if len(r.Limits) > 0 && r.Condition != config.ConditionBands {
		return r.Limits[0].Level
	}
	return r.Level
}

// Input evaluates a new value of the rule's point at now; it returns the
// events of the transitions it caused (usually none).
func (e *Eval) Input(v float64, q messages.Quality, sampleTS int64, now time.Time) []Event {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		q = messages.Bad // not a value to compare: a communication alarm
	}
	if !commLost(q) {
		e.value = v // a comm_lost or bad sample keeps the last good value
	}
	e.quality, e.sampleTS, e.has = q, sampleTS, true
	return e.evaluate(now)
}

// Tick re-evaluates at now (a delay or escalation timer fired).
func (e *Eval) Tick(now time.Time) []Event {
	var evs []Event
	if e.has {
		evs = e.evaluate(now)
	}
	ms := now.UnixMilli()
	if e.S.ShelvedUntil != 0 && e.S.ShelvedUntil <= ms {
		e.S.ShelvedUntil, e.S.ShelvedBy, e.S.ShelveReason = 0, "", ""
		evs = append(evs, e.event(EvUnshelve, e.S.State, now, "", "shelve expired"))
	}
	if at := e.EscalateAt(); !at.IsZero() && !now.Before(at) {
		prev := e.S.State
		if next := config.LevelRank(e.S.Level) + 1; next < len(config.Levels) {
			e.S.Level = config.Levels[len(config.Levels)-1-next]
			e.S.Escalations++
			e.S.EscalatedAt = ms
			evs = append(evs, e.event(EvEscalate, prev, now, "", "unacknowledged for "+e.R.EscalateAfter.String()))
		}
	}
	return evs
}

// Next is when Tick must run next (zero: no timer needed).
func (e *Eval) Next() time.Time {
	var next time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if e.pending {
		d := e.R.OffDelay
		if e.pendUp {
			d = e.R.OnDelay
		}
		earliest(e.pendSince.Add(d))
	}
	if e.S.ShelvedUntil != 0 {
		earliest(time.UnixMilli(e.S.ShelvedUntil))
	}
	earliest(e.EscalateAt())
	return next
}

// EscalateAt is when the unacknowledged alarm goes up a level (zero: never).
func (e *Eval) EscalateAt() time.Time {
	if e.R.EscalateAfter <= 0 || (e.S.State != ActiveUnacked && e.S.State != ClearedUnacked) ||
		config.LevelRank(e.S.Level) >= len(config.Levels)-1 {
		return time.Time{}
	}
	from := max(e.S.Since, e.S.EscalatedAt)
	return time.UnixMilli(from).Add(e.R.EscalateAfter)
}

// Ack acknowledges the alarm for user.
func (e *Eval) Ack(user, comment string, now time.Time) ([]Event, error) {
	prev := e.S.State
	switch prev {
	case ActiveUnacked:
		e.S.State = ActiveAcked
	case ClearedUnacked:
		e.S.State = Normal
	case ActiveAcked:
		return nil, ErrAlreadyAcked
	default:
		return nil, ErrNotActive
	}
	e.S.AckedBy, e.S.AckedAt = user, now.UnixMilli()
	return []Event{e.event(EvAck, prev, now, user, comment)}, nil
}

// Shelve shelves the alarm until now+d.
func (e *Eval) Shelve(d time.Duration, reason, user string, now time.Time) []Event {
	e.S.ShelvedUntil = now.Add(d).UnixMilli()
	e.S.ShelvedBy, e.S.ShelveReason = user, reason
	return []Event{e.event(EvShelve, e.S.State, now, user, reason)}
}

// Unshelve ends a shelve early.
func (e *Eval) Unshelve(user string, now time.Time) ([]Event, error) {
	if !e.S.Shelved(now.UnixMilli()) {
		return nil, ErrNotShelved
	}
	e.S.ShelvedUntil, e.S.ShelvedBy, e.S.ShelveReason = 0, "", ""
	return []Event{e.event(EvUnshelve, e.S.State, now, user, "")}, nil
}

func commLost(q messages.Quality) bool {
	return q == messages.CommLost || q == messages.Bad || q == messages.Stale
}

// evaluate moves the rule toward the band its latest input asks for.
func (e *Eval) evaluate(now time.Time) []Event {
	cur := e.currentBand()
	if commLost(e.quality) {
		e.pending = false
		if cur == BandComm {
			return nil
		}
		return []Event{e.apply(BandComm, true, now)}
	}
	var evs []Event
	if cur == BandComm {
		// Communication is back: the comm alarm clears at once and the
		// fresh value is evaluated from normal (with its on-delay).
		evs = append(evs, e.apply("", false, now))
		cur = ""
	}
	target := e.target(cur)
	if target == cur {
		e.pending = false
		return evs
	}
	up := e.escalates(cur, target)
	delay := e.R.OffDelay
	if up {
		delay = e.R.OnDelay
	}
	if delay > 0 {
		switch {
		case !e.pending || e.pendUp != up:
			e.pending, e.pendBand, e.pendUp, e.pendSince = true, target, up, now
			return evs
		case now.Sub(e.pendSince) < delay:
			e.pendBand = target // still away from cur: keep the start
			return evs
		}
	}
	e.pending = false
	return append(evs, e.apply(target, up, now))
}

// currentBand is the band the alarm is in ("" when not active).
func (e *Eval) currentBand() string {
	if e.S.State == ActiveUnacked || e.S.State == ActiveAcked {
		return e.S.Band
	}
	return ""
}

func (e *Eval) limit(band string) *config.BandLimit {
	for i := range e.R.Limits {
		if e.R.Limits[i].Name == band {
			return &e.R.Limits[i]
		}
	}
	return nil
}

// target is the most severe band the value is in, with hysteresis: a band
// the alarm is in (or beyond, in the same direction) holds until the value
// is back past its threshold by the deadband.
func (e *Eval) target(cur string) string {
	v := e.value
	c := e.limit(cur)
	best := ""
	bestSev := 0
	for i := range e.R.Limits {
		l := &e.R.Limits[i]
		held := c != nil && c.Op[0] == l.Op[0] && c.Severity >= l.Severity
		if !holds(l, v, e.R.Deadband, held) {
			continue
		}
		if l.Severity > bestSev || (l.Severity == bestSev && l.Name == cur) {
			best, bestSev = l.Name, l.Severity
		}
	}
	return best
}

// holds reports whether v is in limit l; held applies the deadband.
func holds(l *config.BandLimit, v, db float64, held bool) bool {
	t := l.Threshold
	if !held {
		db = 0
	}
	switch l.Op {
	case ">":
		return v > t-db
	case ">=":
		return v >= t-db
	case "<":
		return v < t+db
	case "<=":
		return v <= t+db
	case "==":
		return v == t
	case "!=":
		return v != t
	}
	return false
}

// escalates reports whether moving from cur to target is a new raise
// (rather than a return toward normal).
func (e *Eval) escalates(cur, target string) bool {
	if target == "" {
		return false
	}
	c, t := e.limit(cur), e.limit(target)
	if c == nil || t == nil {
		return true
	}
	return c.Op[0] != t.Op[0] || t.Severity > c.Severity
}

// apply makes the transition to band target ("" = clear).
func (e *Eval) apply(target string, up bool, now time.Time) Event {
	prev := e.S.State
	ms := now.UnixMilli()
	switch {
	case target == "":
		if prev == ActiveAcked {
			e.S.State = Normal
		} else {
			e.S.State = ClearedUnacked
		}
		if e.S.Band == BandComm {
			e.S.Message = "Communication restored: " + e.pointName() + " (" + e.R.PointStr + ")"
		} // else the message stays the text of what was active
		e.S.Band = ""
		e.S.Value = e.value
		return e.event(EvClear, prev, now, "", "")
	case up:
		e.S.State = ActiveUnacked
		e.S.Since = ms
		e.S.AckedBy, e.S.AckedAt = "", 0
		e.S.Escalations, e.S.EscalatedAt = 0, 0
	}
	e.S.Band = target
	e.S.Value = e.value
	if target == BandComm {
		e.S.Level = e.R.Level
		e.S.Threshold = 0
		e.S.Message = e.commMessage()
	} else {
		l := e.limit(target)
		e.S.Level, e.S.Threshold = l.Level, l.Threshold
		e.S.Message = e.render(l.Threshold)
	}
	if up {
		return e.event(EvRaise, prev, now, "", "")
	}
	return e.event(EvChange, prev, now, "", "")
}

func (e *Eval) event(typ, prev string, now time.Time, user, reason string) Event {
	e.S.Seq++
	ms := now.UnixMilli()
	e.S.Updated = ms
	ev := Event{
		EventID: e.R.ID + ":" + strconv.FormatUint(e.S.Seq, 10), AlarmID: e.R.ID, Type: typ,
		State: e.S.State, PrevState: prev, Level: e.S.Level, Band: e.S.Band, Point: e.R.PointStr,
		Value: e.S.Value, Threshold: e.S.Threshold, Message: e.S.Message, User: user, Reason: reason,
		Shelved: e.S.Shelved(ms), ShelvedUntil: e.S.ShelvedUntil, Since: e.S.Since, TS: ms, Node: e.Node,
	}
	if typ == EvRaise || typ == EvChange || typ == EvClear {
		ev.SampleTS = e.sampleTS
	}
	return ev
}

func (e *Eval) render(threshold float64) string {
	tmpl := e.R.Message
	if tmpl == "" {
		tmpl = e.defaultMessage()
	}
	if !strings.Contains(tmpl, "{") {
		return tmpl
	}
	return strings.NewReplacer("{value}", FormatValue(e.value), "{threshold}", FormatValue(threshold),
		"{point}", e.R.PointStr, "{unit}", e.R.Unit, "{name}", e.R.Name).Replace(tmpl)
}

func (e *Eval) defaultMessage() string {
	name := e.R.Name
	if name == "" {
		name = e.R.PointStr
	}
	op := e.R.Condition
	if l := e.limit(e.S.Band); l != nil {
		op = l.Op
	}
	return strings.TrimSpace(name+" {value} {unit}") + " " + op + " {threshold}"
}

func (e *Eval) commMessage() string {
	return "Communication lost: " + e.pointName() + " (" + e.R.PointStr + ") is " + e.quality.String()
}

func (e *Eval) pointName() string {
	if e.R.Name != "" {
		return e.R.Name
	}
	return e.R.PointStr
}

// FormatValue formats a value for alarm messages: up to 3 decimals, no
// trailing zeros.
func FormatValue(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return strconv.FormatFloat(v, 'g', -1, 64)
	}
	if a := math.Abs(v); a != 0 && (a < 0.01 || a >= 1e12) {
		return strconv.FormatFloat(v, 'g', 4, 64)
	}
	s := strconv.FormatFloat(v, 'f', 3, 64)
	s = strings.TrimRight(s, "0")
	s = strings.TrimSuffix(s, ".")
	if s == "-0" {
		s = "0"
	}
	return s
}
