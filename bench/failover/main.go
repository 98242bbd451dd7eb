// Command failover measures the cluster placement with the real voltage
// binary and a real redis-server on loopback (README "Cluster").
//
// Failover: 2 nodes (-nodes) of one substation run a Modbus TCP channel
// (1001, polled every 100 ms), the alarm group and the history writer, with
// lease_ttl -ttl (cycle ttl/3). The simulated device serves one TCP port per
// node, so its request log says which node polls. Each of -kills rounds:
// the owner read from lease:channel:1001 is killed (SIGKILL) at a random
// phase of its renewal cycle; the failover time is from the kill to the
// first request from the standby's port. The killed node is then started
// again with the same command, and the round ends when the cluster has
// settled: every node's heartbeat node:{name} is present, and the node
// killed (first in every unit's order) holds all its units again after the
// handback (stopped on the standby, released, taken) and polls. The request
// log of each round, from its kill to the next, must read "standby, then the
// restarted node": no request from the killed process after it was reaped,
// no third node, no two ports interleaved (double polling).
//
// Lease traffic: one node holding U units (-channels virtual channels with
// a constant signal, the computation group, the alarm group and the history
// writer; and 1 channel, to separate the per-node from the per-unit part),
// run once with --cluster and once without, -traffic each. Redis INFO
// commandstats and stats are read before and after; the difference between
// the two runs is what placement costs: per cycle one heartbeat pipeline
// (HSET + PEXPIRE node:{name}, EXISTS per node of the cluster file) and
// one pipeline of renewals, one per held unit (EVALSHA, which runs GET and
// PEXPIRE in Redis).
//
//	go run ./bench/failover [-kills 20] [-ttl 3s] [-nodes 2] [-channels 20] [-traffic 30s] [-keep]
//
// -kills 0 or -traffic 0 skips that part. Timings are wall-clock on a shared
// machine: other processes (tests running meanwhile) add noise.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/bench/benchnode"
	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers/modbus/simulator"
	"github.com/voltage-ems/voltage/test/testenv"
)

func main() {
	kills := flag.Int("kills", 20, "failover rounds (kill -9 of the owner, restart, handback); 0 skips the failover part")
	ttl := flag.Duration("ttl", config.DefaultLeaseTTL, "lease_ttl of the cluster file (the placement cycle is a third of it)")
	nodes := flag.Int("nodes", 2, "nodes eligible for the channel in the failover part (2 or more)")
	channels := flag.Int("channels", 20, "virtual channels of the node in the lease traffic part (it also runs with 1)")
	traffic := flag.Duration("traffic", 30*time.Second, "measurement time of each lease traffic run; 0 skips the traffic part")
	keep := flag.Bool("keep", false, "keep the work directory (configs, node logs) and print its path")
	flag.Parse()
	if *nodes < 2 || *ttl < config.MinLeaseTTL || *channels < 1 || *kills < 0 {
		fmt.Fprintf(os.Stderr, "failover: want -nodes >= 2, -ttl >= %v, -channels >= 1, -kills >= 0\n", config.MinLeaseTTL)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, *kills, *nodes, *channels, *ttl, *traffic, *keep)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		os.Exit(1)
	}
}

// bench is what both parts share: the binary, one redis-server, a client.
type bench struct {
	ctx   context.Context
	bin   string
	dir   string
	redis *testenv.Redis
	rdb   *redis.Client
	ttl   time.Duration
	procs []*proc // every node started, stopped at the end
}

func run(ctx context.Context, kills, nodes, channels int, ttl, traffic time.Duration, keep bool) (err error) {
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
	b := &bench{ctx: ctx, bin: filepath.Join(dir, "voltage"), dir: dir, redis: r, ttl: ttl,
		rdb: redis.NewClient(&redis.Options{Addr: r.Addr(), Protocol: 2})} // RESP2: INFO is a plain bulk string
	defer b.rdb.Close()
	defer func() {
		for _, p := range b.procs {
			p.stop()
		}
	}()
	if out, err := exec.Command("go", "build", "-o", b.bin, "./cmd/voltage").CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v: %s", err, out)
	}
	version := b.rdb.InfoMap(ctx, "server").Item("Server", "redis_version")
	fmt.Printf("machine: %s\n", benchnode.Machine())
	fmt.Printf("redis: redis-server %s on %s; nodes: the voltage binary, one process each; lease_ttl %v (placement cycle %v)\n",
		version, r.Addr(), ttl, ttl/3)
	fmt.Println("note: wall-clock figures on a shared machine; tests or other benchmarks running meanwhile add noise")

	var fo *failoverResult
	if kills > 0 {
		if fo, err = b.failover(kills, nodes); err != nil {
			return err
		}
	}
	var tr *trafficResult
	if traffic > 0 {
		if tr, err = b.traffic(channels, traffic); err != nil {
			return err
		}
	}
	b.reportLogs()

	var sum []string
	if fo != nil {
		fs := stats(fo.failover())
		hb := stats(fo.handback())
		sum = append(sum, fmt.Sprintf("failover (kill -9 -> standby polls, %d nodes, n=%d) p50 %v p99 %v max %v mean %v; handback (restart -> preferred polls) p50 %v max %v; %d problems",
			nodes, len(fs.d), fs.q(0.5), fs.q(0.99), fs.max(), fs.mean(), hb.q(0.5), hb.max(), fo.problems()))
	}
	if tr != nil {
		last := tr.runs[len(tr.runs)-1]
		sum = append(sum, fmt.Sprintf("placement traffic %.2f commands/s per unit + %.2f per node, %.0f B/s to Redis per unit + %.0f per node (U=%d: %.1f commands/s)",
			tr.perUnitS, tr.perNodeS, tr.inUnit/tr.period.Seconds(), tr.inNode/tr.period.Seconds(), last.units, last.executed()/last.cluster.secs))
	}
	fmt.Printf("\nsummary: lease_ttl %v; %s\n", ttl, strings.Join(sum, "; "))
	if fo != nil && fo.problems() > 0 {
		return fmt.Errorf("%d problems in the request log (see the table)", fo.problems())
	}
	return nil
}

