// Command ingest measures sustained point updates per second from the
// virtual driver through channel, device and point actors into a real
// redis-server (pipelined HSET of the value/ts/q hashes + PUBLISH
// point:update), next to redis-benchmark -P 16 PUBLISH on the same machine.
//
//	go run ./bench/ingest [-points 20000] [-channels 20] [-interval 50ms] [-duration 10s]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/bench/benchnode"
	"github.com/voltage-ems/voltage/test/testenv"
)

func main() {
	points := flag.Int("points", 20000, "points in all")
	channels := flag.Int("channels", 20, "virtual channels (points are spread evenly)")
	interval := flag.Duration("interval", 50*time.Millisecond, "poll interval of every channel")
	duration := flag.Duration("duration", 10*time.Second, "measurement time after warm-up")
	skipRB := flag.Bool("skip-redis-benchmark", false, "do not run redis-benchmark")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the measurement to `file`")
	flag.Parse()
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50) // as `voltage run` does
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ingest:", err)
			os.Exit(1)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "ingest:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*points, *channels, *interval, *duration, *skipRB); err != nil {
		fmt.Fprintln(os.Stderr, "ingest:", err)
		os.Exit(1)
	}
}

func run(points, channels int, interval, duration time.Duration, skipRB bool) error {
	r, dir, err := benchnode.StartRedis()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	defer r.Stop()
	fmt.Printf("machine: %s\n", benchnode.Machine())
	if !skipRB {
		rate, err := redisBenchmark(r)
		if err != nil {
			return err
		}
		fmt.Printf("redis-benchmark -P 16 PUBLISH point:update <120-byte payload>: %.0f requests/s\n", rate)
		fmt.Printf("target: min(250000, 30%% of that = %.0f) = %.0f updates/s\n", 0.3*rate, min(250000, 0.3*rate))
	}
	n, err := benchnode.Start(r, benchnode.Load{Points: points, Channels: channels, Interval: interval, Signal: "random_walk"})
	if err != nil {
		return err
	}
	defer n.Stop()
	w := n.Writer
	per := points / channels
	offered := float64(per*channels) / interval.Seconds()
	fmt.Printf("load: %d points in %d virtual channels polled every %v (random walk, every sample changes): %.0f samples/s offered\n",
		per*channels, channels, interval, offered)
	time.Sleep(3 * time.Second) // warm-up
	n0, t0 := w.Published(), time.Now()
	var cpu0 = benchnode.CPUTime()
	maxDepth := 0
	for time.Since(t0) < duration {
		time.Sleep(250 * time.Millisecond)
		maxDepth = max(maxDepth, w.QueueDepth())
	}
	n1, el := w.Published(), time.Since(t0)
	cpu := benchnode.CPUTime() - cpu0
	rate := float64(n1-n0) / el.Seconds()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	defer rdb.Close()
	fmt.Printf("ingest: %.0f updates/s into Redis (HSET x3 + PUBLISH each) over %v; writer queue max %d; voltage CPU %.0f%% of one core\n",
		rate, el.Round(time.Millisecond), maxDepth, 100*cpu.Seconds()/el.Seconds())
	fmt.Printf("redis: %d fields in comsrv:100:m\n", rdb.HLen(context.Background(), "comsrv:100:m").Val())
	return nil
}

var rpsRE = regexp.MustCompile(`([0-9.]+) requests per second`)

func redisBenchmark(r *testenv.Redis) (float64, error) {
	payload := `{"channel_id":1001,"point_type":"m","point_id":10001,"value":230.5,"timestamp":1764090000000,"quality":"good","node":"sub-a"}`
	out, err := exec.Command("redis-benchmark", "-h", "127.0.0.1", "-p", strconv.Itoa(r.Port),
		"-P", "16", "-n", "2000000", "-q", "PUBLISH", "point:update", payload).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("redis-benchmark: %v: %s", err, out)
	}
	m := rpsRE.FindAllStringSubmatch(string(out), -1)
	if len(m) == 0 {
		return 0, fmt.Errorf("redis-benchmark output not understood: %s", out)
	}
	return strconv.ParseFloat(m[len(m)-1][1], 64)
}
