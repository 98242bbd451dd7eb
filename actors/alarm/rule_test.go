package alarm

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

var t0 = time.UnixMilli(1_764_090_000_000)

func simpleRule(op string, threshold, deadband float64) *Rule {
	return &Rule{ID: "r", PointStr: "1001:m:1", Name: "voltage_a", Unit: "V", Condition: op, Threshold: threshold,
		Limits:   []config.BandLimit{{Name: "limit", Op: op, Threshold: threshold, Level: "major", Severity: 1}},
		Deadband: deadband, Level: "major", Message: "{name} {value} {unit} above {threshold} {unit} ({point})"}
}

func bandRule() *Rule {
	a := config.Alarm{Condition: config.ConditionBands, Level: "major", Bands: config.Bands{
		HiHi: &config.Band{Threshold: 260, Level: "critical"}, Hi: &config.Band{Threshold: 250, Level: "major"},
		Lo: &config.Band{Threshold: 210, Level: "minor"}, LoLo: &config.Band{Threshold: 200, Level: "critical"}}}
	return &Rule{ID: "b", PointStr: "1001:m:1", Condition: a.Condition, Limits: a.Limits(), Deadband: 2, Level: "major"}
}

// feed sends values one second apart and returns every event.
func feed(e *Eval, at time.Time, vals ...float64) ([]Event, time.Time) {
	var evs []Event
	for _, v := range vals {
		evs = append(evs, e.Input(v, messages.Good, at.UnixMilli(), at)...)
		at = at.Add(time.Second)
	}
	return evs, at
}

func types(evs []Event) string {
	s := make([]string, len(evs))
	for i, e := range evs {
		s[i] = e.Type + ":" + e.Band + ":" + e.State
	}
	return strings.Join(s, " ")
}

func TestChatterWithinDeadbandRaisesOnce(t *testing.T) {
	e := NewEval(simpleRule(">", 250, 2), State{}, "n")
	evs, _ := feed(e, t0, 249, 251, 249.5, 250.5, 248.5, 251, 249, 250.1, 248.1)
	if got := types(evs); got != "raise:limit:active-unacked" {
		t.Fatalf("events %q, want a single raise", got)
	}
	if evs[0].Message != "voltage_a 251 V above 250 V (1001:m:1)" {
		t.Fatalf("message %q", evs[0].Message)
	}
	evs, _ = feed(e, t0.Add(time.Minute), 248) // back past 250 - 2
	if got := types(evs); got != "clear::cleared-unacked" {
		t.Fatalf("events %q, want the clear at 248", got)
	}
	if evs[0].EventID != "r:2" || evs[0].PrevState != ActiveUnacked {
		t.Fatalf("event %+v", evs[0])
	}
}

func TestOnDelayIgnoresShortSpike(t *testing.T) {
	r := simpleRule(">", 250, 0)
	r.OnDelay = 5 * time.Second
	e := NewEval(r, State{}, "n")
	evs, at := feed(e, t0, 240, 255, 256, 257, 240) // 3 s above
	if len(evs) != 0 {
		t.Fatalf("spike shorter than on_delay raised: %s", types(evs))
	}
	if e.Tick(at.Add(10*time.Second)) != nil || !e.Next().IsZero() {
		t.Fatal("a cancelled on-delay still has a timer")
	}
	// Held for the whole delay: the timer raises it.
	evs, at = feed(e, at, 255, 256)
	if len(evs) != 0 {
		t.Fatal("raised before the on-delay")
	}
	if want := at.Add(-2 * time.Second).Add(5 * time.Second); !e.Next().Equal(want) {
		t.Fatalf("next %v, want %v", e.Next(), want)
	}
	evs = e.Tick(e.Next())
	if got := types(evs); got != "raise:limit:active-unacked" {
		t.Fatalf("after the on-delay: %q", got)
	}
}

