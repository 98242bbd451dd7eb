package modbus

import (
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/voltage-ems/voltage/config"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func codec(t testing.TB, p config.Point) Codec {
	t.Helper()
	if p.FunctionCode == 0 {
		p.FunctionCode = 3
	}
	c, err := NewCodec(&p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDecodeKnownVectors checks every data type in every byte order
// against hand-written wire bytes, and that encoding gives the bytes back.
func TestDecodeKnownVectors(t *testing.T) {
	f := func(dt config.DataType, order config.ByteOrder, wire string, want float64) {
		t.Helper()
		c := codec(t, config.Point{DataType: dt, ByteOrder: order, BitPosition: -1})
		b := mustHex(t, wire)
		got, err := c.Decode(b)
		if err != nil {
			t.Fatalf("%s %s: %v", dt, order, err)
		}
		if got != want {
			t.Fatalf("%s %s decode %s: got %v, want %v", dt, order, wire, got, want)
		}
		enc, err := c.Encode(nil, want)
		if err != nil {
			t.Fatalf("%s %s encode %v: %v", dt, order, want, err)
		}
		if hex.EncodeToString(enc) != hex.EncodeToString(b) {
			t.Fatalf("%s %s encode %v: got % x, want % x", dt, order, want, enc, b)
		}
	}
	// 16-bit types ignore the byte order (Modbus registers are big-endian).
	for _, o := range []config.ByteOrder{config.ABCD, config.DCBA, config.BADC, config.CDAB, ""} {
		f(config.Uint16, o, "fffe", 65534)
		f(config.Int16, o, "fffe", -2)
		f(config.Int16, o, "8000", -32768)
		f(config.Uint16, o, "0102", 258)
	}
	// float32 230.5 = 0x43668000
	f(config.Float32, config.ABCD, "43 66 80 00", 230.5)
	f(config.Float32, config.DCBA, "00 80 66 43", 230.5)
	f(config.Float32, config.BADC, "66 43 00 80", 230.5)
	f(config.Float32, config.CDAB, "80 00 43 66", 230.5)
	f(config.Float32, config.ABCD, "c0 20 00 00", -2.5)
	// uint32 0x01020304
	f(config.Uint32, config.ABCD, "01 02 03 04", 0x01020304)
	f(config.Uint32, config.DCBA, "04 03 02 01", 0x01020304)
	f(config.Uint32, config.BADC, "02 01 04 03", 0x01020304)
	f(config.Uint32, config.CDAB, "03 04 01 02", 0x01020304)
	f(config.Uint32, config.ABCD, "ff ff ff ff", math.MaxUint32)
	// int32 -2 = 0xfffffffe
	f(config.Int32, config.ABCD, "ff ff ff fe", -2)
	f(config.Int32, config.DCBA, "fe ff ff ff", -2)
	f(config.Int32, config.BADC, "ff ff fe ff", -2)
	f(config.Int32, config.CDAB, "ff fe ff ff", -2)
	f(config.Int32, config.CDAB, "00 00 80 00", math.MinInt32)
	// uint64 0x000a0b0c0d0e0f10 (below 2^53, so exact in a float64)
	f(config.Uint64, config.ABCD, "00 0a 0b 0c 0d 0e 0f 10", 0x000a0b0c0d0e0f10)
	f(config.Uint64, config.DCBA, "10 0f 0e 0d 0c 0b 0a 00", 0x000a0b0c0d0e0f10)
	f(config.Uint64, config.BADC, "0a 00 0c 0b 0e 0d 10 0f", 0x000a0b0c0d0e0f10)
	f(config.Uint64, config.CDAB, "0f 10 0d 0e 0b 0c 00 0a", 0x000a0b0c0d0e0f10)
	f(config.Uint64, config.ABCD, "ff ff ff ff ff ff f8 00", 0xfffffffffffff800)
	// int64 -3 = 0xfffffffffffffffd
	f(config.Int64, config.ABCD, "ff ff ff ff ff ff ff fd", -3)
	f(config.Int64, config.DCBA, "fd ff ff ff ff ff ff ff", -3)
	f(config.Int64, config.BADC, "ff ff ff ff ff ff fd ff", -3)
	f(config.Int64, config.CDAB, "ff fd ff ff ff ff ff ff", -3)
	// float64 230.5 = 0x406cd00000000000
	f(config.Float64, config.ABCD, "40 6c d0 00 00 00 00 00", 230.5)
	f(config.Float64, config.DCBA, "00 00 00 00 00 d0 6c 40", 230.5)
	f(config.Float64, config.BADC, "6c 40 00 d0 00 00 00 00", 230.5)
	f(config.Float64, config.CDAB, "00 00 00 00 d0 00 40 6c", 230.5)
}

func TestDecodeScaleOffsetBits(t *testing.T) {
	f := func(p config.Point, wire string, want float64) {
		t.Helper()
		c := codec(t, p)
		got, err := c.Decode(mustHex(t, wire))
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(got-want) > 1e-9 {
			t.Fatalf("%+v decode %s: got %v, want %v", p, wire, got, want)
		}
	}
	f(config.Point{DataType: config.Uint16, Scale: 0.1, BitPosition: -1}, "0904", 230.8)
	f(config.Point{DataType: config.Int16, Scale: 0.01, Offset: -40, BitPosition: -1}, "0fa0", 0)
	f(config.Point{DataType: config.Float32, Scale: 2, Offset: 1, BitPosition: -1}, "43668000", 462)
	f(config.Point{DataType: config.Uint16, BitPosition: -1}, "0000", 0) // zero scale means 1
	// bool on a register: bit N, LSB = 0
	f(config.Point{DataType: config.Bool, BitPosition: 0}, "0001", 1)
	f(config.Point{DataType: config.Bool, BitPosition: 1}, "0001", 0)
	f(config.Point{DataType: config.Bool, BitPosition: 15}, "8000", 1)
	f(config.Point{DataType: config.Bool, BitPosition: 8}, "0100", 1)
	f(config.Point{DataType: config.Bool, BitPosition: 8, Reverse: true}, "0100", 0)
	// bool on a whole register: non-zero is 1
	f(config.Point{DataType: config.Bool, BitPosition: -1}, "0200", 1)
	f(config.Point{DataType: config.Bool, BitPosition: -1, Reverse: true}, "0000", 1)
	// bool scale and offset are ignored
	f(config.Point{DataType: config.Bool, BitPosition: 3, Scale: 10, Offset: 5}, "0008", 1)
}

func TestDecodeCoilBits(t *testing.T) {
	c := codec(t, config.Point{FunctionCode: 1, BitPosition: -1})
	rev := codec(t, config.Point{FunctionCode: 2, DataType: config.Bool, Reverse: true, BitPosition: -1})
	bits := []byte{0b1000_0101, 0b0000_0010}
	for off, want := range []float64{1, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0} {
		got, err := c.DecodeBit(bits, off)
		if err != nil || got != want {
			t.Fatalf("bit %d: got %v, %v; want %v", off, got, err, want)
		}
		got, _ = rev.DecodeBit(bits, off)
		if got != 1-want {
			t.Fatalf("reversed bit %d: got %v", off, got)
		}
	}
	if _, err := c.DecodeBit(bits, 16); !errors.Is(err, ErrShortData) {
		t.Fatalf("bit past the data: %v", err)
	}
}

func TestDecodeShort(t *testing.T) {
	for _, dt := range []config.DataType{config.Uint16, config.Float32, config.Float64} {
		c := codec(t, config.Point{DataType: dt, BitPosition: -1})
		if _, err := c.Decode(make([]byte, 2*c.Registers()-1)); !errors.Is(err, ErrShortData) {
			t.Fatalf("%s: %v", dt, err)
		}
	}
}

func TestEncodeRoundingAndRange(t *testing.T) {
	ok := func(p config.Point, v float64, wire string) {
		t.Helper()
		p.BitPosition = -1
		c := codec(t, p)
		b, err := c.Encode(nil, v)
		if err != nil {
			t.Fatalf("%+v encode %v: %v", p, v, err)
		}
		if got := hex.EncodeToString(b); got != strings.ReplaceAll(wire, " ", "") {
			t.Fatalf("%+v encode %v: got %s, want %s", p, v, got, wire)
		}
	}
	bad := func(p config.Point, v float64) {
		t.Helper()
		p.BitPosition = -1
		c := codec(t, p)
		if b, err := c.Encode(nil, v); !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("%+v encode %v: got % x, %v; want ErrOutOfRange", p, v, b, err)
		}
	}
	ok(config.Point{DataType: config.Uint16, Scale: 0.1}, 12.3, "007b") // 123, not 122
	ok(config.Point{DataType: config.Uint16, Scale: 0.1}, 12.34, "007b")
	ok(config.Point{DataType: config.Uint16, Scale: 0.1}, 12.36, "007c")
	ok(config.Point{DataType: config.Uint16, Scale: 0.01}, 0.07, "0007")             // 7.000000000000001
	ok(config.Point{DataType: config.Int16, Scale: 0.1, Offset: -10}, -13.2, "ffe0") // raw -32
	ok(config.Point{DataType: config.Uint16}, 65535, "ffff")
	ok(config.Point{DataType: config.Int16}, -32768, "8000")
	ok(config.Point{DataType: config.Uint32, ByteOrder: config.CDAB}, 65536, "0000 0001")
	ok(config.Point{DataType: config.Float32, ByteOrder: config.ABCD}, 230.5, "43668000")
	ok(config.Point{DataType: config.Bool}, 1, "0001")
	ok(config.Point{DataType: config.Bool, Reverse: true}, 1, "0000")
	bad(config.Point{DataType: config.Uint16}, 65536)
	bad(config.Point{DataType: config.Uint16}, -1)
	bad(config.Point{DataType: config.Uint16, Scale: 0.1}, 6553.6)
	bad(config.Point{DataType: config.Int16}, 32768)
	bad(config.Point{DataType: config.Int16}, -32769)
	bad(config.Point{DataType: config.Uint32}, 4294967296)
	bad(config.Point{DataType: config.Int32}, 2147483648)
	bad(config.Point{DataType: config.Uint64}, 1<<65)
	bad(config.Point{DataType: config.Uint64}, -1)
	bad(config.Point{DataType: config.Int64}, 1<<64)
	bad(config.Point{DataType: config.Int64}, -1<<64)
	// 2^64 and 2^63 are the float64s nearest the maxima: they saturate.
	ok(config.Point{DataType: config.Uint64}, 1<<64, "ffffffffffffffff")
	ok(config.Point{DataType: config.Int64}, 1<<63, "7fffffffffffffff")
	ok(config.Point{DataType: config.Int64, ByteOrder: config.DCBA}, -1<<63, "0000000000000080")
	bad(config.Point{DataType: config.Float32}, 1e39)
	bad(config.Point{DataType: config.Float64}, math.Inf(1))
	bad(config.Point{DataType: config.Float32}, math.NaN())
	bad(config.Point{DataType: config.Bool}, 2)
	bad(config.Point{DataType: config.Bool}, 0.5)
}

func TestSetBit(t *testing.T) {
	c := codec(t, config.Point{DataType: config.Bool, BitPosition: 4})
	if r, err := c.SetBit(0x0101, 1); err != nil || r != 0x0111 {
		t.Fatalf("set: %#x %v", r, err)
	}
	if r, err := c.SetBit(0xffff, 0); err != nil || r != 0xffef {
		t.Fatalf("clear: %#x %v", r, err)
	}
	if _, err := c.SetBit(0, 2); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("2 on a bit: %v", err)
	}
	rev := codec(t, config.Point{DataType: config.Bool, BitPosition: 0, Reverse: true})
	if r, _ := rev.SetBit(0, 0); r != 1 {
		t.Fatalf("reverse: %#x", r)
	}
}

