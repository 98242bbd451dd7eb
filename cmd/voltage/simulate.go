package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers/modbus/simulator"
)

// cmdSimulate serves every modbus_tcp channel of the config as a simulated
// device on the channel's host and port, until interrupted.
func cmdSimulate(args []string, stdout, stderr io.Writer) error {
	f := newFlags("simulate", stderr)
	log, cfg, err := f.load(args, stderr)
	if err != nil {
		return err
	}
	n := &nodeRun{cfg: cfg, log: log}
	defer n.stopAll()
	if err := n.serveSimulators(func(*config.Channel) bool { return true }); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return nil
}

// startSimulators serves, in-process, the modbus_tcp channels whose host is
// a loopback address (the demo: `voltage run --simulate`).
func (n *nodeRun) startSimulators() error {
	return n.serveSimulators(func(ch *config.Channel) bool {
		if ch.Parameters.Host == "localhost" {
			return true
		}
		ip := net.ParseIP(ch.Parameters.Host)
		return ip != nil && ip.IsLoopback()
	})
}

func (n *nodeRun) serveSimulators(want func(*config.Channel) bool) error {
	served := 0
	for i := range n.cfg.Channels {
		ch := &n.cfg.Channels[i]
		if ch.Protocol != config.ProtocolModbusTCP || !want(ch) {
			continue
		}
		sim, err := simulator.New(ch.Points)
		if err != nil {
			return fmt.Errorf("channel %d: simulator: %w", ch.ID, err)
		}
		addr := net.JoinHostPort(ch.Parameters.Host, strconv.Itoa(ch.Parameters.Port))
		bound, err := sim.Serve(addr)
		if err != nil {
			_ = sim.Close()
			return fmt.Errorf("channel %d: simulator on %s: %w", ch.ID, addr, err)
		}
		n.onStop("simulator "+bound.String(), func() { _ = sim.Close() })
		n.log.Info("modbus simulator serving", "channel", ch.ID, "addr", bound.String(), "points", len(ch.Points))
		served++
	}
	if served == 0 {
		return fmt.Errorf("no modbus_tcp channel to simulate in %s", n.cfg.File)
	}
	return nil
}
