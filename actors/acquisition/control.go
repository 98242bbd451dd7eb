package acquisition

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/messages"
)

// CommandSink receives what the control path must record: the audit entry
// of an accepted command, the final result of every command (follow-up
// results of reconciled commands included), and commands refused before
// they were accepted (a missing or bad signature). The Redis writer queues
// and replays them across Redis outages; the audit file records them too.
type CommandSink interface {
	CommandAccepted(cmd *messages.ControlCommand)
	CommandDone(cmd *messages.ControlCommand, res *messages.CommandResult)
	CommandRefused(cmd *messages.ControlCommand, res *messages.CommandResult)
}

// CommandSinks sends every record to each sink in order.
type CommandSinks []CommandSink

// CommandAccepted implements CommandSink.
func (s CommandSinks) CommandAccepted(cmd *messages.ControlCommand) {
	for _, k := range s {
		k.CommandAccepted(cmd)
	}
}

// CommandDone implements CommandSink.
func (s CommandSinks) CommandDone(cmd *messages.ControlCommand, res *messages.CommandResult) {
	for _, k := range s {
		k.CommandDone(cmd, res)
	}
}

// CommandRefused implements CommandSink.
func (s CommandSinks) CommandRefused(cmd *messages.ControlCommand, res *messages.CommandResult) {
	for _, k := range s {
		k.CommandRefused(cmd, res)
	}
}

