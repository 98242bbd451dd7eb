package simulator

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"testing"
	"time"

	gb "github.com/goburrow/modbus"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

func testPoints() []config.Point {
	return []config.Point{
		{ID: 1, Type: messages.Measurement, SlaveID: 1, FunctionCode: 3, Address: 0, DataType: config.Float32, BitPosition: -1, Scale: 1},
		{ID: 2, Type: messages.Measurement, SlaveID: 1, FunctionCode: 4, Address: 0, DataType: config.Uint16, BitPosition: -1, Scale: 0.001},
		{ID: 3, Type: messages.Signal, SlaveID: 1, FunctionCode: 3, Address: 10, DataType: config.Bool, BitPosition: 2, Scale: 1},
		{ID: 4, Type: messages.Signal, SlaveID: 1, FunctionCode: 3, Address: 10, DataType: config.Bool, BitPosition: 9, Scale: 1},
		{ID: 5, Type: messages.Control, SlaveID: 2, FunctionCode: 5, Address: 3, DataType: config.Bool, BitPosition: -1, Scale: 1},
		{ID: 6, Type: messages.Adjustment, SlaveID: 2, FunctionCode: 16, Address: 20, DataType: config.Int32, BitPosition: -1, Scale: 0.1},
	}
}

func TestCRC(t *testing.T) {
	// Read 10 holding registers of slave 1 from 0: 01 03 00 00 00 0a c5 cd.
	if got := crc16([]byte{1, 3, 0, 0, 0, 10}); got != 0xCDC5 {
		t.Fatalf("crc %#04x", got)
	}
}

func TestModel(t *testing.T) {
	s, err := New(testPoints())
	if err != nil {
		t.Fatal(err)
	}
	// The uint16 with scale 0.001 cannot hold 100..650: centred in its range.
	v, _ := s.Value(1)
	if v < 20 || v > 46 {
		t.Fatalf("scaled uint16 at %v", v)
	}
	// Freeze holds values.
	s.Freeze(true)
	a, _ := s.Value(0)
	time.Sleep(20 * time.Millisecond)
	if b, _ := s.Value(0); a != b {
		t.Fatalf("frozen value moved: %v -> %v", a, b)
	}
	s.Freeze(false)
	// SetValue pins a point.
	if err := s.SetValue(0, 230.5); err != nil {
		t.Fatal(err)
	}
	if r := s.Registers(1, 3, 0, 2); r[0] != 0x4366 || r[1] != 0x8000 {
		t.Fatalf("registers % x", r)
	}
	time.Sleep(10 * time.Millisecond)
	if v, _ := s.Value(0); v != 230.5 {
		t.Fatalf("pinned value %v", v)
	}
	// Two bits share register 10.
	s.SetValue(2, 1)
	s.SetValue(3, 1)
	if r := s.Registers(1, 3, 10, 1); r[0] != 1<<2|1<<9 {
		t.Fatalf("register 10 = %#x", r[0])
	}
	// Adjustment starts at a base value, control at 0.
	if v, _ := s.Value(5); v < 100 || v > 650 {
		t.Fatalf("setpoint starts at %v", v)
	}
	if v, _ := s.Value(4); v != 0 {
		t.Fatalf("control starts at %v", v)
	}
	if err := s.SetValue(5, 1e12); err == nil {
		t.Fatal("out-of-range SetValue accepted")
	}
	if _, err := New([]config.Point{{ID: 1, FunctionCode: 9}}); err == nil {
		t.Fatal("bad point accepted")
	}
}

func serveTCP(t *testing.T, s *Simulator) (*gb.TCPClientHandler, gb.Client) {
	t.Helper()
	addr, err := s.Serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	h := gb.NewTCPClientHandler(addr.String())
	h.Timeout = 200 * time.Millisecond
	t.Cleanup(func() { h.Close() })
	return h, gb.NewClient(h)
}

