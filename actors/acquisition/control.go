package acquisition

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/messages"
)

// CommandSink receives what the control path must record: the audit entry
// of an accepted command and the final result of every command (the Redis
// writer queues and replays them across Redis outages).
type CommandSink interface {
	CommandAccepted(cmd *messages.ControlCommand)
	CommandDone(cmd *messages.ControlCommand, res *messages.CommandResult)
}

// ErrNotOwner is what a cluster node's IdempotencyStore returns when the
// node no longer holds the channel's lease: the command is neither written
// nor answered (the owner answers it).
var ErrNotOwner = errors.New("this node does not hold the channel's lease")

// IdempotencyStore marks command ids as seen (cmd:seen:{id}, SET NX with a
// 24 h TTL); first is false when the id was seen before.
type IdempotencyStore interface {
	MarkSeen(ctx context.Context, id string) (first bool, err error)
}

// pendingCommand is a command waiting for the channel's I/O lane.
type pendingCommand struct {
	cmd   *messages.ControlCommand
	index int // point index in the channel
}

// writeDone reports an executed (or refused) command back to the actor.
type writeDone struct {
	p        pendingCommand
	res      messages.CommandResult
	readback *float64
}

// executeCommand runs one command on the I/O lane (never concurrently with a
// poll). The id is marked seen first, so a command is executed at most once
// whatever happens next; an expired command is never written.
func executeCommand(ctx context.Context, p pendingCommand, w drivers.Writer, seen IdempotencyStore, sink CommandSink,
	point *config.Point, connected bool, lastErr string, now func() time.Time) (messages.CommandResult, *float64) {
	cmd := p.cmd
	done := func(st messages.CommandStatus, format string, args ...any) (messages.CommandResult, *float64) {
		return messages.ResultOf(cmd, st, fmt.Sprintf(format, args...), now()), nil
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	first, err := seen.MarkSeen(sctx, cmd.ID)
	cancel()
	if errors.Is(err, ErrNotOwner) {
		return messages.CommandResult{}, nil // not ours to write nor to answer
	}
	if err != nil {
		return done(messages.StatusFailed, "idempotency check failed, not written: %v", err)
	}
	if !first {
		return done(messages.StatusDuplicate, "command id %s was already received; not written again", cmd.ID)
	}
	sink.CommandAccepted(cmd)
	deadline := time.UnixMilli(cmd.Timestamp).Add(cmd.Timeout())
	if age := now().Sub(time.UnixMilli(cmd.Timestamp)); !now().Before(deadline) {
		return done(messages.StatusTimeout, "command expired before it could be written: %v old, timeout %v",
			age.Round(time.Millisecond), cmd.Timeout())
	}
	if !connected {
		return done(messages.StatusFailed, "channel %d is not connected: %s", cmd.ChannelID, lastErr)
	}
	if w == nil {
		return done(messages.StatusRejected, "channel %d cannot execute commands", cmd.ChannelID)
	}
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	rb, err := w.Write(wctx, p.index, cmd.Value)
	if err != nil {
		switch {
		case errors.Is(err, drivers.ErrOutOfRange), errors.Is(err, drivers.ErrNotWritable):
			return done(messages.StatusRejected, "%v", err)
		case errors.Is(err, drivers.ErrNotOwner):
			return done(messages.StatusFailed, "not written: this node's lease on channel %d lapsed before the write (%v)", cmd.ChannelID, err)
		case errors.Is(err, context.DeadlineExceeded) || wctx.Err() != nil:
			return done(messages.StatusTimeout, "no answer from the device within the command timeout %v: %v", cmd.Timeout(), err)
		}
		return done(messages.StatusFailed, "%v", err)
	}
	res := messages.ResultOf(cmd, messages.StatusSuccess, "", now())
	res.Readback = &rb
	if !readbackMatches(point, cmd.Value, rb) {
		res.Status = messages.StatusFailed
		res.Error = fmt.Sprintf("read back %s after writing %s", messages.AppendValue(nil, rb), messages.AppendValue(nil, cmd.Value))
	}
	return res, &rb
}

// readbackMatches compares what was read back with what was written, with
// the resolution the point's encoding has: half a scale step for integer
// types, float32 precision for float32.
func readbackMatches(p *config.Point, want, got float64) bool {
	if math.IsNaN(got) {
		return false
	}
	diff := math.Abs(want - got)
	switch p.DataType {
	case config.Bool, "":
		return diff < 0.5
	case config.Float32:
		return diff <= 1e-6*math.Max(1, math.Abs(want))
	case config.Float64:
		return diff <= 1e-12*math.Max(1, math.Abs(want))
	}
	scale := math.Abs(p.Scale)
	if scale == 0 {
		scale = 1
	}
	return diff <= scale/2+1e-9*math.Max(1, math.Abs(want))
}
