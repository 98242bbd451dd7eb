package modbus

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

func pt(slave, fc uint8, addr uint16, dt config.DataType) config.Point {
	return config.Point{SlaveID: slave, FunctionCode: fc, Address: addr, DataType: dt, BitPosition: -1, Scale: 1}
}

// shape is a compact form of a request for comparisons.
type shape struct {
	Slave, FC uint8
	Addr, Qty uint16
	NumPoints int
}

func shapes(p Plan) []shape {
	var out []shape
	for _, r := range p.Requests {
		out = append(out, shape{r.Slave, r.Function, r.Address, r.Quantity, len(r.Points)})
	}
	return out
}

func TestNewPlan(t *testing.T) {
	f := func(name string, points []config.Point, maxGap int, want []shape) {
		t.Helper()
		plan, err := NewPlan(points, maxGap)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := shapes(plan); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s:\n got %v\nwant %v", name, got, want)
		}
		// Every point is placed inside its request.
		for i, pl := range plan.Points {
			r := plan.Requests[pl.Request]
			if int(r.Address)+pl.Offset != int(points[i].Address) {
				t.Fatalf("%s: point %d placed at %d+%d, address %d", name, i, r.Address, pl.Offset, points[i].Address)
			}
		}
	}
	f("empty", nil, -1, nil)
	f("contiguous", []config.Point{pt(1, 3, 0, config.Float32), pt(1, 3, 2, config.Float32), pt(1, 3, 4, config.Uint16)}, -1,
		[]shape{{1, 3, 0, 5, 3}})
	f("unsorted input", []config.Point{pt(1, 3, 4, config.Uint16), pt(1, 3, 0, config.Float32), pt(1, 3, 2, config.Float32)}, -1,
		[]shape{{1, 3, 0, 5, 3}})
	f("gap of 16 is bridged", []config.Point{pt(1, 3, 0, config.Uint16), pt(1, 3, 17, config.Uint16)}, -1,
		[]shape{{1, 3, 0, 18, 2}})
	f("gap of 17 splits", []config.Point{pt(1, 3, 0, config.Uint16), pt(1, 3, 18, config.Uint16)}, -1,
		[]shape{{1, 3, 0, 1, 1}, {1, 3, 18, 1, 1}})
	f("max gap 0 merges only adjacent", []config.Point{pt(1, 3, 0, config.Uint16), pt(1, 3, 1, config.Uint16), pt(1, 3, 3, config.Uint16)}, 0,
		[]shape{{1, 3, 0, 2, 2}, {1, 3, 3, 1, 1}})
	f("max gap 2", []config.Point{pt(1, 3, 0, config.Uint16), pt(1, 3, 3, config.Uint16), pt(1, 3, 7, config.Uint16)}, 2,
		[]shape{{1, 3, 0, 4, 2}, {1, 3, 7, 1, 1}})
	f("slaves and functions apart", []config.Point{pt(2, 3, 0, config.Uint16), pt(1, 4, 0, config.Uint16), pt(1, 3, 0, config.Uint16)}, -1,
		[]shape{{1, 3, 0, 1, 1}, {1, 4, 0, 1, 1}, {2, 3, 0, 1, 1}})
	f("writes are read back", []config.Point{pt(1, 5, 0, config.Bool), pt(1, 15, 1, config.Bool), pt(1, 6, 0, config.Uint16), pt(1, 16, 1, config.Float32)}, -1,
		[]shape{{1, 1, 0, 2, 2}, {1, 3, 0, 3, 2}})
	f("overlapping bits share a register", []config.Point{
		{SlaveID: 1, FunctionCode: 3, Address: 9, DataType: config.Bool, BitPosition: 0},
		{SlaveID: 1, FunctionCode: 3, Address: 9, DataType: config.Bool, BitPosition: 7},
		{SlaveID: 1, FunctionCode: 3, Address: 9, DataType: config.Uint16, BitPosition: -1},
	}, -1, []shape{{1, 3, 9, 1, 3}})

	regs := func(n int, dt config.DataType) []config.Point {
		var ps []config.Point
		for i := 0; i < n; i++ {
			ps = append(ps, pt(1, 3, uint16(i*dt.Registers()), dt))
		}
		return ps
	}
	f("125 registers in one", regs(125, config.Uint16), -1, []shape{{1, 3, 0, 125, 125}})
	f("126 registers in two", regs(126, config.Uint16), -1, []shape{{1, 3, 0, 125, 125}, {1, 3, 125, 1, 1}})
	f("a value never straddles the limit", regs(63, config.Float32), -1, []shape{{1, 3, 0, 124, 62}, {1, 3, 124, 2, 1}})
	f("float64 limit", regs(32, config.Float64), -1, []shape{{1, 3, 0, 124, 31}, {1, 3, 124, 4, 1}})

	bits := func(addrs ...int) []config.Point {
		var ps []config.Point
		for _, a := range addrs {
			ps = append(ps, pt(1, 1, uint16(a), config.Bool))
		}
		return ps
	}
	many := make([]int, 2001)
	for i := range many {
		many[i] = i
	}
	f("2000 bits in one", bits(many[:2000]...), -1, []shape{{1, 1, 0, 2000, 2000}})
	f("2001 bits in two", bits(many...), -1, []shape{{1, 1, 0, 2000, 2000}, {1, 1, 2000, 1, 1}})
	f("bit gap of 256 is bridged", bits(0, 257), -1, []shape{{1, 1, 0, 258, 2}})
	f("bit gap of 257 splits", bits(0, 258), -1, []shape{{1, 1, 0, 1, 1}, {1, 1, 258, 1, 1}})
	f("top of the address space", []config.Point{pt(1, 3, 65532, config.Float64)}, -1, []shape{{1, 3, 65532, 4, 1}})
}

