package web

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/messages"
)

// resultPollInterval is how often a waiting request also reads
// cmd:result:{id}, which covers a result published while the subscription
// was being (re)established.
const resultPollInterval = 250 * time.Millisecond

// result is a final command result: the JSON as the channel published or
// stored it, and its parsed form.
type result struct {
	raw json.RawMessage
	res messages.CommandResult
}

// parseResult decodes a result payload; ok is false when it is not a final
// result.
func parseResult(raw []byte) (result, bool) {
	var r messages.CommandResult
	if err := json.Unmarshal(raw, &r); err != nil || r.ID == "" || !r.Status.Final() {
		return result{}, false
	}
	return result{raw: append(json.RawMessage(nil), raw...), res: r}, true
}

// resultWaiter hands the results published on cmd:*:result to the requests
// waiting for them. It holds one PSUBSCRIBE connection (go-redis reconnects
// and resubscribes it after a Redis restart); results nobody waits for are
// dropped.
type resultWaiter struct {
	rdb  redis.UniversalClient
	keys messages.Keys
	log  *slog.Logger

	mu      sync.Mutex
	waiting map[string]map[*waiter]struct{}

	done chan struct{} // closed when the subscription goroutine has ended
}

// waiter is one request waiting for the result of one command.
type waiter struct {
	rw *resultWaiter
	id string
	ch chan result // buffered: delivery never blocks
}

// newResultWaiter subscribes and delivers results until ctx is done.
func newResultWaiter(ctx context.Context, rdb redis.UniversalClient, keys messages.Keys, log *slog.Logger) *resultWaiter {
	rw := &resultWaiter{rdb: rdb, keys: keys, log: log, waiting: map[string]map[*waiter]struct{}{}, done: make(chan struct{})}
	go rw.run(ctx)
	return rw
}

func (rw *resultWaiter) run(ctx context.Context) {
	defer close(rw.done)
	ps := rw.rdb.PSubscribe(ctx, rw.keys.ResultPattern())
	defer ps.Close()
	msgs := ps.Channel()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			r, ok := parseResult([]byte(m.Payload))
			if !ok {
				rw.log.Debug("ignoring command result", "channel", m.Channel, "payload_bytes", len(m.Payload))
				continue
			}
			rw.deliver(r)
		}
	}
}

// Done is closed when the waiter has stopped (its context is done).
func (rw *resultWaiter) Done() <-chan struct{} { return rw.done }

func (rw *resultWaiter) deliver(r result) {
	rw.mu.Lock()
	ws := rw.waiting[r.res.ID]
	delete(rw.waiting, r.res.ID)
	rw.mu.Unlock()
	for w := range ws {
		select {
		case w.ch <- r:
		default:
		}
	}
}

// register starts waiting for command id; call it before publishing the
// command, and release the waiter when done.
func (rw *resultWaiter) register(id string) *waiter {
	w := &waiter{rw: rw, id: id, ch: make(chan result, 1)}
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if rw.waiting[id] == nil {
		rw.waiting[id] = map[*waiter]struct{}{}
	}
	rw.waiting[id][w] = struct{}{}
	return w
}

// release stops waiting. Idempotent.
func (w *waiter) release() {
	w.rw.mu.Lock()
	defer w.rw.mu.Unlock()
	if ws := w.rw.waiting[w.id]; ws != nil {
		delete(ws, w)
		if len(ws) == 0 {
			delete(w.rw.waiting, w.id)
		}
	}
}

// wait returns the command's final result, or ok false when d passes (or
// ctx ends) without one. Besides the subscription, it reads
// cmd:result:{id} every resultPollInterval, and once more at the end.
func (w *waiter) wait(ctx context.Context, d time.Duration) (result, bool) {
	defer w.release()
	timer := time.NewTimer(d)
	defer timer.Stop()
	tick := time.NewTicker(resultPollInterval)
	defer tick.Stop()
	for {
		select {
		case r := <-w.ch:
			return r, true
		case <-tick.C:
			if r, ok := w.rw.stored(ctx, w.id); ok {
				return r, true
			}
		case <-timer.C:
			select {
			case r := <-w.ch:
				return r, true
			default:
			}
			return w.rw.stored(ctx, w.id)
		case <-ctx.Done():
			return result{}, false
		}
	}
}

// stored reads cmd:result:{id}; ok is true when it holds a final result.
func (rw *resultWaiter) stored(ctx context.Context, id string) (result, bool) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	raw, err := rw.rdb.Get(ctx, rw.keys.Result(id)).Bytes()
	if err != nil {
		return result{}, false
	}
	return parseResult(raw)
}

// command answers GET /api/commands/:id with the stored result (or the
// pending marker while the channel has not answered).
func (s *server) command(c *gin.Context) {
	id := c.Param("id")
	if err := messages.ValidCommandID(id); err != nil {
		abort(c, http.StatusBadRequest, "bad_request", "command "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), redisTimeout)
	defer cancel()
	raw, err := s.d.Redis.Get(ctx, s.d.Keys.Result(id)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		abort(c, http.StatusNotFound, "not_found", "unknown command "+id)
	case err != nil:
		abort(c, http.StatusServiceUnavailable, "redis_unavailable", "reading command "+id+" from redis: "+err.Error())
	case !json.Valid(raw):
		abort(c, http.StatusInternalServerError, "internal", "command "+id+": stored result is not JSON")
	default:
		c.Data(http.StatusOK, "application/json; charset=utf-8", raw)
	}
}
