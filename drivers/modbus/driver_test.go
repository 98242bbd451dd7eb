package modbus_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	gbmodbus "github.com/goburrow/modbus"
	"github.com/goburrow/serial"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/drivers/modbus"
	"github.com/voltage-ems/voltage/drivers/modbus/simulator"
	"github.com/voltage-ems/voltage/messages"
)

// point builds a point with the defaults the config loader would fill in.
func point(id uint32, typ messages.PointType, slave, fc uint8, addr uint16, dt config.DataType) config.Point {
	return config.Point{ID: id, Type: typ, SlaveID: slave, FunctionCode: fc, Address: addr,
		DataType: dt, ByteOrder: config.ABCD, BitPosition: -1, Scale: 1}
}

func with(p config.Point, f func(*config.Point)) config.Point { f(&p); return p }

// allTypes is a table with every data type, byte order and function code
// on two slaves.
func allTypes() []config.Point {
	var ps []config.Point
	id := uint32(1)
	add := func(p config.Point) { p.ID = id; id++; ps = append(ps, p) }
	addr := uint16(0)
	for _, dt := range []config.DataType{config.Uint16, config.Int16, config.Uint32, config.Int32, config.Float32, config.Uint64, config.Int64, config.Float64} {
		for _, o := range []config.ByteOrder{config.ABCD, config.DCBA, config.BADC, config.CDAB} {
			add(with(point(0, messages.Measurement, 1, 3, addr, dt), func(p *config.Point) { p.ByteOrder = o; p.Scale = 0.1; p.Offset = -5 }))
			addr += uint16(dt.Registers())
		}
	}
	add(point(0, messages.Measurement, 1, 4, 10, config.Int16))
	add(point(0, messages.Measurement, 1, 4, 11, config.Float32))
	for b := 0; b < 16; b += 5 {
		add(with(point(0, messages.Signal, 1, 3, 200, config.Bool), func(p *config.Point) { p.BitPosition = b; p.Reverse = b == 5 }))
	}
	add(point(0, messages.Signal, 1, 2, 0, config.Bool))
	add(with(point(0, messages.Signal, 1, 2, 7, config.Bool), func(p *config.Point) { p.Reverse = true }))
	add(point(0, messages.Control, 1, 5, 3, config.Bool))
	add(point(0, messages.Measurement, 2, 3, 0, config.Float32))
	add(point(0, messages.Measurement, 2, 4, 0, config.Uint32))
	add(point(0, messages.Adjustment, 2, 16, 100, config.Float32))
	add(point(0, messages.Control, 2, 15, 9, config.Bool))
	return ps
}

type fixture struct {
	sim  *simulator.Simulator
	addr net.Addr
	ch   *config.Channel
	drv  *modbus.Driver
}

func newFixture(t testing.TB, points []config.Point, timeout time.Duration, opts ...simulator.Option) *fixture {
	t.Helper()
	sim, err := simulator.New(points, opts...)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := sim.Serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	host, port, _ := net.SplitHostPort(addr.String())
	p, _ := strconv.Atoi(port)
	ch := &config.Channel{ID: 1001, Name: "pcs", Protocol: config.ProtocolModbusTCP, PollInterval: time.Second,
		Parameters: config.Parameters{Host: host, Port: p, Timeout: timeout}, Points: points}
	d, err := drivers.New(ch, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	drv := d.(*modbus.Driver)
	if err := drv.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { drv.Close() })
	return &fixture{sim: sim, addr: addr, ch: ch, drv: drv}
}

func (f *fixture) read(t testing.TB) []drivers.Sample {
	t.Helper()
	s, err := f.drv.Read(context.Background(), nil)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if len(s) != len(f.ch.Points) {
		t.Fatalf("%d samples for %d points", len(s), len(f.ch.Points))
	}
	return s
}

