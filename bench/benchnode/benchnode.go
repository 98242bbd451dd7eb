// Package benchnode starts what the benchmark harnesses measure: a
// redis-server of their own and the acquisition part of a node (Redis
// writer, channel, device and point actors on the pool dispatcher, under one
// root) polling virtual channels, wired as `voltage run` wires them.
package benchnode

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/actors/acquisition"
	"github.com/voltage-ems/voltage/actors/node"
	"github.com/voltage-ems/voltage/actors/redisbus"
	"github.com/voltage-ems/voltage/actors/session"
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
	Sessions         bool   // also run the live-session hub, fed as `voltage run` feeds it
}

// Node is a running benchmark node.
type Node struct {
	Redis      *testenv.Redis
	Writer     *redisbus.Writer
	Config     *config.Config  // the generated channels
	Sessions   *session.Opener // with Load.Sessions
	feed       *session.Feed
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
	var sink acquisition.Sink = n.Writer
	hubPID := n.sys.NewLocalPID("voltage/sessions")
	if load.Sessions {
		n.feed = session.NewFeed(func(b *messages.PointUpdates) { n.sys.Root.Send(hubPID, b) }, 20*time.Millisecond)
		sink = acquisition.Tee{n.Writer, n.feed}
		n.Sessions = session.NewOpener(n.sys.Root, hubPID)
	}
	n.Config = &config.Config{Node: config.Node{Name: "bench"}}
	var chans []acquisition.Options
	per := load.Points / load.Channels
	lo, hi := 0.0, 1000.0
	for c := 0; c < load.Channels; c++ {
		ch := &config.Channel{ID: uint32(100 + c), Name: "bench", Protocol: config.ProtocolVirtual, PollInterval: load.Interval}
		for p := 0; p < per; p++ {
			ch.Points = append(ch.Points, config.Point{ID: uint32(p + 1), Type: messages.Measurement,
				Signal: load.Signal, Min: &lo, Max: &hi, Period: time.Minute, BitPosition: -1, Scale: 1})
		}
		n.Config.Channels = append(n.Config.Channels, *ch)
	}
	var known []messages.PointKey
	for i := range n.Config.Channels {
		ch := &n.Config.Channels[i]
		chans = append(chans, acquisition.Options{Channel: ch, Node: "bench", Sink: sink, Log: log,
			Supervisor: strategy, Dispatcher: n.dispatcher})
		for j := range ch.Points {
			known = append(known, ch.Points[j].Key(ch.ID))
		}
	}
	children := []node.Child{
		{Name: "redis-writer", Props: actor.PropsFromProducer(func() actor.Actor { return &redisbus.WriterActor{W: n.Writer} })},
	}
	if load.Sessions {
		rdb := redis.NewClient(ro)
		read := func(keys []messages.PointKey) ([]messages.PointUpdate, error) {
			return redisbus.ReadPoints(context.Background(), rdb, messages.Keys{}, keys)
		}
		children = append(children, node.Child{Name: "sessions", Props: session.NewHubProps(known, read, strategy)})
	}
	children = append(children, node.Child{Name: "channels", Props: acquisition.NewChannelsProps(chans, strategy)})
	n.root, err = n.sys.Root.SpawnNamed(node.NewRootProps(children, strategy), "voltage")
	if err != nil {
		return nil, err
	}
	return n, nil
}

// Stop stops the actors (the caller stops Redis).
func (n *Node) Stop() {
	_ = n.sys.Root.PoisonFuture(n.root).Wait()
	if n.feed != nil {
		n.feed.Stop()
	}
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

// CPUTime is this process's user+system CPU time.
func CPUTime() time.Duration { return cpuOf("self") }

// ProcCPU is the user+system CPU time of process pid (0 if unknown).
func ProcCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	return cpuOf(strconv.Itoa(pid))
}

// cpuOf reads utime+stime of /proc/{proc}/stat.
func cpuOf(proc string) time.Duration {
	b, err := os.ReadFile("/proc/" + proc + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100
}

// RSS is this process's resident memory in bytes.
func RSS() uint64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseUint(strings.Fields(l)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
