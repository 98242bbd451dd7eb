package redisbus

import (
	"context"
	"encoding/json"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/messages"
)

// auditMaxLen caps the audit stream (approximately, as XADD MAXLEN ~ does).
const auditMaxLen = 100000

// commandEvent is an accepted command (res nil: audit only), its result, or
// a command refused before it was accepted (refused set).
type commandEvent struct {
	cmd     messages.ControlCommand
	res     *messages.CommandResult
	refused bool
}

// answerPending stores a duplicate's answer under cmd:result:{id} only
// while that key holds the gateway's pending marker (a Redis that lost the
// original result, where this node's dedupe store caught the duplicate): an
// original final result is never replaced.
var answerPending = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v and string.find(v, '"status":"pending"', 1, true) then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
  return 1
end
return 0
`)

// CommandAccepted queues the audit entry of a command the channel accepted
// (it passed the idempotency check).
func (w *Writer) CommandAccepted(cmd *messages.ControlCommand) {
	w.queueCommand(commandEvent{cmd: *cmd})
}

// CommandDone queues the final result of a command: stored at
// cmd:result:{id} for 24 h (except a duplicate's, which must not replace
// the original result), published on cmd:{ch}:result and audited. Results
// wait in a bounded queue while Redis is unreachable and are flushed at once
// otherwise.
func (w *Writer) CommandDone(cmd *messages.ControlCommand, res *messages.CommandResult) {
	r := *res
	w.queueCommand(commandEvent{cmd: *cmd, res: &r})
}

func (w *Writer) queueCommand(ev commandEvent) {
	w.mu.Lock()
	if len(w.commands) >= w.opt.MaxCommands {
		drop := w.commands[0]
		w.commands = w.commands[1:]
		w.droppedResults.Add(1)
		w.opt.Log.Error("redis writer: command queue full, oldest entry dropped", "id", drop.cmd.ID, "queued", len(w.commands))
	}
	w.commands = append(w.commands, ev)
	w.mu.Unlock()
	select { // results are latency-sensitive: flush now
	case w.kick <- struct{}{}:
	default:
	}
}

// CommandRefused queues the answer to a command refused before it was
// accepted (a missing or bad signature): published on cmd:{ch}:result and
// audited, but not stored under cmd:result:{id} (an unauthenticated
// message must not take an id).
func (w *Writer) CommandRefused(cmd *messages.ControlCommand, res *messages.CommandResult) {
	r := *res
	w.queueCommand(commandEvent{cmd: *cmd, res: &r, refused: true})
}

// DroppedCommandEvents counts results and audit entries lost to the bound.
func (w *Writer) DroppedCommandEvents() int64 { return w.droppedResults.Load() }

// flushCommands writes the queued command events in one pipeline; on
// failure they go back to the front of the queue.
func (w *Writer) flushCommands(ctx context.Context) error {
	w.mu.Lock()
	evs := w.commands
	w.commands = nil
	w.mu.Unlock()
	if len(evs) == 0 {
		return nil
	}
	pipe := w.client.Pipeline()
	for i := range evs {
		ev := &evs[i]
		c := &ev.cmd
		fields := []any{"event", "accepted", "id", c.ID, "node", w.opt.Node,
			"point", c.Key().String(), "value", string(messages.AppendValue(nil, c.Value)),
			"user", c.User, "source", c.Source, "command_ts", strconv.FormatInt(c.Timestamp, 10),
			"signed", strconv.FormatBool(c.Signed != nil)}
		if ev.res != nil {
			b, err := json.Marshal(ev.res)
			if err != nil { // cannot happen for these types; keep the audit trail anyway
				b = []byte(`{"id":` + strconv.Quote(c.ID) + `,"status":"failed","error":"result not encodable"}`)
			}
			switch {
			case ev.refused:
			case ev.res.Status == messages.StatusDuplicate:
				answerPending.Eval(ctx, pipe, []string{w.opt.Keys.Result(c.ID)}, b)
			default:
				pipe.Set(ctx, w.opt.Keys.Result(c.ID), b, messages.CommandTTL)
			}
			pipe.Publish(ctx, w.opt.Keys.ResultChannel(c.ChannelID), b)
			rb := ""
			if ev.res.Readback != nil {
				rb = string(messages.AppendValue(nil, *ev.res.Readback))
			}
			fields[1] = "result"
			if ev.refused {
				fields[1] = "refused"
			}
			fields = append(fields, "status", string(ev.res.Status), "readback", rb, "error", ev.res.Error,
				"result_ts", strconv.FormatInt(ev.res.Timestamp, 10))
			if ev.res.Reconciled {
				fields = append(fields, "reconciled", "true")
			}
		}
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: w.opt.Keys.Audit(), MaxLen: auditMaxLen, Approx: true, Values: fields})
	}
	_, err := pipe.Exec(ctx)
	if err != nil {
		w.opt.Metrics.FlushErrors.Inc()
		w.mu.Lock()
		w.commands = append(evs, w.commands...)
		if over := len(w.commands) - w.opt.MaxCommands; over > 0 {
			w.commands = w.commands[over:]
			w.droppedResults.Add(int64(over))
			w.opt.Log.Error("redis writer: command queue full, oldest entries dropped", "dropped", over)
		}
		w.mu.Unlock()
	}
	return err
}

// Idempotency marks command ids as seen in Redis: SET cmd:seen:{id} NX with
// a 24 h TTL, so a command is executed at most once by whichever node owns
// its channel.
type Idempotency struct {
	client redis.UniversalClient
	node   string
	keys   messages.Keys
}

// NewIdempotency uses client and the site's key names; node is stored as
// the marker's value.
func NewIdempotency(client redis.UniversalClient, node string, keys messages.Keys) *Idempotency {
	return &Idempotency{client: client, node: node, keys: keys}
}

// MarkSeen reports whether id was not seen before (and marks it).
func (s *Idempotency) MarkSeen(ctx context.Context, id string) (bool, error) {
	return s.client.SetNX(ctx, s.keys.Seen(id), s.node, messages.CommandTTL).Result()
}