// proc is a voltage process that can be killed and started again with the
// same command; its output is appended to a log file.
type proc struct {
	name string
	bin  string
	args []string
	log  *os.File
	cmd  *exec.Cmd
	done chan struct{}
}

func (b *bench) newProc(name string, args ...string) (*proc, error) {
	f, err := os.OpenFile(filepath.Join(b.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, bin: b.bin, args: args, log: f}
	b.procs = append(b.procs, p)
	return p, nil
}

func (p *proc) start() error {
	fmt.Fprintf(p.log, "--- %s: %s %s\n", time.Now().Format(time.RFC3339Nano), p.bin, strings.Join(p.args, " "))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.cmd, p.done = cmd, done
	return nil
}

func (p *proc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and returns once the process is reaped.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
	fmt.Fprintf(p.log, "--- %s: killed (SIGKILL)\n", time.Now().Format(time.RFC3339Nano))
}

// stop sends SIGTERM and waits, then kills. Idempotent.
func (p *proc) stop() {
	if p.running() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if p.log != nil {
		p.log.Close()
		p.log = nil
	}
}

func (b *bench) write(name, body string) (string, error) {
	path := filepath.Join(b.dir, name)
	return path, os.WriteFile(path, []byte(body), 0o644)
}

// waitFor polls cond every step until it holds or d passes.
func (b *bench) waitFor(d, step time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if err := b.ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v", what, d)
		}
		time.Sleep(step)
	}
	return nil
}

// ---- failover ----

const pointsCSV = `point_id,type,name,unit,slave_id,function_code,register_address,data_type,byte_order,bit_position,scale,offset,deadband,reverse,min,max
10001,m,voltage_a,V,1,3,0,float32,ABCD,,1,0,0,,220,240
1,a,power_sp,kW,1,16,100,float32,ABCD,,1,0,0,,-500,500
`

// Units of every failover node, all with the same order (the nodes in file
// order): the channel, the alarm group, the history writer.
var failoverLeases = []string{"lease:channel:1001", "lease:alarms:group", "lease:history:writer"}

type round struct {
	killed, standby string
	leftAtKill      time.Duration // PTTL of the channel lease just before the kill
	killAt, reaped  time.Time
	// Since the kill, as the harness saw Redis (every 2 ms): the killed
	// node's heartbeat gone, the channel lease gone, held by the standby;
	// and from the request log, the standby's first request (the failover).
	beatGone, leaseFree, leaseTaken, failover time.Duration
	outage                                    time.Duration // killed node's last request -> standby's first
	// Since the restart: heartbeat back, channel lease back, first request
	// of the restarted node, all its units back (settled).
	restartAt                              time.Time
	beatBack, leaseBack, pollBack, settled time.Duration
	handbackGap                            time.Duration // standby's last request -> restarted node's first
	inFlight                               int           // requests of the killed node between kill and reap
	problems                               []string
}

type failoverResult struct {
	rounds []*round
}

func (f *failoverResult) failover() []time.Duration {
	var out []time.Duration
	for _, r := range f.rounds {
		out = append(out, r.failover)
	}
	return out
}

func (f *failoverResult) handback() []time.Duration {
	var out []time.Duration
	for _, r := range f.rounds {
		out = append(out, r.pollBack)
	}
	return out
}

func (f *failoverResult) problems() int {
	n := 0
	for _, r := range f.rounds {
		n += len(r.problems)
	}
	return n
}

