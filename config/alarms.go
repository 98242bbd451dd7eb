package config

import (
	"math"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/voltage-ems/voltage/messages"
)

// ConditionBands is the alarm condition with hihi/hi/lo/lolo limits.
const ConditionBands = "bands"

// MaxShelve is the longest an alarm may be shelved.
const MaxShelve = 7 * 24 * time.Hour

var (
	conditions = []string{">", ">=", "<", "<=", "==", "!="}
	// Levels are the alarm levels, most severe first.
	Levels        = []string{"critical", "major", "minor", "warning", "info"}
	alarmIDRe     = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	placeholderRe = regexp.MustCompile(`\{[^{}]*\}`)
	placeholders  = []string{"{value}", "{threshold}", "{point}", "{unit}", "{name}"}
)

// LevelRank is the severity of a level: critical 4 ... info 0, -1 if unknown.
func LevelRank(level string) int {
	for i, l := range Levels {
		if l == level {
			return len(Levels) - 1 - i
		}
	}
	return -1
}

// BandLimit is one limit of an alarm rule as the evaluation uses it.
type BandLimit struct {
	Name      string  // "limit" for a simple condition, or hihi hi lo lolo
	Op        string  // > >= < <= == !=
	Threshold float64 // the limit
	Level     string
	Severity  int // within a direction: 1 for hi/lo/limit, 2 for hihi/lolo
}

// Limits returns the rule's limits, the most severe first within each
// direction (hihi before hi, lolo before lo).
func (a *Alarm) Limits() []BandLimit {
	if a.Condition != ConditionBands {
		return []BandLimit{{Name: "limit", Op: a.Condition, Threshold: a.Threshold, Level: a.Level, Severity: 1}}
	}
	var out []BandLimit
	add := func(b *Band, name, op string, sev int) {
		if b != nil {
			out = append(out, BandLimit{Name: name, Op: op, Threshold: b.Threshold, Level: b.Level, Severity: sev})
		}
	}
	add(a.Bands.HiHi, "hihi", ">", 2)
	add(a.Bands.Hi, "hi", ">", 1)
	add(a.Bands.LoLo, "lolo", "<", 2)
	add(a.Bands.Lo, "lo", "<", 1)
	return out
}

// decodeNode reads a band: a number (the threshold) or {threshold, level}.
func (b *Band) decodeNode(d *decoder, n *yaml.Node, path string) {
	switch n.Kind {
	case yaml.ScalarNode:
		d.decode(n, reflect.ValueOf(&b.Threshold).Elem(), path+".threshold")
	case yaml.MappingNode:
		d.decodeStruct(n, reflect.ValueOf(b).Elem(), path)
		if _, ok := d.lines[path+".threshold"]; !ok {
			d.fail(n.Line, path+".threshold", "required")
		}
	default:
		d.fail(n.Line, path, "want a number or {threshold: N, level: L}, got %s", kindName(n))
	}
}

