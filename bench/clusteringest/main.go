// Command clusteringest runs the ingest benchmark (bench/ingest: virtual
// channels polled fast, random walk so every sample changes, a real
// redis-server) through the real voltage binary, once as one node and once
// as a 3-node cluster sharing that Redis, with the same load:
//
//   - one node: voltage run -c node.yaml (no cluster);
//   - three nodes: voltage run -c node.yaml --cluster cluster.yaml --node nI,
//     the same node.yaml, with a cluster file of 3 nodes in one substation
//     where channel i is eligible on [n(i%3), n((i+1)%3), n((i+2)%3)], so
//     each node runs a third of the channels.
//
// Each run waits until every channel runs where it should (in the cluster:
// lease:channel:{id} held by its first eligible node), is polled there and
// has all its points in Redis; then it warms up and measures for -duration:
// updates/s into Redis (the nodes' voltage_points_published_total, as
// bench/ingest counts the writer's published updates; INFO commandstats
// PUBLISH calls as a check), polls (voltage_channel_polls_total), CPU of
// every node process (/proc/{pid}/stat), of redis-server (INFO cpu) and of
// the machine (/proc/stat), the point:update messages each node's
// subscriber receives, every Redis command's calls/s (lease renewals and
// heartbeats: EVALSHA, EXISTS, PEXPIRE, ...) and the changes of owner
// (lease:fence:* counters) during the measurement. /ready of every node is
// reported, not waited for: a node whose membership view lost a live peer
// answers 503 while every channel runs where it should. A cluster that does
// not settle within -settle is measured anyway, and says so.
//
// The nodes run everything `voltage run` runs, not just the acquisition
// core of bench/ingest: the embedded history (every update, on the node
// holding the history lease in the cluster), the live-session and
// computation feeds, and the Redis subscriber that receives every
// point:update (in the cluster each node receives every other node's).
//
//	go run ./bench/clusteringest [-channels 20] [-points 20000] [-interval 50ms] [-duration 20s] [-warmup 5s] [-settle 60s] [-keep]
//
// All processes share the machine's cores: on a small machine the cluster
// figure is bounded by the total CPU, not by one node. The default load
// (400,000 samples/s) saturates a 2-core machine; -points 2000 (40,000/s)
// is one that a single node sustains there. Other processes running
// meanwhile add noise (the machine's busy CPU outside the measured
// processes is printed).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/bench/benchnode"
	"github.com/voltage-ems/voltage/test/testenv"
)

const (
	token     = "bench-viewer-token-0000001"
	firstChan = 100 // channel ids 100, 101, ... as in bench/ingest
	nodeCount = 3
)

func main() {
	channels := flag.Int("channels", 20, "virtual channels (points are spread evenly)")
	points := flag.Int("points", 20000, "points in all")
	interval := flag.Duration("interval", 50*time.Millisecond, "poll interval of every channel")
	duration := flag.Duration("duration", 20*time.Second, "measurement time of each run, after the warm-up")
	warmup := flag.Duration("warmup", 5*time.Second, "time between every channel running where it should and the measurement")
	settle := flag.Duration("settle", 60*time.Second, "how long to wait for every channel to run where it should (then measure anyway)")
	keep := flag.Bool("keep", false, "keep the work directory (configs, node logs) and print its path")
	flag.Parse()
	if *channels < nodeCount || *points < *channels || *interval < 10*time.Millisecond || *duration <= 0 {
		fmt.Fprintf(os.Stderr, "clusteringest: want -channels >= %d, -points >= -channels, -interval >= 10ms, -duration > 0\n", nodeCount)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	b := &bench{ctx: ctx, channels: *channels, per: *points / *channels, interval: *interval,
		warmup: *warmup, duration: *duration, settle: *settle, urls: map[string]string{},
		http: &http.Client{Timeout: 10 * time.Second}}
	err := b.run(*keep)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "clusteringest:", err)
		os.Exit(1)
	}
}

// bench is what both runs share: the binary, one redis-server, the files.
type bench struct {
	ctx                      context.Context
	channels, per            int // channels, points per channel
	interval                 time.Duration
	warmup, duration, settle time.Duration
	bin, dir                 string
	redis                    *testenv.Redis
	rdb                      *redis.Client
	http                     *http.Client
	urls                     map[string]string // node name -> http://host:port
	procs                    []*proc
	nodeFile, clusterFile    string
	clusterNames             []string
}

