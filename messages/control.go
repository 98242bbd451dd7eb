package messages

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
)

// Redis names of the control path.
const (
	AuditStream        = "audit:commands" // XADD of every accepted command and its result
	CommandTTL         = 24 * time.Hour   // of cmd:result:{id} and cmd:seen:{id}
	DefaultCmdTimeout  = 5 * time.Second  // a command older than this when it reaches the channel is not written
	MaxCmdTimeout      = 60 * time.Second
	maxCommandIDLength = 128
)

// ControlChannel is the Redis channel commands for channel ch are published on.
func ControlChannel(ch uint32) string {
	return "cmd:" + strconv.FormatUint(uint64(ch), 10) + ":control"
}

// ResultChannel is the Redis channel results of channel ch are published on.
func ResultChannel(ch uint32) string { return "cmd:" + strconv.FormatUint(uint64(ch), 10) + ":result" }

// ResultKey is the Redis string holding the final result of command id.
func ResultKey(id string) string { return "cmd:result:" + id }

// SeenKey is the idempotency marker of command id (SET NX).
func SeenKey(id string) string { return "cmd:seen:" + id }

// CommandStatus is the outcome of a command.
type CommandStatus string

// Command statuses. Pending is only ever stored by the gateway while the
// channel has not answered yet.
const (
	StatusPending   CommandStatus = "pending"
	StatusSuccess   CommandStatus = "success"
	StatusFailed    CommandStatus = "failed"
	StatusRejected  CommandStatus = "rejected"
	StatusDuplicate CommandStatus = "duplicate"
	StatusTimeout   CommandStatus = "timeout"
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
	// it (default 5000). An extension of the contract's payload.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
}

// Key is the addressed point.
func (c *ControlCommand) Key() PointKey {
	return PointKey{Channel: c.ChannelID, Type: c.PointType, Point: c.PointID}
}

// Timeout is the command's expiry age.
func (c *ControlCommand) Timeout() time.Duration {
	if c.TimeoutMS <= 0 {
		return DefaultCmdTimeout
	}
	return time.Duration(c.TimeoutMS) * time.Millisecond
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

// ParseCommand decodes and validates a control command payload.
func ParseCommand(data []byte) (*ControlCommand, error) {
	var c ControlCommand
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("control command: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("control command %q: %w", c.ID, err)
	}
	return &c, nil
}

// SubscribeCommands asks the node's Redis subscriber to subscribe to
// cmd:{ChannelID}:control and deliver the commands to the sender (the
// channel actor) as *ControlCommand, until the sender stops.
type SubscribeCommands struct{ ChannelID uint32 }
