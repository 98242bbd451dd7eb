// Package modbus is the Modbus TCP and RTU driver (protocols "modbus_tcp"
// and "modbus_rtu"), a client built on github.com/goburrow/modbus.
//
// The hard parts are pure and tested without a network: convert.go turns
// registers into engineering values and back (data types, byte orders,
// bits, scale and offset), request.go groups points into as few read
// requests as possible. driver.go runs the plan against a device and keeps
// one failing slave from stalling the others on a shared line.
//
// Failure handling in Read:
//   - a Modbus exception marks the points of that request Bad; exceptions
//     0x0A and 0x0B (gateway path unavailable, target failed to respond)
//     mark the whole slave Bad and back it off like a timeout, since the
//     gateway has already waited for it;
//   - a timeout marks the slave's points Bad and skips the slave for 1 poll,
//     then 2, 4, ... polls, up to 30 s worth of polls; on TCP the connection
//     is closed and silently reopened, so that a late answer cannot be taken
//     for the answer to the next request; on RTU the port is reopened, which
//     flushes what a slow slave sent late;
//   - a malformed answer (wrong transaction id, CRC, length) marks the
//     request Bad and reopens the connection the same way;
//   - any other I/O error (refused, reset, EOF, broken pipe, the serial
//     device gone) is returned: the connection is lost. On TCP a poll in
//     which no slave answered and at least one timed out is also returned
//     as an error, since the device or the network is gone.
package modbus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/goburrow/modbus"
	"github.com/goburrow/serial"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/messages"
)

func init() {
	drivers.Register(config.ProtocolModbusTCP, New)
	drivers.Register(config.ProtocolModbusRTU, New)
}

// Defaults of the channel parameters.
const (
	DefaultTimeout  = time.Second
	DefaultBaudRate = 9600
	DefaultPort     = 502
	maxBackoff      = 30 * time.Second
)

// Driver polls the points of one Modbus channel. It implements
// drivers.Driver, drivers.Connector, drivers.Writer and
// drivers.Initializer. Its methods are safe for concurrent use; requests
// are serialised.
type Driver struct {
	ch  *config.Channel
	log *slog.Logger
	tcp bool

	mu      sync.Mutex
	inited  bool
	plan    Plan
	codecs  []Codec
	slaves  []uint8 // distinct slave ids of the plan, ascending
	state   [256]slaveState
	handler handler
	client  modbus.Client
	closed  bool
	wbuf    []byte
}

// handler is what Driver needs of goburrow's TCP and RTU handlers.
type handler interface {
	modbus.ClientHandler
	Connect() error
	Close() error
}

type slaveState struct {
	backoff  int // polls to skip after the next failure / 2
	skip     int // polls still to skip
	failed   bool
	timedOut bool
}

// New returns a driver for a modbus_tcp or modbus_rtu channel. It does no
// I/O; Init validates the configuration.
func New(ch *config.Channel, log *slog.Logger) (drivers.Driver, error) {
	if ch == nil {
		return nil, errors.New("modbus: nil channel")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{ch: ch, log: log.With("channel", ch.ID)}
	switch ch.Protocol {
	case config.ProtocolModbusTCP:
		d.tcp = true
	case config.ProtocolModbusRTU:
	default:
		return nil, fmt.Errorf("modbus: unknown protocol %q", ch.Protocol)
	}
	return d, nil
}

// Init validates the parameters and points and plans the read requests.
func (d *Driver) Init() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.init()
}