func (b *bench) run(keep bool) (err error) {
	r, dir, err := benchnode.StartRedis()
	if err != nil {
		return err
	}
	defer r.Stop()
	defer func() {
		if keep || err != nil {
			fmt.Fprintf(os.Stderr, "work directory (configs, node logs) kept: %s\n", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	b.redis, b.dir, b.bin = r, dir, filepath.Join(dir, "voltage")
	b.rdb = redis.NewClient(&redis.Options{Addr: r.Addr(), Protocol: 2}) // RESP2: INFO is a plain bulk string
	defer b.rdb.Close()
	defer func() { stopAll(b.procs) }()
	if out, err := exec.Command("go", "build", "-o", b.bin, "./cmd/voltage").CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v: %s", err, out)
	}
	if err := b.writeConfigs(); err != nil {
		return err
	}
	version := b.rdb.InfoMap(b.ctx, "server").Item("Server", "redis_version")
	tree, _ := exec.Command("git", "describe", "--always", "--dirty").Output()
	fmt.Printf("machine: %s\n", benchnode.Machine())
	fmt.Printf("build: voltage from this tree (git %s)\n", strings.TrimSpace(string(tree)))
	fmt.Printf("redis: redis-server %s on %s; nodes: the voltage binary, one process each, running everything `voltage run` runs\n", version, r.Addr())
	fmt.Printf("load: %d points in %d virtual channels polled every %v (random walk, every sample changes): %.0f samples/s offered\n",
		b.per*b.channels, b.channels, b.interval, b.offered())
	fmt.Printf("runs: warm-up %v, measured %v each; every process on the same %d CPUs (other processes on the machine add noise)\n",
		b.warmup, b.duration, runtime.NumCPU())

	single, err := b.measure("1 node", []string{"single"}, func(string) []string {
		return []string{"run", "-c", b.nodeFile, "--log-level", "warn"}
	})
	if err != nil {
		return err
	}
	if err := b.rdb.FlushAll(b.ctx).Err(); err != nil {
		return err
	}
	cluster, err := b.measure("3 nodes", b.clusterNames, func(n string) []string {
		return []string{"run", "-c", b.nodeFile, "--cluster", b.clusterFile, "--node", n, "--log-level", "warn"}
	})
	if err != nil {
		return err
	}
	b.report(single, cluster)
	b.reportLogs()
	return nil
}

func (b *bench) offered() float64 { return float64(b.per*b.channels) / b.interval.Seconds() }

// expectedOwner is the first eligible node of channel index i.
func expectedOwner(i int) string { return fmt.Sprintf("n%d", i%nodeCount+1) }

func chanID(i int) string { return strconv.Itoa(firstChan + i) }

// writeConfigs writes the points table, node.yaml and cluster.yaml.
func (b *bench) writeConfigs() error {
	var csv strings.Builder
	csv.WriteString("point_id,type,signal,min,max,period\n")
	for p := 1; p <= b.per; p++ {
		fmt.Fprintf(&csv, "%d,m,random_walk,0,1000,1m\n", p)
	}
	port, err := testenv.PickPort()
	if err != nil {
		return err
	}
	b.urls["single"] = fmt.Sprintf("http://127.0.0.1:%d", port)
	var node strings.Builder
	fmt.Fprintf(&node, `# bench/clusteringest: the same file for the single node and every cluster node
node: {name: single, http: "127.0.0.1:%d", data_dir: %q}
redis: {url: %q}
auth: {tokens: [{name: bench, token: %s, role: viewer}]}
channels:
`, port, filepath.Join(b.dir, "data"), b.redis.URL(), token)
	for c := 0; c < b.channels; c++ {
		fmt.Fprintf(&node, "  - {id: %s, name: virt-%d, protocol: virtual, poll_interval: %s, points: p.csv}\n", chanID(c), c, b.interval)
	}
	var cl strings.Builder
	cl.WriteString("name: clusteringest\nprovider: {kind: automanaged}\nnodes:\n")
	for i := 1; i <= nodeCount; i++ {
		var ps [3]int
		for j := range ps {
			if ps[j], err = testenv.PickPort(); err != nil {
				return err
			}
		}
		n := fmt.Sprintf("n%d", i)
		b.clusterNames = append(b.clusterNames, n)
		b.urls[n] = fmt.Sprintf("http://127.0.0.1:%d", ps[2])
		fmt.Fprintf(&cl, "  - {name: %s, substation: A, remote: 127.0.0.1:%d, membership: 127.0.0.1:%d, http: 127.0.0.1:%d}\n", n, ps[0], ps[1], ps[2])
	}
	cl.WriteString("channels:\n")
	for c := 0; c < b.channels; c++ {
		fmt.Fprintf(&cl, "  %s: {nodes: [%s, %s, %s]}\n", chanID(c), expectedOwner(c), expectedOwner(c+1), expectedOwner(c+2))
	}
	b.nodeFile, b.clusterFile = filepath.Join(b.dir, "node.yaml"), filepath.Join(b.dir, "cluster.yaml")
	for f, s := range map[string]string{filepath.Join(b.dir, "p.csv"): csv.String(), b.nodeFile: node.String(), b.clusterFile: cl.String()} {
		if err := os.WriteFile(f, []byte(s), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// result is one run: the samples at the start and the end of the
// measurement and what was seen in between.
type result struct {
	label      string
	names      []string
	settled    time.Duration // start -> every channel running where it should
	unsettled  string        // why it did not settle within -settle ("" when it did)
	s0, s1     sample
	maxQueue   map[string]float64
	ready      map[string]string // /ready of each node at the end of the measurement
	notReadyAt map[string]int    // /ready checks (every 2 s) that were not 200
	checks     int
}

func (r *result) secs() float64 { return r.s1.at.Sub(r.s0.at).Seconds() }

func (r *result) single() bool { return len(r.names) == 1 }

// owner is where channel index i should run.
func (r *result) owner(i int) string {
	if r.single() {
		return r.names[0]
	}
	return expectedOwner(i)
}

// measure starts the nodes, waits until every channel runs where it
// should, warms up, measures and stops the nodes.
func (b *bench) measure(label string, names []string, args func(string) []string) (*result, error) {
	fmt.Printf("\n%s: starting %s\n", label, strings.Join(names, ", "))
	res := &result{label: label, names: names, maxQueue: map[string]float64{}, ready: map[string]string{}, notReadyAt: map[string]int{}}
	var procs []*proc
	defer func() { stopAll(procs) }() // all at once: stopped one by one, each would fail its units over to the others
	t0 := time.Now()
	for _, n := range names {
		p, err := b.start(n, args(n)...)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
	}
	deadline := t0.Add(b.settle)
	for {
		why := b.notSettled(res)
		if why == "" {
			res.settled = time.Since(t0)
			fmt.Printf("%s: every channel runs where it should, polled, all points in Redis, %v after start; warming up %v\n",
				label, res.settled.Round(time.Millisecond), b.warmup)
			break
		}
		for _, p := range procs {
			if !p.running() {
				return nil, fmt.Errorf("%s exited during start-up (log %s)", p.name, p.log.Name())
			}
		}
		if time.Now().After(deadline) {
			res.unsettled = why
			fmt.Printf("%s: NOT SETTLED %v after start (%s); measuring anyway after the warm-up\n", label, b.settle, why)
			break
		}
		if err := b.sleep(200 * time.Millisecond); err != nil {
			return nil, err
		}
	}
	if err := b.sleep(b.warmup); err != nil {
		return nil, err
	}
	var err error
	if res.s0, err = b.sample(res, procs); err != nil {
		return nil, err
	}
	end := res.s0.at.Add(b.duration)
	for time.Now().Before(end) {
		if err := b.sleep(min(2*time.Second, time.Until(end))); err != nil {
			return nil, err
		}
		res.checks++
		for _, n := range names {
			if m, err := b.metrics(b.urls[n]); err == nil {
				res.maxQueue[n] = max(res.maxQueue[n], m["voltage_redis_queue_depth"])
			}
			if code, _, err := b.get(b.urls[n] + "/ready"); err != nil || code != 200 {
				res.notReadyAt[n]++
			}
		}
	}
	if res.s1, err = b.sample(res, procs); err != nil {
		return nil, err
	}
	for _, n := range names {
		code, body, err := b.get(b.urls[n] + "/ready")
		switch {
		case err != nil:
			res.ready[n] = err.Error()
		case code == 200:
			res.ready[n] = "ready"
		default:
			var e struct{ Error struct{ Message string } }
			_ = json.Unmarshal(body, &e)
			res.ready[n] = fmt.Sprintf("%d %s", code, e.Error.Message)
		}
	}
	for _, p := range procs {
		if !p.running() {
			return nil, fmt.Errorf("%s exited during the measurement (log %s)", p.name, p.log.Name())
		}
	}
	f := b.figures(res)
	fmt.Printf("%s: measured %.1f s: %.0f updates/s into Redis, nodes %.0f%% + redis %.0f%% of a core; stopping\n",
		label, res.secs(), f.updates, 100*f.nodeCPU, 100*f.redisCPU)
	return res, nil
}

func (b *bench) sleep(d time.Duration) error {
	select {
	case <-b.ctx.Done():
		return b.ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// channelJSON is what GET /api/channels/{id} says of a channel.
type channelJSON struct {
	Connected bool   `json:"connected"`
	Polls     uint64 `json:"polls"`
	Node      string `json:"node"`
	LastError string `json:"last_error"`
}

// notSettled says why the nodes are not yet where the measurement needs
// them ("" when they are): (cluster) every channel leased by its first
// eligible node, every channel connected and polled there (asked of that
// node, so that the answer is local), all its points in Redis.
func (b *bench) notSettled(r *result) string {
	for c := 0; c < b.channels; c++ {
		want := r.owner(c)
		if !r.single() {
			v, _ := b.rdb.Get(b.ctx, "lease:channel:"+chanID(c)).Result()
			if o, _, _ := strings.Cut(v, ":"); o != want {
				return fmt.Sprintf("lease:channel:%s = %q, want %s", chanID(c), v, want)
			}
		}
		var ch channelJSON
		if err := b.getJSON(b.urls[want]+"/api/channels/"+chanID(c), &ch); err != nil {
			return err.Error()
		}
		if ch.Node != want || !ch.Connected || ch.Polls == 0 {
			return fmt.Sprintf("%s says channel %s: node %q connected %v polls %d %s", want, chanID(c), ch.Node, ch.Connected, ch.Polls, ch.LastError)
		}
		if n := b.rdb.HLen(b.ctx, "comsrv:"+chanID(c)+":m").Val(); n != int64(b.per) {
			return fmt.Sprintf("comsrv:%s:m has %d of %d points", chanID(c), n, b.per)
		}
	}
	return ""
}

func (b *bench) get(url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(b.ctx, "GET", url, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := b.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func (b *bench) getJSON(url string, v any) error {
	code, body, err := b.get(url)
	if err != nil {
		return err
	}
	if code != 200 {
		return fmt.Errorf("GET %s: %d %s", url, code, body)
	}
	return json.Unmarshal(body, v)
}

// metrics reads a node's Prometheus samples: unlabelled ones by name, and
// the sum over channels of voltage_channel_polls_total under that name.
func (b *bench) metrics(url string) (map[string]float64, error) {
	code, body, err := b.get(url + "/metrics")
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("GET %s/metrics: %d", url, code)
	}
	m := map[string]float64{}
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		name, v := l[:i], l[i+1:]
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(name, "voltage_channel_polls_total{"):
			m["voltage_channel_polls_total"] += f
		case !strings.Contains(name, "{"):
			m[name] = f
		}
	}
	return m, nil
}

// sample is everything read at one instant.
type sample struct {
	at          time.Time
	busy, total float64 // machine CPU ticks (/proc/stat)
	irq, steal  float64
	redisCPU    float64 // seconds, INFO cpu (user + sys)
	cmds        map[string]cmdStat
	netOut      float64
	fences      int64          // sum of lease:fence:* (every change of owner adds one)
	holders     map[string]int // node -> channel leases held
	self        time.Duration
	nodes       []nodeSample
}

type cmdStat struct{ calls, usec float64 }

type nodeSample struct {
	cpu                                  time.Duration
	rss                                  uint64
	published, recv, own, polls, history float64
}

func (b *bench) sample(r *result, procs []*proc) (sample, error) {
	s := sample{at: time.Now(), self: benchnode.CPUTime(), holders: map[string]int{}}
	s.busy, s.irq, s.steal, s.total = machineCPU()
	for i, n := range r.names {
		var ns nodeSample
		ns.cpu, ns.rss = procStat(procs[i].cmd.Process.Pid)
		m, err := b.metrics(b.urls[n])
		if err != nil {
			return s, err
		}
		ns.published, ns.recv, ns.own = m["voltage_points_published_total"], m["voltage_redis_updates_received_total"], m["voltage_redis_updates_own_dropped_total"]
		ns.polls, ns.history = m["voltage_channel_polls_total"], m["voltage_history_points_written_total"]
		s.nodes = append(s.nodes, ns)
	}
	info, err := b.rdb.Info(b.ctx, "cpu", "commandstats", "stats").Result()
	if err != nil {
		return s, err
	}
	s.cmds = map[string]cmdStat{}
	for _, l := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), ":")
		if !ok {
			continue
		}
		switch {
		case k == "used_cpu_user" || k == "used_cpu_sys":
			f, _ := strconv.ParseFloat(v, 64)
			s.redisCPU += f
		case k == "total_net_output_bytes":
			s.netOut, _ = strconv.ParseFloat(v, 64)
		case strings.HasPrefix(k, "cmdstat_"):
			var c cmdStat
			for _, f := range strings.Split(v, ",") {
				fk, fv, _ := strings.Cut(f, "=")
				switch fk {
				case "calls":
					c.calls, _ = strconv.ParseFloat(fv, 64)
				case "usec":
					c.usec, _ = strconv.ParseFloat(fv, 64)
				}
			}
			s.cmds[strings.TrimPrefix(k, "cmdstat_")] = c
		}
	}
	if !r.single() {
		var leases, fences []string
		for c := 0; c < b.channels; c++ {
			leases = append(leases, "lease:channel:"+chanID(c))
			fences = append(fences, "lease:fence:channel:"+chanID(c))
		}
		fences = append(fences, "lease:fence:history:writer")
		lv, err := b.rdb.MGet(b.ctx, leases...).Result()
		if err != nil {
			return s, err
		}
		for _, v := range lv {
			if v, ok := v.(string); ok {
				o, _, _ := strings.Cut(v, ":")
				s.holders[o]++
			}
		}
		fv, err := b.rdb.MGet(b.ctx, fences...).Result()
		if err != nil {
			return s, err
		}
		for _, v := range fv {
			if v, ok := v.(string); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				s.fences += n
			}
		}
	} else {
		s.holders[r.names[0]] = b.channels
	}
	return s, nil
}

// figures of a run, per second of measurement.
type figures struct {
	updates, publishes, samples float64 // updates written (nodes' counters), PUBLISH calls, samples polled
	nodeCPU, redisCPU, selfCPU  float64 // cores
	machineBusy                 float64 // cores busy on the whole machine
	irq, steal                  float64 // of which interrupts, stolen by the hypervisor
	netOut                      float64 // bytes/s out of Redis
	redisUsec                   float64 // µs of Redis command time per second
	ownerChanges                int64
	cmds                        map[string]cmdStat
	perNode                     []nodeFigures
}

type nodeFigures struct {
	name                      string
	channels                  int
	updates, recv, own, polls float64
	history                   float64
	cpu                       float64
	rss0, rss                 uint64
	queue                     float64
}

func (b *bench) figures(r *result) figures {
	secs := r.secs()
	f := figures{
		publishes:    (r.s1.cmds["publish"].calls - r.s0.cmds["publish"].calls) / secs,
		redisCPU:     (r.s1.redisCPU - r.s0.redisCPU) / secs,
		selfCPU:      (r.s1.self - r.s0.self).Seconds() / secs,
		netOut:       (r.s1.netOut - r.s0.netOut) / secs,
		machineBusy:  float64(runtime.NumCPU()) * (r.s1.busy - r.s0.busy) / max(r.s1.total-r.s0.total, 1),
		irq:          float64(runtime.NumCPU()) * (r.s1.irq - r.s0.irq) / max(r.s1.total-r.s0.total, 1),
		steal:        float64(runtime.NumCPU()) * (r.s1.steal - r.s0.steal) / max(r.s1.total-r.s0.total, 1),
		ownerChanges: r.s1.fences - r.s0.fences,
		cmds:         map[string]cmdStat{},
	}
	for k, c := range r.s1.cmds {
		d := cmdStat{calls: (c.calls - r.s0.cmds[k].calls) / secs, usec: (c.usec - r.s0.cmds[k].usec) / secs}
		f.cmds[k] = d
		f.redisUsec += d.usec
	}
	for i, n := range r.names {
		a, z := r.s0.nodes[i], r.s1.nodes[i]
		nf := nodeFigures{name: n, channels: r.s1.holders[n], updates: (z.published - a.published) / secs,
			recv: (z.recv - a.recv) / secs, own: (z.own - a.own) / secs, polls: (z.polls - a.polls) / secs,
			history: (z.history - a.history) / secs,
			cpu:     (z.cpu - a.cpu).Seconds() / secs, rss0: a.rss, rss: z.rss, queue: r.maxQueue[n]}
		f.updates += nf.updates
		f.samples += nf.polls * float64(b.per)
		f.nodeCPU += nf.cpu
		f.perNode = append(f.perNode, nf)
	}
	return f
}

// ingestCommands are the commands of the point writer; "info" is this
// harness's.
var ingestCommands = []string{"publish", "hset", "info"}

func (b *bench) report(single, cluster *result) {
	s, c := b.figures(single), b.figures(cluster)
	ratio := func(x, y float64) string {
		if x == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", y/x)
	}
	perNode := func(v func(nodeFigures) string) string {
		var out []string
		for _, n := range c.perNode {
			out = append(out, v(n))
		}
		return strings.Join(out, " / ")
	}
	fmt.Printf("\ningest, %d channels x %d points every %v = %.0f samples/s offered; per second of measurement, CPU in %% of one core:\n",
		b.channels, b.per, b.interval, b.offered())
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\t1 node\t3 nodes\t3/1\t3 nodes: "+strings.Join(cluster.names, " / "))
	row := func(name, format string, x, y float64, pn func(nodeFigures) string) {
		p := ""
		if pn != nil {
			p = perNode(pn)
		}
		fmt.Fprintf(tw, "%s\t"+format+"\t"+format+"\t%s\t%s\n", name, x, y, ratio(x, y), p)
	}
	sum := func(f figures, v func(nodeFigures) float64) float64 {
		t := 0.0
		for _, n := range f.perNode {
			t += v(n)
		}
		return t
	}
	num := func(v func(nodeFigures) float64) func(nodeFigures) string {
		return func(n nodeFigures) string { return fmt.Sprintf("%.0f", v(n)) }
	}
	upd := func(n nodeFigures) float64 { return n.updates }
	row("updates/s into Redis (writers' counters)", "%.0f", s.updates, c.updates, num(upd))
	row("PUBLISH calls/s (INFO commandstats)", "%.0f", s.publishes, c.publishes, nil)
	row("samples/s polled", "%.0f", s.samples, c.samples, num(func(n nodeFigures) float64 { return n.polls * float64(b.per) }))
	row(fmt.Sprintf("polls/s per channel (want %.1f)", 1/b.interval.Seconds()), "%.1f",
		s.samples/float64(b.per*b.channels), c.samples/float64(b.per*b.channels),
		func(n nodeFigures) string {
			if n.channels == 0 {
				return "-"
			}
			return fmt.Sprintf("%.1f", n.polls/float64(n.channels)) // of the leases held at the end
		})
	row("updates / samples polled", "%.2f", s.updates/max(s.samples, 1), c.updates/max(c.samples, 1), nil)
	row("channel leases held at the end", "%.0f", float64(b.channels), sum(c, func(n nodeFigures) float64 { return float64(n.channels) }),
		num(func(n nodeFigures) float64 { return float64(n.channels) }))
	row("changes of owner during the measurement", "%.0f", 0, float64(c.ownerChanges), nil)
	row("point:update received/s by the nodes' subscribers", "%.0f", sum(s, func(n nodeFigures) float64 { return n.recv + n.own }),
		sum(c, func(n nodeFigures) float64 { return n.recv + n.own }), num(func(n nodeFigures) float64 { return n.recv + n.own }))
	row("  of other nodes (to local consumers, history)", "%.0f", sum(s, func(n nodeFigures) float64 { return n.recv }),
		sum(c, func(n nodeFigures) float64 { return n.recv }), num(func(n nodeFigures) float64 { return n.recv }))
	row("history points written/s (embedded store)", "%.0f", sum(s, func(n nodeFigures) float64 { return n.history }),
		sum(c, func(n nodeFigures) float64 { return n.history }), num(func(n nodeFigures) float64 { return n.history }))
	row("writer queue max (sampled every 2 s)", "%.0f", sum(s, func(n nodeFigures) float64 { return n.queue }),
		sum(c, func(n nodeFigures) float64 { return n.queue }), num(func(n nodeFigures) float64 { return n.queue }))
	row("CPU voltage nodes %", "%.0f", 100*s.nodeCPU, 100*c.nodeCPU, num(func(n nodeFigures) float64 { return 100 * n.cpu }))
	row("CPU redis-server %", "%.0f", 100*s.redisCPU, 100*c.redisCPU, nil)
	row("CPU this harness %", "%.0f", 100*s.selfCPU, 100*c.selfCPU, nil)
	row(fmt.Sprintf("CPU machine busy %% (of %d)", 100*runtime.NumCPU()), "%.0f", 100*s.machineBusy, 100*c.machineBusy, nil)
	row("  of which interrupts (irq, softirq) %", "%.0f", 100*s.irq, 100*c.irq, nil)
	row("  of which stolen by the hypervisor %", "%.0f", 100*s.steal, 100*c.steal, nil)
	other := func(f figures) float64 {
		return max(0, 100*(f.machineBusy-f.irq-f.steal-f.nodeCPU-f.redisCPU-f.selfCPU))
	}
	row("  of which other processes %", "%.0f", other(s), other(c), nil)
	row("updates per CPU-second (nodes + redis)", "%.0f", s.updates/max(s.nodeCPU+s.redisCPU, 1e-9), c.updates/max(c.nodeCPU+c.redisCPU, 1e-9), nil)
	row("RSS MB at the start of the measurement", "%.0f", sum(s, func(n nodeFigures) float64 { return float64(n.rss0) / (1 << 20) }),
		sum(c, func(n nodeFigures) float64 { return float64(n.rss0) / (1 << 20) }), num(func(n nodeFigures) float64 { return float64(n.rss0) / (1 << 20) }))
	row("RSS MB at the end", "%.0f", sum(s, func(n nodeFigures) float64 { return float64(n.rss) / (1 << 20) }),
		sum(c, func(n nodeFigures) float64 { return float64(n.rss) / (1 << 20) }), num(func(n nodeFigures) float64 { return float64(n.rss) / (1 << 20) }))
	row("Redis output MB/s (replies, pub/sub fan-out)", "%.1f", s.netOut/1e6, c.netOut/1e6, nil)
	row("Redis command time ms/s", "%.0f", s.redisUsec/1000, c.redisUsec/1000, nil)
	tw.Flush()
	for _, r := range []*result{single, cluster} {
		var rd []string
		for _, n := range r.names {
			rd = append(rd, fmt.Sprintf("%s %s (not ready at %d of %d checks)", n, r.ready[n], r.notReadyAt[n], r.checks))
		}
		state := fmt.Sprintf("settled %v after start", r.settled.Round(time.Millisecond))
		if r.unsettled != "" {
			state = "NOT SETTLED: " + r.unsettled
		}
		fmt.Printf("%s: %s; /ready at the end: %s\n", r.label, state, strings.Join(rd, "; "))
	}

	// Every command's calls/s: what the cluster adds besides the writers'
	// HSET and PUBLISH is placement (lease renewals, heartbeats) and the
	// remote status requests' lease reads.
	fmt.Printf("\nRedis commands during the measurement (INFO commandstats):\n")
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "command\t1 node calls/s\t3 nodes calls/s\t1 node µs/s\t3 nodes µs/s\t")
	var names []string
	for k, v := range c.cmds {
		if v.calls > 0 || s.cmds[k].calls > 0 {
			names = append(names, k)
		}
	}
	for k, v := range s.cmds {
		if v.calls > 0 && !slices.Contains(names, k) {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	var otherS, otherC, otherUsecC float64
	for _, k := range names {
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.0f\t%.0f\t\n", k, s.cmds[k].calls, c.cmds[k].calls, s.cmds[k].usec, c.cmds[k].usec)
		if !slices.Contains(ingestCommands, k) {
			otherS += s.cmds[k].calls
			otherC += c.cmds[k].calls
			otherUsecC += c.cmds[k].usec
		}
	}
	tw.Flush()
	fmt.Printf("besides HSET and PUBLISH (the writers) and INFO (this harness): %.1f commands/s with 1 node, %.1f with 3 nodes (%.2f%% of Redis command time);\n"+
		"commandstats also counts the commands the lease scripts run (GET, PEXPIRE, PTTL, INCR, SET inside EVALSHA)\n",
		otherS, otherC, 100*otherUsecC/max(c.redisUsec, 1))

	state := ""
	if cluster.unsettled != "" {
		state = " (cluster NOT SETTLED)"
	}
	fmt.Printf("\nsummary: %d channels x %d points every %v (%.0f samples/s offered): 1 node %.0f updates/s (node %.0f%% + redis %.0f%% of a core); "+
		"3 nodes %.0f updates/s%s (%s; nodes %.0f%% + redis %.0f%%; %d changes of owner); ratio %s; machine busy %.0f%% and %.0f%% of %d%%; "+
		"placement and other commands %.1f/s vs %.1f/s\n",
		b.channels, b.per, b.interval, b.offered(), s.updates, 100*s.nodeCPU, 100*s.redisCPU,
		c.updates, state, perNode(func(n nodeFigures) string { return fmt.Sprintf("%s %.0f", n.name, n.updates) }), 100*c.nodeCPU, 100*c.redisCPU, c.ownerChanges,
		ratio(s.updates, c.updates), 100*s.machineBusy, 100*c.machineBusy, 100*runtime.NumCPU(), otherC, otherS)
}

// reportLogs prints the warnings and errors of the node logs, by node and
// message, and the panics.
func (b *bench) reportLogs() {
	type key struct{ node, msg string }
	counts := map[key]int{}
	var order []key
	for _, p := range b.procs {
		data, err := os.ReadFile(p.log.Name())
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(data), "\n") {
			var msg string
			switch {
			case strings.HasPrefix(l, "panic: "):
				msg = l
			case strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR"):
				msg = logMsg(l)
			default:
				continue
			}
			k := key{p.name, msg}
			if counts[k] == 0 {
				order = append(order, k)
			}
			counts[k]++
		}
	}
	if len(order) == 0 {
		fmt.Println("\nnode logs: no warnings or errors")
		return
	}
	fmt.Println("\nnode logs (start, measurement, SIGTERM): warnings, errors and panics by message")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	for _, k := range order {
		fmt.Fprintf(tw, "  %s\t%d\t%s\n", k.node, counts[k], k.msg)
	}
	tw.Flush()
}

// logMsg is the level and msg of a slog text line.
func logMsg(l string) string {
	level := "WARN"
	if strings.Contains(l, "level=ERROR") {
		level = "ERROR"
	}
	i := strings.Index(l, "msg=")
	if i < 0 {
		return level + " " + l
	}
	m := l[i+len("msg="):]
	if strings.HasPrefix(m, `"`) {
		if s, err := strconv.QuotedPrefix(m); err == nil {
			m, _ = strconv.Unquote(s)
		}
	} else if j := strings.IndexByte(m, ' '); j >= 0 {
		m = m[:j]
	}
	return level + " " + m
}

// proc is a voltage process whose output goes to a log file.
type proc struct {
	name string
	log  *os.File
	cmd  *exec.Cmd
	done chan struct{}
}

func (b *bench) start(name string, args ...string) (*proc, error) {
	f, err := os.Create(filepath.Join(b.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(b.bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &proc{name: name, log: f, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	b.procs = append(b.procs, p)
	return p, nil
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stopAll sends SIGTERM to every process still running, then waits for
// each, with SIGKILL after 15 s. Idempotent.
func stopAll(procs []*proc) {
	for _, p := range procs {
		if p.running() {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(time.Until(deadline)):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		_ = p.log.Close()
	}
}

// procStat is a process's user+system CPU time and resident memory.
func procStat(pid int) (time.Duration, uint64) {
	var cpu time.Duration
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		cpu = time.Duration(ut+st) * time.Second / 100 // USER_HZ
	}
	var rss uint64
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "VmRSS:") {
				kb, _ := strconv.ParseUint(strings.Fields(l)[1], 10, 64)
				rss = kb << 10
			}
		}
	}
	return cpu, rss
}

// machineCPU is the machine's busy, interrupt (irq + softirq: loopback
// TCP is mostly softirq), stolen and total CPU ticks (/proc/stat: user nice
// system idle iowait irq softirq steal; guest time is in user).
func machineCPU() (busy, irq, steal, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	for i, v := range strings.Fields(line)[1:] {
		if i >= 8 {
			break
		}
		x, _ := strconv.ParseFloat(v, 64)
		total += x
		switch i {
		case 3, 4: // idle, iowait
		case 5, 6:
			irq += x
			busy += x
		case 7:
			steal += x
			busy += x
		default:
			busy += x
		}
	}
	return busy, irq, steal, total
}
