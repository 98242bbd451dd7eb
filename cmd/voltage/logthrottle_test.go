package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestThrottle(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(newThrottle(slog.NewTextHandler(&buf, nil), time.Hour)).With("component", "actor")
	for i := 0; i < 50; i++ {
		log.Error("EndpointWriter lost connection", "address", "127.0.0.1:1")
	}
	log.Warn("something else")
	out := buf.String()
	if n := strings.Count(out, "EndpointWriter lost connection"); n != 1 {
		t.Fatalf("%d lines of the repeated message, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "something else") || !strings.Contains(out, "component=actor") {
		t.Fatalf("other messages or attributes lost:\n%s", out)
	}
	// Past the window the next one passes with the count left out (the
	// record times decide, not the clock).
	buf.Reset()
	h := newThrottle(slog.NewTextHandler(&buf, nil), time.Minute)
	t0 := time.Now()
	for _, at := range []time.Time{t0, t0.Add(time.Second), t0.Add(2 * time.Second), t0.Add(2 * time.Minute)} {
		if err := h.Handle(context.Background(), slog.NewRecord(at, slog.LevelError, "x", 0)); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(buf.String(), "msg=x"); n != 2 || !strings.Contains(buf.String(), "repeated=2") {
		t.Fatalf("after the window: %q", buf.String())
	}
}