func TestOffDelay(t *testing.T) {
	r := simpleRule("<", 10, 1)
	r.OffDelay = 3 * time.Second
	e := NewEval(r, State{}, "n")
	if evs, _ := feed(e, t0, 9); types(evs) != "raise:limit:active-unacked" {
		t.Fatalf("%s", types(evs))
	}
	evs, at := feed(e, t0.Add(time.Second), 12, 12, 9.5) // back below before off_delay
	if len(evs) != 0 {
		t.Fatalf("cleared before the off-delay: %s", types(evs))
	}
	evs, at = feed(e, at, 12)
	if len(evs) != 0 {
		t.Fatal("cleared at once")
	}
	if evs = e.Tick(at.Add(2 * time.Second)); types(evs) != "clear::cleared-unacked" {
		t.Fatalf("after the off-delay: %q", types(evs))
	}
}

func TestBands(t *testing.T) {
	e := NewEval(bandRule(), State{}, "n")
	evs, _ := feed(e, t0, 230, 251, 261, 259, 257.9, 249, 247.9, 230, 209, 199, 201.9, 202.1, 212.1)
	want := "raise:hi:active-unacked raise:hihi:active-unacked change:hi:active-unacked clear::cleared-unacked " +
		"raise:lo:active-unacked raise:lolo:active-unacked change:lo:active-unacked clear::cleared-unacked"
	if got := types(evs); got != want {
		t.Fatalf("events\n got %s\nwant %s", got, want)
	}
	if evs[1].Level != "critical" || evs[2].Level != "major" || evs[4].Level != "minor" {
		t.Fatalf("levels %s %s %s", evs[1].Level, evs[2].Level, evs[4].Level)
	}
	// An acknowledged hi alarm that goes to hihi is a new, unacknowledged raise.
	e = NewEval(bandRule(), State{}, "n")
	feed(e, t0, 255)
	if _, err := e.Ack("op", "", t0); err != nil {
		t.Fatal(err)
	}
	evs, _ = feed(e, t0.Add(time.Second), 262)
	if types(evs) != "raise:hihi:active-unacked" {
		t.Fatalf("%s", types(evs))
	}
}

func TestCommLost(t *testing.T) {
	e := NewEval(simpleRule(">", 250, 0), State{}, "n")
	feed(e, t0, 240)
	evs := e.Input(0, messages.CommLost, t0.UnixMilli(), t0.Add(time.Second))
	if types(evs) != "raise:comm:active-unacked" || !strings.Contains(evs[0].Message, "comm_lost") || evs[0].Value != 240 {
		t.Fatalf("%s %+v", types(evs), evs)
	}
	if evs := e.Input(0, messages.Bad, 0, t0.Add(2*time.Second)); len(evs) != 0 {
		t.Fatal("a second bad sample raised again")
	}
	// Back with a value in alarm: the comm alarm clears, the limit raises.
	evs = e.Input(255, messages.Good, 0, t0.Add(3*time.Second))
	if got := types(evs); got != "clear::cleared-unacked raise:limit:active-unacked" {
		t.Fatalf("%s", got)
	}
}

func TestAckAndErrors(t *testing.T) {
	e := NewEval(simpleRule(">", 250, 0), State{}, "n")
	if _, err := e.Ack("op", "", t0); !errors.Is(err, ErrNotActive) {
		t.Fatalf("ack of a normal alarm: %v", err)
	}
	feed(e, t0, 251)
	evs, err := e.Ack("op", "", t0.Add(time.Second))
	if err != nil || types(evs) != "ack:limit:active-acked" || evs[0].User != "op" {
		t.Fatalf("%v %s", err, types(evs))
	}
	if _, err := e.Ack("op", "", t0); !errors.Is(err, ErrAlreadyAcked) {
		t.Fatalf("second ack: %v", err)
	}
	if evs, _ := feed(e, t0.Add(2*time.Second), 240); types(evs) != "clear::normal" {
		t.Fatalf("acked then cleared: %s", types(evs))
	}
	// cleared-unacked + ack -> normal
	feed(e, t0.Add(3*time.Second), 251, 240)
	if evs, _ := e.Ack("op2", "", t0.Add(10*time.Second)); types(evs) != "ack::normal" {
		t.Fatalf("%s", types(evs))
	}
}

