package e2e

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gomodbus "github.com/goburrow/modbus"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/drivers/modbus/simulator"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

// The control path attacked the way a hostile network or a careless
// integrator would (issue 12): two sites on one Redis, forged and replayed
// commands on the bus, a device that freezes mid-write, timeouts that do
// not mean what they say.

// siteNode writes the config of a node with channel 1001 (the control
// points of controlPoints) polling 127.0.0.1:mbPort, and returns its path
// and HTTP base URL. extra sets options (see pollExtra); tail (alarms,
// computations) goes at the end of the YAML as is.
func siteNode(t *testing.T, name, redisURL string, mbPort int, extra string, tail ...string) (cfg, base string) {
	t.Helper()
	httpPort := testenv.FreePort(t)
	dir := writeFiles(t, map[string]string{
		"node.yaml": fmt.Sprintf(`node: {name: %s, http: "127.0.0.1:%d"}
redis: {url: %q%s}
auth:
  tokens:
    - {name: op1, token: %s, role: operator}
    - {name: watcher, token: %s, role: viewer}
%s
channels:
  - {id: 1001, name: PCS-1, protocol: modbus_tcp, poll_interval: %s, points: p.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 300ms}}
`+strings.Join(tail, ""), name, httpPort, redisURL, redisExtra(extra), opToken, viewerToken, nodeExtra(extra), pollExtra(extra), mbPort),
		"p.csv": controlPoints,
	})
	return filepath.Join(dir, "node.yaml"), "http://127.0.0.1:" + strconv.Itoa(httpPort)
}

// extra is "prefix=X;key=Y;poll=Z": a redis.prefix, an auth.command_key
// and a poll interval (default 100ms).
func pollExtra(extra string) string {
	for _, kv := range strings.Split(extra, ";") {
		if v, ok := strings.CutPrefix(kv, "poll="); ok {
			return v
		}
	}
	return "100ms"
}

func redisExtra(extra string) string {
	for _, kv := range strings.Split(extra, ";") {
		if v, ok := strings.CutPrefix(kv, "prefix="); ok {
			return ", prefix: " + v
		}
	}
	return ""
}

func nodeExtra(extra string) string {
	for _, kv := range strings.Split(extra, ";") {
		if v, ok := strings.CutPrefix(kv, "key="); ok {
			return "  command_key: " + v
		}
	}
	return ""
}

// device is a Modbus client of a simulated device, for the test's own reads.
type device struct {
	h *gomodbus.TCPClientHandler
	c gomodbus.Client
}

func dialDevice(t *testing.T, port int) *device {
	t.Helper()
	h := gomodbus.NewTCPClientHandler("127.0.0.1:" + strconv.Itoa(port))
	h.SlaveId, h.Timeout = 1, time.Second
	if err := h.Connect(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return &device{h: h, c: gomodbus.NewClient(h)}
}

// setpoint reads the device's float32 setpoint (holding 100, point 1001:a:1).
func (d *device) setpoint(t *testing.T) float32 {
	t.Helper()
	regs, err := d.c.ReadHoldingRegisters(100, 2)
	if err != nil {
		t.Fatalf("read the device's setpoint: %v", err)
	}
	return math.Float32frombits(binary.BigEndian.Uint32(regs))
}

// runPolling starts the node of cfg (on Redis r, database 0) and waits
// until it is ready and channel 1001 polls good values into Redis.
func runPolling(t *testing.T, r *testenv.Redis, cfg, base string, env []string) (*proc, *redis.Client) {
	t.Helper()
	p := start(t, env, "run", "-c", cfg)
	waitReady(t, base)
	rdb := redisDB(t, r, 0)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return rdb.HGet(context.Background(), "comsrv:1001:m:q", "10001").Val() == "good"
	}, "polling")
	return p, rdb
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, func() bool { code, _ := get(t, base+"/ready"); return code == 200 }, "%s ready", base)
}

func redisDB(t *testing.T, r *testenv.Redis, db int) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), DB: db})
	t.Cleanup(func() { c.Close() })
	return c
}

