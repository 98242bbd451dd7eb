package messages

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSignedCommandRoundTrip(t *testing.T) {
	now := time.UnixMilli(1764090000000)
	k := NewCommandKey("current-key-0123456789abcdef012345", "previous-key-0123456789abcdef01234")
	cmd := &ControlCommand{ID: "x1", ChannelID: 1001, PointType: Control, PointID: 1, Value: 1, Timestamp: now.UnixMilli(), Source: "api", User: "op1"}
	payload, err := k.Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeCommand(payload)
	if err != nil {
		t.Fatal(err)
	}
	if got.Signed == nil || got.ID != "x1" || got.User != "op1" {
		t.Fatalf("decoded %+v", got)
	}
	if err := k.Verify(got, now); err != nil {
		t.Fatalf("verify: %v", err)
	}
	// Signed with the previous key (a node not yet rolled over): accepted.
	old := NewCommandKey("previous-key-0123456789abcdef01234", "")
	p, _ := old.Encode(cmd)
	got, _ = DecodeCommand(p)
	if err := k.Verify(got, now); err != nil {
		t.Fatalf("previous key: %v", err)
	}
	// A client that serialised differently (spaces, field order) signs the
	// bytes it sent: accepted.
	raw := `{ "user":"op1", "source":"script", "id":"x2", "channel_id":1001, "point_type":"c", "point_id":1, "value":1.0, "timestamp":1764090000000 }`
	env := SignedEnvelope([]byte(raw), k.SignPayload([]byte(raw)))
	got, err = DecodeCommand(env)
	if err != nil || k.Verify(got, now) != nil || got.Source != "script" {
		t.Fatalf("foreign serialisation: %+v %v", got, err)
	}
}

func TestVerifyRefuses(t *testing.T) {
	now := time.UnixMilli(1764090000000)
	k := NewCommandKey("current-key-0123456789abcdef012345", "")
	base := func() *ControlCommand {
		return &ControlCommand{ID: "x", ChannelID: 1001, PointType: Control, PointID: 1, Value: 1, Timestamp: now.UnixMilli(), Source: "api", User: "op1"}
	}
	f := func(name string, payload []byte, at time.Time, want error, text string) {
		t.Helper()
		c, err := DecodeCommand(payload)
		if err != nil {
			t.Fatalf("%s: decode: %v", name, err)
		}
		err = k.Verify(c, at)
		if !errors.Is(err, want) || !strings.Contains(err.Error(), text) {
			t.Errorf("%s: %v, want %v (%q)", name, err, want, text)
		}
	}
	bare, _ := json.Marshal(base())
	f("unsigned", bare, now, ErrUnsigned, "requires commands signed")
	other, _ := NewCommandKey("other-key-0123456789abcdef01234567", "").Encode(base())
	f("other key", other, now, ErrBadSignature, "does not match")
	signed, _ := k.Encode(base())
	altered := strings.Replace(string(signed), `"user":"op1"`, `"user":"admin"`, 1)
	f("altered", []byte(altered), now, ErrBadSignature, "does not match")
	f("not hex", SignedEnvelope(bare, "zz"), now, ErrBadSignature, "64 hex digits")
	f("stale", signed, now.Add(DefaultCmdTimeout), ErrStale, "past its timeout")
	f("future", signed, now.Add(-MaxClockSkew-time.Millisecond), ErrStale, "in the future")
	if err := k.Verify(mustDecode(t, signed), now.Add(-MaxClockSkew+time.Millisecond)); err != nil {
		t.Errorf("within the clock skew: %v", err)
	}
	var none *CommandKey
	if err := none.Verify(mustDecode(t, bare), now); err != nil {
		t.Errorf("no key configured: %v", err)
	}
}

func mustDecode(t *testing.T, b []byte) *ControlCommand {
	t.Helper()
	c, err := DecodeCommand(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDecodeCommandErrors(t *testing.T) {
	for _, in := range []string{`not json`, `{"cmd":{"id":"x"}}`, `{"cmd":{"id":"x"},"sig":"00","extra":1}`, `{"cmd":"x","sig":"00"}`, `[]`} {
		if _, err := DecodeCommand([]byte(in)); err == nil {
			t.Errorf("%s: decoded", in)
		}
	}
}

func TestCommandTimeout(t *testing.T) {
	c := ControlCommand{ID: "x", ChannelID: 1, PointType: Control, PointID: 1, Timestamp: 1000}
	if c.Timeout() != DefaultCmdTimeout || c.Deadline() != time.UnixMilli(1000).Add(DefaultCmdTimeout) {
		t.Fatalf("absent timeout: %v", c.Timeout())
	}
	c.TimeoutMS = 1
	if c.Timeout() != time.Millisecond || c.Validate() != nil {
		t.Fatalf("1 ms: %v %v", c.Timeout(), c.Validate())
	}
	z, err := DecodeCommand([]byte(`{"id":"x","channel_id":1,"point_type":"c","point_id":1,"value":1,"timestamp":1000,"timeout_ms":0}`))
	if err != nil || z.Validate() == nil || !strings.Contains(z.Validate().Error(), "timeout_ms 0") {
		t.Errorf("an explicit timeout_ms 0: %v %v", err, z.Validate())
	}
	for _, ms := range []int64{-1, 60001} {
		c.TimeoutMS = ms
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "timeout_ms") {
			t.Errorf("timeout_ms %d: %v", ms, err)
		}
	}
}

func TestKeys(t *testing.T) {
	var contract Keys
	if contract.PointHash(1001, Measurement) != "comsrv:1001:m" || contract.Updates() != "point:update" ||
		contract.Control(7) != "cmd:7:control" || contract.Lease("channel", "1001") != "lease:channel:1001" {
		t.Fatal("the zero Keys must be the contract's names")
	}
	k := NewKeys("site-a")
	for got, want := range map[string]string{
		k.PointHash(1001, Measurement): "site-a:comsrv:1001:m", k.Updates(): "site-a:point:update",
		k.ResultPattern(): "site-a:cmd:*:result", k.Seen("x"): "site-a:cmd:seen:x", k.Alarm("hv"): "site-a:alarm:hv",
		k.AlarmActive(): "site-a:idx:alarm:active", k.Node("n1"): "site-a:node:n1", k.DagState(): "site-a:dag:state",
		NewKeys("site-a:").Audit(): "site-a:audit:commands",
	} {
		if got != want {
			t.Errorf("%q, want %q", got, want)
		}
	}
}

// FuzzDecodeCommand: whatever arrives on cmd:{ch}:control, decoding never
// panics, and a decoded envelope verifies only with the bytes it carried.
func FuzzDecodeCommand(f *testing.F) {
	k := NewCommandKey("current-key-0123456789abcdef012345", "")
	signed, _ := k.Encode(&ControlCommand{ID: "x", ChannelID: 1, PointType: Control, PointID: 1, Value: 1, Timestamp: 1764090000000})
	f.Add(signed)
	f.Add([]byte(`{"id":"x","channel_id":1,"point_type":"c","point_id":1,"value":1,"timestamp":1}`))
	f.Add([]byte(`{"cmd":{},"sig":""}`))
	f.Add([]byte(`{"cmd":null,"sig":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeCommand(data)
		if err != nil {
			return
		}
		_ = c.Validate()
		if c.Signed != nil && k.Verify(c, time.UnixMilli(c.Timestamp)) == nil && k.SignPayload(c.Signed.Payload) != c.Signed.Sig {
			t.Fatalf("verified a signature that does not match its payload: %q", data)
		}
	})
}