func (l *loader) validateAlarms(c *Config) {
	firstID := map[string]int{}
	for i := range c.Alarms {
		a := &c.Alarms[i]
		p := indexPath("alarms", i)
		a.Line = l.line(p)
		switch {
		case strings.TrimSpace(a.ID) == "":
			l.errorf(p+".id", "required")
		case !alarmIDRe.MatchString(a.ID):
			l.errorf(p+".id", "%q: use 1-128 letters, digits, '.', '_' or '-' (it is part of Redis keys and URLs)", a.ID)
		default:
			if first, dup := firstID[a.ID]; dup {
				l.errorf(p+".id", "duplicate alarm id %q (first at line %d)", a.ID, first)
			} else {
				firstID[a.ID] = l.line(p + ".id")
			}
		}
		var pt *Point
		if strings.TrimSpace(a.Point) == "" {
			l.errorf(p+".point", "required (a point key, e.g. \"1001:m:10001\")")
		} else if k, err := messages.ParsePointKey(a.Point); err != nil {
			l.errorf(p+".point", "%v", err)
		} else if _, pt = c.Point(k); pt == nil {
			l.errorf(p+".point", "unknown point %s", k)
		} else {
			a.Point = k.String()
		}
		if LevelRank(a.Level) < 0 {
			l.errorf(p+".level", "unknown level %q (want %s)", a.Level, strings.Join(Levels, ", "))
		}
		l.validateCondition(a, p)
		if math.IsNaN(a.Deadband) || math.IsInf(a.Deadband, 0) || a.Deadband < 0 {
			l.errorf(p+".deadband", "must be a finite number >= 0, got %v", a.Deadband)
		} else if a.Deadband > 0 && (a.Condition == "==" || a.Condition == "!=") {
			l.errorf(p+".deadband", "not used with condition %q (for discrete values); remove it", a.Condition)
		}
		for _, d := range []struct {
			name string
			v    time.Duration
		}{{"on_delay", a.OnDelay}, {"off_delay", a.OffDelay}, {"escalate_after", a.EscalateAfter}} {
			if d.v < 0 {
				l.errorf(p+"."+d.name, "must not be negative, got %s", d.v)
			}
		}
		if l.isSet(p+".escalate_after") && a.EscalateAfter > 0 && a.EscalateAfter < time.Second {
			l.errorf(p+".escalate_after", "must be at least 1s, got %s", a.EscalateAfter)
		}
		for _, m := range placeholderRe.FindAllString(a.Message, -1) {
			if !contains(placeholders, m) {
				l.errorf(p+".message", "unknown placeholder %s (want %s)", m, strings.Join(placeholders, " "))
			}
		}
		for j, raw := range a.Notify {
			np := indexPath(p+".notify", j)
			u, err := url.Parse(raw)
			switch {
			case err != nil:
				l.errorf(np, "not a URL: %v", err)
			case u.Scheme != "http" && u.Scheme != "https":
				l.errorf(np, "want an http:// or https:// webhook URL, got scheme %q", u.Scheme)
			case u.Host == "":
				l.errorf(np, "the URL has no host")
			}
		}
	}
}

func (l *loader) validateCondition(a *Alarm, p string) {
	if a.Condition == ConditionBands {
		if l.isSet(p + ".threshold") {
			l.errorf(p+".threshold", "not used with condition \"bands\": give each band its threshold")
		}
		bands := []struct {
			name string
			b    *Band
			def  string
		}{{"hihi", a.Bands.HiHi, "critical"}, {"hi", a.Bands.Hi, "major"}, {"lo", a.Bands.Lo, "major"}, {"lolo", a.Bands.LoLo, "critical"}}
		var prev *Band
		var prevName string
		n := 0
		for _, b := range bands {
			if b.b == nil {
				continue
			}
			n++
			bp := p + ".bands." + b.name
			if !l.isSet(bp+".level") || b.b.Level == "" {
				b.b.Level = b.def
			} else if LevelRank(b.b.Level) < 0 {
				l.errorf(bp+".level", "unknown level %q (want %s)", b.b.Level, strings.Join(Levels, ", "))
			}
			if math.IsNaN(b.b.Threshold) || math.IsInf(b.b.Threshold, 0) {
				l.errorf(bp+".threshold", "must be a finite number")
			} else if prev != nil && !(prev.Threshold > b.b.Threshold) {
				l.errorf(bp+".threshold", "%v must be below %s (%v): limits go hihi > hi > lo > lolo", b.b.Threshold, prevName, prev.Threshold)
			}
			prev, prevName = b.b, b.name
		}
		if n == 0 && !l.badUnder(p+".bands") {
			l.errorf(p+".bands", "required with condition \"bands\": at least one of hihi, hi, lo, lolo")
		}
		return
	}
	if l.isSet(p + ".bands") {
		l.errorf(p+".bands", "only used with condition \"bands\" (condition is %q)", a.Condition)
	}
	if !contains(conditions, a.Condition) {
		hint := ""
		switch strings.ToLower(a.Condition) {
		case "hihi", "hi", "lo", "lolo":
			hint = "; for ISA limits write condition: bands and bands: {" + strings.ToLower(a.Condition) + ": N}"
		}
		l.errorf(p+".condition", "unknown condition %q (want %s or bands%s)", a.Condition, strings.Join(conditions, " "), hint)
		return
	}
	if !l.isSet(p + ".threshold") {
		l.errorf(p+".threshold", "required")
	} else if math.IsNaN(a.Threshold) || math.IsInf(a.Threshold, 0) {
		l.errorf(p+".threshold", "must be a finite number")
	}
}

// badUnder reports whether decoding failed at path or below it.
func (l *loader) badUnder(path string) bool {
	for b := range l.dec.bad {
		if b == path || strings.HasPrefix(b, path+".") {
			return true
		}
	}
	return false
}
