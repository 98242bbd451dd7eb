package modbus

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
)

// Write sends value to the point at index and returns the value read back
// from the device. The value is encoded first (scale, offset, rounding,
// range), so an invalid value is rejected, wrapping ErrOutOfRange, without
// any I/O. The point's function code chooses the write: 5 (or 1) single
// coil, 15 multiple coils, 6 (or 3) single register, 16 multiple registers.
// Values of two or four registers are written with 16 even when the point
// says 6. A bool on a bit of a register is written by reading the register,
// changing the bit and writing it back. Points of discrete inputs (2) and
// input registers (4) are read-only. Min and Max of the point, when set,
// bound the value.
func (d *Driver) Write(ctx context.Context, index int, value float64) (float64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.init(); err != nil {
		return 0, err
	}
	if index < 0 || index >= len(d.ch.Points) {
		return 0, fmt.Errorf("channel %d: write: no point at index %d", d.ch.ID, index)
	}
	p := &d.ch.Points[index]
	c := &d.codecs[index]
	fail := func(what string, addr uint16, err error) error {
		return fmt.Errorf("channel %d slave %d: point %d: %s at %d: %w", d.ch.ID, p.SlaveID, p.ID, what, addr, err)
	}
	if p.FunctionCode == 2 || p.FunctionCode == 4 {
		return 0, fail("write", p.Address, fmt.Errorf("%w: function code %d reads only", drivers.ErrNotWritable, p.FunctionCode))
	}
	if p.Min != nil && value < *p.Min || p.Max != nil && value > *p.Max {
		return 0, fail("write", p.Address, fmt.Errorf("%w: %v outside the point's min/max", ErrOutOfRange, value))
	}
	// Encode before any I/O.
	var raw float64
	var err error
	d.wbuf = d.wbuf[:0]
	switch {
	case c.IsBit() || c.IsRegisterBit():
		raw, err = c.Raw(value)
	default:
		d.wbuf, err = c.Encode(d.wbuf, value)
	}
	if err != nil {
		return 0, fail("encode", p.Address, err)
	}
	if d.client == nil {
		return 0, fail("write", p.Address, errNotConnected)
	}
	if err := drivers.Proceed(ctx); err != nil {
		return 0, fail("write", p.Address, err)
	}
	setSlave(d.handler, p.SlaveID)
	addr := p.Address
	fc := p.FunctionCode
	switch {
	case c.IsBit() && fc == 15:
		_, err = d.client.WriteMultipleCoils(addr, 1, []byte{byte(raw)})
	case c.IsBit():
		fc = 5
		var v uint16
		if raw == 1 {
			v = 0xFF00
		}
		_, err = d.client.WriteSingleCoil(addr, v)
	case c.IsRegisterBit():
		var cur []byte
		cur, err = d.client.ReadHoldingRegisters(addr, 1)
		if err == nil && len(cur) < 2 {
			err = ErrShortData
		}
		if err != nil {
			d.afterWriteError(err)
			return 0, fail("read holding registers", addr, err)
		}
		var reg uint16
		reg, err = c.SetBit(uint16(cur[0])<<8|uint16(cur[1]), value)
		if err != nil {
			break
		}
		d.wbuf = append(d.wbuf[:0], byte(reg>>8), byte(reg))
		if err := drivers.Proceed(ctx); err != nil {
			return 0, fail("write", addr, err)
		}
		err = d.writeRegisters(fc, addr)
	default:
		err = d.writeRegisters(fc, addr)
	}
	if err != nil {
		d.afterWriteError(err)
		if mayHaveArrived(err) {
			err = fmt.Errorf("%w: %w", drivers.ErrOutcomeUnknown, err)
		}
		return 0, fail(functionName(writeFunction(fc, len(d.wbuf)/2)), addr, err)
	}
	// Read back. The device acknowledged the write: a read-back that fails
	// leaves the outcome unknown (the channel reads it again later).
	v, err := d.readPoint(p, c)
	if err != nil {
		return 0, fail("read back", addr, fmt.Errorf("%w: write acknowledged, %w", drivers.ErrOutcomeUnknown, err))
	}
	return v, nil
}

// ReadPoint reads the point at index alone (the matching read of a c or a
// point: coils for 5/15, holding registers for 6/16) and returns its
// engineering value: how the channel reconciles a write whose outcome was
// unknown.
func (d *Driver) ReadPoint(ctx context.Context, index int) (float64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.init(); err != nil {
		return 0, err
	}
	if index < 0 || index >= len(d.ch.Points) {
		return 0, fmt.Errorf("channel %d: read: no point at index %d", d.ch.ID, index)
	}
	p := &d.ch.Points[index]
	if d.client == nil {
		return 0, fmt.Errorf("channel %d slave %d: point %d: read: %w", d.ch.ID, p.SlaveID, p.ID, errNotConnected)
	}
	if err := drivers.Proceed(ctx); err != nil {
		return 0, err
	}
	setSlave(d.handler, p.SlaveID)
	v, err := d.readPoint(p, &d.codecs[index])
	if err != nil {
		return 0, fmt.Errorf("channel %d slave %d: point %d: read at %d: %w", d.ch.ID, p.SlaveID, p.ID, p.Address, err)
	}
	return v, nil
}

// readPoint reads one point with the read function matching its function
// code and decodes it.
func (d *Driver) readPoint(p *config.Point, c *Codec) (float64, error) {
	rfc, _ := ReadFunction(p.FunctionCode)
	var data []byte
	var err error
	switch rfc {
	case 1:
		data, err = d.client.ReadCoils(p.Address, 1)
	case 2:
		data, err = d.client.ReadDiscreteInputs(p.Address, 1)
	case 4:
		data, err = d.client.ReadInputRegisters(p.Address, uint16(c.Registers()))
	default:
		data, err = d.client.ReadHoldingRegisters(p.Address, uint16(c.Registers()))
	}
	if err != nil {
		d.afterWriteError(err)
		return 0, fmt.Errorf("%s: %w", functionName(rfc), err)
	}
	v, err := c.Decode(data)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", functionName(rfc), err)
	}
	return v, nil
}

// mayHaveArrived reports whether a failed request may have reached the
// device: it was sent and then no (valid) answer came. A failed dial or
// write never sent it; an exception is the device's own answer.
func mayHaveArrived(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && (op.Op == "dial" || op.Op == "write") {
		return false
	}
	switch classify(err) {
	case errException, errSlaveGone:
		return false
	}
	return !errors.Is(err, errNotConnected)
}

// writeFunction is the function code used to write n registers for a
// point configured with fc.
func writeFunction(fc uint8, n int) uint8 {
	switch {
	case fc == 5 || fc == 15 || fc == 1:
		if fc == 15 {
			return 15
		}
		return 5
	case fc == 16 || n > 1:
		return 16
	}
	return 6
}

func (d *Driver) writeRegisters(fc uint8, addr uint16) error {
	n := len(d.wbuf) / 2
	if writeFunction(fc, n) == 16 {
		_, err := d.client.WriteMultipleRegisters(addr, uint16(n), d.wbuf)
		return err
	}
	_, err := d.client.WriteSingleRegister(addr, uint16(d.wbuf[0])<<8|uint16(d.wbuf[1]))
	return err
}

// afterWriteError resynchronises the connection after a timeout or a
// malformed answer; the channel learns of lost connections from Read.
func (d *Driver) afterWriteError(err error) {
	switch classify(err) {
	case errTimeout, errGarbled:
		d.handler.Close()
	}
}