// TestSiteIsolationOneRedis: two sites share one redis-server. A node on a
// database other than 0 without a prefix refuses to start (Pub/Sub crosses
// databases); with prefixes, a command sent to site A is written to A's
// device only, even when both sites' channel 1001 reach the same device
// (the same id was written twice before: one claim per database).
func TestSiteIsolationOneRedis(t *testing.T) {
	r := testenv.StartRedis(t)
	mbA, mbB := testenv.FreePort(t), testenv.FreePort(t)

	// Refused: database 1 without a prefix, with the reason.
	cfgB0, _ := siteNode(t, "site-b", "redis://"+r.Addr()+"/1", mbB, "")
	out, code := runCmd(t, nil, "check", "-c", cfgB0)
	if code == 0 || !strings.Contains(out, "redis.url: names database 1 but redis.prefix is empty") || !strings.Contains(out, "Pub/Sub ignores database numbers") {
		t.Fatalf("check of a node on db 1 without a prefix: exit %d\n%s", code, out)
	}
	out, code = runCmd(t, nil, "run", "-c", cfgB0)
	if code == 0 || !strings.Contains(out, "redis.prefix") {
		t.Fatalf("run of a node on db 1 without a prefix: exit %d\n%s", code, out)
	}

	// Two sites, databases 0 and 1, prefixes site-a and site-b, each with
	// its own device; then a third node of site B on A's device.
	sim := startSimFromPoints(t, controlPoints, mbA)
	startSimFromPoints(t, controlPoints, mbB)
	cfgA, baseA := siteNode(t, "site-a", "redis://"+r.Addr()+"/0", mbA, "prefix=site-a")
	cfgB, baseB := siteNode(t, "site-b", "redis://"+r.Addr()+"/1", mbB, "prefix=site-b")
	start(t, nil, "run", "-c", cfgA)
	start(t, nil, "run", "-c", cfgB)
	waitReady(t, baseA)
	waitReady(t, baseB)
	db0, db1 := redisDB(t, r, 0), redisDB(t, r, 1)
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, func() bool {
		return db0.HGet(ctx, "site-a:comsrv:1001:m:q", "10001").Val() == "good" && db1.HGet(ctx, "site-b:comsrv:1001:m:q", "10001").Val() == "good"
	}, "both sites polling into their prefixed hashes")
	if n := db0.Exists(ctx, "comsrv:1001:m", "point:update").Val() + db1.Exists(ctx, "comsrv:1001:m").Val(); n != 0 {
		t.Fatalf("unprefixed keys written: %d", n)
	}
	devA, devB := dialDevice(t, mbA), dialDevice(t, mbB)
	before := devB.setpoint(t)

	code, body := post(t, baseA+"/control/1001/1", opToken, `{"type":"a","value":321.5,"id":"site-a-cmd-1","wait":"3s"}`)
	if code != 200 || !strings.Contains(body, `"success"`) {
		t.Fatalf("command to site A: %d %s", code, body)
	}
	if v := devA.setpoint(t); v != 321.5 {
		t.Fatalf("site A's device holds %v, want 321.5", v)
	}
	if v := devB.setpoint(t); v != before {
		t.Fatalf("site B's device was written (%v -> %v) by a command sent to site A", before, v)
	}
	if n := db1.XLen(ctx, "site-b:audit:commands").Val(); n != 0 {
		t.Fatalf("site B's audit has %d entries: it received site A's command", n)
	}
	if n := db0.XLen(ctx, "site-a:audit:commands").Val(); n != 2 { // accepted + result
		t.Fatalf("site A's audit has %d entries, want 2", n)
	}

	// Both sites' channel 1001 on the same device (a careless integrator):
	// a command to A is written once, by A.
	cfgB2, baseB2 := siteNode(t, "site-b2", "redis://"+r.Addr()+"/1", mbA, "prefix=site-b2")
	start(t, nil, "run", "-c", cfgB2)
	waitReady(t, baseB2)
	testenv.Eventually(t, 10*time.Second, func() bool { return db1.HGet(ctx, "site-b2:comsrv:1001:m:q", "10001").Val() == "good" }, "site B2 polling")
	t0 := time.Now()
	code, body = post(t, baseA+"/control/1001/1", opToken, `{"type":"a","value":-17,"id":"shared-device-1","wait":"3s"}`)
	if code != 200 || !strings.Contains(body, `"success"`) {
		t.Fatalf("command to site A on the shared device: %d %s", code, body)
	}
	writes := 0
	for _, q := range sim.RequestLog() {
		if q.Write && q.At.After(t0) {
			writes++
		}
	}
	if writes != 1 {
		t.Fatalf("%d write requests reached the shared device for one command, want 1", writes)
	}
}

