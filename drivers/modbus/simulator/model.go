// Package simulator is a Modbus device simulator that serves the points of
// a channel's point table, over Modbus TCP (several slave ids on one port)
// and over Modbus RTU on any byte stream, such as a pseudo-terminal.
//
// Each slave id that appears in the table gets four tables: coils, discrete
// inputs, holding and input registers. Measurement points move along a sine
// wave (inside their min..max when the table gives both), signal points
// toggle slowly, control and adjustment points hold what was last written.
// Values are encoded with the point's data type, byte order, scale and
// offset (the same codec the driver decodes with), so a driver reads
// sensible engineering values.
//
// For tests, a slave can be made silent (SetSlaveDown) or answer with an
// exception (SetException), values can be frozen, read and set directly,
// and the number of requests served is counted.
package simulator

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers/modbus"
	"github.com/voltage-ems/voltage/messages"
)

// Tables of a slave.
const (
	tableCoils = iota
	tableDiscrete
	tableHolding
	tableInput
)

// Exception codes the simulator answers with.
const (
	ExceptionIllegalFunction    = 0x01
	ExceptionIllegalDataAddress = 0x02
	ExceptionIllegalDataValue   = 0x03
	ExceptionDeviceFailure      = 0x04
	ExceptionDeviceBusy         = 0x06
	ExceptionGatewayPath        = 0x0A
	ExceptionGatewayTarget      = 0x0B // gateway target device failed to respond
)

// Simulator holds the register model of every slave of a point table and
// serves it. Its methods are safe for concurrent use.
type Simulator struct {
	points []config.Point
	codecs []modbus.Codec
	start  time.Time

	silence  time.Duration
	requests atomic.Int64
	writes   atomic.Int64

	logMu   sync.Mutex
	logging bool
	log     []LoggedRequest

	mu       sync.Mutex
	slaves   map[uint8]*slave
	pinned   []bool // point holds its value: not moving
	frozen   bool
	frozenAt time.Time
	changed  chan struct{} // closed and replaced on every state change
	gen      uint64        // incremented by Close
	servers  []*tcpServer
	rtus     []*rtuSession
}

type slave struct {
	bits   [2][]bool   // coils, discrete inputs (65536 each)
	regs   [2][]uint16 // holding, input registers (65536 each)
	points []int       // indexes of the slave's points
	down   bool
	exc    uint8
}

// Option configures a Simulator.
type Option func(*Simulator)

// LoggedRequest is one request served over TCP, with the local port it
// arrived on (a test gives each client its own port to tell them apart).
type LoggedRequest struct {
	At    time.Time
	Port  int
	FC    uint8
	Write bool
}

// WithRequestLog keeps a log of every TCP request (RequestLog).
func WithRequestLog() Option {
	return func(s *Simulator) { s.logging = true }
}

// RequestLog returns the TCP requests served so far, in order (with
// WithRequestLog).
func (s *Simulator) RequestLog() []LoggedRequest {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	return append([]LoggedRequest(nil), s.log...)
}

func (s *Simulator) logRequest(port int, fc uint8) {
	if !s.logging {
		return
	}
	s.logMu.Lock()
	s.log = append(s.log, LoggedRequest{At: time.Now(), Port: port, FC: fc, Write: fc == 5 || fc == 6 || fc == 15 || fc == 16})
	s.logMu.Unlock()
}

// WithSilence sets how long a request to a slave that is down is held
// before the simulator gives up on it (on TCP it then answers the late
// exception 0x0B, as a gateway would). Default 1 minute.
func WithSilence(d time.Duration) Option {
	return func(s *Simulator) { s.silence = d }
}

// New builds the register model for points. Every slave id of the table
// answers; other ids get exception 0x0B on TCP and silence on RTU.
func New(points []config.Point, opts ...Option) (*Simulator, error) {
	s := &Simulator{
		points:  append([]config.Point(nil), points...),
		codecs:  make([]modbus.Codec, len(points)),
		start:   time.Now(),
		silence: time.Minute,
		slaves:  map[uint8]*slave{},
		pinned:  make([]bool, len(points)),
		changed: make(chan struct{}),
	}
	for _, o := range opts {
		o(s)
	}
	var errs []error
	for i := range s.points {
		c, err := modbus.NewCodec(&s.points[i])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.codecs[i] = c
		sl := s.slave(s.points[i].SlaveID)
		sl.points = append(sl.points, i)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("simulator: %w", errors.Join(errs...))
	}
	now := s.start
	for i := range s.points {
		t := s.points[i].Type
		if t == messages.Control || t == messages.Adjustment {
			s.pinned[i] = true
			v := 0.0
			if t == messages.Adjustment && !s.codecs[i].IsBit() && !s.codecs[i].IsRegisterBit() {
				v, _ = s.wave(i, 0)
			}
			s.store(i, v)
			continue
		}
		v, _ := s.wave(i, now.Sub(s.start))
		s.store(i, v)
	}
	return s, nil
}