// TestRoundTrip encodes and decodes values of every type in every order.
func TestRoundTrip(t *testing.T) {
	values := map[config.DataType][]float64{
		config.Uint16:  {0, 1, 12345, 65535},
		config.Int16:   {-32768, -1, 0, 32767},
		config.Uint32:  {0, 1, 4294967295, 123456789},
		config.Int32:   {-2147483648, -1, 2147483647},
		config.Float32: {0, -1.5, 230.5, 0.15625, math.MaxFloat32, math.SmallestNonzeroFloat32},
		config.Uint64:  {0, 1 << 53, 1 << 63},
		config.Int64:   {-1 << 63, -1, 1 << 53},
		config.Float64: {0, math.Pi, -1e300, math.SmallestNonzeroFloat64},
	}
	for dt, vs := range values {
		for _, o := range []config.ByteOrder{config.ABCD, config.DCBA, config.BADC, config.CDAB} {
			for _, scale := range []float64{1, 0.5} {
				c := codec(t, config.Point{DataType: dt, ByteOrder: o, Scale: scale, BitPosition: -1})
				for _, v := range vs {
					v := v * scale
					b, err := c.Encode(nil, v)
					if err != nil {
						t.Fatalf("%s %s encode %v: %v", dt, o, v, err)
					}
					if len(b) != 2*dt.Registers() {
						t.Fatalf("%s: %d bytes", dt, len(b))
					}
					got, err := c.Decode(b)
					if err != nil || got != v {
						t.Fatalf("%s %s scale %v: %v -> % x -> %v (%v)", dt, o, scale, v, b, got, err)
					}
				}
			}
		}
	}
}

