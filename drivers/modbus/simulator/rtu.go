package simulator

import (
	"context"
	"errors"
	"io"
	"sync"
)

// rtuSession is one byte stream served by ServeRTU.
type rtuSession struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (r *rtuSession) stop() {
	r.cancel()
	<-r.done
}

// ServeRTU serves Modbus RTU requests read from rw (a serial port or one
// end of a pseudo-terminal) until ctx is cancelled, the simulator is closed
// or rw fails; rw is closed on return. Only slave ids of the point table
// answer; others, and slaves that are down, stay silent as on a real bus.
// Broadcasts (slave 0) are ignored.
//
// Frames are delimited by their expected length rather than by the 3.5
// character silence of the specification, which a byte stream does not
// preserve: function codes 1 to 6 are 8 bytes, 15 and 16 carry a byte
// count. On a CRC mismatch or an unknown function code, one byte is dropped
// and parsing resynchronises.
func (s *Simulator) ServeRTU(ctx context.Context, rw io.ReadWriteCloser) error {
	ctx, cancel := context.WithCancel(ctx)
	sess := &rtuSession{cancel: cancel, done: make(chan struct{})}
	s.mu.Lock()
	s.rtus = append(s.rtus, sess)
	s.mu.Unlock()
	defer close(sess.done)
	var once sync.Once
	closeRW := func() { once.Do(func() { rw.Close() }) }
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			closeRW()
		case <-stopped:
		}
	}()
	defer closeRW()

	pending := make([]byte, 0, 1024) // bytes not parsed yet
	tmp := make([]byte, 512)
	for {
		n, err := rw.Read(tmp)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		pending = append(pending, tmp[:n]...)
		off := 0
		for off < len(pending) {
			req, used, err := parseRTURequest(pending[off:])
			if errors.Is(err, errIncompleteFrame) {
				break
			}
			if err != nil {
				off++
				continue
			}
			off += used
			if req.slave == 0 {
				continue
			}
			if resp := s.answerRTU(req); resp != nil {
				if _, err := rw.Write(resp); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
			}
		}
		pending = pending[:copy(pending, pending[off:])]
	}
}

// Errors of parseRTURequest.
var (
	errIncompleteFrame = errors.New("rtu: incomplete frame")
	errBadFrame        = errors.New("rtu: bad frame")
)

// parseRTURequest parses the request frame at the start of b and returns
// it with the number of bytes it took. It returns errIncompleteFrame when b
// holds the beginning of a frame only, and errBadFrame for an
// unknown function code, a CRC mismatch or inconsistent counts.
func parseRTURequest(b []byte) (*request, int, error) {
	if len(b) < 2 {
		return nil, 0, errIncompleteFrame
	}
	var n int
	switch b[1] {
	case 1, 2, 3, 4, 5, 6:
		n = 8
	case 15, 16:
		if len(b) < 7 {
			return nil, 0, errIncompleteFrame
		}
		n = 9 + int(b[6])
	default:
		return nil, 0, errBadFrame
	}
	if len(b) < n {
		return nil, 0, errIncompleteFrame
	}
	if crc16(b[:n-2]) != uint16(b[n-2])|uint16(b[n-1])<<8 {
		return nil, 0, errBadFrame
	}
	r := &request{slave: b[0], fc: b[1], addr: be16(b[2:]), quantity: be16(b[4:])}
	switch r.fc {
	case 5:
		v := be16(b[4:])
		if v != 0xFF00 && v != 0 {
			return nil, 0, errBadFrame
		}
		r.quantity, r.bits = 1, []bool{v == 0xFF00}
	case 6:
		r.quantity, r.regs = 1, []uint16{be16(b[4:])}
	case 15:
		q := int(r.quantity)
		if q == 0 || q > 0x7B0 || int(b[6]) != (q+7)/8 {
			return nil, 0, errBadFrame
		}
		r.bits = make([]bool, q)
		for k := range r.bits {
			r.bits[k] = b[7+k/8]>>(k%8)&1 == 1
		}
	case 16:
		q := int(r.quantity)
		if q == 0 || q > 123 || int(b[6]) != 2*q {
			return nil, 0, errBadFrame
		}
		r.regs = make([]uint16, q)
		for k := range r.regs {
			r.regs[k] = be16(b[7+2*k:])
		}
	}
	return r, n, nil
}

// answerRTU runs a request and encodes the response frame, or nil for
// silence.
func (s *Simulator) answerRTU(r *request) []byte {
	res := s.serve(r, true)
	if res.silent {
		return nil
	}
	out := []byte{r.slave, r.fc}
	switch {
	case res.exc != 0:
		out = append(out[:1], r.fc|0x80, res.exc)
	case r.fc == 1 || r.fc == 2:
		nb := (len(res.bits) + 7) / 8
		out = append(out, byte(nb))
		start := len(out)
		out = append(out, make([]byte, nb)...)
		for k, v := range res.bits {
			if v {
				out[start+k/8] |= 1 << (k % 8)
			}
		}
	case r.fc == 3 || r.fc == 4:
		out = append(out, byte(2*len(res.regs)))
		for _, v := range res.regs {
			out = append(out, byte(v>>8), byte(v))
		}
	case r.fc == 5:
		v := uint16(0)
		if r.bits[0] {
			v = 0xFF00
		}
		out = append(out, byte(r.addr>>8), byte(r.addr), byte(v>>8), byte(v))
	case r.fc == 6:
		out = append(out, byte(r.addr>>8), byte(r.addr), byte(r.regs[0]>>8), byte(r.regs[0]))
	default: // 15, 16
		out = append(out, byte(r.addr>>8), byte(r.addr), byte(r.quantity>>8), byte(r.quantity))
	}
	crc := crc16(out)
	return append(out, byte(crc), byte(crc>>8))
}

func be16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

// crc16 is the Modbus RTU CRC (polynomial 0xA001 reflected, initial
// 0xFFFF); it is sent low byte first.
func crc16(b []byte) uint16 {
	crc := uint16(0xFFFF)
	for _, c := range b {
		crc ^= uint16(c)
		for range 8 {
			if crc&1 != 0 {
				crc = crc>>1 ^ 0xA001
			} else {
				crc >>= 1
			}
		}
	}
	return crc
}
