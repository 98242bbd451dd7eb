package modbus

import (
	"errors"
	"fmt"
	"math"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
)

// Byte orders.
//
// A 32-bit value has big-endian bytes A B C D (A most significant). The
// order names the bytes as they appear on the wire, register by register:
//
//	ABCD  A B | C D   big-endian, the Modbus default
//	DCBA  D C | B A   little-endian
//	BADC  B A | D C   bytes swapped within each register
//	CDAB  C D | A B   registers swapped ("word swap", low word first)
//
// 64-bit values (A..H) follow the same pattern, generalised the way
// libmodbus, pymodbus and most PLC vendors do it: the order describes how
// bytes sit within a register and whether the register order is reversed.
//
//	ABCD  ABCDEFGH  big-endian
//	DCBA  HGFEDCBA  little-endian
//	BADC  BADCFEHG  bytes swapped within each register, registers big-endian
//	CDAB  GHEFCDAB  register order reversed (low word first), bytes big-endian
//
// 16-bit values (bool, uint16, int16) are always big-endian as the Modbus
// specification requires; byte_order applies to 32- and 64-bit values only.
const (
	orderABCD uint8 = iota
	orderDCBA
	orderBADC
	orderCDAB
)

// Kinds of codec.
const (
	kindValue   uint8 = iota // a whole value in 1, 2 or 4 registers
	kindRegBit               // one bit of a register (bool with bit_position)
	kindBit                  // one coil or discrete input
	kindNonZero              // bool on a whole register: non-zero is 1
)

// Type codes, so that the hot path compares bytes instead of strings.
const (
	tBool uint8 = iota
	tUint16
	tInt16
	tUint32
	tInt32
	tFloat32
	tUint64
	tInt64
	tFloat64
)

// ErrShortData is returned by the decoders when a response holds fewer
// bytes than the point needs.
var ErrShortData = errors.New("response too short for point")

// ErrOutOfRange is wrapped by the encoders when a value cannot be
// represented by the point's data type (or is not 0/1 for a bool).
// Callers can use errors.Is to report such commands as rejected.
var ErrOutOfRange = drivers.ErrOutOfRange

// Codec converts between the raw registers (or bits) of one point and its
// engineering value. It is built once per point by NewCodec; Decode does
// not allocate.
type Codec struct {
	kind    uint8
	typ     uint8
	order   uint8
	bit     uint8 // bit of the register for kindRegBit, LSB = 0
	regs    uint8 // registers of a value (kindValue, kindNonZero, kindRegBit)
	reverse bool
	scale   float64
	offset  float64
}