func (s *Simulator) slave(id uint8) *slave {
	sl := s.slaves[id]
	if sl == nil {
		sl = &slave{}
		for t := range sl.bits {
			sl.bits[t] = make([]bool, 1<<16)
			sl.regs[t] = make([]uint16, 1<<16)
		}
		s.slaves[id] = sl
	}
	return sl
}

// table returns the table a function code addresses.
func table(fc uint8) (int, bool) {
	switch fc {
	case 1, 5, 15:
		return tableCoils, true
	case 2:
		return tableDiscrete, true
	case 3, 6, 16:
		return tableHolding, true
	case 4:
		return tableInput, true
	}
	return 0, false
}

// span returns the first address and count of registers (or bits) of
// point i, and its table.
func (s *Simulator) span(i int) (tab, addr, n int) {
	tab, _ = table(s.points[i].FunctionCode)
	return tab, int(s.points[i].Address), s.codecs[i].Registers()
}

// wave is the value of point i at time t since the start. Measurements
// follow base + amp*sin(2*pi*t/period + phase), with period 30 s + 5 s *
// (id mod 7) and phase from id mod 13. A measurement with both Min and Max
// (its expected range) is centred at (min+max)/2 with amp 0.4*(max-min), so
// it stays inside the range; the value is still clamped to the data type's
// range (after scale and offset). Without them, base is 100 + 10*(id mod
// 50) and amp a tenth of it; when that does not fit the data type, the wave
// is centred in the type's range with amplitude a tenth of it. Signals are
// (id + t/period) mod 2 with period 5 s + 1 s * (id mod 5). The second
// result says whether the point moves.
func (s *Simulator) wave(i int, t time.Duration) (float64, bool) {
	p := &s.points[i]
	c := &s.codecs[i]
	sec := t.Seconds()
	if c.IsBit() || c.IsRegisterBit() || p.DataType == config.Bool {
		period := 5 + float64(p.ID%5)
		return float64((int64(p.ID) + int64(sec/period)) % 2), p.Type == messages.Signal || p.Type == messages.Measurement
	}
	period := 30 + 5*float64(p.ID%7)
	phase := 2 * math.Pi * float64(p.ID%13) / 13
	sin := math.Sin(2*math.Pi*sec/period + phase)
	lo, hi := c.Range()
	if p.Type == messages.Measurement && p.Min != nil && p.Max != nil {
		base := *p.Min/2 + *p.Max/2
		amp := 0.4 * (*p.Max - *p.Min)
		return min(max(base+amp*sin, lo), hi), true
	}
	base := 100 + 10*float64(p.ID%50)
	amp := base / 10
	if base-amp < lo || base+amp > hi {
		base = lo/2 + hi/2
		amp = (hi - lo) / 10
	}
	return base + amp*sin, true
}

// now is the simulator's clock: wall time, or the instant of Freeze.
func (s *Simulator) now() time.Time {
	if s.frozen {
		return s.frozenAt
	}
	return time.Now()
}

// store encodes engineering value v into the registers of point i.
// Caller holds s.mu (or owns s).
func (s *Simulator) store(i int, v float64) error {
	c := &s.codecs[i]
	p := &s.points[i]
	sl := s.slave(p.SlaveID)
	tab, addr, n := s.span(i)
	switch {
	case c.IsBit():
		raw, err := c.Raw(v)
		if err != nil {
			return err
		}
		sl.bits[tab][addr] = raw == 1
	case c.IsRegisterBit():
		reg, err := c.SetBit(sl.regs[tab-tableHolding][addr], v)
		if err != nil {
			return err
		}
		sl.regs[tab-tableHolding][addr] = reg
	default:
		var buf [8]byte
		b, err := c.Encode(buf[:0], v)
		if err != nil {
			return err
		}
		for k := 0; k < n; k++ {
			sl.regs[tab-tableHolding][addr+k] = uint16(b[2*k])<<8 | uint16(b[2*k+1])
		}
	}
	return nil
}