func (b *bench) failover(kills, nnodes int) (*failoverResult, error) {
	ctx := b.ctx
	names := make([]string, nnodes)
	mbPorts := map[string]int{}
	portOf := map[int]string{}
	var nodesYAML strings.Builder
	if _, err := b.write("p.csv", pointsCSV); err != nil {
		return nil, err
	}
	for i := range names {
		n := fmt.Sprintf("n%d", i+1)
		names[i] = n
		var ports [4]int
		for j := range ports {
			p, err := testenv.PickPort()
			if err != nil {
				return nil, err
			}
			ports[j] = p
		}
		mbPorts[n], portOf[ports[0]] = ports[0], n
		fmt.Fprintf(&nodesYAML, "  - {name: %s, substation: A, remote: 127.0.0.1:%d, membership: 127.0.0.1:%d, http: 127.0.0.1:%d}\n",
			n, ports[1], ports[2], ports[3])
		if _, err := b.write(n+".yaml", fmt.Sprintf(`node: {name: %s}
redis: {url: %q}
channels:
  - {id: 1001, name: PCS-1, protocol: modbus_tcp, poll_interval: 100ms, points: p.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 300ms}}
alarms:
  - {id: hv, point: "1001:m:10001", condition: ">", threshold: 250}
`, n, b.redis.URL(), ports[0])); err != nil {
			return nil, err
		}
	}
	clusterFile, err := b.write("cluster.yaml", fmt.Sprintf("name: failover\nprovider: {kind: automanaged}\nlease_ttl: %v\nnodes:\n%schannels:\n  1001: {substation: A}\n",
		b.ttl, nodesYAML.String()))
	if err != nil {
		return nil, err
	}
	cfg, err := config.Load(filepath.Join(b.dir, "n1.yaml"))
	if err != nil {
		return nil, err
	}
	sim, err := simulator.New(cfg.Channels[0].Points, simulator.WithRequestLog())
	if err != nil {
		return nil, err
	}
	defer sim.Close()
	for _, n := range names {
		if _, err := sim.Serve(fmt.Sprintf("127.0.0.1:%d", mbPorts[n])); err != nil {
			return nil, err
		}
	}

	procs := map[string]*proc{}
	for _, n := range names {
		p, err := b.newProc(n, "run", "-c", filepath.Join(b.dir, n+".yaml"), "--cluster", clusterFile, "--node", n)
		if err != nil {
			return nil, err
		}
		if err := p.start(); err != nil {
			return nil, err
		}
		procs[n] = p
	}
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	preferred := names[0]
	owners := func() []string {
		vals, err := b.rdb.MGet(ctx, failoverLeases...).Result()
		out := make([]string, len(failoverLeases))
		if err != nil {
			return out
		}
		for i, v := range vals {
			if s, ok := v.(string); ok {
				out[i], _, _ = strings.Cut(s, ":")
			}
		}
		return out
	}
	beats := func() int {
		keys := make([]string, len(names))
		for i, n := range names {
			keys[i] = "node:" + n
		}
		return int(b.rdb.Exists(ctx, keys...).Val())
	}
	// firstFrom is the first request from node n's port after t0.
	firstFrom := func(n string, t0 time.Time) (time.Time, bool) {
		for _, q := range sim.RequestLog() {
			if q.Port == mbPorts[n] && q.At.After(t0) {
				return q.At, true
			}
		}
		return time.Time{}, false
	}
	settled := func(since time.Time) bool {
		for _, o := range owners() {
			if o != preferred {
				return false
			}
		}
		_, polled := firstFrom(preferred, since)
		return polled && beats() == len(names)
	}
	t0 := time.Now()
	if err := b.waitFor(30*time.Second, 10*time.Millisecond, "every node up, "+preferred+" holding its units and polling", func() bool { return settled(t0) }); err != nil {
		return nil, b.withLogs(err, names...)
	}
	fmt.Printf("\nfailover: %d nodes (%s) eligible for channel 1001 (Modbus TCP, poll 100 ms), the alarm group and the history writer; %d rounds\n",
		nnodes, strings.Join(names, ", "), kills)
	fmt.Printf("cluster up and settled %v after start\n", time.Since(t0).Round(time.Millisecond))

	interval := b.ttl / 3
	res := &failoverResult{}
	for k := 0; k < kills; k++ {
		// Kill at a random phase of the owner's renewal cycle.
		time.Sleep(time.Second + rand.N(interval))
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		v, err := b.rdb.Get(ctx, "lease:channel:1001").Result()
		if err != nil {
			return nil, fmt.Errorf("round %d: no owner of channel 1001: %v", k+1, err)
		}
		victim, _, _ := strings.Cut(v, ":")
		p := procs[victim]
		if p == nil {
			return nil, fmt.Errorf("round %d: owner %q is not a node of the bench", k+1, victim)
		}
		rd := &round{killed: victim}
		rd.leftAtKill = b.rdb.PTTL(ctx, "lease:channel:1001").Val()
		rd.killAt = time.Now()
		p.kill()
		rd.reaped = time.Now()

		// Wait for a standby's first request, watching Redis meanwhile.
		var standbyAt time.Time
		deadline := rd.killAt.Add(2*b.ttl + 10*time.Second)
		for {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			now := time.Now()
			beat, owner := b.beatAndOwner(ctx, victim)
			if rd.beatGone == 0 && !beat {
				rd.beatGone = now.Sub(rd.killAt)
			}
			if rd.leaseFree == 0 && owner != victim {
				rd.leaseFree = now.Sub(rd.killAt)
			}
			if rd.leaseTaken == 0 && owner != "" && owner != victim {
				rd.leaseTaken = now.Sub(rd.killAt)
			}
			if standbyAt.IsZero() {
				for _, q := range sim.RequestLog() {
					if q.At.After(rd.killAt) && q.Port != mbPorts[victim] {
						standbyAt, rd.standby = q.At, portOf[q.Port]
						break
					}
				}
			}
			if !standbyAt.IsZero() && rd.leaseTaken > 0 {
				break
			}
			if now.After(deadline) {
				return nil, b.withLogs(fmt.Errorf("round %d: no standby polled within %v of killing %s", k+1, deadline.Sub(rd.killAt), victim), names...)
			}
			time.Sleep(2 * time.Millisecond)
		}
		rd.failover = standbyAt.Sub(rd.killAt)

		// Start the killed node again, at a random phase of the standby's
		// cycle (right away, it would be in step with the takeover); wait
		// for the handback.
		time.Sleep(rand.N(interval))
		rd.restartAt = time.Now()
		if err := p.start(); err != nil {
			return nil, err
		}
		deadline = rd.restartAt.Add(30 * time.Second)
		for rd.settled == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			now := time.Now()
			beat, owner := b.beatAndOwner(ctx, victim)
			if rd.beatBack == 0 && beat {
				rd.beatBack = now.Sub(rd.restartAt)
			}
			if rd.leaseBack == 0 && owner == victim {
				rd.leaseBack = now.Sub(rd.restartAt)
			}
			if at, ok := firstFrom(victim, rd.restartAt); ok && rd.pollBack == 0 {
				rd.pollBack = at.Sub(rd.restartAt)
			}
			if settled(rd.restartAt) {
				rd.settled = now.Sub(rd.restartAt)
			}
			if now.After(deadline) {
				return nil, b.withLogs(fmt.Errorf("round %d: cluster not settled within 30 s of restarting %s", k+1, victim), names...)
			}
			time.Sleep(5 * time.Millisecond)
		}
		res.rounds = append(res.rounds, rd)
		fmt.Printf("  round %2d: killed %s, %s polls after %v; %s restarted, polls again after %v\n",
			k+1, victim, rd.standby, rd.failover.Round(time.Millisecond), victim, rd.pollBack.Round(time.Millisecond))
	}
	time.Sleep(interval) // a last stretch of the log after the last handback
	checkLog(res.rounds, sim.RequestLog(), portOf, time.Now())
	printFailover(res, b.ttl)
	return res, nil
}

