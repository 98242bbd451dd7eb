package main

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// throttle is a slog.Handler that passes the first record of each message
// and then at most one per window, with the count of those left out. In a
// cluster, protoactor remote logs an error for every failed attempt to
// reach a member that is down (dozens a second); one line per window says
// the same.
type throttle struct {
	next   slog.Handler
	window time.Duration
	st     *throttleState
}

type throttleState struct {
	mu   sync.Mutex
	seen map[string]*throttled
}

type throttled struct {
	last    time.Time
	dropped int
}

func newThrottle(next slog.Handler, window time.Duration) *throttle {
	return &throttle{next: next, window: window, st: &throttleState{seen: map[string]*throttled{}}}
}

func (t *throttle) Enabled(ctx context.Context, l slog.Level) bool { return t.next.Enabled(ctx, l) }

func (t *throttle) Handle(ctx context.Context, r slog.Record) error {
	t.st.mu.Lock()
	e := t.st.seen[r.Message]
	if e == nil {
		if len(t.st.seen) > 1000 { // bounded: forget everything now and then
			t.st.seen = map[string]*throttled{}
		}
		e = &throttled{}
		t.st.seen[r.Message] = e
	}
	if !e.last.IsZero() && r.Time.Sub(e.last) < t.window {
		e.dropped++
		t.st.mu.Unlock()
		return nil
	}
	dropped := e.dropped
	e.last, e.dropped = r.Time, 0
	t.st.mu.Unlock()
	if dropped > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("repeated", dropped), slog.Duration("within", t.window))
	}
	return t.next.Handle(ctx, r)
}

func (t *throttle) WithAttrs(as []slog.Attr) slog.Handler {
	return &throttle{next: t.next.WithAttrs(as), window: t.window, st: t.st}
}

func (t *throttle) WithGroup(name string) slog.Handler {
	return &throttle{next: t.next.WithGroup(name), window: t.window, st: t.st}
}