func TestNewCodecRejects(t *testing.T) {
	f := func(p config.Point, want string) {
		t.Helper()
		_, err := NewCodec(&p)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%+v: got %v, want %q", p, err, want)
		}
	}
	f(config.Point{ID: 1, FunctionCode: 7}, "unsupported function code 7")
	f(config.Point{ID: 2, FunctionCode: 3, DataType: "int8"}, `unknown data type "int8"`)
	f(config.Point{ID: 3, FunctionCode: 3, DataType: config.Float32, ByteOrder: "ABDC"}, `unknown byte order "ABDC"`)
	f(config.Point{ID: 4, FunctionCode: 1, DataType: config.Uint16}, "must be bool")
	f(config.Point{ID: 5, FunctionCode: 3, DataType: config.Bool, BitPosition: 16}, "outside 0..15")
	f(config.Point{ID: 6, FunctionCode: 3, DataType: config.Uint16, BitPosition: 3}, "needs data type bool")
	f(config.Point{ID: 7, FunctionCode: 4, DataType: config.Int32, Reverse: true, BitPosition: -1}, "reverse needs")
	f(config.Point{ID: 8, FunctionCode: 3, Scale: math.NaN()}, "finite")
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte{0x43, 0x66, 0x80, 0x00}, uint8(5), uint8(0), int8(-1), 0)
	f.Add([]byte{0xff}, uint8(0), uint8(3), int8(15), 3)
	f.Add([]byte{}, uint8(8), uint8(2), int8(0), -1)
	types := []config.DataType{config.Bool, config.Uint16, config.Int16, config.Uint32, config.Int32, config.Float32, config.Uint64, config.Int64, config.Float64}
	orders := []config.ByteOrder{config.ABCD, config.DCBA, config.BADC, config.CDAB}
	fcs := []uint8{1, 2, 3, 4, 5, 6, 15, 16}
	f.Fuzz(func(t *testing.T, data []byte, ti, oi uint8, bit int8, off int) {
		p := config.Point{
			DataType:     types[int(ti)%len(types)],
			ByteOrder:    orders[int(oi)%len(orders)],
			FunctionCode: fcs[int(ti/16)%len(fcs)],
			BitPosition:  int(bit),
			Scale:        1,
		}
		c, err := NewCodec(&p)
		if err != nil {
			return
		}
		v, err := c.Decode(data)
		if err == nil && c.Registers()*2 > len(data) && !c.IsBit() {
			t.Fatalf("decoded %v from %d bytes, need %d", v, len(data), 2*c.Registers())
		}
		c.DecodeBit(data, off)
		if err == nil && !c.IsBit() && !math.IsNaN(v) && !math.IsInf(v, 0) {
			// whatever decodes must encode to the same value (NaN aside)
			if c.IsRegisterBit() {
				return
			}
			if _, err := c.Encode(nil, v); err != nil {
				t.Fatalf("%+v: decoded %v does not encode: %v", p, v, err)
			}
		}
	})
}

func TestDecodeDoesNotAllocate(t *testing.T) {
	c := codec(t, config.Point{DataType: config.Float64, ByteOrder: config.CDAB, BitPosition: -1})
	bitc := codec(t, config.Point{FunctionCode: 1, BitPosition: -1})
	data := make([]byte, 8)
	if n := testing.AllocsPerRun(100, func() {
		c.Decode(data)
		bitc.DecodeBit(data, 3)
		c.Decode(data[:1]) // the error path too
	}); n != 0 {
		t.Fatalf("%v allocs per decode", n)
	}
}