// TestCommandTimeoutsMeanWhatTheySay: a timeout under 1 ms is a 400 (it used
// to become 0 ms, which meant the 5 s default, and the command was written
// 605 ms later); a command past its deadline is answered timeout and never
// written.
func TestCommandTimeoutsMeanWhatTheySay(t *testing.T) {
	r := testenv.StartRedis(t)
	mb := testenv.FreePort(t)
	startSimFromPoints(t, controlPoints, mb)
	cfg, base := siteNode(t, "tmo", r.URL(), mb, "")
	_, rdb := runPolling(t, r, cfg, base, nil)
	ctx := context.Background()
	dev := dialDevice(t, mb)
	before := dev.setpoint(t)

	for _, tmo := range []string{"999us", "1ns", "500µs", "0s", "-1s", "61s"} {
		code, body := post(t, base+"/control/1001/1", opToken, `{"type":"a","value":42,"timeout":"`+tmo+`","wait":"2s"}`)
		if code != 400 || !strings.Contains(body, "timeout") {
			t.Errorf("timeout %q: %d %s, want 400 naming timeout", tmo, code, body)
		}
	}
	// Straight on the bus: a command older than its 5 ms timeout, and one
	// without timeout_ms older than the 5 s default.
	sub := rdb.Subscribe(ctx, "cmd:1001:result")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []messages.ControlCommand{
		{ID: "late-5ms", ChannelID: 1001, PointType: messages.Adjustment, PointID: 1, Value: 42, Timestamp: time.Now().Add(-6 * time.Millisecond).UnixMilli(), TimeoutMS: 5, Source: "test", User: "t"},
		{ID: "late-default", ChannelID: 1001, PointType: messages.Adjustment, PointID: 1, Value: 43, Timestamp: time.Now().Add(-5100 * time.Millisecond).UnixMilli(), Source: "test", User: "t"},
	} {
		b, _ := json.Marshal(c)
		if n := rdb.Publish(ctx, "cmd:1001:control", b).Val(); n != 1 {
			t.Fatalf("publish: %d receivers", n)
		}
		res := nextResult(t, sub, c.ID)
		if res.Status != messages.StatusTimeout {
			t.Fatalf("%s: %+v, want timeout", c.ID, res)
		}
	}
	// An explicit timeout_ms 0 is no time at all, not the default.
	rdb.Publish(ctx, "cmd:1001:control", fmt.Sprintf(`{"id":"zero-tmo","channel_id":1001,"point_type":"a","point_id":1,"value":44,"timestamp":%d,"timeout_ms":0}`, time.Now().UnixMilli()))
	if res := nextResult(t, sub, "zero-tmo"); res.Status != messages.StatusRejected || !strings.Contains(res.Error, "timeout_ms 0") {
		t.Fatalf("timeout_ms 0: %+v, want rejected", res)
	}
	if v := dev.setpoint(t); v != before {
		t.Fatalf("an expired command was written: %v -> %v", before, v)
	}
}

// nextResult waits for the result of command id on a subscription.
func nextResult(t *testing.T, sub *redis.PubSub, id string) messages.CommandResult {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-sub.Channel():
			var res messages.CommandResult
			if json.Unmarshal([]byte(m.Payload), &res) == nil && res.ID == id {
				return res
			}
		case <-deadline:
			t.Fatalf("no result for command %s within 5s", id)
		}
	}
}

// startSimFromPoints serves a simulated device with the points of csv on
// each port (in-process, with a request log).
func startSimFromPoints(t *testing.T, csv string, ports ...int) *simulator.Simulator {
	t.Helper()
	dir := writeFiles(t, map[string]string{
		"sim.yaml": `channels:
  - {id: 1001, protocol: modbus_tcp, points: p.csv, parameters: {host: 127.0.0.1, port: 502}}
`,
		"p.csv": csv,
	})
	return startSim(t, filepath.Join(dir, "sim.yaml"), ports...)
}

const e2eCommandKey = "e2e-command-key-0123456789abcdef0123"

