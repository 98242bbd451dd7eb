// Command memory measures the resident memory of a node with 100,000
// configured points (one actor per point) polled by virtual channels into a
// real redis-server.
//
//	go run ./bench/memory [-points 100000] [-channels 10] [-interval 1s]
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/actors/acquisition"
	"github.com/voltage-ems/voltage/actors/node"
	"github.com/voltage-ems/voltage/actors/redisbus"
	"github.com/voltage-ems/voltage/config"
	_ "github.com/voltage-ems/voltage/drivers/virtual"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/supervisor"
	"github.com/voltage-ems/voltage/test/testenv"
)

func main() {
	points := flag.Int("points", 100000, "points in all")
	channels := flag.Int("channels", 10, "virtual channels")
	interval := flag.Duration("interval", time.Second, "poll interval")
	duration := flag.Duration("duration", 10*time.Second, "time under load after every point was published")
	memProfile := flag.String("memprofile", "", "write a heap profile at the end to `file`")
	flag.Parse()
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50) // as `voltage run` does
	}
	if err := run(*points, *channels, *interval, *duration, *memProfile); err != nil {
		fmt.Fprintln(os.Stderr, "memory:", err)
		os.Exit(1)
	}
}

func run(points, channels int, interval, duration time.Duration, memProfile string) error {
	dir, err := os.MkdirTemp("", "voltage-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	r, err := testenv.StartRedisServer(dir)
	if err != nil {
		return err
	}
	defer r.Stop()
	rss0 := rss()
	ro, _ := redis.ParseURL(r.URL())
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	w := redisbus.NewWriter(ro, redisbus.WriterOptions{Node: "bench", Log: log})
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return log }))
	strategy := supervisor.NewStrategy(supervisor.DefaultPolicy(), supervisor.NewStats(nil))
	dispatcher := node.NewPoolDispatcher(2*runtime.GOMAXPROCS(0), 300)
	var chans []acquisition.Options
	per := points / channels
	start := time.Now()
	for c := 0; c < channels; c++ {
		ch := &config.Channel{ID: uint32(100 + c), Name: "bench", Protocol: config.ProtocolVirtual, PollInterval: interval}
		for p := 0; p < per; p++ {
			lo, hi := 0.0, 1000.0
			ch.Points = append(ch.Points, config.Point{ID: uint32(p + 1), Type: messages.Measurement,
				Signal: "sine", Min: &lo, Max: &hi, Period: time.Minute, BitPosition: -1, Scale: 1, Deadband: 0})
		}
		chans = append(chans, acquisition.Options{Channel: ch, Node: "bench", Sink: w, Log: log,
			Supervisor: strategy, Dispatcher: dispatcher})
	}
	root, err := sys.Root.SpawnNamed(node.NewRootProps([]node.Child{
		{Name: "redis-writer", Props: actor.PropsFromProducer(func() actor.Actor { return &redisbus.WriterActor{W: w} })},
		{Name: "channels", Props: acquisition.NewChannelsProps(chans, strategy)},
	}, strategy), "voltage")
	if err != nil {
		return err
	}
	defer func() { _ = sys.Root.PoisonFuture(root).Wait() }()
	total := per * channels
	for w.Points() < total || w.Published() < int64(total) {
		if time.Since(start) > 2*time.Minute {
			return fmt.Errorf("only %d of %d points reached the writer", w.Points(), total)
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("machine: %s, %d CPUs, %s\n", cpuModel(), runtime.NumCPU(), runtime.Version())
	fmt.Printf("%d points (%d channels, one actor per point) all published to Redis %v after start\n",
		total, channels, time.Since(start).Round(time.Millisecond))
	peak := rss()
	end := time.Now().Add(duration)
	for time.Now().Before(end) {
		time.Sleep(200 * time.Millisecond)
		peak = max(peak, rss())
		if os.Getenv("TRACE") != "" {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Printf("rss %.0f heapinuse %.0f heapsys %.0f released %.0f next_gc %.0f numgc %d goroutines %d\n", mb(rss()), mb(ms.HeapInuse), mb(ms.HeapSys), mb(ms.HeapReleased), mb(ms.NextGC), ms.NumGC, runtime.NumGoroutine())
		}
	}
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Printf("RSS before the actors: %.1f MB; under load (%d updates/s for %v): peak %.1f MB; after GC %.1f MB; Go heap in use %.1f MB; goroutines %d\n",
		mb(rss0), int(float64(total)/interval.Seconds()), duration, mb(peak), mb(rss()), mb(ms.HeapInuse), runtime.NumGoroutine())
	fmt.Printf("per point: %.0f bytes of RSS growth\n", float64(peak-rss0)/float64(total))
	if memProfile != "" {
		f, err := os.Create(memProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		return pprof.WriteHeapProfile(f)
	}
	return nil
}

func mb(b uint64) float64 { return float64(b) / (1 << 20) }

// rss is VmRSS of this process in bytes.
func rss() uint64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			_, v, _ := strings.Cut(l, ":")
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}