// AuditCommands turns the control path's records into audit events (the
// tamper-evident audit file).
type AuditCommands struct {
	Sink messages.AuditSink
	Node string
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (a AuditCommands) event(kind string, cmd *messages.ControlCommand) messages.AuditEvent {
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	v := cmd.Value
	ev := messages.AuditEvent{Time: now().UnixMilli(), Event: kind, Node: a.Node, ID: cmd.ID, Point: cmd.Key().String(),
		Value: &v, User: cmd.User, Source: cmd.Source}
	if cmd.Signed == nil {
		ev.Unsigned = true
	}
	return ev
}

// CommandAccepted implements CommandSink.
func (a AuditCommands) CommandAccepted(cmd *messages.ControlCommand) {
	ev := a.event(messages.AuditAccepted, cmd)
	a.Sink.Audit(&ev)
}

// CommandDone implements CommandSink.
func (a AuditCommands) CommandDone(cmd *messages.ControlCommand, res *messages.CommandResult) {
	kind := messages.AuditResult
	if res.Status == messages.StatusDuplicate {
		kind = messages.AuditDuplicate
	}
	ev := a.event(kind, cmd)
	ev.Status, ev.Readback, ev.Reconciled, ev.Reason = string(res.Status), res.Readback, res.Reconciled, res.Error
	a.Sink.Audit(&ev)
}

// CommandRefused implements CommandSink.
func (a AuditCommands) CommandRefused(cmd *messages.ControlCommand, res *messages.CommandResult) {
	ev := a.event(messages.AuditRefused, cmd)
	ev.Status, ev.Reason = string(res.Status), res.Error
	a.Sink.Audit(&ev)
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

// LocalDedupe is this node's durable record of the command ids it executed
// (data_dir/dedupe.db): a Redis that lost its data (restarted without
// persistence) forgets cmd:seen, this does not. Claim returns first=true
// only once per id, after the claim is on disk.
type LocalDedupe interface {
	Claim(id string, now time.Time) (first bool, err error)
	Done(id string, result []byte) error
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

// controlPath is what executeCommand needs besides the command.
type controlPath struct {
	w      drivers.Writer
	seen   IdempotencyStore
	local  LocalDedupe // nil: none
	sink   CommandSink
	point  *config.Point
	now    func() time.Time
	online bool   // the channel is connected
	reason string // why not, when not
}

// executeCommand runs one command on the I/O lane (never concurrently with a
// poll). The id is claimed first (in Redis, then on this node's disk), so a
// command is executed at most once whatever happens next; a command past
// its deadline is never written (checked right before the request).
func executeCommand(ctx context.Context, p pendingCommand, cp controlPath) (messages.CommandResult, *float64) {
	cmd := p.cmd
	done := func(st messages.CommandStatus, format string, args ...any) (messages.CommandResult, *float64) {
		return messages.ResultOf(cmd, st, fmt.Sprintf(format, args...), cp.now()), nil
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	first, err := cp.seen.MarkSeen(sctx, cmd.ID)
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
	if cp.local != nil {
		first, err := cp.local.Claim(cmd.ID, cp.now())
		if err != nil {
			return done(messages.StatusFailed, "this node's dedupe store failed, not written: %v", err)
		}
		if !first {
			return done(messages.StatusDuplicate, "command id %s was already executed by this node (its record survives a Redis that lost cmd:seen); not written again", cmd.ID)
		}
	}
	cp.sink.CommandAccepted(cmd)
	deadline := cmd.Deadline()
	if now := cp.now(); !now.Before(deadline) {
		return done(messages.StatusTimeout, "command expired before it could be written: %v old, timeout %v",
			now.Sub(time.UnixMilli(cmd.Timestamp)).Round(time.Millisecond), cmd.Timeout())
	}
	if !cp.online {
		return done(messages.StatusFailed, "channel %d is not connected: %s", cmd.ChannelID, cp.reason)
	}
	if cp.w == nil {
		return done(messages.StatusRejected, "channel %d cannot execute commands", cmd.ChannelID)
	}
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	rb, err := cp.w.Write(wctx, p.index, cmd.Value)
	if err != nil {
		switch {
		case errors.Is(err, drivers.ErrOutOfRange), errors.Is(err, drivers.ErrNotWritable):
			return done(messages.StatusRejected, "%v", err)
		case errors.Is(err, drivers.ErrNotOwner):
			return done(messages.StatusFailed, "not written: this node's lease on channel %d lapsed before the write (%v)", cmd.ChannelID, err)
		case errors.Is(err, drivers.ErrOutcomeUnknown):
			return done(messages.StatusUnknown, "%v; the point will be read back to reconcile", err)
		case errors.Is(err, context.DeadlineExceeded):
			return done(messages.StatusTimeout, "not written: the command's deadline (timeout %v) passed before the request: %v", cmd.Timeout(), err)
		}
		return done(messages.StatusFailed, "%v", err)
	}
	res := messages.ResultOf(cmd, messages.StatusSuccess, "", cp.now())
	res.Readback = &rb
	if !readbackMatches(cp.point, cmd.Value, rb) {
		res.Status = messages.StatusFailed
		res.Error = fmt.Sprintf("read back %s after writing %s", messages.AppendValue(nil, rb), messages.AppendValue(nil, cmd.Value))
	}
	return res, &rb
}

// reconciled is the follow-up result of a command whose outcome was
// unknown, from the value read back afterwards.
func reconciled(cmd *messages.ControlCommand, point *config.Point, rb float64, now time.Time) messages.CommandResult {
	res := messages.ResultOf(cmd, messages.StatusSuccess, "", now)
	res.Readback, res.Reconciled = &rb, true
	if readbackMatches(point, cmd.Value, rb) {
		res.Error = fmt.Sprintf("reconciled: the device holds %s", messages.AppendValue(nil, rb))
	} else {
		res.Status = messages.StatusFailed
		res.Error = fmt.Sprintf("reconciled: read back %s after the unanswered write of %s", messages.AppendValue(nil, rb), messages.AppendValue(nil, cmd.Value))
	}
	return res
}

// recordLocal keeps the final result with this node's dedupe record.
func recordLocal(local LocalDedupe, res *messages.CommandResult) {
	if local == nil || !res.Status.Final() || res.Status == messages.StatusDuplicate {
		return
	}
	if b, err := json.Marshal(res); err == nil {
		_ = local.Done(res.ID, b) // the claim is what matters; the result is informative
	}
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
