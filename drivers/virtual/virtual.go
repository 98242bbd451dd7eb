// Package virtual is a driver without a device: it generates the values of
// a channel's points as functions of time, for demos, tests and benchmarks.
//
// Point table columns: point_id,type,name,unit,signal,min,max,period.
//
//   - m points follow their signal between min and max (defaults 0 and 100)
//     with the given period (default 60s): sine, ramp (sawtooth from min to
//     max), square (max for the first half period, min for the second),
//     constant (always min) or random_walk (each Read moves the value by at
//     most 1 % of the range, reflected at the bounds, from a random source
//     seeded with the channel id, starting in the middle). The default
//     signal is sine.
//   - s points give 0 or 1: their signal (default square) runs between 0
//     and 1 and is rounded; a constant s point gives 0 when min is 0 or
//     unset, else 1.
//   - c and a points hold the last value written (initially 0, or the
//     nearest set bound when 0 is outside min..max) and Read returns it.
//     Write checks the value against min and max when they are set. Bool points (c points, unless data_type says otherwise, and
//     any point with data_type bool) accept only 0 and 1.
//
// Periodic signals are computed from the clock (wall time by default, see
// WithClock), each point shifted by a fraction of its period derived from
// its id so that the points of a channel do not move in step. So sine,
// ramp and random_walk points have a new value at every Read (as long as
// the clock moved), square points twice a period, constant points never.
// Read does not allocate when buf has room for every point.
package virtual

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/messages"
)

func init() {
	drivers.Register(config.ProtocolVirtual, New)
}

// Errors wrapped by the driver's errors, for errors.Is.
var (
	ErrClosed      = errors.New("driver closed")
	ErrNotWritable = drivers.ErrNotWritable
	ErrOutOfRange  = drivers.ErrOutOfRange
	ErrNoPoint     = errors.New("no such point")
)

// Default signal range and period.
const (
	DefaultMin    = 0
	DefaultMax    = 100
	DefaultPeriod = 60 * time.Second
)

// point is a channel point prepared for generation.
type point struct {
	id       uint32
	typ      messages.PointType
	signal   signal
	lo, hi   float64 // signal range; for writable points the write range
	checkLo  bool    // writable: min was set
	checkHi  bool    // writable: max was set
	binary   bool    // value is 0 or 1
	periodNs int64
	offset   float64 // phase shift, fraction of the period
}

// Driver generates a virtual channel's values. It is safe for concurrent
// use.
type Driver struct {
	id     uint32
	log    *slog.Logger
	now    func() time.Time
	points []point

	mu     sync.Mutex
	rnd    *rand.Rand
	values []float64 // random-walk positions and stored values, by index
	fail   error     // set by FailReads
	closed bool
}

var (
	_ drivers.Driver    = (*Driver)(nil)
	_ drivers.Writer    = (*Driver)(nil)
	_ drivers.Connector = (*Driver)(nil)
)

// Option changes how a Driver is built.
type Option func(*Driver)

// WithClock sets the clock that drives the periodic signals; the default
// is time.Now.
func WithClock(now func() time.Time) Option {
	return func(d *Driver) { d.now = now }
}

// New is the drivers.Factory of protocol "virtual".
func New(ch *config.Channel, log *slog.Logger) (drivers.Driver, error) {
	return NewDriver(ch, log)
}

