package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers/modbus/simulator"
	"github.com/voltage-ems/voltage/test/testenv"
)

const clusterPoints = `point_id,type,name,unit,slave_id,function_code,register_address,data_type,byte_order,bit_position,scale,offset,deadband,reverse,min,max
10001,m,voltage_a,V,1,3,0,float32,ABCD,,1,0,0,,220,240
1,a,power_sp,kW,1,16,100,float32,ABCD,,1,0,0,,-500,500
`

// run is a stretch of consecutive simulator requests from one port (one node).
type run struct {
	port       int
	start, end time.Time
	n          int
}

func runsOf(log []simulator.LoggedRequest) []run {
	var out []run
	for _, r := range log {
		if len(out) > 0 && out[len(out)-1].port == r.Port {
			out[len(out)-1].end = r.At
			out[len(out)-1].n++
			continue
		}
		out = append(out, run{port: r.Port, start: r.At, end: r.At, n: 1})
	}
	return out
}

// TestClusterFailover runs three nodes of one substation against one Redis
// and one simulated device (one port per node, so that the simulator's
// request log says which node sent each request): the owner is killed
// (kill -9) and a standby polls within 5 s; the new owner is frozen
// (SIGSTOP) for 10 s and a command is sent meanwhile: it is written once;
// after SIGCONT the frozen node polls nothing until it holds the lease
// again. The request log shows no two nodes polling at the same time.
func TestClusterFailover(t *testing.T) {
	clusterFailover(t, "{kind: automanaged}")
}

// TestClusterFailoverEtcd is the same with membership from a real etcd
// (Debian etcd-server): the frozen node's member lease expires during the
// stall, so it rejoins there under a new member id as well.
func TestClusterFailoverEtcd(t *testing.T) {
	e := testenv.StartEtcd(t)
	clusterFailover(t, fmt.Sprintf("{kind: etcd, endpoints: [%q]}", e.Endpoint()))
}

// clusterSite writes one node config per name (channel 1001 on its own
// simulator port, an operator token, then extra) and a cluster.yaml with
// provider, all nodes in substation A, on free loopback ports.
func clusterSite(t *testing.T, names []string, redisURL, provider, extra string) (dir string, mbPorts, httpPorts map[string]int) {
	t.Helper()
	files := map[string]string{"p.csv": clusterPoints}
	var nodesYAML strings.Builder
	mbPorts, httpPorts = map[string]int{}, map[string]int{}
	for _, n := range names {
		mbPorts[n], httpPorts[n] = testenv.FreePort(t), testenv.FreePort(t)
		fmt.Fprintf(&nodesYAML, "  - {name: %s, substation: A, remote: 127.0.0.1:%d, membership: 127.0.0.1:%d, http: 127.0.0.1:%d}\n",
			n, testenv.FreePort(t), testenv.FreePort(t), httpPorts[n])
		files[n+".yaml"] = fmt.Sprintf(`node: {name: %s}
redis: {url: %q}
auth:
  tokens:
    - {name: op1, token: %s, role: operator}
channels:
  - {id: 1001, name: PCS-1, protocol: modbus_tcp, poll_interval: 100ms, points: p.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 300ms}}
`, n, redisURL, opToken, mbPorts[n]) + extra
	}
	files["cluster.yaml"] = "name: e2e\nprovider: " + provider + "\nnodes:\n" + nodesYAML.String() + "channels:\n  1001: {substation: A}\n"
	return writeFiles(t, files), mbPorts, httpPorts
}

// leaseOwner is the node holding the lease key ("node:token").
func leaseOwner(rdb *redis.Client, key string) string {
	v, _ := rdb.Get(context.Background(), key).Result()
	n, _, _ := strings.Cut(v, ":")
	return n
}

// firstRequest waits until the simulator logs a request from port (node
// who's) after t0 and returns when it arrived.
func firstRequest(t *testing.T, sim *simulator.Simulator, port int, who string, t0 time.Time, within time.Duration) time.Time {
	t.Helper()
	var at time.Time
	testenv.Eventually(t, within, func() bool {
		for _, q := range sim.RequestLog() {
			if q.Port == port && q.At.After(t0) {
				at = q.At
				return true
			}
		}
		return false
	}, "%s polling the device", who)
	return at
}

