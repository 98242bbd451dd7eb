// Package drivers holds the contract between channel actors and protocol
// drivers, and the registry that maps a channel's protocol to a driver.
//
// A driver is two methods and a constructor: Read polls every point of the
// channel once, Close releases the connection. Optional abilities are small
// separate interfaces found by type assertion (Connector, Writer,
// Initializer).
package drivers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

// Errors a Writer wraps when the command itself is unacceptable (the
// channel answers such a command rejected, not failed).
var (
	ErrOutOfRange  = errors.New("value out of range")
	ErrNotWritable = errors.New("point not writable")
)

// ErrOutcomeUnknown is what a Writer wraps when the write request went out
// (or may have) but no answer came: a timeout, a garbled answer, a
// connection closed after sending, or a read-back that failed after the
// device acknowledged the write. The device may or may not have applied the
// value; the channel answers the command unknown and reconciles it by
// reading the point back.
var ErrOutcomeUnknown = errors.New("outcome unknown: the request went out but no answer came")

// ErrNotOwner is what Proceed returns, and a driver then returns, when the
// channel's guard says the channel is no longer this node's (a cluster
// node whose lease may have expired, for example after a stall): the
// request was not sent.
var ErrNotOwner = errors.New("not sent: this node no longer holds the channel")

type guardKey struct{}

// WithGuard returns ctx carrying guard, which Proceed asks right before
// each request a driver sends to the device. The channel of a cluster node
// passes its lease check, so a node that stalled between two requests of
// one poll sends nothing after its lease may have expired.
func WithGuard(ctx context.Context, guard func() bool) context.Context {
	return context.WithValue(ctx, guardKey{}, guard)
}

// Proceed returns ctx.Err(), context.DeadlineExceeded once ctx's deadline
// has passed by the clock (a command is never written after its deadline,
// even in the instant before the context's timer fires), or ErrNotOwner
// when ctx's guard (WithGuard) says no. Drivers call it right before each
// request to the device.
func Proceed(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	if g, ok := ctx.Value(guardKey{}).(func() bool); ok && !g() {
		return ErrNotOwner
	}
	return nil
}

// Sample is one decoded reading of one point.
type Sample struct {
	Index   int              // position of the point in config.Channel.Points
	Value   float64          // engineering value (scale, offset and reverse applied)
	Quality messages.Quality // Good, or Bad when the device answered with an error
}

// Driver reads a channel's points.
type Driver interface {
	// Read polls every readable point once and appends one sample per point
	// to buf, returning the extended slice. An error that a single device
	// (slave) causes, such as a Modbus exception or a timeout of one slave,
	// is reported as samples with quality Bad, not as an error. A returned
	// error means the connection itself is lost: the channel marks its points
	// comm_lost, closes the driver and reconnects with backoff. A driver
	// calls Proceed(ctx) right before each request and returns its error
	// (ErrNotOwner: the channel is no longer this node's; not a lost
	// connection).
	Read(ctx context.Context, buf []Sample) ([]Sample, error)
	// Close releases the connection. It is idempotent.
	Close() error
}

// Connector is implemented by drivers that open a connection before reading.
// After a failed Read the channel calls Close and then Connect again.
type Connector interface {
	Connect(ctx context.Context) error
}

// Writer is implemented by drivers that can execute control commands. Write
// sends the engineering value to point index and returns the value read back.
type Writer interface {
	Write(ctx context.Context, index int, value float64) (readback float64, err error)
}

// PointReader is implemented by drivers that can read a single point on
// demand; the channel uses it to reconcile a write whose outcome was
// unknown. It returns the engineering value.
type PointReader interface {
	ReadPoint(ctx context.Context, index int) (float64, error)
}

// Initializer is implemented by drivers that validate their configuration
// without I/O; it runs before the first Connect.
type Initializer interface {
	Init() error
}

// Factory builds a driver for a channel. It must not do I/O.
type Factory func(ch *config.Channel, log *slog.Logger) (Driver, error)

var (
	mu        sync.RWMutex
	factories = map[string]Factory{}
)

// Register makes a driver available under a protocol name. It is called from
// the init functions of driver packages and panics on a duplicate name.
func Register(protocol string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := factories[protocol]; dup {
		panic("drivers: duplicate registration of " + protocol)
	}
	factories[protocol] = f
}

// New builds the driver registered for ch.Protocol and runs its Initializer.
func New(ch *config.Channel, log *slog.Logger) (Driver, error) {
	mu.RLock()
	f, ok := factories[ch.Protocol]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("channel %d: no driver for protocol %q (have %v)", ch.ID, ch.Protocol, Protocols())
	}
	d, err := f(ch, log)
	if err != nil {
		return nil, fmt.Errorf("channel %d: %w", ch.ID, err)
	}
	if in, ok := d.(Initializer); ok {
		if err := in.Init(); err != nil {
			return nil, fmt.Errorf("channel %d: %w", ch.ID, err)
		}
	}
	return d, nil
}

// Protocols lists the registered protocol names, sorted.
func Protocols() []string {
	mu.RLock()
	defer mu.RUnlock()
	names := make([]string, 0, len(factories))
	for n := range factories {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
