package modbus

import (
	"testing"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
)

var sink float64

func benchDecode(b *testing.B, p config.Point, wire []byte) {
	c, err := NewCodec(&p)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		v, _ := c.Decode(wire)
		sink += v
	}
}

func BenchmarkDecodeUint16(b *testing.B) {
	benchDecode(b, config.Point{FunctionCode: 3, DataType: config.Uint16, Scale: 0.1, BitPosition: -1}, []byte{9, 4})
}

func BenchmarkDecodeFloat32CDAB(b *testing.B) {
	benchDecode(b, config.Point{FunctionCode: 3, DataType: config.Float32, ByteOrder: config.CDAB, BitPosition: -1}, []byte{0x80, 0, 0x43, 0x66})
}

func BenchmarkDecodeInt64BADC(b *testing.B) {
	benchDecode(b, config.Point{FunctionCode: 3, DataType: config.Int64, ByteOrder: config.BADC, BitPosition: -1}, []byte{1, 2, 3, 4, 5, 6, 7, 8})
}

func BenchmarkDecodeRegisterBit(b *testing.B) {
	benchDecode(b, config.Point{FunctionCode: 3, DataType: config.Bool, BitPosition: 9}, []byte{2, 0})
}

func BenchmarkDecodeCoil(b *testing.B) {
	c, _ := NewCodec(&config.Point{FunctionCode: 1, BitPosition: -1})
	bits := []byte{0x55, 0xaa}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		v, _ := c.DecodeBit(bits, i&15)
		sink += v
	}
}

// BenchmarkDecodeResponse decodes a full 125-register response of 62
// float32 points as Read does.
func BenchmarkDecodeResponse(b *testing.B) {
	points := make([]config.Point, 62)
	for i := range points {
		points[i] = config.Point{ID: uint32(i), FunctionCode: 3, Address: uint16(2 * i), DataType: config.Float32, BitPosition: -1}
	}
	drv, err := New(&config.Channel{Protocol: config.ProtocolModbusTCP, Points: points, Parameters: config.Parameters{Host: "x"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	d := drv.(*Driver)
	if err := d.Init(); err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 250)
	out := make([]drivers.Sample, len(points))
	b.ReportAllocs()
	for b.Loop() {
		d.decode(&d.plan.Requests[0], data, out)
	}
	b.ReportMetric(float64(len(points)), "points/op")
}
