package messages

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Signed commands (auth.command_key). Anyone who can PUBLISH on Redis could
// otherwise write to a device and put any user and source into the audit.
// With a command key, a command travels in an envelope
//
//	{"cmd":{"id":"...","channel_id":1001,...,"timestamp":1764090000000,"source":"api","user":"op1"},
//	 "sig":"<hex HMAC-SHA256(key, the exact bytes of the cmd member)>"}
//
// The signature covers the bytes of "cmd" as they appear in the payload, so
// a client in any language signs what it serialised, without a canonical
// form to agree on. The channel refuses a command without a valid
// signature, and one whose timestamp is more than MaxClockSkew in the
// future or older than its timeout (a replay after the fact); a replay
// within its timeout has an id that was already executed and is answered
// duplicate. User and source are those inside the signed bytes.

// MaxClockSkew is how far in the future a signed command's timestamp may be
// (the clocks of the gateway and of the channel's node differ a little).
const MaxClockSkew = 5 * time.Second

// Errors of signature checks (wrapped with the detail).
var (
	ErrUnsigned     = errors.New("unsigned command")
	ErrBadSignature = errors.New("bad signature")
	ErrStale        = errors.New("command timestamp outside its validity window")
)

// CommandKey signs and verifies commands. The zero of *CommandKey (nil)
// means no key is configured: Sign produces bare commands and Verify
// accepts everything.
type CommandKey struct {
	current  []byte
	previous []byte // also accepted, never used to sign (key rotation)
}

// NewCommandKey returns the key, or nil when current is empty.
func NewCommandKey(current, previous string) *CommandKey {
	if current == "" {
		return nil
	}
	k := &CommandKey{current: []byte(current)}
	if previous != "" {
		k.previous = []byte(previous)
	}
	return k
}

func mac(key, payload []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(payload)
	return m.Sum(nil)
}

// SignPayload returns the hex signature of the exact bytes payload.
func (k *CommandKey) SignPayload(payload []byte) string {
	return hex.EncodeToString(mac(k.current, payload))
}

// Encode returns what to PUBLISH for cmd: the signed envelope, or the bare
// command JSON when k is nil.
func (k *CommandKey) Encode(cmd *ControlCommand) ([]byte, error) {
	raw, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	if k == nil {
		return raw, nil
	}
	return SignedEnvelope(raw, k.SignPayload(raw)), nil
}

// SignedEnvelope builds {"cmd":<payload>,"sig":"<sig>"}.
func SignedEnvelope(payload []byte, sig string) []byte {
	b := make([]byte, 0, len(payload)+len(sig)+20)
	b = append(b, `{"cmd":`...)
	b = append(b, payload...)
	b = append(b, `,"sig":"`...)
	b = append(b, sig...)
	return append(b, `"}`...)
}

// Verify checks that cmd arrived signed with the current or the previous
// key and that its timestamp is within [now - timeout, now + MaxClockSkew].
// A nil key accepts every command.
func (k *CommandKey) Verify(cmd *ControlCommand, now time.Time) error {
	if k == nil {
		return nil
	}
	if cmd.Signed == nil {
		return fmt.Errorf(`%w: this node requires commands signed with auth.command_key ({"cmd":{...},"sig":"..."})`, ErrUnsigned)
	}
	got, err := hex.DecodeString(cmd.Signed.Sig)
	if err != nil || len(got) != sha256.Size {
		return fmt.Errorf("%w: sig must be 64 hex digits (HMAC-SHA256)", ErrBadSignature)
	}
	ok := hmac.Equal(got, mac(k.current, cmd.Signed.Payload))
	if !ok && k.previous != nil {
		ok = hmac.Equal(got, mac(k.previous, cmd.Signed.Payload))
	}
	if !ok {
		return fmt.Errorf("%w: the signature does not match the command (wrong key, or the command was altered)", ErrBadSignature)
	}
	ts := time.UnixMilli(cmd.Timestamp)
	if ts.After(now.Add(MaxClockSkew)) {
		return fmt.Errorf("%w: timestamp %d is %v in the future (more than %v)", ErrStale, cmd.Timestamp, ts.Sub(now).Round(time.Millisecond), MaxClockSkew)
	}
	if !now.Before(cmd.Deadline()) {
		return fmt.Errorf("%w: timestamp %d is %v old, past its timeout %v (late or replayed)", ErrStale, cmd.Timestamp, now.Sub(ts).Round(time.Millisecond), cmd.Timeout())
	}
	return nil
}

// envelope is a signed command as published.
type envelope struct {
	Cmd json.RawMessage `json:"cmd"`
	Sig *string         `json:"sig"`
}

// DecodeCommand decodes a payload of cmd:{ch}:control: a signed envelope
// (Signed set, the signature not yet checked) or a bare command. It does not
// validate the command (see Validate). An envelope must hold exactly cmd and
// sig.
func DecodeCommand(data []byte) (*ControlCommand, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("control command: %w", err)
	}
	if _, ok := probe["cmd"]; !ok {
		var c ControlCommand
		if err := json.Unmarshal(data, &c); err != nil {
			return nil, fmt.Errorf("control command: %w", err)
		}
		c.zeroTimeout = isZero(probe["timeout_ms"])
		return &c, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var e envelope
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("signed control command: %w", err)
	}
	if e.Sig == nil {
		return nil, errors.New(`signed control command: "sig" is missing`)
	}
	var c ControlCommand
	if err := json.Unmarshal(e.Cmd, &c); err != nil {
		return nil, fmt.Errorf("signed control command: cmd: %w", err)
	}
	var fields map[string]json.RawMessage
	_ = json.Unmarshal(e.Cmd, &fields) // an object: decoded above
	c.zeroTimeout = isZero(fields["timeout_ms"])
	c.Signed = &Signature{Payload: append([]byte(nil), e.Cmd...), Sig: *e.Sig}
	return &c, nil
}

// isZero reports whether a JSON number is zero ("0", "0.0", "-0", "0e3").
func isZero(raw json.RawMessage) bool {
	var f float64
	return len(raw) > 0 && json.Unmarshal(raw, &f) == nil && f == 0
}