// checkLog checks the request log of each round, from its kill to the next
// kill: the killed process sends nothing once reaped, then exactly two
// stretches of requests follow: the standby's, then the restarted node's.
func checkLog(rounds []*round, log []simulator.LoggedRequest, portOf map[int]string, end time.Time) {
	sort.SliceStable(log, func(i, j int) bool { return log[i].At.Before(log[j].At) })
	for i, rd := range rounds {
		to := end
		if i+1 < len(rounds) {
			to = rounds[i+1].killAt
		}
		var lastKilled time.Time
		type stretch struct {
			node        string
			first, last time.Time
			n           int
		}
		var runs []stretch
		for _, q := range log {
			n := portOf[q.Port]
			if q.At.Before(rd.killAt) {
				if n == rd.killed {
					lastKilled = q.At
				}
				continue
			}
			if !q.At.Before(to) {
				break
			}
			if n == rd.killed && q.At.Before(rd.reaped) {
				rd.inFlight++
				continue
			}
			if len(runs) > 0 && runs[len(runs)-1].node == n {
				runs[len(runs)-1].last = q.At
				runs[len(runs)-1].n++
				continue
			}
			runs = append(runs, stretch{node: n, first: q.At, last: q.At, n: 1})
		}
		if len(runs) > 0 && !lastKilled.IsZero() {
			rd.outage = runs[0].first.Sub(lastKilled)
		}
		var desc []string
		for _, s := range runs {
			desc = append(desc, fmt.Sprintf("%s×%d", s.node, s.n))
		}
		switch {
		case len(runs) == 2 && runs[0].node == rd.standby && runs[1].node == rd.killed:
			rd.handbackGap = runs[1].first.Sub(runs[0].last)
		case len(runs) > 0 && runs[0].node == rd.killed:
			rd.problems = append(rd.problems, fmt.Sprintf("killed node %s polled at %s, after it was reaped", rd.killed, runs[0].first.Format("15:04:05.000")))
		default:
			rd.problems = append(rd.problems, "request log from the kill to the next: "+strings.Join(desc, " ")+
				" (want "+rd.standby+" then "+rd.killed+": another pattern is double polling or a wrong owner)")
		}
	}
}