func clusterFailover(t *testing.T, provider string) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()

	names := []string{"n1", "n2", "n3"}
	dir, mbPorts, httpPorts := clusterSite(t, names, r.URL(), provider, `alarms:
  - {id: hv, point: "1001:m:10001", condition: ">", threshold: 250}
`)
	portOf := map[int]string{}
	var ports []int
	for _, n := range names {
		portOf[mbPorts[n]] = n
		ports = append(ports, mbPorts[n])
	}
	sim := startSim(t, filepath.Join(dir, "n1.yaml"), ports...)

	procs := map[string]*proc{}
	for _, n := range names {
		procs[n] = start(t, nil, "run", "-c", filepath.Join(dir, n+".yaml"), "--cluster", filepath.Join(dir, "cluster.yaml"), "--node", n)
	}
	t.Cleanup(func() { // a frozen process would ignore SIGTERM
		for _, p := range procs {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
		}
	})
	owner := func() string { return leaseOwner(rdb, "lease:channel:1001") }
	pollsFrom := func(n string, t0 time.Time, within time.Duration) time.Time {
		t.Helper()
		return firstRequest(t, sim, mbPorts[n], n, t0, within)
	}
	testenv.Eventually(t, 20*time.Second, func() bool { return owner() == "n1" }, "n1 (first in order) owns channel 1001")
	pollsFrom("n1", time.Now(), 5*time.Second)
	for _, n := range names {
		testenv.Eventually(t, 10*time.Second, func() bool {
			code, _ := get(t, fmt.Sprintf("http://127.0.0.1:%d/health", httpPorts[n]))
			return code == 200
		}, "%s serving HTTP", n)
	}

	// kill -9 the owner: n2 takes over within 5 s.
	killed := time.Now()
	if err := procs["n1"].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	took := pollsFrom("n2", killed, 10*time.Second).Sub(killed)
	t.Logf("failover after kill -9: %v", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("failover took %v, want under 5 s", took)
	}

	// Freeze n2 for 10 s: n3 takes over; a command sent meanwhile is
	// written once.
	frozen := time.Now()
	if err := procs["n2"].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	pollsFrom("n3", frozen, 10*time.Second)
	code, body := post(t, fmt.Sprintf("http://127.0.0.1:%d/control/1001/1", httpPorts["n3"]), opToken,
		`{"type":"a","value":123,"id":"failover-cmd-1","wait":"3s"}`)
	if code != 200 || !strings.Contains(body, `"success"`) {
		t.Errorf("command during the failover: %d %s", code, body)
	}
	time.Sleep(time.Until(frozen.Add(10 * time.Second))) // the stall itself, not a wait for a condition
	resumed := time.Now()
	if err := procs["n2"].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// n2 noticed its stall (its peers dropped it), rejoined the membership
	// as a new member and, first in order again (n1 is dead), gets the
	// channel back once n3 has stopped and released it.
	testenv.Eventually(t, 10*time.Second, func() bool { return owner() == "n2" }, "channel handed back to n2")
	back := pollsFrom("n2", resumed, 10*time.Second)
	const final = "n2"
	testenv.Eventually(t, 5*time.Second, func() bool {
		return strings.Contains(procs["n2"].Output(), "rejoining as a new member")
	}, "n2 rejoining with a fresh member identity")
	t.Logf("n2 polls again %v after SIGCONT", back.Sub(resumed).Round(time.Millisecond))

	// The request log: never two nodes polling at once. Concurrent
	// pollers would alternate; a clean change of owner leaves a gap of at
	// least a lease TTL before an earlier owner polls again.
	reqs := sim.RequestLog()
	sort.SliceStable(reqs, func(i, j int) bool { return reqs[i].At.Before(reqs[j].At) })
	runs := runsOf(reqs)
	var desc []string
	for _, ru := range runs {
		desc = append(desc, fmt.Sprintf("%s×%d", portOf[ru.port], ru.n))
	}
	t.Logf("who polled, in order: %s", strings.Join(desc, " "))
	for k := 0; k+2 < len(runs); k++ {
		if runs[k].port == runs[k+2].port && runs[k+2].start.Sub(runs[k].end) < config.DefaultLeaseTTL {
			t.Errorf("%s and %s polled at the same time around %v: %s", portOf[runs[k].port], portOf[runs[k+1].port],
				runs[k+1].start.Format("15:04:05.000"), strings.Join(desc, " "))
		}
	}
	for _, q := range reqs {
		if q.Port == mbPorts["n2"] && q.At.After(frozen.Add(time.Second)) && q.At.Before(back) {
			t.Errorf("n2 sent a request at %v while it did not hold the lease", q.At.Format("15:04:05.000"))
		}
	}
	writes := 0
	for _, q := range reqs {
		if q.Write {
			writes++
		}
	}
	if writes != 1 {
		t.Errorf("the command was written %d times, want once", writes)
	}
	if v, err := sim.Value(1); err != nil || v != 123 {
		t.Errorf("device setpoint %v %v, want 123", v, err)
	}

	// Any node answers for the whole cluster.
	var view struct {
		Members []struct {
			Name      string   `json:"name"`
			Alive     bool     `json:"alive"`
			Owned     []string `json:"owned"`
			Reachable bool     `json:"reachable"`
			Missing   []string `json:"missing"`
		} `json:"members"`
		Units []struct {
			Kind, ID, Owner string
			LeaseAgeMs      int64 `json:"lease_age_ms"`
		} `json:"units"`
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		code, body := getAuth(t, fmt.Sprintf("http://127.0.0.1:%d/api/cluster", httpPorts["n3"]), opToken)
		if code != 200 || json.Unmarshal([]byte(body), &view) != nil || len(view.Members) != 3 {
			return false
		}
		alive := fmt.Sprint(view.Members[0].Alive, view.Members[1].Alive, view.Members[2].Alive)
		for _, m := range view.Members {
			if m.Name == final && (!m.Reachable || len(m.Missing) != 0 || len(m.Owned) == 0) {
				return false // the owner answers over remote, runs what it should
			}
		}
		owners := map[string]string{}
		for _, u := range view.Units {
			owners[u.Kind+":"+u.ID] = u.Owner
			if u.Owner != "" && (u.LeaseAgeMs < 0 || u.LeaseAgeMs > config.DefaultLeaseTTL.Milliseconds()) {
				return false
			}
		}
		return alive == "false true true" && owners["channel:1001"] == final && owners["alarms:group"] == final
	}, "GET /api/cluster on n3: n1 dead, %s owning the channel and the alarms", final)
	for _, n := range []string{"n2", "n3"} {
		testenv.Eventually(t, 5*time.Second, func() bool {
			code, _ := get(t, fmt.Sprintf("http://127.0.0.1:%d/ready", httpPorts[n]))
			return code == 200
		}, "%s ready", n)
	}
	// GET /api/channels on a node that does not run the channel answers
	// for it: it asks the owner over protoactor remote.
	const asker = "n3"
	testenv.Eventually(t, 5*time.Second, func() bool {
		code, body := getAuth(t, fmt.Sprintf("http://127.0.0.1:%d/api/channels/1001", httpPorts[asker]), opToken)
		var ch struct {
			Node      string `json:"node"`
			Connected bool   `json:"connected"`
			Polls     uint64 `json:"polls"`
		}
		return code == 200 && json.Unmarshal([]byte(body), &ch) == nil && ch.Node == final && ch.Connected && ch.Polls > 0
	}, "%s reporting channel 1001's status from %s", asker, final)

	// The alarms run on the owner now, on the values it polls; a dashboard
	// connected to another node gets the alarm frame too.
	ws, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://127.0.0.1:%d/ws?token=%s", httpPorts[asker], opToken), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	frames := make(chan string, 100)
	go func() {
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				close(frames)
				return
			}
			frames <- string(b)
		}
	}()
	if err := sim.SetValue(0, 260); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for got := false; !got; {
		select {
		case f, ok := <-frames:
			if !ok {
				t.Fatal("websocket closed before the alarm frame")
			}
			got = strings.Contains(f, `"type":"alarm"`) && strings.Contains(f, `"alarm_id":"hv"`) && strings.Contains(f, `"node":"`+final+`"`)
		case <-deadline:
			t.Fatalf("no alarm frame on %s's websocket for the alarm raised on %s", asker, final)
		}
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		return rdb.HGet(ctx, "alarm:hv", "state").Val() == "active-unacked"
	}, "alarm hv raised by the alarms group on %s", final)

	// An operator acknowledges it through the node that does not run the
	// alarms: the action reaches the alarm group's node over remote.
	ackURL := fmt.Sprintf("http://127.0.0.1:%d/api/alarms/hv/ack", httpPorts[asker])
	if code, body := post(t, ackURL, opToken, ""); code != 200 || !strings.Contains(body, `"state":"active-acked"`) || !strings.Contains(body, `"acked_by":"op1"`) {
		t.Fatalf("ack through %s: %d %s", asker, code, body)
	}
	if code, body := post(t, ackURL, opToken, ""); code != 409 || !strings.Contains(body, "already acknowledged") {
		t.Fatalf("second ack through %s: %d %s", asker, code, body)
	}

	// A short stall of a node (0.7 s, less than a lease TTL) drops it
	// from nobody's membership for good: every node is ready again.
	if err := procs["n3"].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond) // the stall itself
	if err := procs["n3"].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"n2", "n3"} {
		testenv.Eventually(t, 10*time.Second, func() bool {
			code, _ := get(t, fmt.Sprintf("http://127.0.0.1:%d/ready", httpPorts[n]))
			return code == 200
		}, "%s ready after n3's short stall", n)
	}

	// The owner stops (SIGTERM): it leaves cleanly, releases its leases, and
	// the other node runs the channel at once instead of after the TTL.
	other := map[string]string{"n2": "n3", "n3": "n2"}[final]
	stopped := time.Now()
	if !procs[final].stop(10*time.Second) || procs[final].err != nil || strings.Contains(procs[final].Output(), "panic") {
		t.Fatalf("%s on SIGTERM: %v\n%s", final, procs[final].err, procs[final].Output())
	}
	took = pollsFrom(other, stopped, 5*time.Second).Sub(stopped)
	t.Logf("takeover after a clean stop: %v", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("takeover after %s stopped cleanly took %v: its leases were not released", final, took)
	}
}