// NewCodec validates the encoding columns of p and returns its codec.
//
// Defaults: an empty data type is bool for coils and discrete inputs
// (function codes 1, 2, 5, 15) and uint16 for registers; an empty byte
// order is ABCD; a zero scale (as in a hand-built Point) means 1. Scale and
// offset apply to numeric types only: a bool is always 0 or 1, inverted by
// reverse. bit_position selects one bit of a register and needs data type
// bool; because a hand-built Point has BitPosition 0, a bit position of 0
// on a non-bool type is ignored, other positions are rejected. A bool on a
// register without bit position reads 1 when the register is non-zero.
func NewCodec(p *config.Point) (Codec, error) {
	c := Codec{scale: p.Scale, offset: p.Offset, reverse: p.Reverse}
	if c.scale == 0 {
		c.scale = 1
	}
	if math.IsNaN(c.scale) || math.IsInf(c.scale, 0) || math.IsNaN(c.offset) || math.IsInf(c.offset, 0) {
		return Codec{}, fmt.Errorf("point %d: scale and offset must be finite numbers", p.ID)
	}
	bitTable := false
	switch p.FunctionCode {
	case 1, 2, 5, 15:
		bitTable = true
	case 3, 4, 6, 16:
	default:
		return Codec{}, fmt.Errorf("point %d: unsupported function code %d (want 1, 2, 3, 4, 5, 6, 15 or 16)", p.ID, p.FunctionCode)
	}
	dt := p.DataType
	if dt == "" {
		dt = config.Uint16
		if bitTable {
			dt = config.Bool
		}
	}
	switch dt {
	case config.Bool:
		c.typ = tBool
	case config.Uint16:
		c.typ = tUint16
	case config.Int16:
		c.typ = tInt16
	case config.Uint32:
		c.typ = tUint32
	case config.Int32:
		c.typ = tInt32
	case config.Float32:
		c.typ = tFloat32
	case config.Uint64:
		c.typ = tUint64
	case config.Int64:
		c.typ = tInt64
	case config.Float64:
		c.typ = tFloat64
	default:
		return Codec{}, fmt.Errorf("point %d: unknown data type %q", p.ID, p.DataType)
	}
	switch p.ByteOrder {
	case "", config.ABCD:
		c.order = orderABCD
	case config.DCBA:
		c.order = orderDCBA
	case config.BADC:
		c.order = orderBADC
	case config.CDAB:
		c.order = orderCDAB
	default:
		return Codec{}, fmt.Errorf("point %d: unknown byte order %q (want ABCD, DCBA, BADC or CDAB)", p.ID, p.ByteOrder)
	}
	c.regs = uint8(dt.Registers())
	switch {
	case bitTable:
		if c.typ != tBool {
			return Codec{}, fmt.Errorf("point %d: function code %d reads bits: data type must be bool, not %s", p.ID, p.FunctionCode, dt)
		}
		if p.BitPosition > 0 {
			return Codec{}, fmt.Errorf("point %d: bit_position applies to registers, not to function code %d", p.ID, p.FunctionCode)
		}
		c.kind = kindBit
	case c.typ == tBool && p.BitPosition >= 0:
		if p.BitPosition > 15 {
			return Codec{}, fmt.Errorf("point %d: bit_position %d outside 0..15", p.ID, p.BitPosition)
		}
		c.kind = kindRegBit
		c.bit = uint8(p.BitPosition)
	case c.typ == tBool:
		c.kind = kindNonZero
	default:
		if p.BitPosition > 0 {
			return Codec{}, fmt.Errorf("point %d: bit_position needs data type bool, not %s", p.ID, dt)
		}
		if p.Reverse {
			return Codec{}, fmt.Errorf("point %d: reverse needs data type bool, not %s", p.ID, dt)
		}
		c.kind = kindValue
	}
	return c, nil
}

// IsBit reports whether the point is a coil or discrete input.
func (c *Codec) IsBit() bool { return c.kind == kindBit }

// Registers returns how many registers the point occupies (1 for bits).
func (c *Codec) Registers() int {
	if c.kind == kindBit {
		return 1
	}
	return int(c.regs)
}

// Decode converts the registers of one point (big-endian 16-bit words as
// the Modbus PDU carries them, starting at the point's address) into its
// engineering value. It does not allocate.
func (c *Codec) Decode(regs []byte) (float64, error) {
	if c.kind == kindBit {
		return c.DecodeBit(regs, 0)
	}
	n := int(c.regs) * 2
	if len(regs) < n || n == 0 {
		return 0, ErrShortData
	}
	switch c.kind {
	case kindRegBit:
		w := uint16(regs[0])<<8 | uint16(regs[1])
		return c.boolValue(w>>c.bit&1 == 1), nil
	case kindNonZero:
		return c.boolValue(regs[0]|regs[1] != 0), nil
	}
	raw := rawFromBits(c.typ, wireToBits(regs[:n], c.order))
	return raw*c.scale + c.offset, nil
}

// DecodeBit returns the bit at offset (LSB of the first byte is bit 0, as
// in a read coils response) as 0 or 1, inverted by reverse.
func (c *Codec) DecodeBit(bits []byte, offset int) (float64, error) {
	if offset < 0 || offset/8 >= len(bits) {
		return 0, ErrShortData
	}
	return c.boolValue(bits[offset/8]>>(offset%8)&1 == 1), nil
}