func printFailover(res *failoverResult, ttl time.Duration) {
	ms := func(d time.Duration) string {
		if d == 0 {
			return "-"
		}
		return strconv.FormatInt(d.Milliseconds(), 10)
	}
	fmt.Printf("\nper round (ms; Redis watched every 2 ms by the harness, polls from the simulator's request log):\n")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\tkilled\tlease left\tbeat gone\tlease free\tlease taken\tFAILOVER\toutage\t|\trestart->beat\tlease back\tPOLLS AGAIN\tsettled\tgap\tin flight\tproblems\t")
	for i, r := range res.rounds {
		fmt.Fprintf(tw, "%d\t%s->%s\t%s\t%s\t%s\t%s\t%s\t%s\t|\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t\n", i+1, r.killed, r.standby,
			ms(r.leftAtKill), ms(r.beatGone), ms(r.leaseFree), ms(r.leaseTaken), ms(r.failover), ms(r.outage),
			ms(r.beatBack), ms(r.leaseBack), ms(r.pollBack), ms(r.settled), ms(r.handbackGap), r.inFlight, len(r.problems))
	}
	tw.Flush()
	for i, r := range res.rounds {
		for _, p := range r.problems {
			fmt.Printf("  round %d: %s\n", i+1, p)
		}
	}
	fmt.Println(`  lease left: PTTL of lease:channel:1001 just before the kill (TTL minus the time since the last renewal);
  beat gone, lease free, lease taken: since the kill; FAILOVER: kill -> the standby's first request;
  outage: the killed node's last request -> the standby's first; restart->...: since the killed node was started again;
  POLLS AGAIN: its first request (the handback done); settled: all its units back, every heartbeat present;
  gap: the standby's last request -> the restarted node's first (the polling outage of the handback).`)

	var left, afterExpiry, taken, outage, gap, beat []time.Duration
	for _, r := range res.rounds {
		left = append(left, r.leftAtKill)
		afterExpiry = append(afterExpiry, r.failover-r.leftAtKill)
		taken = append(taken, r.leaseTaken)
		outage = append(outage, r.outage)
		gap = append(gap, r.handbackGap)
		beat = append(beat, r.beatBack)
	}
	fmt.Printf("\ndistributions over %d rounds (ms):\n", len(res.rounds))
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tmin\tp50\tp90\tp99\tmax\tmean\t")
	row := func(name string, d []time.Duration) {
		s := stats(d)
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", name, s.min().Milliseconds(), s.q(0.5).Milliseconds(), s.q(0.9).Milliseconds(),
			s.q(0.99).Milliseconds(), s.max().Milliseconds(), s.mean().Milliseconds())
	}
	row("failover: kill -> standby polls", res.failover())
	row("  of which: lease left at the kill", left)
	row("  of which: lease expiry -> standby polls", afterExpiry)
	row("kill -> lease taken (seen in Redis)", taken)
	row("polling outage (last -> first request)", outage)
	row("handback: restart -> heartbeat", beat)
	row("handback: restart -> polls again", res.handback())
	row("handback: polling gap", gap)
	tw.Flush()
	fmt.Printf("expected: the lease expires %v-%v after the kill (TTL minus the time since the last renewal, renewed every %v),\n"+
		"then the standby takes it at its next cycle (0-%v later) and polls after connecting: failover between about %v and %v.\n"+
		"Handback: the restarted node beats at its first cycle, right after start-up, and finds the lease held; the standby sees\n"+
		"the heartbeat at its next cycle (0-%v later), stops the unit and releases the lease; the restarted node takes it at its\n"+
		"second cycle: restart -> polls again = start-up + %v + connect; the polling gap is 0-%v plus connect.\n",
		ttl-ttl/3, ttl, ttl/3, ttl/3, ttl-ttl/3, ttl+ttl/3, ttl/3, ttl/3, ttl/3)
	if len(res.rounds) < 100 {
		fmt.Printf("(with %d rounds p99 is the largest or second largest sample)\n", len(res.rounds))
	}
}

// ---- lease traffic ----

// snapshot is what Redis counted at one time (INFO commandstats, stats).
type snapshot struct {
	at            time.Time
	calls         map[string]int64
	netIn, netOut int64
	processed     int64
	// RESP sizes of the harness's own INFO requests and replies, to take
	// out of the byte counts: the stats reply of the first snapshot and
	// both requests and the commandstats reply of the second fall inside.
	statsReply, cmdstatsReply int64
	statsReq, cmdstatsReq     int64
}

// window is what happened between two snapshots, without the harness's INFO.
type window struct {
	secs          float64
	calls         map[string]int64
	netIn, netOut int64
	processed     int64
}

func between(before, after snapshot) window {
	w := window{secs: after.at.Sub(before.at).Seconds(), calls: map[string]int64{},
		netIn:     after.netIn - before.netIn - after.cmdstatsReq - after.statsReq,
		netOut:    after.netOut - before.netOut - before.statsReply - after.cmdstatsReply,
		processed: after.processed - before.processed}
	for c, n := range after.calls {
		if n -= before.calls[c]; n != 0 && c != "info" {
			w.calls[c] = n
		}
	}
	return w
}

// respLen is the size of a RESP array of bulk strings (a request).
func respLen(args ...string) int64 {
	n := int64(len(fmt.Sprintf("*%d\r\n", len(args))))
	for _, a := range args {
		n += bulkLen(a)
	}
	return n
}

// bulkLen is the size of a RESP bulk string.
func bulkLen(s string) int64 { return int64(len(fmt.Sprintf("$%d\r\n", len(s))) + len(s) + 2) }

var cmdstatRe = regexp.MustCompile(`(?m)^cmdstat_([a-z|_-]+):calls=(\d+),`)

// beatAndOwner reads, in one round trip, whether node's heartbeat hash
// exists and which node holds channel 1001's lease ("" when none).
func (b *bench) beatAndOwner(ctx context.Context, node string) (beat bool, owner string) {
	pipe := b.rdb.Pipeline()
	ex := pipe.Exists(ctx, "node:"+node)
	get := pipe.Get(ctx, "lease:channel:1001")
	_, _ = pipe.Exec(ctx)
	owner, _, _ = strings.Cut(get.Val(), ":")
	return ex.Val() == 1, owner
}