func TestNewPlanErrors(t *testing.T) {
	if _, err := NewPlan([]config.Point{pt(1, 7, 0, config.Uint16)}, -1); err == nil {
		t.Fatal("function code 7 accepted")
	}
	if _, err := NewPlan([]config.Point{pt(1, 3, 65535, config.Float32)}, -1); err == nil {
		t.Fatal("float32 at 65535 accepted")
	}
}

// Table1000 is a 1000-point table of a PCS (slave 1) and a BMS (slave 2).
// With the default max gap it needs 13 requests per poll:
//
//	slave 1 fc 3: 300 float32 at 0..599       -> 5 (62 values = 124 registers each, 52 in the last)
//	slave 1 fc 3: 100 bits of 1000..1006       -> 1 (400 registers away from the floats)
//	slave 1 fc 4: 200 uint16 at 0..199         -> 2 (125 + 75)
//	slave 1 fc 2: 100 discrete inputs 0..99    -> 1
//	slave 2 fc 1: 50 coils 0..49 (written with 5)   -> 1
//	slave 2 fc 3: 25 uint16 at 500..524 (6), 25 float32 at 530..579 (16) -> 1 (gap of 5)
//	slave 2 fc 4: 100 int16 at 0..99 and 100 at 120..219 -> 2 (gap of 20 > 16)
func Table1000() []config.Point {
	var ps []config.Point
	add := func(typ messages.PointType, slave, fc uint8, addr uint16, dt config.DataType, bit int, scale float64) {
		ps = append(ps, config.Point{
			ID: uint32(len(ps) + 1), Type: typ, Name: fmt.Sprintf("p%d", len(ps)+1),
			SlaveID: slave, FunctionCode: fc, Address: addr, DataType: dt, BitPosition: bit, Scale: scale,
		})
	}
	for i := 0; i < 300; i++ {
		order := []config.ByteOrder{config.ABCD, config.CDAB, config.BADC, config.DCBA}[i%4]
		add(messages.Measurement, 1, 3, uint16(2*i), config.Float32, -1, 1)
		ps[len(ps)-1].ByteOrder = order
	}
	for i := 0; i < 100; i++ {
		add(messages.Signal, 1, 3, uint16(1000+i/16), config.Bool, i%16, 1)
	}
	for i := 0; i < 200; i++ {
		add(messages.Measurement, 1, 4, uint16(i), config.Uint16, -1, 0.1)
	}
	for i := 0; i < 100; i++ {
		add(messages.Signal, 1, 2, uint16(i), config.Bool, -1, 1)
	}
	for i := 0; i < 50; i++ {
		add(messages.Control, 2, 5, uint16(i), config.Bool, -1, 1)
	}
	for i := 0; i < 25; i++ {
		add(messages.Adjustment, 2, 6, uint16(500+i), config.Uint16, -1, 0.1)
	}
	for i := 0; i < 25; i++ {
		add(messages.Adjustment, 2, 16, uint16(530+2*i), config.Float32, -1, 1)
	}
	for i := 0; i < 200; i++ {
		addr := uint16(i)
		if i >= 100 {
			addr = uint16(20 + i)
		}
		add(messages.Measurement, 2, 4, addr, config.Int16, -1, 0.01)
	}
	return ps
}

func TestPlan1000(t *testing.T) {
	points := Table1000()
	if len(points) != 1000 {
		t.Fatalf("%d points", len(points))
	}
	plan, err := NewPlan(points, -1)
	if err != nil {
		t.Fatal(err)
	}
	want := []shape{
		{1, 2, 0, 100, 100},
		{1, 3, 0, 124, 62}, {1, 3, 124, 124, 62}, {1, 3, 248, 124, 62}, {1, 3, 372, 124, 62}, {1, 3, 496, 104, 52},
		{1, 3, 1000, 7, 100},
		{1, 4, 0, 125, 125}, {1, 4, 125, 75, 75},
		{2, 1, 0, 50, 50},
		{2, 3, 500, 80, 50},
		{2, 4, 0, 100, 100}, {2, 4, 120, 100, 100},
	}
	if got := shapes(plan); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	if len(plan.Requests) != 13 {
		t.Fatalf("%d requests, want 13", len(plan.Requests))
	}
}