func TestEscalation(t *testing.T) {
	r := simpleRule(">", 250, 0)
	r.EscalateAfter = time.Minute
	e := NewEval(r, State{}, "n")
	feed(e, t0, 251)
	if !e.Next().Equal(t0.Add(time.Minute)) {
		t.Fatalf("next %v", e.Next())
	}
	evs := e.Tick(t0.Add(time.Minute))
	if types(evs) != "escalate:limit:active-unacked" || evs[0].Level != "critical" {
		t.Fatalf("%s %+v", types(evs), evs)
	}
	if !e.Next().IsZero() {
		t.Fatal("escalation past critical scheduled")
	}
	// Acknowledged alarms do not escalate.
	e = NewEval(r, State{}, "n")
	feed(e, t0, 251)
	e.Ack("op", "", t0)
	if !e.Next().IsZero() || len(e.Tick(t0.Add(time.Hour))) != 0 {
		t.Fatal("an acknowledged alarm escalates")
	}
}

func TestShelve(t *testing.T) {
	e := NewEval(simpleRule(">", 250, 0), State{}, "n")
	if _, err := e.Unshelve("op", t0); !errors.Is(err, ErrNotShelved) {
		t.Fatal(err)
	}
	evs := e.Shelve(time.Hour, "maintenance", "op", t0)
	if types(evs) != "shelve::normal" || !evs[0].Shelved || evs[0].Reason != "maintenance" {
		t.Fatalf("%+v", evs)
	}
	evs, _ = feed(e, t0.Add(time.Second), 251)
	if len(evs) != 1 || !evs[0].Shelved {
		t.Fatalf("raise while shelved: %+v", evs)
	}
	evs = e.Tick(t0.Add(time.Hour))
	if types(evs) != "unshelve:limit:active-unacked" || evs[0].Shelved {
		t.Fatalf("%+v", evs)
	}
}

func TestRestoredActiveAlarmDoesNotRaiseAgain(t *testing.T) {
	e := NewEval(simpleRule(">", 250, 2), State{State: ActiveUnacked, Band: "limit", Level: "major", Seq: 7, Since: t0.UnixMilli()}, "n")
	if evs, _ := feed(e, t0.Add(time.Hour), 251, 249); len(evs) != 0 {
		t.Fatalf("restored active alarm: %s", types(evs))
	}
	evs, _ := feed(e, t0.Add(2*time.Hour), 247)
	if types(evs) != "clear::cleared-unacked" || evs[0].EventID != "r:8" {
		t.Fatalf("%+v", evs)
	}
}

func TestFormatValue(t *testing.T) {
	for v, want := range map[float64]string{251.2: "251.2", 250: "250", 0.1 + 0.2: "0.3", -3.14159: "-3.142", 0.001234: "0.001234", 0: "0", 1e13: "1e+13"} {
		if got := FormatValue(v); got != want {
			t.Errorf("FormatValue(%v) = %q, want %q", v, got, want)
		}
	}
}

// TestFrameEncodings: the WebSocket alarm frame has the same fields in JSON
// and msgpack (sessions send either).
func TestFrameEncodings(t *testing.T) {
	e := NewEval(simpleRule(">", 250, 0), State{}, "n")
	evs, _ := feed(e, t0, 251)
	f := &Frame{Type: "alarm", Events: evs}
	j, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	m, err := msgpack.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	var fromJSON, fromMsgpack map[string]any
	if err := json.Unmarshal(j, &fromJSON); err != nil {
		t.Fatal(err)
	}
	if err := msgpack.Unmarshal(m, &fromMsgpack); err != nil {
		t.Fatal(err)
	}
	ev := fromMsgpack["events"].([]any)[0].(map[string]any)
	if fromMsgpack["type"] != "alarm" || ev["event_id"] != "r:1" || ev["state"] != ActiveUnacked || ev["alarm_id"] != "r" {
		t.Fatalf("msgpack frame %v", fromMsgpack)
	}
	jev := fromJSON["events"].([]any)[0].(map[string]any)
	if len(jev) != len(ev) {
		t.Fatalf("json has %d fields, msgpack %d:\n%v\n%v", len(jev), len(ev), jev, ev)
	}
	if _, ok := jev["SampleTS"]; ok {
		t.Fatal("the internal sample time is serialised")
	}
}
