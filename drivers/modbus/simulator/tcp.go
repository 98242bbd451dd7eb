package simulator

import (
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"time"

	mbserver "github.com/simonvetter/modbus"
)

// tcpServer is one Modbus TCP listener.
type tcpServer struct {
	srv *mbserver.ModbusServer
}

func (t *tcpServer) stop() error { return t.srv.Stop() }

// Serve starts serving Modbus TCP on addr (host:port; port 0 picks a free
// port) and returns the address it listens on. Every slave id of the
// point table answers on the same port. Serve may be called several times,
// and again after Close.
//
// The server is github.com/simonvetter/modbus's, which binds the address
// itself and does not report the port it got, so for port 0 a free port is
// found first by listening on it briefly.
func (s *Simulator) Serve(addr string) (net.Addr, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("simulator: serve %q: %w", addr, err)
	}
	if port == "0" || port == "" {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("simulator: serve %q: %w", addr, err)
		}
		port = strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
		l.Close()
	}
	bound := net.JoinHostPort(host, port)
	srv, err := mbserver.NewServer(&mbserver.ServerConfiguration{
		URL:        "tcp://" + bound,
		Timeout:    10 * time.Minute, // idle time before the server drops a client
		MaxClients: 1024,
		Logger:     log.New(io.Discard, "", 0),
	}, &tcpHandler{s: s, port: atoiPort(port)})
	if err != nil {
		return nil, fmt.Errorf("simulator: serve %q: %w", addr, err)
	}
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("simulator: serve %q: %w", bound, err)
	}
	s.mu.Lock()
	s.servers = append(s.servers, &tcpServer{srv: srv})
	s.mu.Unlock()
	return net.ResolveTCPAddr("tcp", bound)
}

// tcpHandler adapts the model to simonvetter's RequestHandler.
type tcpHandler struct {
	s    *Simulator
	port int // the port it serves, for the request log
}

func atoiPort(p string) int {
	n, _ := strconv.Atoi(p)
	return n
}

func (h *tcpHandler) do(r *request) ([]bool, []uint16, error) {
	h.s.logRequest(h.port, r.fc)
	res := h.s.serve(r, false)
	if res.silent {
		h.s.hold(r.slave)
		return nil, nil, mbserver.ErrGWTargetFailedToRespond
	}
	if res.exc != 0 {
		return nil, nil, exceptionError(res.exc)
	}
	return res.bits, res.regs, nil
}

// HandleCoils serves function codes 1, 5 and 15.
func (h *tcpHandler) HandleCoils(req *mbserver.CoilsRequest) ([]bool, error) {
	r := &request{slave: req.UnitId, fc: 1, addr: req.Addr, quantity: req.Quantity}
	if req.IsWrite {
		r.fc, r.bits = 15, req.Args
		if req.Quantity == 1 {
			r.fc = 5
		}
	}
	bits, _, err := h.do(r)
	return bits, err
}

// HandleDiscreteInputs serves function code 2.
func (h *tcpHandler) HandleDiscreteInputs(req *mbserver.DiscreteInputsRequest) ([]bool, error) {
	bits, _, err := h.do(&request{slave: req.UnitId, fc: 2, addr: req.Addr, quantity: req.Quantity})
	return bits, err
}

// HandleHoldingRegisters serves function codes 3, 6 and 16.
func (h *tcpHandler) HandleHoldingRegisters(req *mbserver.HoldingRegistersRequest) ([]uint16, error) {
	r := &request{slave: req.UnitId, fc: 3, addr: req.Addr, quantity: req.Quantity}
	if req.IsWrite {
		r.fc, r.regs = 16, req.Args
		if req.Quantity == 1 {
			r.fc = 6
		}
	}
	_, regs, err := h.do(r)
	return regs, err
}

// HandleInputRegisters serves function code 4.
func (h *tcpHandler) HandleInputRegisters(req *mbserver.InputRegistersRequest) ([]uint16, error) {
	_, regs, err := h.do(&request{slave: req.UnitId, fc: 4, addr: req.Addr, quantity: req.Quantity})
	return regs, err
}

// exceptionError maps an exception code to the error simonvetter's server
// answers it for.
func exceptionError(code uint8) error {
	switch code {
	case ExceptionIllegalFunction:
		return mbserver.ErrIllegalFunction
	case ExceptionIllegalDataAddress:
		return mbserver.ErrIllegalDataAddress
	case ExceptionIllegalDataValue:
		return mbserver.ErrIllegalDataValue
	case 0x05:
		return mbserver.ErrAcknowledge
	case ExceptionDeviceBusy:
		return mbserver.ErrServerDeviceBusy
	case 0x08:
		return mbserver.ErrMemoryParityError
	case ExceptionGatewayPath:
		return mbserver.ErrGWPathUnavailable
	case ExceptionGatewayTarget:
		return mbserver.ErrGWTargetFailedToRespond
	}
	return mbserver.ErrServerDeviceFailure
}