// load decodes the current engineering value of point i. Caller holds s.mu.
func (s *Simulator) load(i int) float64 {
	c := &s.codecs[i]
	p := &s.points[i]
	sl := s.slave(p.SlaveID)
	tab, addr, n := s.span(i)
	if c.IsBit() {
		if sl.bits[tab][addr] {
			v, _ := c.DecodeBit([]byte{1}, 0)
			return v
		}
		v, _ := c.DecodeBit([]byte{0}, 0)
		return v
	}
	var buf [8]byte
	for k := 0; k < n; k++ {
		r := sl.regs[tab-tableHolding][addr+k]
		buf[2*k], buf[2*k+1] = byte(r>>8), byte(r)
	}
	v, _ := c.Decode(buf[:2*n])
	return v
}

// refresh moves the points of slave sl in table tab that overlap
// [addr, addr+n) to the current time. Caller holds s.mu.
func (s *Simulator) refresh(sl *slave, tab, addr, n int) {
	t := s.now().Sub(s.start)
	for _, i := range sl.points {
		if s.pinned[i] {
			continue
		}
		pt, pa, pn := s.span(i)
		if pt != tab || pa >= addr+n || pa+pn <= addr {
			continue
		}
		if v, moving := s.wave(i, t); moving {
			s.store(i, v)
		}
	}
}

// pin stops the points overlapping a written range from moving.
func (s *Simulator) pin(sl *slave, tab, addr, n int) {
	for _, i := range sl.points {
		pt, pa, pn := s.span(i)
		if pt == tab && pa < addr+n && pa+pn > addr {
			s.pinned[i] = true
		}
	}
}

// notify wakes requests held for a silent slave. Caller holds s.mu.
func (s *Simulator) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Freeze stops (true) or resumes (false) the movement of values. While
// frozen, every read sees the values of the instant Freeze was called.
func (s *Simulator) Freeze(frozen bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if frozen && !s.frozen {
		s.frozenAt = time.Now()
	}
	s.frozen = frozen
}

// Value returns the current engineering value of the point at index i of
// the table given to New.
func (s *Simulator) Value(i int) (float64, error) {
	if i < 0 || i >= len(s.points) {
		return 0, fmt.Errorf("simulator: no point at index %d", i)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	tab, addr, n := s.span(i)
	s.refresh(s.slaves[s.points[i].SlaveID], tab, addr, n)
	return s.load(i), nil
}

// SetValue encodes engineering value v into the registers of the point at
// index i. The point then holds v: it stops moving.
func (s *Simulator) SetValue(i int, v float64) error {
	if i < 0 || i >= len(s.points) {
		return fmt.Errorf("simulator: no point at index %d", i)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.store(i, v); err != nil {
		return fmt.Errorf("simulator: point %d: %w", s.points[i].ID, err)
	}
	s.pinned[i] = true
	return nil
}

// Registers returns n values of a table of a slave, as the function code
// fc addresses it (1, 5, 15 coils; 2 discrete inputs; 3, 6, 16 holding; 4
// input registers); bits are returned as 0 or 1. Moving points are brought
// to the current time first.
func (s *Simulator) Registers(slaveID, fc uint8, addr, n uint16) []uint16 {
	tab, ok := table(fc)
	if !ok || int(addr)+int(n) > 1<<16 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]uint16, n)
	sl := s.slaves[slaveID]
	if sl == nil {
		return out
	}
	s.refresh(sl, tab, int(addr), int(n))
	for k := range out {
		a := int(addr) + k
		if tab < tableHolding {
			if sl.bits[tab][a] {
				out[k] = 1
			}
		} else {
			out[k] = sl.regs[tab-tableHolding][a]
		}
	}
	return out
}

// SetRegisters stores values from addr on in a table of a slave (bits:
// non-zero is on). Points overlapping the range stop moving. A slave id
// not in the point table is added, and answers from then on.
func (s *Simulator) SetRegisters(slaveID, fc uint8, addr uint16, values ...uint16) error {
	tab, ok := table(fc)
	if !ok {
		return fmt.Errorf("simulator: function code %d addresses no table", fc)
	}
	if int(addr)+len(values) > 1<<16 {
		return fmt.Errorf("simulator: %d values at %d pass 65535", len(values), addr)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := s.slave(slaveID)
	s.write(sl, tab, int(addr), values, nil)
	return nil
}

// Coil returns coil addr of a slave.
func (s *Simulator) Coil(slaveID uint8, addr uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := s.slaves[slaveID]
	return sl != nil && sl.bits[tableCoils][addr]
}

// SetSlaveDown makes a slave silent (true): its requests get no answer, so
// clients time out. false brings it back.
func (s *Simulator) SetSlaveDown(slaveID uint8, down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.slave(slaveID).down = down
	s.notify()
}

// SetException makes a slave answer every request with exception code
// (for example ExceptionDeviceBusy); 0 restores normal answers. Like
// SetSlaveDown, it adds a slave id that is not in the point table.
func (s *Simulator) SetException(slaveID, code uint8) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.slave(slaveID).exc = code
	s.notify()
}