func (d *Driver) init() error {
	if d.inited {
		return nil
	}
	var errs []error
	pr := &d.ch.Parameters
	if d.tcp {
		if pr.Host == "" {
			errs = append(errs, errors.New("parameters: host is required"))
		}
		if pr.Port < 0 || pr.Port > 65535 {
			errs = append(errs, fmt.Errorf("parameters: port %d outside 1..65535", pr.Port))
		}
	} else {
		if pr.Device == "" {
			errs = append(errs, errors.New("parameters: device is required"))
		}
		switch strings.ToUpper(pr.Parity) {
		case "", "N", "E", "O":
		default:
			errs = append(errs, fmt.Errorf("parameters: parity %q (want N, E or O)", pr.Parity))
		}
		if pr.DataBits != 0 && (pr.DataBits < 5 || pr.DataBits > 8) {
			errs = append(errs, fmt.Errorf("parameters: data_bits %d outside 5..8", pr.DataBits))
		}
		if pr.StopBits != 0 && pr.StopBits != 1 && pr.StopBits != 2 {
			errs = append(errs, fmt.Errorf("parameters: stop_bits %d (want 1 or 2)", pr.StopBits))
		}
	}
	if pr.Timeout < 0 {
		errs = append(errs, fmt.Errorf("parameters: negative timeout %v", pr.Timeout))
	}
	maxGap := -1
	if pr.MaxGap != nil {
		if *pr.MaxGap < 0 {
			errs = append(errs, fmt.Errorf("parameters: negative max_gap %d", *pr.MaxGap))
		} else {
			maxGap = *pr.MaxGap
		}
	}
	codecs := make([]Codec, len(d.ch.Points))
	for i := range d.ch.Points {
		p := &d.ch.Points[i]
		c, err := NewCodec(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if p.SlaveID == 0 && !d.tcp {
			errs = append(errs, fmt.Errorf("point %d: slave id 0 is the RTU broadcast address", p.ID))
		}
		codecs[i] = c
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	plan, err := NewPlan(d.ch.Points, maxGap)
	if err != nil {
		return err
	}
	d.plan, d.codecs = plan, codecs
	var seen [256]bool
	for _, r := range plan.Requests {
		if !seen[r.Slave] {
			seen[r.Slave] = true
			d.slaves = append(d.slaves, r.Slave)
		}
	}
	d.inited = true
	return nil
}

// Plan returns the read requests of one poll (after Init).
func (d *Driver) Plan() Plan {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.plan
}

func (d *Driver) timeout() time.Duration {
	if d.ch.Parameters.Timeout > 0 {
		return d.ch.Parameters.Timeout
	}
	return DefaultTimeout
}

func (d *Driver) newHandler() handler {
	pr := &d.ch.Parameters
	if d.tcp {
		port := pr.Port
		if port == 0 {
			port = DefaultPort
		}
		h := modbus.NewTCPClientHandler(net.JoinHostPort(pr.Host, fmt.Sprint(port)))
		h.Timeout = d.timeout()
		h.IdleTimeout = 0 // the driver owns the connection's lifetime
		return h
	}
	h := modbus.NewRTUClientHandler(pr.Device)
	h.BaudRate = pr.BaudRate
	if h.BaudRate == 0 {
		h.BaudRate = DefaultBaudRate
	}
	h.DataBits = pr.DataBits
	if h.DataBits == 0 {
		h.DataBits = 8
	}
	h.Parity = strings.ToUpper(pr.Parity)
	if h.Parity == "" {
		h.Parity = "N" // goburrow's default is E; the contract's is N
	}
	h.StopBits = pr.StopBits
	if h.StopBits == 0 {
		h.StopBits = 1
	}
	h.Timeout = d.timeout()
	h.IdleTimeout = 0
	return h
}

func setSlave(h handler, id uint8) {
	switch h := h.(type) {
	case *modbus.TCPClientHandler:
		h.SlaveId = id
	case *modbus.RTUClientHandler:
		h.SlaveId = id
	}
}

// Connect opens the TCP connection or the serial port. The dial is bounded
// by the channel's timeout; ctx is checked before it starts.
func (d *Driver) Connect(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.init(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.handler != nil {
		d.handler.Close()
	}
	h := d.newHandler()
	if err := h.Connect(); err != nil {
		return fmt.Errorf("channel %d: connect %s: %w", d.ch.ID, d.target(), err)
	}
	d.handler, d.client, d.closed = h, modbus.NewClient(h), false
	d.state = [256]slaveState{}
	return nil
}

func (d *Driver) target() string {
	if d.tcp {
		return "tcp " + net.JoinHostPort(d.ch.Parameters.Host, fmt.Sprint(d.ch.Parameters.Port))
	}
	return "serial " + d.ch.Parameters.Device
}

// Close closes the connection. It is idempotent; a later Connect reopens.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	if d.handler == nil {
		return nil
	}
	err := d.handler.Close()
	d.handler, d.client = nil, nil
	return err
}

// errNotConnected is returned by Read and Write before Connect.
var errNotConnected = errors.New("not connected")

// Read polls every point once and appends one sample per point to buf, in
// point-table order (Sample.Index = position in ch.Points).
func (d *Driver) Read(ctx context.Context, buf []drivers.Sample) ([]drivers.Sample, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.client == nil {
		return buf, fmt.Errorf("channel %d: read: %w", d.ch.ID, errNotConnected)
	}
	base := len(buf)
	buf = append(buf, make([]drivers.Sample, len(d.ch.Points))...)
	out := buf[base:]
	for i := range out {
		out[i] = drivers.Sample{Index: i, Quality: messages.Bad}
	}
	// Which slaves to skip this poll.
	for _, id := range d.slaves {
		st := &d.state[id]
		st.failed, st.timedOut = false, false
		if st.skip > 0 {
			st.skip--
			st.failed = true
		}
	}
	answered := false
	var lastTimeout error
	for ri := range d.plan.Requests {
		r := &d.plan.Requests[ri]
		st := &d.state[r.Slave]
		if st.failed {
			continue
		}
		if err := drivers.Proceed(ctx); err != nil {
			return buf[:base], err
		}
		data, err := d.readRequest(r)
		if err == nil {
			answered = true
			d.decode(r, data, out)
			st.backoff = 0
			continue
		}
		err = fmt.Errorf("channel %d slave %d: read %s at %d: %w", d.ch.ID, r.Slave, functionName(r.Function), r.Address, err)
		switch classify(err) {
		case errException:
			answered = true
			d.log.Debug("modbus exception", "slave", r.Slave, "err", err)
		case errSlaveGone:
			answered = true
			d.failSlave(st)
			d.log.Debug("slave unreachable behind gateway", "slave", r.Slave, "err", err)
		case errTimeout:
			d.failSlave(st)
			st.timedOut = true
			lastTimeout = err
			d.handler.Close() // reopened by the next request
			d.log.Debug("slave timed out", "slave", r.Slave, "skip_polls", st.skip, "err", err)
		case errGarbled:
			d.handler.Close()
			d.log.Debug("malformed response", "slave", r.Slave, "err", err)
		default:
			return buf[:base], err
		}
	}
	if d.tcp && !answered && lastTimeout != nil {
		return buf[:base], fmt.Errorf("channel %d: no slave answered: %w", d.ch.ID, lastTimeout)
	}
	return buf, nil
}

// failSlave marks a slave failed for this poll and sets how many polls to
// skip: 1, 2, 4, ... up to 30 s worth of polls.
func (d *Driver) failSlave(st *slaveState) {
	st.failed = true
	interval := d.ch.PollInterval
	if interval <= 0 {
		interval = time.Second
	}
	limit := max(1, int(maxBackoff/interval))
	switch {
	case st.backoff == 0:
		st.backoff = 1
	case st.backoff < limit:
		st.backoff = min(2*st.backoff, limit)
	}
	st.skip = st.backoff
}

func (d *Driver) readRequest(r *Request) ([]byte, error) {
	setSlave(d.handler, r.Slave)
	switch r.Function {
	case 1:
		return d.client.ReadCoils(r.Address, r.Quantity)
	case 2:
		return d.client.ReadDiscreteInputs(r.Address, r.Quantity)
	case 3:
		return d.client.ReadHoldingRegisters(r.Address, r.Quantity)
	default:
		return d.client.ReadInputRegisters(r.Address, r.Quantity)
	}
}

// decode fills the samples of r's points from its response data.
func (d *Driver) decode(r *Request, data []byte, out []drivers.Sample) {
	bits := r.Function == 1 || r.Function == 2
	for _, i := range r.Points {
		c := &d.codecs[i]
		off := d.plan.Points[i].Offset
		var v float64
		var err error
		if bits {
			v, err = c.DecodeBit(data, off)
		} else if 2*off <= len(data) {
			v, err = c.Decode(data[2*off:])
		} else {
			err = ErrShortData
		}
		if err != nil {
			continue // stays Bad
		}
		out[i].Value, out[i].Quality = v, messages.Good
	}
}

func functionName(fc uint8) string {
	switch fc {
	case 1:
		return "coils"
	case 2:
		return "discrete inputs"
	case 3:
		return "holding registers"
	case 4:
		return "input registers"
	case 5:
		return "write single coil"
	case 6:
		return "write single register"
	case 15:
		return "write multiple coils"
	case 16:
		return "write multiple registers"
	}
	return fmt.Sprintf("function %d", fc)
}

type errClass int

const (
	errConnection errClass = iota // the connection is lost
	errException                  // the slave answered with an exception
	errSlaveGone                  // a gateway says the slave does not answer
	errTimeout                    // no answer in time
	errGarbled                    // an answer that does not parse
)

// classify sorts a request error into what the driver does about it.
func classify(err error) errClass {
	var mbErr *modbus.ModbusError
	if errors.As(err, &mbErr) {
		switch mbErr.ExceptionCode {
		case modbus.ExceptionCodeGatewayPathUnavailable, modbus.ExceptionCodeGatewayTargetDeviceFailedToRespond:
			return errSlaveGone
		}
		return errException
	}
	// A failed (re)dial, even by timeout, means the device is unreachable.
	var dialErr *net.OpError
	if errors.As(err, &dialErr) && dialErr.Op == "dial" {
		return errConnection
	}
	if errors.Is(err, serial.ErrTimeout) || errors.Is(err, os.ErrDeadlineExceeded) {
		return errTimeout
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errTimeout
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) {
		return errConnection
	}
	var opErr *net.OpError
	var pathErr *os.PathError
	var errno syscall.Errno
	if errors.As(err, &opErr) || errors.As(err, &pathErr) || errors.As(err, &errno) {
		return errConnection
	}
	// goburrow reports protocol violations (transaction id, unit id, CRC,
	// lengths) as plain errors prefixed "modbus:".
	if strings.Contains(err.Error(), "modbus: ") {
		return errGarbled
	}
	return errConnection
}