func (b *bench) snapshot() (snapshot, error) {
	s := snapshot{calls: map[string]int64{}}
	cs, err := b.rdb.Info(b.ctx, "commandstats").Result()
	if err != nil {
		return s, err
	}
	st, err := b.rdb.Info(b.ctx, "stats").Result()
	if err != nil {
		return s, err
	}
	s.at = time.Now()
	for _, m := range cmdstatRe.FindAllStringSubmatch(cs, -1) {
		s.calls[m[1]], _ = strconv.ParseInt(m[2], 10, 64)
	}
	field := func(name string) int64 {
		i := strings.Index(st, "\n"+name+":")
		if i < 0 {
			return 0
		}
		v, _, _ := strings.Cut(st[i+len(name)+2:], "\r\n")
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		return n
	}
	s.netIn, s.netOut, s.processed = field("total_net_input_bytes"), field("total_net_output_bytes"), field("total_commands_processed")
	s.statsReply, s.cmdstatsReply = bulkLen(st), bulkLen(cs)
	s.statsReq, s.cmdstatsReq = respLen("info", "stats"), respLen("info", "commandstats")
	return s, nil
}

// trafficRun is one configuration measured with --cluster and without.
type trafficRun struct {
	channels, units int
	cluster, plain  window
}

// count is the placement's part of counter f over the cluster window: the
// run without the cluster scaled to the same length and subtracted.
func (t *trafficRun) count(f func(w window) int64) float64 {
	return float64(f(t.cluster)) - float64(f(t.plain))*t.cluster.secs/t.plain.secs
}

func (t *trafficRun) calls(c string) float64 {
	return t.count(func(w window) int64 { return w.calls[c] })
}

// cycles is the number of placement cycles in the window: one heartbeat
// HSET each.
func (t *trafficRun) cycles() float64 { return math.Round(t.calls("hset")) }

// commands lists the commands the two runs differ by, and the placement's.
func (t *trafficRun) commands() []string {
	cmds := []string{"evalsha", "exists", "get", "hset", "pexpire"}
	for _, w := range []window{t.cluster, t.plain} {
		for c := range w.calls {
			if !slices.Contains(cmds, c) && math.Abs(t.calls(c)) >= 0.5 {
				cmds = append(cmds, c)
			}
		}
	}
	slices.Sort(cmds)
	return slices.Compact(cmds)
}

// executed is the placement's commands as Redis executed them (a renewal
// script's GET and PEXPIRE count too).
func (t *trafficRun) executed() float64 {
	n := 0.0
	for _, c := range t.commands() {
		n += t.calls(c)
	}
	return n
}

type trafficResult struct {
	runs   []*trafficRun
	period time.Duration // measured time between placement cycles
	// Linear fit per cycle: executed commands, bytes to and from Redis.
	perUnit, perNode   float64
	inUnit, inNode     float64
	outUnit, outNode   float64
	perUnitS, perNodeS float64 // commands per second
}

func (b *bench) traffic(channels int, d time.Duration) (*trafficResult, error) {
	counts := []int{1}
	if channels > 1 {
		counts = append(counts, channels)
	}
	interval := b.ttl / 3
	fmt.Printf("\nlease traffic: one node (a cluster file of 1 node) holding U units = C virtual channels (1 constant point, poll 1 s)\n"+
		"+ the computation group + the alarm group + the history writer; each configuration run with --cluster and without,\n"+
		"%v each after a warm-up of 2 s plus a random part of a cycle; placement = the difference (INFO commandstats and stats\n"+
		"before/after, the harness's own INFO taken out). Redis 7 counts the GET and PEXPIRE a script runs as commands.\n", d)
	res := &trafficResult{}
	for _, c := range counts {
		tr := &trafficRun{channels: c, units: c + 3}
		var err error
		if tr.plain, err = b.trafficRun(c, false, d); err != nil {
			return nil, err
		}
		if tr.cluster, err = b.trafficRun(c, true, d); err != nil {
			return nil, err
		}
		res.runs = append(res.runs, tr)
		printTraffic(tr)
	}
	first, last := res.runs[0], res.runs[len(res.runs)-1]
	res.period = time.Duration(last.cluster.secs / last.cycles() * float64(time.Second))
	perCycle := func(t *trafficRun, v float64) float64 { return v / t.cycles() }
	in := func(w window) int64 { return w.netIn }
	out := func(w window) int64 { return w.netOut }
	if len(res.runs) > 1 {
		du := float64(last.units - first.units)
		res.perUnit = (perCycle(last, last.executed()) - perCycle(first, first.executed())) / du
		res.inUnit = (perCycle(last, last.count(in)) - perCycle(first, first.count(in))) / du
		res.outUnit = (perCycle(last, last.count(out)) - perCycle(first, first.count(out))) / du
	} else { // one configuration: the model's per-unit part
		res.perUnit = 3
	}
	u := float64(last.units)
	res.perNode = perCycle(last, last.executed()) - res.perUnit*u
	res.inNode = perCycle(last, last.count(in)) - res.inUnit*u
	res.outNode = perCycle(last, last.count(out)) - res.outUnit*u
	res.perUnitS, res.perNodeS = res.perUnit/res.period.Seconds(), res.perNode/res.period.Seconds()
	fmt.Printf("\nlinear fit over U, per cycle: %.2f executed commands per node + %.2f per unit (model with 1 node in the cluster file: 3 + 3U);\n"+
		"bytes to Redis %.0f per node + %.0f per unit, from Redis %.0f per node + %.0f per unit.\n"+
		"Cycles are %v apart (the loop waits %v after each cycle ends, so its period is %v plus the cycle itself): per second\n"+
		"%.2f commands per node + %.2f per unit, %.0f + %.0f B/s to Redis.\n",
		res.perNode, res.perUnit, res.inNode, res.inUnit, res.outNode, res.outUnit,
		res.period.Round(100*time.Microsecond), interval, interval,
		res.perNodeS, res.perUnitS, res.inNode/res.period.Seconds(), res.inUnit/res.period.Seconds())
	fmt.Print("arithmetic: every cycle (lease_ttl/3) a node sends one pipeline: HSET node:{name} (7 fields, \"owned\" lists the held units)\n" +
		"+ PEXPIRE + one EXISTS per node of the cluster file (2+N commands, 1 round trip); then one pipeline of EVALSHA, one per\n" +
		"held unit (1 round trip), each running GET + PEXPIRE in Redis: (2+N+U) requests, (2+N+3U) executed commands and 2\n" +
		"round trips per cycle. A renewal is about 116 bytes (EVALSHA, 40-byte sha, lease:channel:NNNN, node:token, TTL in ms) and\n" +
		"its answer 4 (:1), plus the unit's name in \"owned\". A site of M nodes holding U units in all: M(2+M)+3U commands per\n" +
		"cycle (the EXISTS part grows as M squared).\n")
	return res, nil
}