// TestSignedCommandsOnTheBus: with auth.command_key, only signed commands
// reach the device; an unsigned one (its user and source forged), a badly
// signed or altered one, a stale replay and one from the future are
// refused and audited as refused; a replay within its timeout is a
// duplicate; the audit's user and source are the signed ones.
// `voltage control --via-redis` signs as an outside client does.
func TestSignedCommandsOnTheBus(t *testing.T) {
	r := testenv.StartRedis(t)
	mb := testenv.FreePort(t)
	startSimFromPoints(t, controlPoints, mb)
	cfg, base := siteNode(t, "signed", r.URL(), mb, "key=${E2E_CMD_KEY}")
	env := []string{"E2E_CMD_KEY=" + e2eCommandKey}
	_, rdb := runPolling(t, r, cfg, base, env)
	ctx := context.Background()
	dev := dialDevice(t, mb)
	sub := rdb.Subscribe(ctx, "cmd:1001:result")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}

	// Through the gateway: signed by the node, user from the token.
	code, body := post(t, base+"/control/1001/1", opToken, `{"type":"a","value":11,"id":"http-1","wait":"3s"}`)
	if code != 200 || !strings.Contains(body, `"success"`) {
		t.Fatalf("HTTP command: %d %s", code, body)
	}
	key := messages.NewCommandKey(e2eCommandKey, "")
	cmd := func(id string, v float64, age time.Duration) *messages.ControlCommand {
		return &messages.ControlCommand{ID: id, ChannelID: 1001, PointType: messages.Adjustment, PointID: 1, Value: v,
			Timestamp: time.Now().Add(-age).UnixMilli(), Source: "api", User: "operator1"}
	}
	publish := func(payload []byte) {
		t.Helper()
		if n := rdb.Publish(ctx, "cmd:1001:control", payload).Val(); n != 1 {
			t.Fatalf("publish: %d receivers", n)
		}
	}
	refused := func(id, why string) {
		t.Helper()
		res := nextResult(t, sub, id)
		if res.Status != messages.StatusRejected || !strings.Contains(res.Error, why) {
			t.Fatalf("%s: %+v, want rejected saying %q", id, res, why)
		}
		if n := rdb.Exists(ctx, "cmd:result:"+id).Val(); n != 0 {
			t.Fatalf("%s: a refused command took its id (cmd:result:%s exists)", id, id)
		}
	}

	// Unsigned, with a forged user and source.
	bare, _ := json.Marshal(cmd("forged-1", 450, 0))
	publish(bare)
	refused("forged-1", "unsigned")
	// Signed with another key; a signed command altered after signing.
	other := messages.NewCommandKey("some-other-key-0123456789abcdef0123", "")
	p, _ := other.Encode(cmd("wrong-key-1", 450, 0))
	publish(p)
	refused("wrong-key-1", "bad signature")
	good, _ := json.Marshal(cmd("altered-1", 12, 0))
	altered := strings.Replace(string(good), `"value":12`, `"value":450`, 1)
	publish(messages.SignedEnvelope([]byte(altered), key.SignPayload(good)))
	refused("altered-1", "bad signature")
	// Stale (a replay after the fact) and from the future.
	p, _ = key.Encode(cmd("stale-1", 450, 6*time.Second))
	publish(p)
	refused("stale-1", "past its timeout")
	p, _ = key.Encode(cmd("future-1", 450, -time.Minute))
	publish(p)
	refused("future-1", "in the future")
	if v := dev.setpoint(t); v != 11 {
		t.Fatalf("the device holds %v after refused commands, want 11", v)
	}

	// Signed properly: executed, then replayed: a duplicate, not written again.
	signed, _ := key.Encode(cmd("signed-1", 22, 0))
	publish(signed)
	if res := nextResult(t, sub, "signed-1"); res.Status != messages.StatusSuccess {
		t.Fatalf("signed command: %+v", res)
	}
	if code, body := post(t, base+"/control/1001/1", opToken, `{"type":"a","value":33,"wait":"3s"}`); code != 200 || !strings.Contains(body, `"success"`) {
		t.Fatalf("HTTP command: %d %s", code, body)
	}
	publish(signed)
	if res := nextResult(t, sub, "signed-1"); res.Status != messages.StatusDuplicate {
		t.Fatalf("replayed signed command: %+v, want duplicate", res)
	}
	if v := dev.setpoint(t); v != 33 {
		t.Fatalf("the replay was written: device holds %v, want 33", v)
	}

	// The CLI over Redis, as an outside client: signed with the config's key.
	out, exit := runCmd(t, env, "control", "-c", cfg, "--via-redis", "--user", "alice", "--point", "1001:a:1", "--value", "44.5", "--id", "cli-1")
	if exit != 0 || !strings.Contains(out, `"success"`) {
		t.Fatalf("voltage control --via-redis: exit %d\n%s", exit, out)
	}
	if v := dev.setpoint(t); v != 44.5 {
		t.Fatalf("device holds %v after the CLI command, want 44.5", v)
	}

	// The audit: who did what, as signed; refusals recorded with the reason.
	entries, err := rdb.XRange(ctx, "audit:commands", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string][]map[string]any{}
	for _, e := range entries {
		id, _ := e.Values["id"].(string)
		byID[id] = append(byID[id], e.Values)
	}
	check := func(id, event, field, want string) {
		t.Helper()
		for _, v := range byID[id] {
			if v["event"] == event && v[field] == want {
				return
			}
		}
		t.Errorf("audit of %s: no %s entry with %s=%q in %v", id, event, field, want, byID[id])
	}
	check("http-1", "accepted", "user", "op1")
	check("http-1", "accepted", "signed", "true")
	check("cli-1", "accepted", "user", "alice")
	check("cli-1", "accepted", "source", "cli")
	for _, id := range []string{"forged-1", "wrong-key-1", "altered-1", "stale-1", "future-1"} {
		check(id, "refused", "status", "rejected")
		for _, v := range byID[id] {
			if v["event"] == "accepted" {
				t.Errorf("refused command %s has an accepted entry", id)
			}
		}
	}
}