// NewDriver builds a driver for ch, checking every point (all problems are
// reported at once). It does no I/O; the driver is ready to Read.
func NewDriver(ch *config.Channel, log *slog.Logger, opts ...Option) (*Driver, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{
		id:     ch.ID,
		log:    log,
		now:    time.Now,
		points: make([]point, len(ch.Points)),
		values: make([]float64, len(ch.Points)),
		rnd:    rand.New(rand.NewPCG(uint64(ch.ID), 0x7669727475616c)),
	}
	for _, o := range opts {
		o(d)
	}
	var errs []error
	for i := range ch.Points {
		p, err := preparePoint(&ch.Points[i])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d.points[i] = p
		switch p.signal {
		case randomWalk:
			d.values[i] = (p.lo + p.hi) / 2
		case stored:
			d.values[i] = p.initial()
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return d, nil
}

func preparePoint(cp *config.Point) (point, error) {
	fail := func(format string, args ...any) (point, error) {
		return point{}, fmt.Errorf("point %d (line %d): "+format, append([]any{cp.ID, cp.Line}, args...)...)
	}
	p := point{id: cp.ID, typ: cp.Type, lo: DefaultMin, hi: DefaultMax, offset: phaseOffset(cp.ID)}
	if cp.Min != nil {
		p.lo = *cp.Min
	}
	if cp.Max != nil {
		p.hi = *cp.Max
	}
	if math.IsNaN(p.lo) || math.IsNaN(p.hi) || math.IsInf(p.lo, 0) || math.IsInf(p.hi, 0) {
		return fail("min and max must be finite numbers")
	}
	// Unset bounds of writable points are not checked, so only set ones
	// must be in order there.
	writable := cp.Type == messages.Control || cp.Type == messages.Adjustment
	if p.lo > p.hi && (!writable || (cp.Min != nil && cp.Max != nil)) {
		return fail("min %g is above max %g (defaults %d and %d)", p.lo, p.hi, DefaultMin, DefaultMax)
	}
	if cp.Period < 0 {
		return fail("negative period %v", cp.Period)
	}
	period := cp.Period
	if period == 0 {
		period = DefaultPeriod
	}
	p.periodNs = int64(period)

	var err error
	switch cp.Type {
	case messages.Measurement:
		p.signal, err = parseSignal(cp.Signal, sine)
	case messages.Signal:
		p.signal, err = parseSignal(cp.Signal, square)
		p.binary = true
		if p.signal == constant && p.lo != 0 {
			p.lo = 1
		} else if p.signal != constant {
			p.lo = 0
		}
		p.hi = 1
	case messages.Control, messages.Adjustment:
		p.signal = stored
		p.checkLo, p.checkHi = cp.Min != nil, cp.Max != nil
		p.binary = cp.DataType == config.Bool || (cp.DataType == "" && cp.Type == messages.Control)
	default:
		return fail("unknown point type %v", cp.Type)
	}
	if err != nil {
		return fail("%v", err)
	}
	return p, nil
}

// initial returns the value a writable point holds before the first
// Write: 0, or the nearest bound when 0 is outside a set bound.
func (p *point) initial() float64 {
	v := 0.0
	if p.checkLo && !p.binary {
		v = max(v, p.lo)
	}
	if p.checkHi && !p.binary {
		v = min(v, p.hi)
	}
	return v
}

// Connect makes a closed driver readable again. It fails while FailReads
// is in effect, like a device that is gone.
func (d *Driver) Connect(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("virtual channel %d: connect: %w", d.id, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		return fmt.Errorf("virtual channel %d: connect: %w", d.id, d.fail)
	}
	d.closed = false
	return nil
}

// Read appends one sample per point, all of quality Good. It fails when
// ctx is done, after Close (until Connect) and while FailReads is in
// effect.
func (d *Driver) Read(ctx context.Context, buf []drivers.Sample) ([]drivers.Sample, error) {
	if err := ctx.Err(); err != nil {
		return buf, fmt.Errorf("virtual channel %d: read: %w", d.id, err)
	}
	now := d.now().UnixNano()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.unusable(); err != nil {
		return buf, fmt.Errorf("virtual channel %d: read: %w", d.id, err)
	}
	for i := range d.points {
		p := &d.points[i]
		var v float64
		switch p.signal {
		case randomWalk:
			v = step(d.values[i], d.rnd.Float64(), p.lo, p.hi)
			d.values[i] = v
		case stored:
			v = d.values[i]
		default:
			v = wave(p.signal, phaseAt(now, p.periodNs, p.offset), p.lo, p.hi)
		}
		if p.binary {
			v = math.Round(v)
		}
		buf = append(buf, drivers.Sample{Index: i, Value: v, Quality: messages.Good})
	}
	return buf, nil
}

// Write stores value for the c or a point at index and returns it as the
// readback. It rejects other point types (ErrNotWritable), values outside
// min and max when they are set, non-finite values, and values other than
// 0 and 1 for bool points (ErrOutOfRange).
func (d *Driver) Write(ctx context.Context, index int, value float64) (float64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("virtual channel %d: write: %w", d.id, err)
	}
	if index < 0 || index >= len(d.points) {
		return 0, fmt.Errorf("virtual channel %d: write point index %d: %w", d.id, index, ErrNoPoint)
	}
	p := &d.points[index]
	where := func(err error, detail string) error {
		return fmt.Errorf("virtual channel %d: write %v to point %d (%v): %s: %w", d.id, value, p.id, p.typ, detail, err)
	}
	switch {
	case p.signal != stored:
		return 0, where(ErrNotWritable, "only c and a points take commands")
	case math.IsNaN(value) || math.IsInf(value, 0):
		return 0, where(ErrOutOfRange, "not a finite number")
	case p.binary && value != 0 && value != 1:
		return 0, where(ErrOutOfRange, "bool point takes 0 or 1")
	case p.checkLo && value < p.lo:
		return 0, where(ErrOutOfRange, fmt.Sprintf("below min %g", p.lo))
	case p.checkHi && value > p.hi:
		return 0, where(ErrOutOfRange, fmt.Sprintf("above max %g", p.hi))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.unusable(); err != nil {
		return 0, fmt.Errorf("virtual channel %d: write point %d: %w", d.id, p.id, err)
	}
	d.values[index] = value
	d.log.Debug("virtual write", "channel", d.id, "point", p.id, "value", value)
	return value, nil
}

// unusable returns why the driver cannot be used now, or nil. d.mu is held.
func (d *Driver) unusable() error {
	if d.closed {
		return ErrClosed
	}
	return d.fail
}

// Close marks the driver closed; Read and Write fail until Connect. It is
// idempotent and always returns nil.
func (d *Driver) Close() error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	return nil
}

// FailReads simulates a lost device for tests and demos: from now on Read,
// Write and Connect return err (wrapped) until Recover. A nil err is the
// same as Recover.
func (d *Driver) FailReads(err error) {
	d.mu.Lock()
	d.fail = err
	d.mu.Unlock()
}

// Recover ends FailReads: the next Read succeeds again (after Connect if
// the driver was closed meanwhile).
func (d *Driver) Recover() {
	d.FailReads(nil)
}
