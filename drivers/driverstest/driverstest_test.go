package driverstest_test

import (
	"context"
	"sync"
	"testing"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/drivers/driverstest"
	"github.com/voltage-ems/voltage/messages"
)

// minimal is the smallest conforming driver: Read and Close only, no
// Connector, no Writer, no way to disconnect (those checks are skipped).
type minimal struct {
	mu     sync.Mutex
	points int
}

func (m *minimal) Read(ctx context.Context, buf []drivers.Sample) ([]drivers.Sample, error) {
	if err := ctx.Err(); err != nil {
		return buf, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.points {
		buf = append(buf, drivers.Sample{Index: i, Value: float64(i)})
	}
	return buf, nil
}

func (m *minimal) Close() error { return nil }

func TestRunMinimalDriver(t *testing.T) {
	driverstest.Run(t, func(t *testing.T) (drivers.Driver, driverstest.Env) {
		ch := &config.Channel{ID: 1, Points: []config.Point{{ID: 1, Type: messages.Measurement}, {ID: 2, Type: messages.Signal}}}
		return &minimal{points: len(ch.Points)}, driverstest.Env{Channel: ch, WritableIndex: -1}
	})
}