// TestClusterRedisOutage: a cluster node without Redis holds no lease, so
// it stops polling within one lease TTL; when Redis is back it takes the
// channel again.
func TestClusterRedisOutage(t *testing.T) {
	r := testenv.StartRedis(t)
	mbPort, httpPort := testenv.FreePort(t), testenv.FreePort(t)
	dir := writeFiles(t, map[string]string{
		"p.csv": clusterPoints,
		"n1.yaml": fmt.Sprintf(`node: {name: n1}
redis: {url: %q}
channels:
  - {id: 1001, name: PCS-1, protocol: modbus_tcp, poll_interval: 100ms, points: p.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 300ms}}
`, r.URL(), mbPort),
		"cluster.yaml": fmt.Sprintf(`name: e2e
provider: {kind: automanaged}
nodes:
  - {name: n1, substation: A, remote: 127.0.0.1:%d, membership: 127.0.0.1:%d, http: 127.0.0.1:%d}
channels:
  1001: {substation: A}
`, testenv.FreePort(t), testenv.FreePort(t), httpPort),
	})
	sim := startSim(t, filepath.Join(dir, "n1.yaml"), mbPort)
	start(t, nil, "run", "-c", filepath.Join(dir, "n1.yaml"), "--cluster", filepath.Join(dir, "cluster.yaml"), "--node", "n1")
	polling := func(since time.Time) bool {
		for _, q := range sim.RequestLog() {
			if q.At.After(since) {
				return true
			}
		}
		return false
	}
	began := time.Now()
	testenv.Eventually(t, 20*time.Second, func() bool { return polling(began) }, "n1 polling")
	r.Stop()
	stopped := time.Now()
	quiet := stopped.Add(config.DefaultLeaseTTL + 500*time.Millisecond)
	// The assertion is a silence: watch one second past the lease TTL.
	time.Sleep(time.Until(quiet.Add(time.Second)))
	var late []string
	for _, q := range sim.RequestLog() {
		if q.At.After(quiet) {
			late = append(late, q.At.Format("15:04:05.000"))
		}
	}
	if len(late) > 0 {
		t.Fatalf("n1 kept polling without redis (no lease): requests at %v", late)
	}
	r.Restart()
	back := time.Now()
	testenv.Eventually(t, 15*time.Second, func() bool { return polling(back) }, "n1 polling again once redis is back")
}