func (c *Codec) boolValue(b bool) float64 {
	if b != c.reverse {
		return 1
	}
	return 0
}

// Raw converts an engineering value into the raw value of the point's data
// type: (value - offset) / scale, rounded to the nearest integer for
// integer types. It fails, wrapping ErrOutOfRange, when the result does
// not fit the type, or, for a bool, when value is not 0 or 1 (reverse
// applied). Bools are returned as 0 or 1.
func (c *Codec) Raw(value float64) (float64, error) {
	if math.IsNaN(value) || math.IsInf(value, 0) {
		return 0, fmt.Errorf("%w: %v is not a finite number", ErrOutOfRange, value)
	}
	if c.typ == tBool {
		if value != 0 && value != 1 {
			return 0, fmt.Errorf("%w: bool point takes 0 or 1, not %v", ErrOutOfRange, value)
		}
		if c.reverse {
			value = 1 - value
		}
		return value, nil
	}
	raw := (value - c.offset) / c.scale
	lo, hi := typeRange(c.typ)
	switch c.typ {
	case tFloat32:
		if math.Abs(raw) > math.MaxFloat32 {
			return 0, fmt.Errorf("%w: %v does not fit float32", ErrOutOfRange, value)
		}
		return raw, nil
	case tFloat64:
		if math.IsInf(raw, 0) {
			return 0, fmt.Errorf("%w: %v does not fit float64", ErrOutOfRange, value)
		}
		return raw, nil
	}
	raw = math.Round(raw)
	// For the 64-bit integers hi is 2^64 or 2^63, the float64 nearest to
	// the type's maximum (which float64 cannot represent); it is accepted
	// and saturates to the maximum, so that every decoded value encodes.
	if raw < lo || raw > hi {
		return 0, fmt.Errorf("%w: %v is raw %v, outside %s range", ErrOutOfRange, value, raw, typeName(c.typ))
	}
	return raw, nil
}

// Encode appends the registers that carry value to dst, in the point's
// byte order, and returns the extended slice. For a bit of a register
// (bool with bit_position) use SetBit; for a coil, Raw.
func (c *Codec) Encode(dst []byte, value float64) ([]byte, error) {
	raw, err := c.Raw(value)
	if err != nil {
		return dst, err
	}
	switch c.kind {
	case kindBit, kindRegBit:
		return dst, errors.New("encode: point is a single bit")
	case kindNonZero:
		return append(dst, 0, byte(raw)), nil
	}
	n := int(c.regs) * 2
	start := len(dst)
	var zero [8]byte
	dst = append(dst, zero[:n]...)
	bitsToWire(dst[start:], bitsFromRaw(c.typ, raw), c.order)
	return dst, nil
}

// SetBit returns reg with the point's bit set to value (0 or 1, reverse
// applied).
func (c *Codec) SetBit(reg uint16, value float64) (uint16, error) {
	if c.kind != kindRegBit {
		return reg, errors.New("set bit: point is not a bit of a register")
	}
	raw, err := c.Raw(value)
	if err != nil {
		return reg, err
	}
	if raw == 1 {
		return reg | 1<<c.bit, nil
	}
	return reg &^ (1 << c.bit), nil
}

// Range returns the lowest and highest engineering values the point can
// represent (for 64-bit integers, approximately).
func (c *Codec) Range() (lo, hi float64) {
	if c.typ == tBool {
		return 0, 1
	}
	lo, hi = typeRange(c.typ)
	lo, hi = lo*c.scale+c.offset, hi*c.scale+c.offset
	if lo > hi {
		lo, hi = hi, lo
	}
	return lo, hi
}