// channelPolls reads the poll count of channel 1001.
func channelPolls(t *testing.T, base string) uint64 {
	t.Helper()
	code, body := getAuth(t, base+"/api/channels/1001", viewerToken)
	var st struct {
		Polls     uint64 `json:"polls"`
		Connected bool   `json:"connected"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil {
		t.Fatalf("GET /api/channels/1001: %d %s", code, body)
	}
	return st.Polls
}

// storedResult reads cmd:result:{id}.
func storedResult(t *testing.T, rdb *redis.Client, id string) messages.CommandResult {
	t.Helper()
	var res messages.CommandResult
	raw, err := rdb.Get(context.Background(), "cmd:result:"+id).Bytes()
	if err == nil {
		_ = json.Unmarshal(raw, &res)
	}
	return res
}

// TestUnknownOutcomeReconciled: the device freezes (SIGSTOP) while a write
// is on its way. The answer is unknown, not failed (the device applies the
// value when it resumes); once it answers again the channel reads the point
// back and publishes the reconciled result, success, on the same id. A
// device restarted before it applied the write gives a reconciled failed.
func TestUnknownOutcomeReconciled(t *testing.T) {
	r := testenv.StartRedis(t)
	mb := testenv.FreePort(t)
	simDir := writeFiles(t, map[string]string{
		"sim.yaml": fmt.Sprintf(`channels:
  - {id: 1001, protocol: modbus_tcp, points: p.csv, parameters: {host: 127.0.0.1, port: %d}}
`, mb),
		"p.csv": controlPoints,
	})
	startDevice := func() *proc {
		p := start(t, nil, "simulate", "-c", filepath.Join(simDir, "sim.yaml"))
		t.Cleanup(func() { _ = p.cmd.Process.Signal(syscall.SIGCONT) }) // before the stop
		testenv.Eventually(t, 10*time.Second, func() bool {
			h := gomodbus.NewTCPClientHandler("127.0.0.1:" + strconv.Itoa(mb))
			defer h.Close()
			return h.Connect() == nil
		}, "simulator listening")
		return p
	}
	sim := startDevice()
	// A long poll interval leaves a quiet window for the write.
	cfg, base := siteNode(t, "unk", r.URL(), mb, "poll=2s")
	_, rdb := runPolling(t, r, cfg, base, nil)
	ctx := context.Background()

	// freezeBetweenPolls stops the device right after a poll ended.
	freezeBetweenPolls := func(p *proc) {
		t.Helper()
		n := channelPolls(t, base)
		testenv.Eventually(t, 5*time.Second, func() bool { return channelPolls(t, base) > n }, "a poll")
		if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}

	freezeBetweenPolls(sim)
	code, body := post(t, base+"/control/1001/1", opToken, `{"type":"a","value":77,"id":"frozen-1","wait":"3s","timeout":"10s"}`)
	var res messages.CommandResult
	if code != 200 || json.Unmarshal([]byte(body), &res) != nil || res.Status != messages.StatusUnknown {
		t.Fatalf("write to a frozen device: %d %s, want status unknown", code, body)
	}
	if err := sim.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, func() bool { return storedResult(t, rdb, "frozen-1").Reconciled }, "the reconciled result")
	res = storedResult(t, rdb, "frozen-1")
	if res.Status != messages.StatusSuccess || res.Readback == nil || *res.Readback != 77 {
		t.Fatalf("reconciled result: %+v, want success with readback 77", res)
	}
	if v := dialDevice(t, mb).setpoint(t); v != 77 {
		t.Fatalf("device holds %v, want 77", v)
	}
	entries, _ := rdb.XRange(ctx, "audit:commands", "-", "+").Result()
	var statuses []string
	for _, e := range entries {
		if e.Values["id"] == "frozen-1" && e.Values["event"] == "result" {
			statuses = append(statuses, fmt.Sprint(e.Values["status"], "/", e.Values["reconciled"]))
		}
	}
	if strings.Join(statuses, ",") != "unknown/<nil>,success/true" {
		t.Fatalf("audit results of frozen-1: %v, want unknown then reconciled success", statuses)
	}

	// The device restarts before it applied the write: reconciled failed.
	// `voltage control` shows the unknown answer, then the follow-up.
	freezeBetweenPolls(sim)
	type cliOut struct {
		out  string
		exit int
	}
	done := make(chan cliOut, 1)
	go func() {
		out, exit := runCmd(t, []string{"VOLTAGE_TOKEN=" + opToken}, "control", "-c", cfg, "--point", "1001:a:1", "--value", "88", "--id", "frozen-2", "--wait", "20s", "--timeout", "10s")
		done <- cliOut{out, exit}
	}()
	testenv.Eventually(t, 10*time.Second, func() bool { return storedResult(t, rdb, "frozen-2").Status == messages.StatusUnknown }, "the unknown answer")
	_ = sim.cmd.Process.Signal(syscall.SIGKILL)
	<-sim.done
	startDevice()
	got := <-done
	if got.exit == 0 || !strings.Contains(got.out, `"unknown"`) || !strings.Contains(got.out, `"reconciled": true`) || !strings.Contains(got.out, `"failed"`) {
		t.Fatalf("voltage control on a device restarted before applying: exit %d\n%s", got.exit, got.out)
	}
	res = storedResult(t, rdb, "frozen-2")
	if res.Status != messages.StatusFailed || !res.Reconciled || res.Readback == nil || *res.Readback == 88 {
		t.Fatalf("reconciled result of frozen-2: %+v, want failed with the device's value", res)
	}
}

// TestRedisACLAndTLS: a node of site A talks to Redis over TLS (rediss://,
// a client certificate, the site's CA) as an ACL user that may touch only
// site-a:* keys and channels. Polling, control (also `voltage control
// --via-redis`), computations and alarms work, and Redis refused nothing:
// every name the node uses carries its prefix.
func TestRedisACLAndTLS(t *testing.T) {
	ca := testenv.NewCA(t, "redis-test")
	srvCert, srvKey := ca.Issue(t, "redis")
	cliCert, cliKey := ca.Issue(t, "site-a-node")
	tlsPort := testenv.FreePort(t)
	r := testenv.StartRedisWith(t,
		"--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", srvCert, "--tls-key-file", srvKey,
		"--tls-ca-cert-file", ca.CertPEM, "--tls-auth-clients", "yes",
		// PSUBSCRIBE patterns are matched literally against the ACL's.
		"--user", "site-a", "on", ">site-a-secret-password", "~site-a:*", "&site-a:*", "&site-a:cmd:*:result", "+@all", "-@dangerous")
	mb := testenv.FreePort(t)
	startSimFromPoints(t, controlPoints, mb)
	httpPort := testenv.FreePort(t)
	dir := writeFiles(t, map[string]string{
		"node.yaml": fmt.Sprintf(`node: {name: acl, http: "127.0.0.1:%d"}
redis:
  url: "rediss://site-a:${E2E_REDIS_PASSWORD}@127.0.0.1:%d/0"
  prefix: site-a
  tls: {ca: %q, cert: %q, key: %q}
auth:
  tokens:
    - {name: op1, token: %s, role: operator}
  command_key: %s
channels:
  - {id: 1001, name: PCS-1, protocol: modbus_tcp, poll_interval: 100ms, points: p.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 300ms}}
  - {id: 9001, name: computed, protocol: compute}
computations:
  - {output: "9001:m:1", expression: "input1 * 2", inputs: ["1001:a:1"]}
alarms:
  - {id: sp-high, point: "1001:a:1", condition: ">", threshold: 400, level: minor}
`, httpPort, tlsPort, ca.CertPEM, cliCert, cliKey, opToken, e2eCommandKey, mb),
		"p.csv": controlPoints,
	})
	cfg, base := filepath.Join(dir, "node.yaml"), "http://127.0.0.1:"+strconv.Itoa(httpPort)
	env := []string{"E2E_REDIS_PASSWORD=site-a-secret-password"}
	node := start(t, env, "run", "-c", cfg)
	waitReady(t, base)
	rdb := redisDB(t, r, 0) // the default user, on the plain port: the test's view
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, func() bool { return rdb.HGet(ctx, "site-a:comsrv:1001:m:q", "10001").Val() == "good" }, "polling over TLS as site-a")

	if code, body := post(t, base+"/control/1001/1", opToken, `{"type":"a","value":450,"wait":"3s"}`); code != 200 || !strings.Contains(body, `"success"`) {
		t.Fatalf("command over TLS and ACL: %d %s", code, body)
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		return rdb.HGet(ctx, "site-a:alarm:sp-high", "state").Val() == "active-unacked" &&
			rdb.HGet(ctx, "site-a:comsrv:9001:m", "1").Val() == "900"
	}, "the alarm raised and the computation updated, in site-a's keys")
	out, exit := runCmd(t, append(env, "USER=bob"), "control", "-c", cfg, "--via-redis", "--point", "1001:a:1", "--value", "5")
	if exit != 0 || !strings.Contains(out, `"success"`) {
		t.Fatalf("voltage control --via-redis over TLS and ACL: exit %d\n%s", exit, out)
	}
	if strings.Contains(node.Output(), "NOPERM") {
		t.Fatalf("redis refused a command of the node (a name without the prefix?):\n%s", node.Output())
	}
	// A client without a certificate is refused by the server, and the
	// ACL user cannot reach another site's keys.
	other := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(tlsPort), Username: "site-a", Password: "site-a-secret-password",
		TLSConfig: ca.ClientTLS(t, cliCert, cliKey)})
	defer other.Close()
	if err := other.HGet(ctx, "site-b:comsrv:1001:m", "10001").Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("site-a reading site-b's keys: %v, want NOPERM", err)
	}
	nocert := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(tlsPort), Username: "site-a", Password: "site-a-secret-password",
		TLSConfig: ca.ClientTLS(t, "", "")})
	defer nocert.Close()
	if err := nocert.Ping(ctx).Err(); err == nil {
		t.Fatal("a TLS client without a certificate was accepted")
	}
}

