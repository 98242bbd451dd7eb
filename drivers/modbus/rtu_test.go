package modbus_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/drivers/modbus/simulator"
	"github.com/voltage-ems/voltage/messages"
)

// openPTY opens a pseudo-terminal pair in process (posix_openpt) and
// returns the master and the path of the slave device. The slave is also
// held open, in raw mode, for the test's lifetime, so that the master
// does not see EIO while the driver has the port closed between reconnects.
func openPTY(t *testing.T) (*os.File, string) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	var n int
	var ioErr error
	rc, err := master.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Control(func(fd uintptr) {
		if ioErr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ioErr != nil { // unlockpt
			return
		}
		n, ioErr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN) // ptsname
	}); err != nil || ioErr != nil {
		master.Close()
		t.Fatalf("pty setup: %v %v", err, ioErr)
	}
	path := fmt.Sprintf("/dev/pts/%d", n)
	hold, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		t.Fatal(err)
	}
	rc, _ = hold.SyscallConn()
	rc.Control(func(fd uintptr) {
		tio, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
		if err != nil {
			ioErr = err
			return
		}
		// cfmakeraw
		tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		tio.Oflag &^= unix.OPOST
		tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		tio.Cflag &^= unix.CSIZE | unix.PARENB
		tio.Cflag |= unix.CS8
		ioErr = unix.IoctlSetTermios(int(fd), unix.TCSETS, tio)
	})
	if ioErr != nil {
		t.Fatal(ioErr)
	}
	t.Cleanup(func() { hold.Close() })
	return master, path
}

func TestRTUOverPTY(t *testing.T) {
	master, path := openPTY(t)
	points := []config.Point{
		with(point(1, messages.Measurement, 1, 3, 0, config.Float32), func(p *config.Point) { p.ByteOrder = config.CDAB }),
		with(point(2, messages.Measurement, 1, 4, 10, config.Int16), func(p *config.Point) { p.Scale = 0.1 }),
		point(3, messages.Signal, 1, 2, 0, config.Bool),
		point(4, messages.Control, 1, 5, 5, config.Bool),
		point(5, messages.Measurement, 2, 3, 0, config.Uint32),
		with(point(6, messages.Adjustment, 2, 6, 7, config.Uint16), func(p *config.Point) { p.Scale = 0.5 }),
	}
	sim, err := simulator.New(points)
	if err != nil {
		t.Fatal(err)
	}
	sim.Freeze(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sim.ServeRTU(ctx, master) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve rtu: %v", err)
		}
	})

	ch := &config.Channel{ID: 2001, Protocol: config.ProtocolModbusRTU, PollInterval: time.Second,
		Parameters: config.Parameters{Device: path, BaudRate: 115200, Timeout: 300 * time.Millisecond},
		Points:     points}
	d, err := drivers.New(ch, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.(drivers.Connector).Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	samples, err := d.Read(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range samples {
		want, _ := sim.Value(i)
		if s.Quality != messages.Good || s.Value != want {
			t.Fatalf("point %d: %+v, simulator has %v", points[i].ID, s, want)
		}
	}
	w := d.(drivers.Writer)
	if back, err := w.Write(ctx, 3, 1); err != nil || back != 1 || !sim.Coil(1, 5) {
		t.Fatalf("write coil: %v %v, coil %v", back, err, sim.Coil(1, 5))
	}
	if back, err := w.Write(ctx, 5, 21.5); err != nil || back != 21.5 {
		t.Fatalf("write register: %v %v", back, err)
	}

	// A silent slave on the bus: its points go Bad, slave 1 keeps answering.
	sim.SetSlaveDown(2, true)
	samples, err = d.Read(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range samples {
		want := messages.Good
		if points[i].SlaveID == 2 {
			want = messages.Bad
		}
		if s.Quality != want {
			t.Fatalf("point %d: quality %v, want %v", points[i].ID, s.Quality, want)
		}
	}
	sim.SetSlaveDown(2, false)
	eventually(t, 5*time.Second, func() bool {
		s, err := d.Read(ctx, nil)
		return err == nil && s[4].Quality == messages.Good && s[5].Value == 21.5
	})
}