// IsRegisterBit reports whether the point is one bit of a register.
func (c *Codec) IsRegisterBit() bool { return c.kind == kindRegBit }

func typeRange(t uint8) (lo, hi float64) {
	switch t {
	case tBool:
		return 0, 1
	case tUint16:
		return 0, math.MaxUint16
	case tInt16:
		return math.MinInt16, math.MaxInt16
	case tUint32:
		return 0, math.MaxUint32
	case tInt32:
		return math.MinInt32, math.MaxInt32
	case tUint64:
		return 0, 1 << 64 // saturates to 2^64-1
	case tInt64:
		return -1 << 63, 1 << 63 // saturates to 2^63-1
	case tFloat32:
		return -math.MaxFloat32, math.MaxFloat32
	}
	return -math.MaxFloat64, math.MaxFloat64
}

func typeName(t uint8) string {
	return [...]string{"bool", "uint16", "int16", "uint32", "int32", "float32", "uint64", "int64", "float64"}[t]
}

// wireToBits reads len(b) bytes (2, 4 or 8) in the given order into the
// low bits of a big-endian integer.
func wireToBits(b []byte, order uint8) uint64 {
	var v uint64
	n := len(b)
	if n == 2 {
		return uint64(b[0])<<8 | uint64(b[1])
	}
	switch order {
	case orderDCBA:
		for i := n - 1; i >= 0; i-- {
			v = v<<8 | uint64(b[i])
		}
	case orderBADC:
		for i := 0; i < n; i++ {
			v = v<<8 | uint64(b[i^1])
		}
	case orderCDAB:
		for w := n/2 - 1; w >= 0; w-- {
			v = v<<16 | uint64(b[2*w])<<8 | uint64(b[2*w+1])
		}
	default:
		for i := 0; i < n; i++ {
			v = v<<8 | uint64(b[i])
		}
	}
	return v
}

// bitsToWire is the inverse of wireToBits: it writes the low 8*len(b) bits
// of v into b in the given order.
func bitsToWire(b []byte, v uint64, order uint8) {
	n := len(b)
	if n == 2 {
		b[0], b[1] = byte(v>>8), byte(v)
		return
	}
	switch order {
	case orderDCBA:
		for i := 0; i < n; i++ {
			b[i] = byte(v >> (8 * i))
		}
	case orderBADC:
		for i := 0; i < n; i++ {
			b[i^1] = byte(v >> (8 * (n - 1 - i)))
		}
	case orderCDAB:
		for w := 0; w < n/2; w++ {
			b[2*w] = byte(v >> (16*w + 8))
			b[2*w+1] = byte(v >> (16 * w))
		}
	default:
		for i := 0; i < n; i++ {
			b[i] = byte(v >> (8 * (n - 1 - i)))
		}
	}
}

func rawFromBits(t uint8, v uint64) float64 {
	switch t {
	case tInt16:
		return float64(int16(v))
	case tUint32:
		return float64(uint32(v))
	case tInt32:
		return float64(int32(v))
	case tFloat32:
		return float64(math.Float32frombits(uint32(v)))
	case tUint64:
		return float64(v)
	case tInt64:
		return float64(int64(v))
	case tFloat64:
		return math.Float64frombits(v)
	}
	return float64(uint16(v))
}

func bitsFromRaw(t uint8, raw float64) uint64 {
	switch t {
	case tInt16:
		return uint64(uint16(int16(raw)))
	case tUint32:
		return uint64(uint32(raw))
	case tInt32:
		return uint64(uint32(int32(raw)))
	case tFloat32:
		return uint64(math.Float32bits(float32(raw)))
	case tUint64:
		if raw >= 1<<64 {
			return math.MaxUint64
		}
		return uint64(raw)
	case tInt64:
		if raw >= 1<<63 {
			return math.MaxInt64
		}
		return uint64(int64(raw))
	case tFloat64:
		return math.Float64bits(raw)
	}
	return uint64(uint16(raw))
}
