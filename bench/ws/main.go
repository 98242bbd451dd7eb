// Command ws measures live sessions: with 50,000 point updates/s flowing
// (virtual channels, real redis-server) and 200 WebSocket sessions each
// subscribed to 1000 points, the latency from a sample's timestamp to the
// frame carrying it arriving at the client (p50/p99, the 100 ms coalescing
// window included), and the node's CPU and memory per session. The clients
// run in a child process so the node's figures are its own.
//
//	go run ./bench/ws [-sessions 200] [-points 5000] [-interval 100ms] [-duration 10s]
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime/debug"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/bench/benchnode"
	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/web"
)

func main() {
	sessions := flag.Int("sessions", 200, "WebSocket sessions")
	points := flag.Int("points", 50000, "points, in channels of 1000; a session subscribes to one channel")
	interval := flag.Duration("interval", time.Second, "poll interval (every sample changes)")
	duration := flag.Duration("duration", 10*time.Second, "measurement time")
	clients := flag.String("clients", "", "internal: run the clients against this ws:// URL")
	flag.Parse()
	var err error
	if *clients != "" {
		err = runClients(*clients, *sessions, *points/1000, *duration)
	} else {
		if os.Getenv("GOGC") == "" {
			debug.SetGCPercent(50) // as `voltage run` does
		}
		err = run(*sessions, *points, *interval, *duration)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ws:", err)
		os.Exit(1)
	}
}

func run(sessions, points int, interval, duration time.Duration) error {
	r, dir, err := benchnode.StartRedis()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	defer r.Stop()
	n, err := benchnode.Start(r, benchnode.Load{Points: points, Channels: points / 1000, Interval: interval, Signal: "random_walk", Sessions: true})
	if err != nil {
		return err
	}
	defer n.Stop()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	defer rdb.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := web.NewHandler(web.Deps{Config: n.Config, Redis: rdb, Gatherer: prometheus.NewRegistry(), Context: ctx,
		Sessions: n.Sessions, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	// The node's server with the default limits, except the connections
	// per client address: every session comes from 127.0.0.1 here.
	opts := web.ServerOptions{ReadHeaderTimeout: config.DefaultHTTPReadHeaderTimeout, ReadTimeout: config.DefaultHTTPReadTimeout,
		WriteTimeout: config.DefaultHTTPWriteTimeout, IdleTimeout: config.DefaultHTTPIdleTimeout,
		MaxHeaderBytes: config.DefaultHTTPMaxHeaderBytes, MaxConnsPerClient: sessions + 16}
	ln, err := web.Listen("127.0.0.1:0", opts)
	if err != nil {
		return err
	}
	srv := web.NewServer(h, opts)
	go srv.Serve(ln)
	defer srv.Close()

	fmt.Printf("machine: %s\n", benchnode.Machine())
	fmt.Printf("load: %d points changing every %v = %.0f updates/s; %d sessions, each subscribed to %d points\n",
		points, interval, float64(points)/interval.Seconds(), sessions, 1000)
	time.Sleep(3 * time.Second)
	cpu0, rss0, t0 := benchnode.CPUTime(), benchnode.RSS(), time.Now()
	time.Sleep(duration / 2)
	baseCPU := (benchnode.CPUTime() - cpu0).Seconds() / time.Since(t0).Seconds()
	fmt.Printf("node without sessions: CPU %.0f%% of one core, RSS %.0f MB\n", 100*baseCPU, float64(rss0)/(1<<20))

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	child := exec.Command(exe, "-clients", "ws://"+ln.Addr().String()+"/ws", "-sessions", strconv.Itoa(sessions), "-points", strconv.Itoa(points),
		"-duration", (duration + 3*time.Second).String())
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		return err
	}
	if err := child.Start(); err != nil {
		return err
	}
	time.Sleep(3 * time.Second) // connected, snapshots sent
	cpu1, t1, peak := benchnode.CPUTime(), time.Now(), benchnode.RSS()
	for time.Since(t1) < duration {
		time.Sleep(250 * time.Millisecond)
		peak = max(peak, benchnode.RSS())
	}
	withCPU := (benchnode.CPUTime() - cpu1).Seconds() / time.Since(t1).Seconds()
	var res clientResult
	if err := json.NewDecoder(bufio.NewReader(out)).Decode(&res); err != nil {
		return fmt.Errorf("client results: %w", err)
	}
	_ = child.Wait()
	fmt.Printf("node with sessions: CPU %.0f%% of one core (%.2f%% of a core per session), peak RSS %.0f MB (%.0f KB per session)\n",
		100*withCPU, 100*(withCPU-baseCPU)/float64(sessions), float64(peak)/(1<<20), float64(peak-rss0)/1024/float64(sessions))
	fmt.Printf("latency sample timestamp -> frame received: p50 %d ms, p99 %d ms, max %d ms (%d point values in %d frames, %.1f frames/s per session)\n",
		res.P50, res.P99, res.Max, res.Points, res.Frames, float64(res.Frames)/res.Seconds/float64(sessions))
	return nil
}

var tsField = []byte(`"ts":`)

type clientResult struct {
	P50, P99, Max  int64
	Points, Frames int64
	Seconds        float64
}

// runClients connects the sessions, measures until duration passes and
// prints a clientResult as JSON.
func runClients(url string, sessions, channels int, duration time.Duration) error {
	var mu sync.Mutex
	var lat []int64
	var frames int64
	start := time.Now().Add(2 * time.Second) // ignore snapshots and warm-up
	end := time.Now().Add(duration)
	var wg sync.WaitGroup
	for i := 0; i < sessions; i++ {
		c, _, err := websocket.DefaultDialer.Dial(url, nil)
		if err != nil {
			return err
		}
		sub := fmt.Sprintf(`{"op":"subscribe","patterns":["%d:m:*"]}`, 100+i%channels)
		if err := c.WriteMessage(websocket.TextMessage, []byte(sub)); err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			local := make([]int64, 0, 1<<16)
			var n int64
			for time.Now().Before(end) {
				_ = c.SetReadDeadline(end.Add(time.Second))
				_, data, err := c.ReadMessage()
				if err != nil {
					break
				}
				now := time.Now()
				if now.Before(start) || !bytes.HasPrefix(data, []byte(`{"type":"update"`)) {
					continue
				}
				n++
				ms := now.UnixMilli()
				for rest := data; ; { // scan "ts": fields without a full decode
					i := bytes.Index(rest, tsField)
					if i < 0 {
						break
					}
					rest = rest[i+5:]
					j := 0
					for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
						j++
					}
					ts, _ := strconv.ParseInt(string(rest[:j]), 10, 64)
					local = append(local, ms-ts)
				}
			}
			mu.Lock()
			lat = append(lat, local...)
			frames += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(lat) == 0 {
		return fmt.Errorf("no update received")
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) int64 { return lat[int(p*float64(len(lat)-1))] }
	return json.NewEncoder(os.Stdout).Encode(clientResult{P50: q(0.5), P99: q(0.99), Max: lat[len(lat)-1],
		Points: int64(len(lat)), Frames: frames, Seconds: time.Until(end).Seconds() + end.Sub(start).Seconds()})
}