// TestClusterEtcdOutage: etcd is gone for longer than a member lease.
// Membership is only a preference (the Redis leases decide who runs a
// unit), so the owner keeps polling and the standby polls nothing; once
// etcd is back both nodes register again under new member ids and see
// each other.
func TestClusterEtcdOutage(t *testing.T) {
	e := testenv.StartEtcd(t)
	r := testenv.StartRedis(t)
	names := []string{"n1", "n2"}
	dir, mbPorts, httpPorts := clusterSite(t, names, r.URL(), fmt.Sprintf("{kind: etcd, endpoints: [%q]}", e.Endpoint()), "")
	sim := startSim(t, filepath.Join(dir, "n1.yaml"), mbPorts["n1"], mbPorts["n2"])
	procs := map[string]*proc{}
	for _, n := range names {
		procs[n] = start(t, nil, "run", "-c", filepath.Join(dir, n+".yaml"), "--cluster", filepath.Join(dir, "cluster.yaml"), "--node", n)
	}
	// bothAlive: GET /api/cluster on n2 lists both nodes alive, n1 owning
	// the channel, and both are ready.
	bothAlive := func() bool {
		var view struct {
			Members []struct {
				Name  string `json:"name"`
				Alive bool   `json:"alive"`
			} `json:"members"`
			Units []struct{ Kind, ID, Owner string } `json:"units"`
		}
		code, body := getAuth(t, fmt.Sprintf("http://127.0.0.1:%d/api/cluster", httpPorts["n2"]), opToken)
		if code != 200 || json.Unmarshal([]byte(body), &view) != nil || len(view.Members) != 2 || !view.Members[0].Alive || !view.Members[1].Alive {
			return false
		}
		for _, u := range view.Units {
			if u.Kind == "channel" && u.ID == "1001" && u.Owner != "n1" {
				return false
			}
		}
		for _, n := range names {
			if code, _ := get(t, fmt.Sprintf("http://127.0.0.1:%d/ready", httpPorts[n])); code != 200 {
				return false
			}
		}
		return true
	}
	testenv.Eventually(t, 20*time.Second, bothAlive, "both nodes alive, n1 owning channel 1001")

	e.Stop()
	down := time.Now()
	// The outage itself: twice a member lease (3 s), so that both member
	// keys would have expired.
	time.Sleep(2 * config.DefaultLeaseTTL)
	e.Restart()
	back := time.Now()
	testenv.Eventually(t, 20*time.Second, func() bool {
		return strings.Contains(procs["n1"].Output(), "registered in etcd again") &&
			strings.Contains(procs["n2"].Output(), "registered in etcd again")
	}, "both nodes registered again under new member ids")
	t.Logf("both registered again within %v of etcd's return", time.Since(back).Round(time.Millisecond))
	// Their old member keys expire a lease TTL after etcd's return; the
	// new ones keep both nodes in each other's topology.
	ec, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint()}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	testenv.Eventually(t, 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := ec.Get(ctx, "/voltage/e2e/members/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		return err == nil && len(resp.Kvs) == 2
	}, "the old member keys expired in etcd, the two new ones left")
	testenv.Eventually(t, 10*time.Second, bothAlive, "both nodes alive again after etcd's return")

	// n1 polled all along (no gap of a lease TTL); n2 never.
	var last time.Time
	for _, q := range sim.RequestLog() {
		if q.At.Before(down) {
			continue
		}
		if q.Port == mbPorts["n2"] {
			t.Errorf("n2 polled at %v, while n1 held the lease", q.At.Format("15:04:05.000"))
			continue
		}
		if !last.IsZero() && q.At.Sub(last) > time.Second {
			t.Errorf("n1 stopped polling from %v to %v during the etcd outage", last.Format("15:04:05.000"), q.At.Format("15:04:05.000"))
		}
		last = q.At
	}
	if time.Since(last) > time.Second {
		t.Errorf("n1 last polled at %v", last.Format("15:04:05.000"))
	}
}

