// Package benchnode starts what the benchmark harnesses measure: a
// redis-server of their own and the acquisition part of a node (Redis
// writer, channel, device and point actors on the pool dispatcher, under one
// root) polling virtual channels, wired as `voltage run` wires them.
package benchnode

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/actors/acquisition"
	"github.com/voltage-ems/voltage/actors/node"
	"github.com/voltage-ems/voltage/actors/redisbus"
	"github.com/voltage-ems/voltage/config"
	_ "github.com/voltage-ems/voltage/drivers/virtual" // registers virtual
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/supervisor"
	"github.com/voltage-ems/voltage/test/testenv"
)

// Load describes the virtual points to poll.
type Load struct {
	Points, Channels int
	Interval         time.Duration
	Signal           string // virtual signal of every point: sine, random_walk, ...
}

// Node is a running benchmark node.
type Node struct {
	Redis      *testenv.Redis
	Writer     *redisbus.Writer
	sys        *actor.ActorSystem
	root       *actor.PID
	dispatcher *node.PoolDispatcher
	dir        string
}

// StartRedis starts a redis-server in a temporary directory.
func StartRedis() (*testenv.Redis, string, error) {
	dir, err := os.MkdirTemp("", "voltage-bench-")
	if err != nil {
		return nil, "", err
	}
	r, err := testenv.StartRedisServer(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	return r, dir, nil
}

// Start starts the actors of load against r (see StartRedis).
func Start(r *testenv.Redis, load Load) (*Node, error) {
	ro, err := redis.ParseURL(r.URL())
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	n := &Node{Redis: r, dispatcher: node.NewPoolDispatcher(2*runtime.GOMAXPROCS(0), 300)}
	n.Writer = redisbus.NewWriter(ro, redisbus.WriterOptions{Node: "bench", Log: log})
	n.sys = actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return log }))
	strategy := supervisor.NewStrategy(supervisor.DefaultPolicy(), supervisor.NewStats(nil))
	var chans []acquisition.Options
	per := load.Points / load.Channels
	lo, hi := 0.0, 1000.0
	for c := 0; c < load.Channels; c++ {
		ch := &config.Channel{ID: uint32(100 + c), Name: "bench", Protocol: config.ProtocolVirtual, PollInterval: load.Interval}
		for p := 0; p < per; p++ {
			ch.Points = append(ch.Points, config.Point{ID: uint32(p + 1), Type: messages.Measurement,
				Signal: load.Signal, Min: &lo, Max: &hi, Period: time.Minute, BitPosition: -1, Scale: 1})
		}
		chans = append(chans, acquisition.Options{Channel: ch, Node: "bench", Sink: n.Writer, Log: log,
			Supervisor: strategy, Dispatcher: n.dispatcher})
	}
	n.root, err = n.sys.Root.SpawnNamed(node.NewRootProps([]node.Child{
		{Name: "redis-writer", Props: actor.PropsFromProducer(func() actor.Actor { return &redisbus.WriterActor{W: n.Writer} })},
		{Name: "channels", Props: acquisition.NewChannelsProps(chans, strategy)},
	}, strategy), "voltage")
	if err != nil {
		return nil, err
	}
	return n, nil
}

// Stop stops the actors (the caller stops Redis).
func (n *Node) Stop() {
	_ = n.sys.Root.PoisonFuture(n.root).Wait()
	n.dispatcher.Stop()
}

// Machine describes the machine for the figures.
func Machine() string {
	model := runtime.GOARCH
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			_, v, _ := strings.Cut(l, ":")
			model = strings.TrimSpace(v)
			break
		}
	}
	return fmt.Sprintf("%s, %d CPUs, GOMAXPROCS %d, %s", model, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
}
