// Package driverstest is the conformance suite every driver passes: open,
// read, write, close twice, cancelled context, device gone and back.
//
// A driver's test calls Run with a function that opens a fresh driver
// against a fresh device (a simulator on a free port, or nothing for the
// virtual driver) and describes that device in an Env:
//
//	func TestConformance(t *testing.T) {
//		driverstest.Run(t, func(t *testing.T) (drivers.Driver, driverstest.Env) {
//			srv := startSimulator(t)
//			d, err := modbus.New(channelFor(srv), nil)
//			...
//			return d, driverstest.Env{Channel: ch, WritableIndex: 3, WriteValue: 1,
//				Disconnect: srv.Stop, Reconnect: srv.Start}
//		})
//	}
package driverstest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/messages"
)

// Env describes the device behind a driver under test.
type Env struct {
	// Channel is the configuration the driver was built from. Required.
	Channel *config.Channel
	// Samples is how many samples one Read returns; 0 means one per point
	// of Channel.
	Samples int
	// WritableIndex is the index of a point that Write accepts, or -1 when
	// the driver has none to test. Note that 0 is a valid index.
	WritableIndex int
	// WriteValue is the engineering value written to WritableIndex; it
	// must differ from the point's current value to prove the write.
	WriteValue float64
	// Disconnect makes the device unreachable (stop the server, unplug);
	// nil skips the device-gone check.
	Disconnect func()
	// Reconnect makes the device reachable again.
	Reconnect func()
	// Timeout bounds how long a Read may take to notice that the device is
	// gone, and how long reconnecting may take; 0 means 5s.
	Timeout time.Duration
}

// promptly is how long a call with an already cancelled context may take.
const promptly = 2 * time.Second

// Run runs the conformance suite, each check as a subtest with a driver
// from its own call of open. The suite closes every driver it opens.
func Run(t *testing.T, open func(t *testing.T) (drivers.Driver, Env)) {
	t.Helper()
	setup := func(t *testing.T) (drivers.Driver, Env) {
		t.Helper()
		d, env := open(t)
		if d == nil {
			t.Fatal("open returned a nil driver")
		}
		if env.Channel == nil {
			t.Fatal("Env.Channel is nil")
		}
		if env.Samples == 0 {
			env.Samples = len(env.Channel.Points)
		}
		if env.Timeout == 0 {
			env.Timeout = 5 * time.Second
		}
		t.Cleanup(func() { _ = d.Close() })
		return d, env
	}

	t.Run("Read", func(t *testing.T) {
		d, env := setup(t)
		connect(t, d, env.Timeout)
		buf := read(t, d, env, nil)
		// Read appends: what is already in buf stays.
		sentinel := drivers.Sample{Index: -7, Value: 42, Quality: messages.Stale}
		buf = append(buf[:0], sentinel)
		buf = read(t, d, env, buf)
		if buf[0] != sentinel {
			t.Errorf("Read overwrote buf[0]: %+v, want %+v", buf[0], sentinel)
		}
	})

	t.Run("Write", func(t *testing.T) {
		d, env := setup(t)
		w, ok := d.(drivers.Writer)
		if !ok || env.WritableIndex < 0 {
			t.Skip("driver has no Writer or Env has no writable point")
		}
		connect(t, d, env.Timeout)
		ctx, cancel := context.WithTimeout(context.Background(), env.Timeout)
		defer cancel()
		rb, err := w.Write(ctx, env.WritableIndex, env.WriteValue)
		if err != nil {
			t.Fatalf("Write(%d, %v): %v", env.WritableIndex, env.WriteValue, err)
		}
		if rb != env.WriteValue {
			t.Errorf("Write(%d, %v) read back %v", env.WritableIndex, env.WriteValue, rb)
		}
		found := false
		for _, s := range read(t, d, env, nil) {
			if s.Index == env.WritableIndex {
				found = true
				if s.Value != env.WriteValue || s.Quality != messages.Good {
					t.Errorf("Read after Write: point %d = %v (%v), want %v (good)", s.Index, s.Value, s.Quality, env.WriteValue)
				}
			}
		}
		if !found {
			t.Errorf("Read after Write has no sample of point %d", env.WritableIndex)
		}
	})

	t.Run("CloseTwice", func(t *testing.T) {
		d, env := setup(t)
		connect(t, d, env.Timeout)
		read(t, d, env, nil)
		if err := d.Close(); err != nil {
			t.Errorf("first Close: %v", err)
		}
		if err := d.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})

	t.Run("CloseUnused", func(t *testing.T) {
		d, _ := setup(t)
		if err := d.Close(); err != nil {
			t.Errorf("Close before Connect: %v", err)
		}
		if err := d.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})

	t.Run("CancelledContext", func(t *testing.T) {
		d, env := setup(t)
		connect(t, d, env.Timeout)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		done := make(chan error, 1)
		go func() {
			_, err := d.Read(ctx, nil)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Logf("Read with cancelled context: %v (does not wrap context.Canceled)", err)
			}
		case <-time.After(promptly):
			t.Fatalf("Read with a cancelled context did not return within %v", promptly)
		}
		if w, ok := d.(drivers.Writer); ok && env.WritableIndex >= 0 {
			go func() {
				_, err := w.Write(ctx, env.WritableIndex, env.WriteValue)
				done <- err
			}()
			select {
			case <-done:
			case <-time.After(promptly):
				t.Fatalf("Write with a cancelled context did not return within %v", promptly)
			}
		}
	})

	t.Run("DeviceGone", func(t *testing.T) {
		d, env := setup(t)
		if env.Disconnect == nil || env.Reconnect == nil {
			t.Skip("Env has no Disconnect or Reconnect")
		}
		connect(t, d, env.Timeout)
		read(t, d, env, nil)

		env.Disconnect()
		// A driver may serve a read or two from what was in flight; it
		// must report the loss within the timeout.
		deadline := time.Now().Add(env.Timeout + promptly)
		var err error
		for err == nil {
			if time.Now().After(deadline) {
				t.Fatalf("Read kept succeeding for %v after the device was gone", env.Timeout+promptly)
			}
			err = readWithin(t, d, env.Timeout+promptly)
		}
		t.Logf("device gone: %v", err)

		// Back: the channel's recovery is Close, Connect, Read, repeated
		// with backoff until it works.
		env.Reconnect()
		deadline = time.Now().Add(env.Timeout + promptly)
		for {
			if err := d.Close(); err != nil {
				t.Errorf("Close after loss: %v", err)
			}
			err = tryConnect(d, env.Timeout)
			if err == nil {
				err = readWithin(t, d, env.Timeout+promptly)
			}
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no successful Close, Connect, Read within %v after reconnect: %v", env.Timeout+promptly, err)
			}
			time.Sleep(50 * time.Millisecond) // retry pace, not synchronisation
		}
		read(t, d, env, nil)
	})
}

