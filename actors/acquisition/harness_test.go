package acquisition_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/actors/acquisition"
	"github.com/voltage-ems/voltage/actors/node"
	"github.com/voltage-ems/voltage/actors/redisbus"
	"github.com/voltage-ems/voltage/config"
	_ "github.com/voltage-ems/voltage/drivers/modbus"
	_ "github.com/voltage-ems/voltage/drivers/virtual"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/supervisor"
	"github.com/voltage-ems/voltage/test/testenv"
)

// loadConfig writes a YAML file and point tables into a temp dir and loads it
// with the real loader.
func loadConfig(t *testing.T, yaml string, tables map[string]string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	for name, body := range tables {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

type harness struct {
	sys      *actor.ActorSystem
	root     *actor.PID
	channels *actor.PID
	writer   *redisbus.Writer
	stats    *supervisor.Stats
	rdb      *redis.Client
}

// startNode runs the acquisition part of a node (writer + channels under one
// root) against the Redis at url.
func startNode(t *testing.T, cfg *config.Config, url string, mw ...actor.ReceiverMiddleware) *harness {
	t.Helper()
	return startNodeWith(t, cfg, url, nil, mw...)
}

// startNodeWith is startNode with each channel's options changed by opt.
func startNodeWith(t *testing.T, cfg *config.Config, url string, opt func(*acquisition.Options), mw ...actor.ReceiverMiddleware) *harness {
	t.Helper()
	ro, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{sys: actor.NewActorSystem(), stats: supervisor.NewStats(nil)}
	h.writer = redisbus.NewWriter(ro, redisbus.WriterOptions{Node: "test", RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	strategy := supervisor.NewStrategy(supervisor.DefaultPolicy(), h.stats)
	h.rdb = redis.NewClient(ro)
	seen := redisbus.NewIdempotency(h.rdb, "test", messages.Keys{})
	var chans []acquisition.Options
	for i := range cfg.Channels {
		ch := &cfg.Channels[i]
		chans = append(chans, acquisition.Options{Channel: ch, Node: "test", Sink: h.writer,
			Supervisor: strategy, PointMiddleware: mw, Restarts: h.stats.Under,
			ReconnectDelay: func(int) time.Duration { return 50 * time.Millisecond },
			CommandSource:  h.sys.NewLocalPID("voltage/redis-subscriber"), Seen: seen, Commands: h.writer})
		if opt != nil {
			opt(&chans[len(chans)-1])
		}
	}
	subProps := actor.PropsFromProducer(redisbus.NewSubscriberActor(func(deliver func([]messages.PointUpdate)) *redisbus.Subscriber {
		return redisbus.NewSubscriber(ro, "test", messages.Keys{}, deliver, nil, nil)
	}))
	props := node.NewRootProps([]node.Child{
		{Name: "redis-writer", Props: actor.PropsFromProducer(func() actor.Actor { return &redisbus.WriterActor{W: h.writer} })},
		{Name: "redis-subscriber", Props: subProps},
		{Name: "channels", Props: acquisition.NewChannelsProps(chans, strategy)},
	}, strategy)
	h.root, err = h.sys.Root.SpawnNamed(props, "voltage")
	if err != nil {
		t.Fatal(err)
	}
	res, err := h.sys.Root.RequestFuture(h.root, &node.GetChild{Name: "channels"}, time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	h.channels = res.(*node.ChildPID).PID
	t.Cleanup(func() {
		_ = h.sys.Root.PoisonFuture(h.root).Wait()
		h.sys.Shutdown()
		h.rdb.Close()
	})
	return h
}

func (h *harness) status(t *testing.T, ch uint32) *messages.ChannelStatus {
	t.Helper()
	res, err := h.sys.Root.RequestFuture(h.channels, &messages.GetChannelStatus{ChannelID: ch}, time.Second).Result()
	if err != nil {
		t.Fatalf("channel %d status: %v", ch, err)
	}
	return res.(*messages.ChannelStatus)
}

// hget reads one field of a comsrv hash ("" when absent).
func (h *harness) hget(key messages.PointKey, suffix string) string {
	k := "comsrv:" + strconv.Itoa(int(key.Channel)) + ":" + key.Type.String() + suffix
	return h.rdb.HGet(context.Background(), k, strconv.Itoa(int(key.Point))).Val()
}

func (h *harness) value(key messages.PointKey) (float64, bool) {
	s := h.hget(key, "")
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

var _ = testenv.Eventually

func pk(ch uint32, t messages.PointType, p uint32) messages.PointKey {
	return messages.PointKey{Channel: ch, Type: t, Point: p}
}