func TestTCPServing(t *testing.T) {
	s, err := New(testPoints(), WithSilence(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	h, c := serveTCP(t, s)
	h.SlaveId = 2
	if _, err := c.WriteSingleCoil(3, 0xFF00); err != nil {
		t.Fatal(err)
	}
	if !s.Coil(2, 3) {
		t.Fatal("coil not stored")
	}
	if _, err := c.WriteMultipleRegisters(20, 2, []byte{0, 0, 0x01, 0x00}); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Value(5); v != 25.6 {
		t.Fatalf("written setpoint %v", v)
	}
	// Unknown slave: gateway exception 0x0B.
	h.SlaveId = 9
	_, err = c.ReadHoldingRegisters(0, 1)
	var me *gb.ModbusError
	if !errors.As(err, &me) || me.ExceptionCode != ExceptionGatewayTarget {
		t.Fatalf("unknown slave: %v", err)
	}
	// Exception.
	s.SetException(2, ExceptionDeviceBusy)
	h.SlaveId = 2
	if _, err = c.ReadCoils(0, 8); !errors.As(err, &me) || me.ExceptionCode != ExceptionDeviceBusy {
		t.Fatalf("busy slave: %v", err)
	}
	s.SetException(2, 0)
	// Down: no answer, the client times out.
	s.SetSlaveDown(2, true)
	start := time.Now()
	var ne net.Error
	if _, err = c.ReadCoils(0, 8); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("down slave: %v", err)
	}
	if time.Since(start) < 150*time.Millisecond {
		t.Fatal("down slave answered early")
	}
	h.Close()
	s.SetSlaveDown(2, false)
	if _, err := c.ReadCoils(0, 8); err != nil {
		t.Fatal(err)
	}
	n := s.Requests()
	if n != 6 {
		t.Fatalf("%d requests counted, want 6", n)
	}
}

func TestCloseAndRestart(t *testing.T) {
	s, err := New(testPoints())
	if err != nil {
		t.Fatal(err)
	}
	addr, err := s.Serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h := gb.NewTCPClientHandler(addr.String())
	h.Timeout = time.Second
	h.SlaveId = 1
	c := gb.NewClient(h)
	defer h.Close()
	if _, err := c.ReadHoldingRegisters(0, 2); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := c.ReadHoldingRegisters(0, 2); err == nil {
		t.Fatal("read after close succeeded")
	}
	h.Close()
	if _, err := s.Serve(addr.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadHoldingRegisters(0, 2); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}

func frame(b ...byte) []byte {
	c := crc16(b)
	return append(b, byte(c), byte(c>>8))
}

func TestParseRTURequest(t *testing.T) {
	ok := func(in []byte, fc uint8, addr, qty uint16, n int) *request {
		t.Helper()
		r, used, err := parseRTURequest(in)
		if err != nil || r.fc != fc || r.addr != addr || r.quantity != qty || used != n {
			t.Fatalf("% x: %+v %d %v", in, r, used, err)
		}
		return r
	}
	ok(frame(1, 3, 0, 0, 0, 10), 3, 0, 10, 8)
	ok(append(frame(1, 3, 0, 0, 0, 10), 1, 2), 3, 0, 10, 8)
	r := ok(frame(1, 5, 0, 7, 0xFF, 0), 5, 7, 1, 8)
	if !r.bits[0] {
		t.Fatal("coil on parsed off")
	}
	r = ok(frame(1, 15, 0, 1, 0, 10, 2, 0xFF, 0x01), 15, 1, 10, 11)
	if len(r.bits) != 10 || !r.bits[8] || r.bits[9] {
		t.Fatalf("bits %v", r.bits)
	}
	r = ok(frame(2, 16, 0, 4, 0, 2, 4, 0x43, 0x66, 0x80, 0), 16, 4, 2, 13)
	if r.regs[0] != 0x4366 || r.regs[1] != 0x8000 {
		t.Fatalf("regs % x", r.regs)
	}
	bad := func(in []byte, want error) {
		t.Helper()
		if _, _, err := parseRTURequest(in); !errors.Is(err, want) {
			t.Fatalf("% x: %v, want %v", in, err, want)
		}
	}
	bad(nil, errIncompleteFrame)
	bad([]byte{1, 3, 0}, errIncompleteFrame)
	bad([]byte{1, 16, 0, 0, 0, 1}, errIncompleteFrame)
	bad(frame(1, 3, 0, 0, 0, 10)[:7], errIncompleteFrame)
	bad(append(frame(1, 3, 0, 0, 0, 10)[:7], 0), errBadFrame) // crc
	bad(frame(1, 7, 0, 0, 0, 0), errBadFrame)
	bad(frame(1, 5, 0, 0, 0x12, 0), errBadFrame)
	bad(frame(1, 16, 0, 0, 0, 2, 2, 0, 0), errBadFrame) // count mismatch
}

// pipeRW joins two pipes into one io.ReadWriteCloser.
type pipeRW struct {
	io.Reader
	io.Writer
	closers []io.Closer
}

func (p *pipeRW) Close() error {
	for _, c := range p.closers {
		c.Close()
	}
	return nil
}

func TestServeRTUResync(t *testing.T) {
	s, err := New(testPoints())
	if err != nil {
		t.Fatal(err)
	}
	s.SetValue(0, 230.5)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.ServeRTU(ctx, &pipeRW{Reader: inR, Writer: outW, closers: []io.Closer{inR, outW}})
	}()
	// Garbage, a request for a missing slave (silent), then a good request
	// split in two writes.
	req := frame(1, 3, 0, 0, 0, 2)
	go func() {
		inW.Write([]byte{0xde, 0xad, 0x01})
		inW.Write(frame(7, 3, 0, 0, 0, 2))
		inW.Write(req[:3])
		inW.Write(req[3:])
	}()
	want := frame(1, 3, 4, 0x43, 0x66, 0x80, 0)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(outR, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got % x, want % x", got, want)
	}
	// Exception answer.
	s.SetException(1, ExceptionIllegalDataAddress)
	go inW.Write(frame(1, 4, 0, 0, 0, 1))
	want = frame(1, 0x84, 2)
	got = make([]byte, len(want))
	if _, err := io.ReadFull(outR, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("exception: % x %v", got, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve rtu: %v", err)
	}
}

func FuzzParseRTURequest(f *testing.F) {
	f.Add(frame(1, 3, 0, 0, 0, 10))
	f.Add(frame(1, 15, 0, 1, 0, 10, 2, 0xFF, 0x01))
	f.Add(frame(2, 16, 0, 4, 0, 2, 4, 0x43, 0x66, 0x80, 0))
	f.Add([]byte{1, 16, 0, 0, 0, 0x7f, 0xfe})
	s, err := New(testPoints())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := parseRTURequest(b)
		if err != nil {
			return
		}
		if n < 8 || n > len(b) {
			t.Fatalf("consumed %d of %d", n, len(b))
		}
		resp := s.answerRTU(r)
		if resp != nil && crc16(resp[:len(resp)-2]) != uint16(resp[len(resp)-2])|uint16(resp[len(resp)-1])<<8 {
			t.Fatalf("response % x has a bad crc", resp)
		}
	})
}