// tryConnect calls Connect if the driver has it.
func tryConnect(d drivers.Driver, timeout time.Duration) error {
	c, ok := d.(drivers.Connector)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.Connect(ctx)
}

func connect(t *testing.T, d drivers.Driver, timeout time.Duration) {
	t.Helper()
	if err := tryConnect(d, timeout); err != nil {
		t.Fatalf("Connect: %v", err)
	}
}

// readWithin reads once and fails the test if Read hangs beyond limit.
func readWithin(t *testing.T, d drivers.Driver, limit time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := d.Read(ctx, nil)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(limit + promptly):
		t.Fatalf("Read did not return within %v", limit+promptly)
		return nil
	}
}

// read reads once, appending to buf, and checks the new samples: the
// expected count, indexes of distinct points of the channel, known
// qualities.
func read(t *testing.T, d drivers.Driver, env Env, buf []drivers.Sample) []drivers.Sample {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), env.Timeout)
	defer cancel()
	before := len(buf)
	out, err := d.Read(ctx, buf)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if len(out) < before {
		t.Fatalf("Read shrank buf from %d to %d samples", before, len(out))
	}
	samples := out[before:]
	if len(samples) != env.Samples {
		t.Errorf("Read returned %d samples, want %d", len(samples), env.Samples)
	}
	seen := make(map[int]bool, len(samples))
	for _, s := range samples {
		if s.Index < 0 || s.Index >= len(env.Channel.Points) {
			t.Errorf("sample index %d outside the channel's %d points", s.Index, len(env.Channel.Points))
			continue
		}
		if seen[s.Index] {
			t.Errorf("two samples of point index %d in one Read", s.Index)
		}
		seen[s.Index] = true
		if s.Quality.String() == "unknown" {
			t.Errorf("sample of point index %d has unknown quality %d", s.Index, s.Quality)
		}
	}
	return out
}