// TestAlarmStatesBackWithThePoints: Redis restarts empty while an alarm is
// active. /api/alarms never shows it normal (503 while Redis lacks the
// states), and the states are back at the moment the point hashes are
// (they took 8.5 s more before: the alarm store's retry).
func TestAlarmStatesBackWithThePoints(t *testing.T) {
	r := testenv.StartRedis(t)
	mb := testenv.FreePort(t)
	startSimFromPoints(t, controlPoints, mb)
	cfg, base := siteNode(t, "alr", r.URL(), mb, "", `alarms:
  - {id: sp-high, point: "1001:a:1", condition: ">", threshold: 400, level: minor}
  - {id: v-low, point: "1001:m:10001", condition: "<", threshold: 0, level: minor}
`)
	start(t, nil, "run", "-c", cfg)
	waitReady(t, base)
	if code, body := post(t, base+"/control/1001/1", opToken, `{"type":"a","value":450,"wait":"3s"}`); code != 200 || !strings.Contains(body, `"success"`) {
		t.Fatalf("setpoint: %d %s", code, body)
	}
	type view struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	alarms := func() (int, map[string]string) {
		code, body := getAuth(t, base+"/api/alarms?state=all", opToken)
		var vs []view
		_ = json.Unmarshal([]byte(body), &vs)
		m := map[string]string{}
		for _, v := range vs {
			m[v.ID] = v.State
		}
		return code, m
	}
	testenv.Eventually(t, 5*time.Second, func() bool { _, m := alarms(); return m["sp-high"] == "active-unacked" }, "sp-high raised")
	rdb := redisDB(t, r, 0)
	ctx := context.Background()

	r.Stop()
	r.Restart()
	restarted := time.Now()
	var pointsBack, alarmsBack time.Duration
	for time.Since(restarted) < 10*time.Second && (pointsBack == 0 || alarmsBack == 0) {
		if pointsBack == 0 && rdb.HGet(ctx, "comsrv:1001:a", "1").Val() == "450" {
			pointsBack = time.Since(restarted)
		}
		code, m := alarms()
		switch {
		case code == 200 && m["sp-high"] != "active-unacked":
			t.Fatalf("%v after the restart /api/alarms shows sp-high %q (must never be shown normal while active)", time.Since(restarted), m["sp-high"])
		case code == 200 && alarmsBack == 0:
			alarmsBack = time.Since(restarted)
		case code != 200 && code != 503:
			t.Fatalf("/api/alarms answered %d", code)
		}
		time.Sleep(20 * time.Millisecond) // sampling the API, not waiting for a condition
	}
	if pointsBack == 0 || alarmsBack == 0 {
		t.Fatalf("not back within 10 s: point hashes %v, alarm states %v", pointsBack, alarmsBack)
	}
	t.Logf("after the restart: point hashes back in %v, alarm states in %v", pointsBack, alarmsBack)
	if alarmsBack > pointsBack+time.Second {
		t.Fatalf("alarm states back %v after the point hashes (%v vs %v)", alarmsBack-pointsBack, alarmsBack, pointsBack)
	}
	if st := rdb.SMembers(ctx, "idx:alarm:active").Val(); len(st) != 1 || st[0] != "sp-high" {
		t.Fatalf("idx:alarm:active after the restart: %v", st)
	}
}

