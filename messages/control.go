package messages

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"time"
)

// Limits of the control path.
const (
	CommandTTL         = 24 * time.Hour  // of cmd:result:{id} and cmd:seen:{id}
	DefaultCmdTimeout  = 5 * time.Second // a command older than this when it reaches the channel is not written
	MinCmdTimeout      = time.Millisecond
	MaxCmdTimeout      = 60 * time.Second
	maxCommandIDLength = 128
)

// CommandStatus is the outcome of a command.
type CommandStatus string

// Command statuses. Pending is only ever stored by the gateway while the
// channel has not answered yet. Unknown says that the request went out to
// the device but no answer came (it may or may not have been applied): the
// channel reconciles it by reading the point back and publishes a follow-up
// result (success or failed, Reconciled true) under the same id.
const (
	StatusPending   CommandStatus = "pending"
	StatusSuccess   CommandStatus = "success"
	StatusFailed    CommandStatus = "failed"
	StatusRejected  CommandStatus = "rejected"
	StatusDuplicate CommandStatus = "duplicate"
	StatusTimeout   CommandStatus = "timeout"
	StatusUnknown   CommandStatus = "unknown"
)

// Final reports whether the status ends the command.
func (s CommandStatus) Final() bool { return s != StatusPending && s != "" }

// ControlCommand asks the channel owning a point to write a value
// (published as JSON on cmd:{ch}:control).
type ControlCommand struct {
	ID        string    `json:"id"`
	ChannelID uint32    `json:"channel_id"`
	PointType PointType `json:"point_type"`
	PointID   uint32    `json:"point_id"`
	Value     float64   `json:"value"`
	Timestamp int64     `json:"timestamp"` // Unix ms when the command was accepted
	Source    string    `json:"source"`
	User      string    `json:"user"`
	// TimeoutMS is how old the command may be when the channel executes
	// it: 1 to 60000, absent for the default 5000 (an explicit 0 is
	// refused: a limit of nothing is not the default). An extension of
	// the contract's payload.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`

	// Signed is set when the command arrived in a signed envelope (see
	// CommandKey); nil for a bare, unsigned command.
	Signed *Signature `json:"-"`

	// zeroTimeout: the payload said "timeout_ms": 0, which Validate refuses
	// (a time limit of nothing is not the default 5 s).
	zeroTimeout bool
}

// Signature is what a signed envelope carried besides the command: the
// exact bytes of its "cmd" member and the signature over them.
type Signature struct {
	Payload []byte // the "cmd" member as it appeared on the bus
	Sig     string // hex HMAC-SHA256 of Payload
}

// Key is the addressed point.
func (c *ControlCommand) Key() PointKey {
	return PointKey{Channel: c.ChannelID, Type: c.PointType, Point: c.PointID}
}

// Timeout is the command's expiry age: TimeoutMS, or the default when it
// is absent. Validate refuses a negative or too long one.
func (c *ControlCommand) Timeout() time.Duration {
	if c.TimeoutMS == 0 {
		return DefaultCmdTimeout
	}
	return time.Duration(c.TimeoutMS) * time.Millisecond
}

// Deadline is the moment after which the command must not be written: its
// timestamp plus its timeout.
func (c *ControlCommand) Deadline() time.Time {
	return time.UnixMilli(c.Timestamp).Add(c.Timeout())
}

// Validate checks what any channel needs before looking at the point.
func (c *ControlCommand) Validate() error {
	if err := ValidCommandID(c.ID); err != nil {
		return err
	}
	if c.PointType != Control && c.PointType != Adjustment {
		return fmt.Errorf("point type %q cannot be written (want c or a)", c.PointType.String())
	}
	if math.IsNaN(c.Value) || math.IsInf(c.Value, 0) {
		return fmt.Errorf("value must be a finite number")
	}
	if c.zeroTimeout {
		return fmt.Errorf("timeout_ms 0: give 1..%d, or leave it out for the default %d", MaxCmdTimeout.Milliseconds(), DefaultCmdTimeout.Milliseconds())
	}
	if c.TimeoutMS < 0 || time.Duration(c.TimeoutMS)*time.Millisecond > MaxCmdTimeout {
		return fmt.Errorf("timeout_ms %d outside 1..%d (absent: the default %d)", c.TimeoutMS, MaxCmdTimeout.Milliseconds(), DefaultCmdTimeout.Milliseconds())
	}
	if c.Timestamp <= 0 {
		return fmt.Errorf("timestamp (Unix ms of the command) is required")
	}
	return nil
}

// ValidCommandID accepts 1 to 128 characters of letters, digits and . _ : -
// (a UUID or a client's idempotency key).
func ValidCommandID(id string) error {
	if id == "" || len(id) > maxCommandIDLength {
		return fmt.Errorf("id must have 1 to %d characters", maxCommandIDLength)
	}
	for i := 0; i < len(id); i++ {
		b := id[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '.' || b == '_' || b == ':' || b == '-') {
			return fmt.Errorf("id %q: character %q not allowed (letters, digits, '.', '_', ':', '-')", id, b)
		}
	}
	return nil
}

// CommandResult is the outcome of a command (published as JSON on
// cmd:{ch}:result and stored at cmd:result:{id}).
type CommandResult struct {
	ID        string        `json:"id"`
	ChannelID uint32        `json:"channel_id"`
	PointType PointType     `json:"point_type"`
	PointID   uint32        `json:"point_id"`
	Value     float64       `json:"value"`
	Status    CommandStatus `json:"status"`
	Readback  *float64      `json:"readback"` // null when nothing was read back
	Error     string        `json:"error"`
	Timestamp int64         `json:"timestamp"` // Unix ms of the outcome
	// Reconciled marks the follow-up result of a command whose outcome was
	// unknown, decided by reading the point back.
	Reconciled bool `json:"reconciled,omitempty"`
}

// ResultOf starts the result of cmd with status and error text.
func ResultOf(cmd *ControlCommand, status CommandStatus, errText string, now time.Time) CommandResult {
	return CommandResult{ID: cmd.ID, ChannelID: cmd.ChannelID, PointType: cmd.PointType, PointID: cmd.PointID,
		Value: cmd.Value, Status: status, Error: errText, Timestamp: now.UnixMilli()}
}

// MarshalText encodes the type as its letter ("c").
func (t PointType) MarshalText() ([]byte, error) {
	if !t.Valid() {
		return nil, fmt.Errorf("invalid point type %d", byte(t))
	}
	return []byte{byte(t)}, nil
}

// UnmarshalText accepts every spelling ParsePointType does.
func (t *PointType) UnmarshalText(b []byte) error {
	p, err := ParsePointType(string(b))
	if err != nil {
		return err
	}
	*t = p
	return nil
}

// ParseCommand decodes (DecodeCommand) and validates a control command
// payload; a signature is not checked (CommandKey.Verify does).
func ParseCommand(data []byte) (*ControlCommand, error) {
	c, err := DecodeCommand(data)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("control command %q: %w", c.ID, err)
	}
	return c, nil
}

// SubscribeCommands asks the node's Redis subscriber to subscribe to
// cmd:{ChannelID}:control and deliver the commands to the sender (the
// channel actor) as *ControlCommand, until the sender stops.
type SubscribeCommands struct{ ChannelID uint32 }

// NewCommandID returns a random (version 4) UUID.
func NewCommandID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}