func (b *bench) trafficRun(channels int, cluster bool, d time.Duration) (window, error) {
	ctx := b.ctx
	var ports [4]int
	for i := range ports {
		p, err := testenv.PickPort()
		if err != nil {
			return window{}, err
		}
		ports[i] = p
	}
	tag := fmt.Sprintf("t%d-%v", channels, cluster)
	if _, err := b.write("v.csv", "point_id,type,name,unit,signal,min,max,period\n1,m,v,kW,constant,10,10,\n"); err != nil {
		return window{}, err
	}
	var cfg, cl strings.Builder
	fmt.Fprintf(&cfg, "node: {name: t1, http: \"127.0.0.1:%d\", data_dir: data-%s}\nredis: {url: %q}\nchannels:\n", ports[0], tag, b.redis.URL())
	fmt.Fprintf(&cl, "name: traffic\nprovider: {kind: automanaged}\nlease_ttl: %v\nnodes:\n"+
		"  - {name: t1, substation: A, remote: 127.0.0.1:%d, membership: 127.0.0.1:%d, http: 127.0.0.1:%d}\nchannels:\n",
		b.ttl, ports[1], ports[2], ports[0])
	for i := 0; i < channels; i++ {
		id := 2001 + i
		fmt.Fprintf(&cfg, "  - {id: %d, name: v%d, protocol: virtual, poll_interval: 1s, points: v.csv}\n", id, id)
		fmt.Fprintf(&cl, "  %d: {nodes: [t1]}\n", id)
	}
	cfg.WriteString(`  - {id: 9001, name: computed, protocol: compute}
computations:
  - {output: "9001:m:1", name: double, expression: "2 * x", inputs: {x: "2001:m:1"}}
alarms:
  - {id: high, point: "2001:m:1", condition: ">", threshold: 1000}
`)
	cfgFile, err := b.write(tag+".yaml", cfg.String())
	if err != nil {
		return window{}, err
	}
	args := []string{"run", "-c", cfgFile}
	if cluster {
		clFile, err := b.write(tag+"-cluster.yaml", cl.String())
		if err != nil {
			return window{}, err
		}
		args = append(args, "--cluster", clFile, "--node", "t1")
	}
	if err := b.rdb.FlushAll(ctx).Err(); err != nil {
		return window{}, err
	}
	p, err := b.newProc(tag, args...)
	if err != nil {
		return window{}, err
	}
	if err := p.start(); err != nil {
		return window{}, err
	}
	defer p.stop()
	client := &http.Client{Timeout: 2 * time.Second}
	ready := func() bool {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/ready", ports[0]))
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 200
	}
	if err := b.waitFor(30*time.Second, 20*time.Millisecond, tag+" ready", ready); err != nil {
		return window{}, b.withLogs(err, tag)
	}
	if cluster {
		keys, err := b.rdb.Keys(ctx, "lease:*").Result()
		if err != nil {
			return window{}, err
		}
		held := 0
		for _, k := range keys {
			if !strings.HasPrefix(k, "lease:fence:") {
				held++
			}
		}
		if held != channels+3 {
			return window{}, fmt.Errorf("%s: %d leases held, want %d", tag, held, channels+3)
		}
	}
	// Not in step with the placement cycle (/ready turns true right after
	// one): the window would always miss or catch the same cycle.
	time.Sleep(2*time.Second + rand.N(b.ttl/3))
	before, err := b.snapshot()
	if err != nil {
		return window{}, err
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
		return window{}, ctx.Err()
	}
	after, err := b.snapshot()
	if err != nil {
		return window{}, err
	}
	if !p.running() {
		return window{}, b.withLogs(fmt.Errorf("%s exited during the measurement", tag), tag)
	}
	return between(before, after), nil
}