func eventually(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func qualities(samples []drivers.Sample, ch *config.Channel) map[uint8][]messages.Quality {
	m := map[uint8][]messages.Quality{}
	for _, s := range samples {
		sl := ch.Points[s.Index].SlaveID
		m[sl] = append(m[sl], s.Quality)
	}
	return m
}

func allQ(qs []messages.Quality, q messages.Quality) bool {
	for _, x := range qs {
		if x != q {
			return false
		}
	}
	return len(qs) > 0
}

func TestReadAllTypes(t *testing.T) {
	points := allTypes()
	f := newFixture(t, points, time.Second)
	f.sim.Freeze(true)
	plan := f.drv.Plan()
	for poll := 0; poll < 3; poll++ {
		before := f.sim.Requests()
		samples := f.read(t)
		if n := f.sim.Requests() - before; n != int64(len(plan.Requests)) {
			t.Fatalf("poll %d: %d requests, plan has %d", poll, n, len(plan.Requests))
		}
		for i, s := range samples {
			if s.Index != i || s.Quality != messages.Good {
				t.Fatalf("sample %d: %+v", i, s)
			}
			want, _ := f.sim.Value(i)
			if s.Value != want {
				t.Fatalf("point %d (%s %s fc %d): read %v, simulator has %v", points[i].ID, points[i].DataType, points[i].ByteOrder, points[i].FunctionCode, s.Value, want)
			}
		}
	}
	// Values are sensible: measurements around 100..650 (scale applied).
	samples := f.read(t)
	for i, s := range samples {
		if points[i].Type == messages.Measurement && (s.Value < 50 || s.Value > 700) {
			t.Errorf("point %d: implausible value %v", points[i].ID, s.Value)
		}
	}
	// A known vector set through the model reads as itself.
	if err := f.sim.SetRegisters(2, 3, 0, 0x4366, 0x8000); err != nil {
		t.Fatal(err)
	}
	idx := -1
	for i, p := range points {
		if p.SlaveID == 2 && p.FunctionCode == 3 {
			idx = i
		}
	}
	if got := f.read(t)[idx].Value; got != 230.5 {
		t.Fatalf("float32 0x43668000 read as %v", got)
	}
}

func TestValuesMove(t *testing.T) {
	points := []config.Point{point(1, messages.Measurement, 1, 3, 0, config.Float32)}
	f := newFixture(t, points, time.Second)
	first := f.read(t)[0].Value
	eventually(t, 5*time.Second, func() bool { return f.read(t)[0].Value != first })
}

func TestExceptionMarksOnlyThatSlave(t *testing.T) {
	points := allTypes()
	f := newFixture(t, points, time.Second)
	f.sim.SetException(2, simulator.ExceptionDeviceBusy)
	for poll := 0; poll < 2; poll++ {
		q := qualities(f.read(t), f.ch)
		if !allQ(q[1], messages.Good) || !allQ(q[2], messages.Bad) {
			t.Fatalf("poll %d: %v", poll, q)
		}
	}
	f.sim.SetException(2, 0)
	q := qualities(f.read(t), f.ch) // exceptions do not back off
	if !allQ(q[1], messages.Good) || !allQ(q[2], messages.Good) {
		t.Fatalf("after recovery: %v", q)
	}
}

func TestSilentSlaveDoesNotStallOthers(t *testing.T) {
	const timeout = 300 * time.Millisecond
	points := allTypes()
	f := newFixture(t, points, timeout)
	f.sim.SetSlaveDown(2, true)

	start := time.Now()
	q := qualities(f.read(t), f.ch)
	first := time.Since(start)
	if !allQ(q[1], messages.Good) || !allQ(q[2], messages.Bad) {
		t.Fatalf("first poll: %v", q)
	}
	if first < timeout {
		t.Fatalf("first poll took %v, less than the timeout: slave 2 was not asked", first)
	}
	// Backed off: the next poll skips slave 2 and is fast.
	before := f.sim.Requests()
	start = time.Now()
	q = qualities(f.read(t), f.ch)
	if d := time.Since(start); d > timeout/3 {
		t.Fatalf("second poll took %v while slave 2 is backed off", d)
	}
	if !allQ(q[1], messages.Good) || !allQ(q[2], messages.Bad) {
		t.Fatalf("second poll: %v", q)
	}
	plan := f.drv.Plan()
	n1 := 0
	for _, r := range plan.Requests {
		if r.Slave == 1 {
			n1++
		}
	}
	if got := f.sim.Requests() - before; got != int64(n1) {
		t.Fatalf("second poll sent %d requests, want %d (slave 1 only)", got, n1)
	}
	// Third poll retries slave 2 (one request), times out again, backs off 2 polls.
	before = f.sim.Requests()
	f.read(t)
	if got := f.sim.Requests() - before; got != int64(n1+1) {
		t.Fatalf("third poll sent %d requests, want %d", got, n1+1)
	}
	for i := 0; i < 2; i++ {
		before = f.sim.Requests()
		f.read(t)
		if got := f.sim.Requests() - before; got != int64(n1) {
			t.Fatalf("poll %d of the 2-poll backoff sent %d requests, want %d", i, got, n1)
		}
	}
	// The slave comes back and is read again after its backoff.
	f.sim.SetSlaveDown(2, false)
	eventually(t, 10*time.Second, func() bool {
		q := qualities(f.read(t), f.ch)
		return allQ(q[1], messages.Good) && allQ(q[2], messages.Good)
	})
}

func TestAllSlavesSilentIsConnectionLost(t *testing.T) {
	points := []config.Point{point(1, messages.Measurement, 1, 3, 0, config.Uint16)}
	f := newFixture(t, points, 200*time.Millisecond)
	f.sim.SetSlaveDown(1, true)
	if _, err := f.drv.Read(context.Background(), nil); err == nil {
		t.Fatal("read of a silent single-slave device succeeded")
	}
}

func TestDeviceGoneAndBack(t *testing.T) {
	points := allTypes()
	f := newFixture(t, points, 500*time.Millisecond)
	f.read(t)
	if err := f.sim.Close(); err != nil {
		t.Fatal(err)
	}
	buf := make([]drivers.Sample, 0, 64)
	out, err := f.drv.Read(context.Background(), buf)
	if err == nil {
		t.Fatal("read succeeded with the device gone")
	}
	if len(out) != 0 {
		t.Fatalf("read returned %d samples with its error", len(out))
	}
	t.Logf("device gone: %v", err)
	f.drv.Close()
	if err := f.drv.Connect(context.Background()); err == nil {
		t.Fatal("connect succeeded with the device gone")
	}
	if _, err := f.sim.Serve(f.addr.String()); err != nil {
		t.Fatal(err)
	}
	f.drv.Close()
	if err := f.drv.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	q := qualities(f.read(t), f.ch)
	if !allQ(q[1], messages.Good) || !allQ(q[2], messages.Good) {
		t.Fatalf("after reconnect: %v", q)
	}
}

func TestCloseAndContext(t *testing.T) {
	f := newFixture(t, allTypes(), time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.drv.Read(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled read: %v", err)
	}
	if _, err := f.drv.Write(ctx, 0, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled write: %v", err)
	}
	if err := f.drv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.drv.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := f.drv.Read(context.Background(), nil); err == nil {
		t.Fatal("read after close succeeded")
	}
}

func TestWrite(t *testing.T) {
	points := []config.Point{
		point(1, messages.Control, 1, 5, 10, config.Bool),
		with(point(2, messages.Adjustment, 1, 6, 20, config.Uint16), func(p *config.Point) { p.Scale = 0.1 }),
		with(point(3, messages.Adjustment, 1, 16, 30, config.Float32), func(p *config.Point) { p.ByteOrder = config.CDAB }),
		with(point(4, messages.Control, 1, 6, 40, config.Bool), func(p *config.Point) { p.BitPosition = 3 }),
		point(5, messages.Control, 2, 15, 11, config.Bool),
		with(point(6, messages.Adjustment, 2, 16, 50, config.Int32), func(p *config.Point) { p.Scale = 0.01; p.Offset = 100 }),
		with(point(7, messages.Control, 2, 5, 12, config.Bool), func(p *config.Point) { p.Reverse = true }),
		point(8, messages.Measurement, 1, 4, 0, config.Uint16),
		with(point(9, messages.Adjustment, 1, 6, 60, config.Int16), func(p *config.Point) { p.Min, p.Max = new(-10.0), new(10.0) }),
	}
	f := newFixture(t, points, time.Second)
	ctx := context.Background()
	ok := func(i int, v, wantBack float64) {
		t.Helper()
		got, err := f.drv.Write(ctx, i, v)
		if err != nil {
			t.Fatalf("write point %d = %v: %v", points[i].ID, v, err)
		}
		if math.Abs(got-wantBack) > 1e-9 {
			t.Fatalf("write point %d = %v: read back %v, want %v", points[i].ID, v, got, wantBack)
		}
		if sv, _ := f.sim.Value(i); math.Abs(sv-wantBack) > 1e-9 {
			t.Fatalf("point %d: simulator holds %v after writing %v", points[i].ID, sv, v)
		}
		// The next poll shows the written value too.
		if s := f.read(t)[i]; s.Quality != messages.Good || math.Abs(s.Value-wantBack) > 1e-9 {
			t.Fatalf("point %d polled as %+v after writing %v", points[i].ID, s, v)
		}
	}
	ok(0, 1, 1)
	if !f.sim.Coil(1, 10) {
		t.Fatal("coil 10 not set")
	}
	ok(0, 0, 0)
	ok(1, 12.3, 12.3)
	if r := f.sim.Registers(1, 3, 20, 1); r[0] != 123 {
		t.Fatalf("register 20 = %d, want 123", r[0])
	}
	ok(2, 230.5, 230.5)
	if r := f.sim.Registers(1, 3, 30, 2); r[0] != 0x8000 || r[1] != 0x4366 {
		t.Fatalf("float32 CDAB registers % x", r)
	}
	// Bit 3 of register 40: the other bits stay.
	f.sim.SetRegisters(1, 3, 40, 0xA001)
	ok(3, 1, 1)
	if r := f.sim.Registers(1, 3, 40, 1); r[0] != 0xA009 {
		t.Fatalf("register 40 = %#x, want 0xa009", r[0])
	}
	ok(3, 0, 0)
	if r := f.sim.Registers(1, 3, 40, 1); r[0] != 0xA001 {
		t.Fatalf("register 40 = %#x, want 0xa001", r[0])
	}
	ok(4, 1, 1)
	if !f.sim.Coil(2, 11) {
		t.Fatal("coil 11 of slave 2 not set")
	}
	ok(5, -21.47, -21.47)
	ok(6, 1, 1)
	if f.sim.Coil(2, 12) {
		t.Fatal("reversed coil 12 set for 1")
	}
	ok(8, -7, -7)

	// Rejected without any I/O, registers unchanged.
	bad := func(i int, v float64, rangeErr bool) {
		t.Helper()
		before := f.sim.Requests()
		reg := f.sim.Registers(points[i].SlaveID, points[i].FunctionCode, points[i].Address, uint16(points[i].DataType.Registers()))
		_, err := f.drv.Write(ctx, i, v)
		if err == nil {
			t.Fatalf("write point %d = %v accepted", points[i].ID, v)
		}
		if rangeErr && !errors.Is(err, modbus.ErrOutOfRange) {
			t.Fatalf("write point %d = %v: %v, want ErrOutOfRange", points[i].ID, v, err)
		}
		if n := f.sim.Requests() - before; n != 0 {
			t.Fatalf("rejected write sent %d requests", n)
		}
		after := f.sim.Registers(points[i].SlaveID, points[i].FunctionCode, points[i].Address, uint16(points[i].DataType.Registers()))
		for k := range reg {
			if reg[k] != after[k] {
				t.Fatalf("rejected write changed registers % x -> % x", reg, after)
			}
		}
	}
	bad(1, 6553.6, true) // raw 65536
	bad(1, -0.1, true)
	bad(0, 2, true)
	bad(3, 0.5, true)
	bad(5, 1e9, true)
	bad(8, 11, true) // above Max
	bad(2, math.NaN(), true)
	bad(7, 1, false) // input register: read-only
	if _, err := f.drv.Write(ctx, 99, 1); err == nil {
		t.Fatal("write to index 99 accepted")
	}

	// A device exception fails the write with context.
	f.sim.SetException(1, simulator.ExceptionIllegalDataValue)
	_, err := f.drv.Write(ctx, 1, 1)
	if err == nil {
		t.Fatal("write succeeded against an exception")
	}
	t.Logf("exception: %v", err)
}

func TestInit(t *testing.T) {
	f := func(ch config.Channel, wantErr bool) {
		t.Helper()
		_, err := drivers.New(&ch, nil)
		if (err != nil) != wantErr {
			t.Fatalf("%+v: err %v, want error %v", ch.Parameters, err, wantErr)
		}
	}
	pts := []config.Point{point(1, messages.Measurement, 1, 3, 0, config.Uint16)}
	f(config.Channel{Protocol: config.ProtocolModbusTCP, Parameters: config.Parameters{Host: "127.0.0.1", Port: 502}, Points: pts}, false)
	f(config.Channel{Protocol: config.ProtocolModbusTCP, Parameters: config.Parameters{Port: 502}, Points: pts}, true)
	f(config.Channel{Protocol: config.ProtocolModbusRTU, Parameters: config.Parameters{Device: "/dev/ttyUSB0"}, Points: pts}, false)
	f(config.Channel{Protocol: config.ProtocolModbusRTU, Parameters: config.Parameters{Device: "/dev/ttyUSB0", Parity: "X"}, Points: pts}, true)
	f(config.Channel{Protocol: config.ProtocolModbusRTU, Parameters: config.Parameters{Device: "/dev/ttyUSB0"},
		Points: []config.Point{point(1, messages.Measurement, 0, 3, 0, config.Uint16)}}, true)
	f(config.Channel{Protocol: config.ProtocolModbusTCP, Parameters: config.Parameters{Host: "h"},
		Points: []config.Point{point(1, messages.Measurement, 1, 9, 0, config.Uint16)}}, true)
	gap := -1
	f(config.Channel{Protocol: config.ProtocolModbusTCP, Parameters: config.Parameters{Host: "h", MaxGap: &gap}, Points: pts}, true)
}

func TestConnectRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr)
	l.Close()
	ch := &config.Channel{ID: 7, Protocol: config.ProtocolModbusTCP,
		Parameters: config.Parameters{Host: "127.0.0.1", Port: addr.Port, Timeout: 200 * time.Millisecond},
		Points:     []config.Point{point(1, messages.Measurement, 1, 3, 0, config.Uint16)}}
	d, err := drivers.New(ch, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = d.(drivers.Connector).Connect(context.Background())
	if err == nil {
		t.Fatal("connect to a closed port succeeded")
	}
	t.Logf("%v", err)
}

func TestClassify(t *testing.T) {
	f := func(err error, want string) {
		t.Helper()
		if got := modbus.ClassifyForTest(err); got != want {
			t.Fatalf("%v: %s, want %s", err, got, want)
		}
	}
	f(&gbmodbus.ModbusError{FunctionCode: 0x83, ExceptionCode: 2}, "exception")
	f(fmt.Errorf("wrapped: %w", &gbmodbus.ModbusError{ExceptionCode: 11}), "slave gone")
	f(&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, "timeout")
	f(&net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded}, "connection")
	f(serial.ErrTimeout, "timeout")
	f(io.EOF, "connection")
	f(&net.OpError{Op: "read", Err: &os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}}, "connection")
	f(&net.OpError{Op: "write", Err: &os.SyscallError{Syscall: "write", Err: syscall.EPIPE}}, "connection")
	f(errors.New("modbus: response transaction id '3' does not match request '4'"), "garbled")
	f(&os.PathError{Op: "open", Path: "/dev/ttyUSB0", Err: syscall.ENOENT}, "connection")
}