// Requests returns how many Modbus requests the simulator has received
// (answered or not), over all transports.
func (s *Simulator) Requests() int64 { return s.requests.Load() }

// Writes returns how many write requests (function codes 5, 6, 15, 16) the
// simulator has executed.
func (s *Simulator) Writes() int64 { return s.writes.Load() }

// request is one decoded Modbus request.
type request struct {
	slave    uint8
	fc       uint8
	addr     uint16
	quantity uint16
	bits     []bool   // values of fc 5 and 15
	regs     []uint16 // values of fc 6 and 16
}

// response is the outcome of a request: data for reads, an exception, or
// silence.
type response struct {
	bits   []bool
	regs   []uint16
	exc    uint8
	silent bool
}

// serve runs one request against the model. unknownSilent says what an
// unknown slave id does: stay silent (RTU bus) or answer 0x0B (TCP gateway).
func (s *Simulator) serve(r *request, unknownSilent bool) response {
	s.requests.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	sl, ok := s.slaves[r.slave]
	if !ok {
		if unknownSilent {
			return response{silent: true}
		}
		return response{exc: ExceptionGatewayTarget}
	}
	if sl.down {
		return response{silent: true}
	}
	if sl.exc != 0 {
		return response{exc: sl.exc}
	}
	tab, ok := table(r.fc)
	if !ok {
		return response{exc: ExceptionIllegalFunction}
	}
	if r.quantity == 0 || int(r.addr)+int(r.quantity) > 1<<16 {
		return response{exc: ExceptionIllegalDataAddress}
	}
	a, n := int(r.addr), int(r.quantity)
	switch r.fc {
	case 1, 2:
		if n > modbus.MaxReadBits {
			return response{exc: ExceptionIllegalDataValue}
		}
		s.refresh(sl, tab, a, n)
		return response{bits: append([]bool(nil), sl.bits[tab][a:a+n]...)}
	case 3, 4:
		if n > modbus.MaxReadRegisters {
			return response{exc: ExceptionIllegalDataValue}
		}
		s.refresh(sl, tab, a, n)
		return response{regs: append([]uint16(nil), sl.regs[tab-tableHolding][a:a+n]...)}
	case 5, 15:
		if len(r.bits) != n {
			return response{exc: ExceptionIllegalDataValue}
		}
		s.writes.Add(1)
		s.write(sl, tab, a, nil, r.bits)
	case 6, 16:
		if len(r.regs) != n {
			return response{exc: ExceptionIllegalDataValue}
		}
		s.writes.Add(1)
		s.write(sl, tab, a, r.regs, nil)
	}
	return response{}
}

// write stores registers or bits and pins the points they touch. Caller
// holds s.mu.
func (s *Simulator) write(sl *slave, tab, addr int, regs []uint16, bits []bool) {
	n := len(regs) + len(bits)
	for k, v := range regs {
		if tab < tableHolding {
			sl.bits[tab][addr+k] = v != 0
		} else {
			sl.regs[tab-tableHolding][addr+k] = v
		}
	}
	for k, v := range bits {
		sl.bits[tab][addr+k] = v
	}
	s.pin(sl, tab, addr, n)
}

// hold blocks a request for a silent slave until the slave comes back, the
// simulator closes or the silence limit passes.
func (s *Simulator) hold(slaveID uint8) {
	timer := time.NewTimer(s.silence)
	defer timer.Stop()
	s.mu.Lock()
	gen := s.gen
	for {
		sl := s.slaves[slaveID]
		if sl == nil || !sl.down || s.gen != gen {
			s.mu.Unlock()
			return
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			return
		}
		s.mu.Lock()
	}
}

// Close stops every TCP listener and RTU session and drops all connections,
// as if the device were switched off. The model is kept: Serve and ServeRTU
// may be called again, on the same address too.
func (s *Simulator) Close() error {
	s.mu.Lock()
	servers, rtus := s.servers, s.rtus
	s.servers, s.rtus = nil, nil
	s.gen++
	s.notify()
	s.mu.Unlock()
	var errs []error
	for _, srv := range servers {
		if err := srv.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range rtus {
		r.stop()
	}
	return errors.Join(errs...)
}