func printTraffic(t *trafficRun) {
	u := float64(t.units)
	expected := map[string]float64{"evalsha": u, "get": u, "pexpire": u + 1, "hset": 1, "exists": 1}
	cyc := t.cycles()
	fmt.Printf("\nU = %d units (%d channels + computations + alarms + history): %.1f s, %.0f placement cycles\n", t.units, t.channels, t.cluster.secs, cyc)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\t--cluster/s\twithout/s\tplacement/s\tper cycle\texpected per cycle\t")
	rate := func(w window, f func(w window) int64) float64 { return float64(f(w)) / w.secs }
	row := func(name string, f func(w window) int64, exp string) {
		v := t.count(f)
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.2f\t%s\t\n", name, rate(t.cluster, f), rate(t.plain, f), v/t.cluster.secs, v/cyc, exp)
	}
	sumExp := 0.0
	for _, c := range t.commands() {
		exp := "-"
		if e, ok := expected[c]; ok {
			exp = fmt.Sprintf("%.0f", e)
			sumExp += e
		}
		row(c, func(w window) int64 { return w.calls[c] }, exp)
	}
	fmt.Fprintf(tw, "all executed\t\t\t%.2f\t%.2f\t%.0f\t\n", t.executed()/t.cluster.secs, t.executed()/cyc, sumExp)
	req := t.executed() - 2*t.calls("evalsha")
	fmt.Fprintf(tw, "requests sent (all - 2 EVALSHA)\t\t\t%.2f\t%.2f\t%.0f\t\n", req/t.cluster.secs, req/cyc, sumExp-2*u)
	row("total_commands_processed", func(w window) int64 { return w.processed }, "")
	row("bytes to Redis", func(w window) int64 { return w.netIn }, "")
	row("bytes from Redis", func(w window) int64 { return w.netOut }, "")
	tw.Flush()
	fmt.Printf("per unit (the per-node part included): %.2f executed commands/s, %.2f requests/s, %.0f B/s to Redis, %.0f B/s from Redis\n",
		t.executed()/t.cluster.secs/u, req/t.cluster.secs/u,
		t.count(func(w window) int64 { return w.netIn })/t.cluster.secs/u, t.count(func(w window) int64 { return w.netOut })/t.cluster.secs/u)
}

// ---- logs ----

var levelRe = regexp.MustCompile(`level=(WARN|ERROR) msg=("(?:[^"\\]|\\.)*"|\S+)`)

// reportLogs counts the warnings and errors the nodes logged, by message.
func (b *bench) reportLogs() {
	type key struct{ node, level, msg string }
	counts := map[key]int{}
	for _, p := range b.procs {
		f, err := os.Open(filepath.Join(b.dir, p.name+".log"))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if m := levelRe.FindStringSubmatch(sc.Text()); m != nil {
				msg, err := strconv.Unquote(m[2])
				if err != nil {
					msg = m[2]
				}
				counts[key{p.name, m[1], msg}]++
			}
		}
		f.Close()
	}
	if len(counts) == 0 {
		fmt.Println("\nnode logs: no warnings or errors")
		return
	}
	keys := make([]key, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].node != keys[j].node {
			return keys[i].node < keys[j].node
		}
		return keys[i].msg < keys[j].msg
	})
	fmt.Println("\nnode logs: warnings and errors, by message")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	for _, k := range keys {
		fmt.Fprintf(tw, "  %s\t%s\t%d×\t%s\n", k.node, k.level, counts[k], k.msg)
	}
	tw.Flush()
}

// withLogs adds the last lines of the nodes' logs to err.
func (b *bench) withLogs(err error, names ...string) error {
	var sb strings.Builder
	for _, n := range names {
		data, _ := os.ReadFile(filepath.Join(b.dir, n+".log"))
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		fmt.Fprintf(&sb, "\n--- %s.log (last lines)\n%s", n, strings.Join(lines, "\n"))
	}
	return errors.Join(err, errors.New(sb.String()))
}

// ---- statistics ----

type durations struct{ d []time.Duration }

func stats(d []time.Duration) durations {
	s := slices.Clone(d)
	slices.Sort(s)
	return durations{s}
}

// q is the nearest-rank quantile.
func (s durations) q(p float64) time.Duration {
	if len(s.d) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(s.d)))) - 1
	return s.d[min(max(i, 0), len(s.d)-1)].Round(time.Millisecond)
}

func (s durations) min() time.Duration { return s.q(0) }
func (s durations) max() time.Duration { return s.q(1) }

func (s durations) mean() time.Duration {
	if len(s.d) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range s.d {
		sum += d
	}
	return (sum / time.Duration(len(s.d))).Round(time.Millisecond)
}