// TestGuardStopsRequests: a guard that turns false in the middle of a poll
// (a cluster node whose lease lapsed between two requests) stops the rest
// of the poll and any write before it reaches the device.
func TestGuardStopsRequests(t *testing.T) {
	points := []config.Point{
		point(1, messages.Measurement, 1, 3, 0, config.Uint16),
		point(2, messages.Measurement, 1, 4, 0, config.Uint16), // a second request (other function)
		point(3, messages.Measurement, 2, 3, 0, config.Uint16), // a third (other slave)
		point(4, messages.Adjustment, 1, 6, 20, config.Uint16),
	}
	f := newFixture(t, points, time.Second, simulator.WithRequestLog())
	if n := len(f.drv.Plan().Requests); n < 3 {
		t.Fatalf("plan has %d requests, want at least 3", n)
	}
	allowed := 1 // the guard lets the first request through, then says no
	guard := func() bool { allowed--; return allowed >= 0 }
	ctx := drivers.WithGuard(context.Background(), guard)
	got, err := f.drv.Read(ctx, nil)
	if !errors.Is(err, drivers.ErrNotOwner) || len(got) != 0 {
		t.Fatalf("read with the guard turning false: %d samples, err %v; want none and ErrNotOwner", len(got), err)
	}
	if n := len(f.sim.RequestLog()); n != 1 {
		t.Fatalf("the device got %d requests, want only the one sent before the guard turned false", n)
	}
	if _, err := f.drv.Write(ctx, 3, 5); !errors.Is(err, drivers.ErrNotOwner) {
		t.Fatalf("write with the guard false: %v, want ErrNotOwner", err)
	}
	for _, q := range f.sim.RequestLog() {
		if q.Write {
			t.Fatal("a write reached the device after the guard turned false")
		}
	}
	// The connection is still good: an unguarded read works.
	f.read(t)
}
