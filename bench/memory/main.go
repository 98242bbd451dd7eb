// Command memory measures the resident memory of a node with 100,000
// configured points (one actor per point) polled by virtual channels into a
// real redis-server.
//
//	go run ./bench/memory [-points 100000] [-channels 10] [-interval 1s]
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/voltage-ems/voltage/bench/benchnode"
	_ "github.com/voltage-ems/voltage/drivers/virtual"
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
	r, dir, err := benchnode.StartRedis()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	defer r.Stop()
	rss0 := rss()
	start := time.Now()
	n, err := benchnode.Start(r, benchnode.Load{Points: points, Channels: channels, Interval: interval, Signal: "sine", Sessions: true})
	if err != nil {
		return err
	}
	defer n.Stop()
	w := n.Writer
	per := points / channels
	total := per * channels
	for w.Points() < total || w.Published() < int64(total) {
		if time.Since(start) > 2*time.Minute {
			return fmt.Errorf("only %d of %d points reached the writer", w.Points(), total)
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("machine: %s\n", benchnode.Machine())
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
