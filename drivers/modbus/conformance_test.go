package modbus_test

import (
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/drivers/driverstest"
	"github.com/voltage-ems/voltage/drivers/modbus/simulator"
	"github.com/voltage-ems/voltage/messages"
)

// conformancePoints is a small table over two slaves: measurements from
// holding and input registers, signals from a coil and a register bit, a
// command and a bounded setpoint.
func conformancePoints() []config.Point {
	return []config.Point{
		point(10001, messages.Measurement, 1, 3, 0, config.Float32),
		with(point(10002, messages.Measurement, 1, 4, 0, config.Int16), func(p *config.Point) { p.Scale = 0.1 }),
		with(point(10003, messages.Measurement, 2, 3, 0, config.Int32), func(p *config.Point) { p.ByteOrder = config.CDAB; p.Scale = 0.01 }),
		point(20001, messages.Signal, 1, 1, 0, config.Bool),
		with(point(20002, messages.Signal, 1, 3, 20, config.Bool), func(p *config.Point) { p.BitPosition = 3 }),
		point(1, messages.Control, 1, 5, 10, config.Bool),
		with(point(1, messages.Adjustment, 1, 16, 100, config.Float32), func(p *config.Point) {
			lo, hi := -500.0, 500.0
			p.Min, p.Max = &lo, &hi
		}),
	}
}

// conformanceWritable is the index of the setpoint in conformancePoints.
const conformanceWritable = 6

func TestConformance(t *testing.T) {
	driverstest.Run(t, func(t *testing.T) (drivers.Driver, driverstest.Env) {
		points := conformancePoints()
		sim, err := simulator.New(points)
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
			Parameters: config.Parameters{Host: host, Port: p, Timeout: time.Second}, Points: points}
		d, err := drivers.New(ch, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return d, driverstest.Env{
			Channel:       ch,
			WritableIndex: conformanceWritable,
			WriteValue:    42.5, // exact in float32, inside -500..500, not the starting value
			Disconnect:    func() { sim.Close() },
			Reconnect: func() {
				// The same address again, as a device that comes back.
				if _, err := sim.Serve(addr.String()); err != nil {
					t.Errorf("serve again on %s: %v", addr, err)
				}
			},
			Timeout: 3 * time.Second,
		}
	})
}
