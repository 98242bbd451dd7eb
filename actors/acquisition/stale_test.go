package acquisition_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/actors/acquisition"
	"github.com/voltage-ems/voltage/actors/redisbus"
	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

// slowDriver answers its first read at once and then hangs (until released
// or cancelled), like a device that stops answering without dropping the
// connection.
type slowDriver struct {
	points  int
	reads   atomic.Int64
	release chan struct{}
}

func (d *slowDriver) Read(ctx context.Context, buf []drivers.Sample) ([]drivers.Sample, error) {
	if d.reads.Add(1) > 1 {
		select {
		case <-d.release:
		case <-ctx.Done():
			return buf, ctx.Err()
		}
	}
	for i := 0; i < d.points; i++ {
		buf = append(buf, drivers.Sample{Index: i, Value: float64(i + 1), Quality: messages.Good})
	}
	return buf, nil
}

func (d *slowDriver) Close() error { return nil }

func TestPointsGoStaleWhenPollsHang(t *testing.T) {
	r := testenv.StartRedis(t)
	ch := &config.Channel{ID: 20, Name: "slow", Protocol: "test", PollInterval: 50 * time.Millisecond}
	for i := 1; i <= 3; i++ {
		ch.Points = append(ch.Points, config.Point{ID: uint32(i), Type: messages.Measurement, BitPosition: -1, Scale: 1})
	}
	drv := &slowDriver{points: 3, release: make(chan struct{})}
	ro, _ := redis.ParseURL(r.URL())
	w := redisbus.NewWriter(ro, redisbus.WriterOptions{})
	w.Start()
	t.Cleanup(func() { w.Stop(time.Second) })
	sys := actor.NewActorSystem()
	pid := sys.Root.Spawn(acquisition.NewChannelProps(acquisition.Options{Channel: ch, Node: "n", Sink: w,
		NewDriver: func(*config.Channel, *slog.Logger) (drivers.Driver, error) { return drv, nil }}))
	t.Cleanup(func() { _ = sys.Root.PoisonFuture(pid).Wait() })
	rdb := redis.NewClient(ro)
	defer rdb.Close()
	q := func() string { return rdb.HGet(context.Background(), "comsrv:20:m:q", "2").Val() }

	testenv.Eventually(t, 5*time.Second, func() bool { return q() == "good" }, "first poll")
	// The second poll hangs: after 3 poll intervals without a sample the
	// points are stale, with their last value kept.
	testenv.Eventually(t, 5*time.Second, func() bool { return q() == "stale" }, "stale after 3 intervals")
	if v := rdb.HGet(context.Background(), "comsrv:20:m", "2").Val(); v != "2" {
		t.Fatalf("stale point lost its value: %q", v)
	}
	st, err := sys.Root.RequestFuture(pid, &messages.GetChannelStatus{ChannelID: 20}, time.Second).Result()
	if err != nil || !st.(*messages.ChannelStatus).Connected {
		t.Fatalf("a slow channel is still connected: %+v %v", st, err)
	}
	close(drv.release)
	testenv.Eventually(t, 5*time.Second, func() bool { return q() == "good" }, "good again once polls answer")
}
