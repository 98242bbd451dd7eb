package virtual_test

import (
	"context"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/drivers/virtual"
	"github.com/voltage-ems/voltage/messages"
)

// BenchmarkRead1000 reads a channel of 1000 points of every signal with a
// reused buffer; it must not allocate.
func BenchmarkRead1000(b *testing.B) {
	signals := []string{"sine", "ramp", "random_walk", "square", "constant"}
	ch := &config.Channel{ID: 1001, Protocol: config.ProtocolVirtual}
	for i := range 1000 {
		p := config.Point{ID: uint32(10001 + i), Type: messages.Measurement, Signal: signals[i%len(signals)]}
		switch i % 20 {
		case 5:
			p.Type, p.Signal = messages.Signal, ""
		case 10:
			p.Type, p.Signal = messages.Adjustment, ""
		}
		ch.Points = append(ch.Points, p)
	}
	d, err := virtual.NewDriver(ch, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	buf := make([]drivers.Sample, 0, len(ch.Points))
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		buf, err = d.Read(ctx, buf[:0])
		if err != nil {
			b.Fatal(err)
		}
	}
	if len(buf) != len(ch.Points) {
		b.Fatalf("%d samples, want %d", len(buf), len(ch.Points))
	}
	b.ReportMetric(float64(b.N)*float64(len(ch.Points))/time.Since(start).Seconds(), "samples/s")
}