// auditEntries reads the node's audit file (data_dir/audit.log).
func auditEntries(t *testing.T, dataDir string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

// TestExecutedOnceAcrossRedisLossAndAudited: Redis restarts without its
// data (cmd:seen and cmd:result gone); the same id sent again is a
// duplicate, not a second write (this node's dedupe store remembers it).
// Every attempt, refused ones included, is in the audit file, whose chain
// verifies.
func TestExecutedOnceAcrossRedisLossAndAudited(t *testing.T) {
	r := testenv.StartRedis(t)
	mb := testenv.FreePort(t)
	startSimFromPoints(t, controlPoints, mb)
	cfg, base := siteNode(t, "once", r.URL(), mb, "key=${E2E_CMD_KEY}")
	env := []string{"E2E_CMD_KEY=" + e2eCommandKey}
	node, rdb := runPolling(t, r, cfg, base, env)
	ctx := context.Background()
	dev := dialDevice(t, mb)

	if code, body := post(t, base+"/control/1001/1", opToken, `{"type":"a","value":10,"id":"once-1","wait":"3s"}`); code != 200 || !strings.Contains(body, `"success"`) {
		t.Fatalf("first command: %d %s", code, body)
	}
	if code, body := post(t, base+"/control/1001/1", opToken, `{"type":"a","value":20,"id":"once-2","wait":"3s"}`); code != 200 || !strings.Contains(body, `"success"`) {
		t.Fatalf("second command: %d %s", code, body)
	}
	r.Stop()
	r.Restart() // empty: no cmd:seen, no cmd:result
	waitReady(t, base)
	testenv.Eventually(t, 15*time.Second, func() bool {
		n, _ := rdb.PubSubNumSub(ctx, "cmd:1001:control").Result()
		return n["cmd:1001:control"] == 1
	}, "control channel subscribed again")
	code, body := post(t, base+"/control/1001/1", opToken, `{"type":"a","value":99,"id":"once-1","wait":"3s"}`)
	if code != 200 || !strings.Contains(body, `"duplicate"`) {
		t.Fatalf("the executed id again after Redis lost its data: %d %s, want duplicate", code, body)
	}
	if v := dev.setpoint(t); v != 20 {
		t.Fatalf("the id was executed again: the device holds %v, want 20", v)
	}
	if code, body := getAuth(t, base+"/api/commands/once-1", viewerToken); code != 200 || !strings.Contains(body, `"duplicate"`) {
		t.Fatalf("GET /api/commands/once-1: %d %s, want the duplicate answer, not pending", code, body)
	}

	// Refused attempts: no token, a viewer, a bad body, a guessed token, an
	// unsigned command on the bus.
	post(t, base+"/control/1001/1", "", `{"type":"a","value":1}`)
	post(t, base+"/control/1001/1", viewerToken, `{"type":"a","value":1}`)
	post(t, base+"/control/1001/1", opToken, `{"type":"a","value":1,"value":450}`)
	post(t, base+"/control/1001/1", "guessed-token-0000000000", `{"type":"a","value":1}`)
	bare, _ := json.Marshal(messages.ControlCommand{ID: "bus-1", ChannelID: 1001, PointType: messages.Adjustment, PointID: 1, Value: 3,
		Timestamp: time.Now().UnixMilli(), Source: "api", User: "operator1"})
	rdb.Publish(ctx, "cmd:1001:control", bare)
	dataDir := filepath.Join(filepath.Dir(cfg), "data")
	testenv.Eventually(t, 5*time.Second, func() bool {
		for _, e := range auditEntries(t, dataDir) {
			if e["id"] == "bus-1" {
				return true
			}
		}
		return false
	}, "the unsigned command in the audit file")
	if !node.stop(10 * time.Second) {
		t.Fatal("node did not stop")
	}
	var got []string
	for _, e := range auditEntries(t, dataDir) {
		got = append(got, fmt.Sprint(e["event"], " ", e["id"], " ", e["http_status"], " ", e["status"]))
	}
	all := strings.Join(got, "\n")
	for _, want := range []string{
		"accepted once-1 <nil> <nil>", "result once-1 <nil> success", "duplicate once-1 <nil> duplicate",
		"refused <nil> 401 <nil>", "refused <nil> 403 <nil>", "refused <nil> 400 <nil>", "refused bus-1 <nil> rejected",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("audit file: no %q in\n%s", want, all)
		}
	}
	out, exit := runCmd(t, env, "audit", "verify", "-c", cfg)
	if exit != 0 || !strings.Contains(out, "ok: ") {
		t.Fatalf("audit verify: exit %d\n%s", exit, out)
	}
}

