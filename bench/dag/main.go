// Command dag measures the computation DAG: 10,000 computations in 5
// levels (level 0 sums 10 field inputs each, covering 20,000 inputs; each
// later computation reads two of the level before) fed by 50,000 input
// updates/s in 20 ms batches (as the node's feed delivers them): sustained
// recomputes per second and the latency from an input update's sample time
// to the end of the wave that published the outputs depending on it.
//
//	go run ./bench/dag [-nodes 10000] [-levels 5] [-inputs 20000] [-rate 50000] [-duration 10s]
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/voltage-ems/voltage/actors/dag"
	"github.com/voltage-ems/voltage/bench/benchnode"
	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/supervisor"
)

type discard struct{ n atomic.Int64 }

func (d *discard) Publish(*messages.PointUpdate) { d.n.Add(1) }

func main() {
	nodes := flag.Int("nodes", 10000, "computations")
	levels := flag.Int("levels", 5, "levels")
	inputs := flag.Int("inputs", 20000, "field inputs")
	rate := flag.Int("rate", 50000, "input updates per second")
	duration := flag.Duration("duration", 10*time.Second, "measurement time")
	flag.Parse()
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50) // as `voltage run` does
	}
	if err := run(*nodes, *levels, *inputs, *rate, *duration); err != nil {
		fmt.Fprintln(os.Stderr, "dag:", err)
		os.Exit(1)
	}
}

func run(nodes, levels, inputs, rate int, duration time.Duration) error {
	per := nodes / levels
	fan := inputs / per // inputs per level-0 computation
	var csv, yaml strings.Builder
	csv.WriteString("point_id,type,name,unit,signal,min,max,period\n")
	for i := 1; i <= inputs; i++ {
		fmt.Fprintf(&csv, "%d,m,in%d,kW,sine,0,1,60s\n", i, i)
	}
	yaml.WriteString("channels:\n  - {id: 1, name: field, protocol: virtual, points: in.csv}\n  - {id: 9, name: computed, protocol: compute}\ncomputations:\n")
	for l := 0; l < levels; l++ {
		for j := 0; j < per; j++ {
			out := l*per + j + 1
			var ins []string
			var expr []string
			if l == 0 {
				for k := 0; k < fan; k++ {
					ins = append(ins, fmt.Sprintf(`"1:m:%d"`, j*fan+k+1))
					expr = append(expr, fmt.Sprintf("input%d", k+1))
				}
			} else {
				a, b := (l-1)*per+j+1, (l-1)*per+(j+1)%per+1
				ins = []string{fmt.Sprintf(`"9:m:%d"`, a), fmt.Sprintf(`"9:m:%d"`, b)}
				expr = []string{"input1", "input2 * 0.5"}
			}
			fmt.Fprintf(&yaml, "  - {output: \"9:m:%d\", expression: %q, inputs: [%s]}\n", out, strings.Join(expr, " + "), strings.Join(ins, ", "))
		}
	}
	start := time.Now()
	cfg, err := config.Parse([]byte(yaml.String()), "/bench/node.yaml", func(string) ([]byte, error) { return []byte(csv.String()), nil })
	if err != nil {
		return err
	}
	fmt.Printf("machine: %s\n", benchnode.Machine())
	fmt.Printf("%d computations in %d levels over %d inputs: config loaded and compiled in %v\n", nodes, levels, inputs, time.Since(start).Round(time.Millisecond))

	var mu sync.Mutex
	var lat []time.Duration
	var evals, waves atomic.Int64
	measuring := atomic.Bool{}
	sink := &discard{}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return log }))
	pid, err := sys.Root.SpawnNamed(dag.NewProps(dag.Options{Config: cfg, Node: "bench", Sink: sink, Log: log,
		Supervisor: supervisor.NewStrategy(supervisor.DefaultPolicy(), nil),
		OnWave: func(in, ev int, oldest, done time.Time) {
			if !measuring.Load() {
				return
			}
			evals.Add(int64(ev))
			waves.Add(1)
			mu.Lock()
			lat = append(lat, done.Sub(oldest))
			mu.Unlock()
		}}, nil), "dag")
	if err != nil {
		return err
	}
	defer func() { _ = sys.Root.PoisonFuture(pid).Wait() }()

	// Every input once, so that every computation has its inputs.
	all := make([]messages.PointUpdate, inputs)
	for i := range all {
		all[i] = messages.PointUpdate{Key: messages.PointKey{Channel: 1, Type: 'm', Point: uint32(i + 1)}, Value: 1, Timestamp: time.Now().UnixMilli()}
	}
	sys.Root.Send(pid, &messages.PointUpdates{Updates: all})
	time.Sleep(3 * time.Second)

	perBatch := rate / 50
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	stop := time.Now().Add(duration + 2*time.Second)
	measureAt := time.Now().Add(2 * time.Second)
	var sent int64
	var t0 time.Time
	pub0 := int64(0)
	for now := range tick.C {
		if now.After(stop) {
			break
		}
		if !measuring.Load() && now.After(measureAt) {
			measuring.Store(true)
			t0, pub0 = now, sink.n.Load()
		}
		b := make([]messages.PointUpdate, perBatch)
		ms := now.UnixMilli()
		for i := range b {
			b[i] = messages.PointUpdate{Key: messages.PointKey{Channel: 1, Type: 'm', Point: uint32(rand.IntN(inputs) + 1)},
				Value: rand.Float64(), Timestamp: ms}
		}
		sys.Root.Send(pid, &messages.PointUpdates{Updates: b})
		if measuring.Load() {
			sent += int64(perBatch)
		}
	}
	el := time.Since(t0)
	measuring.Store(false)
	mu.Lock()
	defer mu.Unlock()
	if len(lat) == 0 {
		return fmt.Errorf("no wave completed")
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	fmt.Printf("load: %.0f input updates/s in 20 ms batches\n", float64(sent)/el.Seconds())
	fmt.Printf("recomputes: %.0f/s sustained (%d waves, %.0f evaluations per wave), outputs published %.0f/s\n",
		float64(evals.Load())/el.Seconds(), waves.Load(), float64(evals.Load())/float64(max(waves.Load(), 1)), float64(sink.n.Load()-pub0)/el.Seconds())
	fmt.Printf("latency input sample -> wave done (all its outputs published): p50 %v, p99 %v, max %v\n",
		q(0.5).Round(time.Millisecond), q(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
	return nil
}