// freezeAt freezes the simulator's clock at d after its start.
func freezeAt(s *Simulator, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.frozen, s.frozenAt = true, s.start.Add(d)
}

func TestWaveWithinMinMax(t *testing.T) {
	rng := func(p config.Point, lo, hi float64) config.Point { p.Min, p.Max = &lo, &hi; return p }
	m := func(id uint32, fc uint8, addr uint16, dt config.DataType, scale float64) config.Point {
		return config.Point{ID: id, Type: messages.Measurement, SlaveID: 1, FunctionCode: fc, Address: addr,
			DataType: dt, ByteOrder: config.ABCD, BitPosition: -1, Scale: scale}
	}
	points := []config.Point{
		rng(m(10001, 3, 0, config.Float32, 1), 220, 240),
		rng(m(10003, 3, 2, config.Float32, 1), -200, 200),
		rng(m(10005, 4, 0, config.Int16, 0.1), 25, 45),
		rng(m(10006, 4, 1, config.Uint16, 0.01), 49.9, 50.1),
		rng(m(10103, 3, 4, config.Int32, 0.01), -150, 150),
		rng(m(7, 4, 2, config.Uint16, 1), -100, 100), // half outside the type: clamped to 0
		m(10002, 3, 6, config.Float32, 1),            // no range: base 100 + 10*(id mod 50)
	}
	s, err := New(points)
	if err != nil {
		t.Fatal(err)
	}
	type span struct{ lo, hi float64 }
	seen := make([]span, len(points))
	for i := range seen {
		seen[i] = span{math.Inf(1), math.Inf(-1)}
	}
	// Every 0.7 s over two minutes: more than a period of every point.
	for d := time.Duration(0); d <= 2*time.Minute; d += 700 * time.Millisecond {
		freezeAt(s, d)
		for i := range points {
			v, err := s.Value(i)
			if err != nil {
				t.Fatal(err)
			}
			seen[i].lo, seen[i].hi = min(seen[i].lo, v), max(seen[i].hi, v)
		}
	}
	for i, p := range points[:5] {
		lo, hi := *p.Min, *p.Max
		if seen[i].lo < lo || seen[i].hi > hi {
			t.Errorf("point %d: values %v..%v outside its range %v..%v", p.ID, seen[i].lo, seen[i].hi, lo, hi)
		}
		// The wave sweeps 0.4 of the width either side of the centre.
		if w := seen[i].hi - seen[i].lo; w < 0.7*(hi-lo) {
			t.Errorf("point %d: values %v..%v barely move in %v..%v", p.ID, seen[i].lo, seen[i].hi, lo, hi)
		}
	}
	if got := seen[5]; got.lo != 0 || got.hi < 79 || got.hi > 80 {
		t.Errorf("uint16 with range -100..100: values %v..%v, want 0..80", got.lo, got.hi)
	}
	// id 10002: base 120, amplitude 12.
	if got := seen[6]; got.lo < 108 || got.hi > 132 || got.hi-got.lo < 20 {
		t.Errorf("point without a range: values %v..%v, want within 108..132", got.lo, got.hi)
	}
}