// TestClusterLeasesStayInTheirSite: a two-node cluster of site A
// (redis.prefix site-a) and a single node of site B (site-b) share one
// Redis database. Every key either writes carries its site's prefix:
// leases, fencing counters, heartbeats, alarm states and point hashes; site
// A's cluster view lists only its own nodes.
func TestClusterLeasesStayInTheirSite(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redisDB(t, r, 0)
	ctx := context.Background()
	files := map[string]string{"p.csv": clusterPoints}
	var nodesYAML strings.Builder
	mb := map[string]int{}
	httpA := testenv.FreePort(t)
	for i, n := range []string{"a1", "a2"} {
		mb[n] = testenv.FreePort(t)
		httpPort := testenv.FreePort(t)
		if i == 0 {
			httpPort = httpA
		}
		fmt.Fprintf(&nodesYAML, "  - {name: %s, substation: A, remote: 127.0.0.1:%d, membership: 127.0.0.1:%d, http: 127.0.0.1:%d}\n",
			n, testenv.FreePort(t), testenv.FreePort(t), httpPort)
	}
	mb["b"] = testenv.FreePort(t)
	node := func(name, prefix string, port int) string {
		cfg, _ := siteNode(t, name, r.URL(), port, "prefix="+prefix, `alarms:
  - {id: hv, point: "1001:m:10001", condition: ">", threshold: 250}
`)
		b, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	files["a.yaml"] = node("a", "site-a", mb["a1"])
	files["b.yaml"] = node("b", "site-b", mb["b"])
	files["cluster.yaml"] = "name: site-a\nprovider: {kind: automanaged}\nnodes:\n" + nodesYAML.String() + "channels:\n  1001: {substation: A}\n"
	dir := writeFiles(t, files)
	startSim(t, filepath.Join(dir, "a.yaml"), mb["a1"], mb["a2"], mb["b"])
	for _, n := range []string{"a1", "a2"} {
		start(t, nil, "run", "-c", filepath.Join(dir, "a.yaml"), "--cluster", filepath.Join(dir, "cluster.yaml"), "--node", n)
	}
	start(t, nil, "run", "-c", filepath.Join(dir, "b.yaml"))
	testenv.Eventually(t, 20*time.Second, func() bool {
		return rdb.Exists(ctx, "site-a:lease:channel:1001", "site-a:lease:alarms:group", "site-a:node:a1", "site-a:node:a2").Val() == 4 &&
			rdb.HGet(ctx, "site-a:comsrv:1001:m:q", "10001").Val() == "good" &&
			rdb.HGet(ctx, "site-b:comsrv:1001:m:q", "10001").Val() == "good" &&
			rdb.Exists(ctx, "site-a:alarm:hv", "site-b:alarm:hv").Val() == 2
	}, "both sites running, site A's units leased under its prefix")
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "site-a:") && !strings.HasPrefix(k, "site-b:") {
			t.Errorf("key %q belongs to no site", k)
		}
	}
	code, body := getAuth(t, "http://127.0.0.1:"+strconv.Itoa(httpA)+"/api/cluster", opToken)
	if code != 200 || !strings.Contains(body, `"a2"`) || strings.Contains(body, `"b"`) {
		t.Fatalf("site A's cluster view: %d %s", code, body)
	}
}