// TestClusterEtcdUnreachableAtStart: a node whose etcd does not answer at
// start-up exits with an error naming the endpoint, rather than running
// outside the membership.
func TestClusterEtcdUnreachableAtStart(t *testing.T) {
	r := testenv.StartRedis(t)
	etcdAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)) // nothing listens there
	dir := writeFiles(t, map[string]string{
		"p.csv": clusterPoints,
		"n1.yaml": fmt.Sprintf(`redis: {url: %q}
channels:
  - {id: 1001, name: PCS-1, protocol: modbus_tcp, poll_interval: 100ms, points: p.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 300ms}}
`, r.URL(), testenv.FreePort(t)),
		"cluster.yaml": fmt.Sprintf(`name: e2e
provider: {kind: etcd, endpoints: [%q]}
nodes:
  - {name: n1, substation: A, remote: 127.0.0.1:%d, membership: 127.0.0.1:%d, http: 127.0.0.1:%d}
channels:
  1001: {substation: A}
`, etcdAddr, testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)),
	})
	out, code := runCmd(t, nil, "run", "-c", filepath.Join(dir, "n1.yaml"), "--cluster", filepath.Join(dir, "cluster.yaml"), "--node", "n1")
	if code != 1 || !strings.Contains(out, "etcd ["+etcdAddr+"]: registering n1@") || !strings.Contains(out, "no answer within 1s") {
		t.Fatalf("run with etcd unreachable: exit %d\n%s", code, out)
	}
}
