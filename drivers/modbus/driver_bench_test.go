package modbus_test

import (
	"context"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/drivers/modbus"
)

// BenchmarkPollLoopback polls the 1000-point table from the simulator over
// loopback TCP, one full Read per op.
func BenchmarkPollLoopback(b *testing.B) {
	points := modbus.Table1000()
	f := newFixture(b, points, time.Second)
	plan := f.drv.Plan()
	buf := make([]drivers.Sample, 0, len(points))
	ctx := context.Background()
	before := f.sim.Requests()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		var err error
		buf, err = f.drv.Read(ctx, buf[:0])
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	polls := float64(b.N)
	b.ReportMetric(float64(f.sim.Requests()-before)/polls, "requests/poll")
	b.ReportMetric(float64(len(plan.Requests)), "planned/poll")
	b.ReportMetric(polls*float64(len(points))/b.Elapsed().Seconds(), "points/s")
}
