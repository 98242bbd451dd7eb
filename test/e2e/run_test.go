package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/test/testenv"
)

const pcsTable = `point_id,type,name,unit,slave_id,function_code,register_address,data_type,byte_order,bit_position,scale,offset,deadband,reverse
10001,m,voltage_a,V,1,3,0,float32,ABCD,,1,0,0,
10002,m,temperature,°C,1,4,0,int16,,,0.1,0,0,
20001,s,breaker_closed,,1,1,0,bool,,,,,,
10101,m,soc,%,2,3,0,uint16,,,0.1,0,0,
`

// TestRunAgainstRealRedis is the integrator's path: `voltage simulate` as
// the field device, `voltage run` against a real redis-server, then the
// documented keys, point:update messages and HTTP routes.
func TestRunAgainstRealRedis(t *testing.T) {
	r := testenv.StartRedis(t)
	modbusPort, httpPort := testenv.FreePort(t), testenv.FreePort(t)
	dir := writeFiles(t, map[string]string{
		"node.yaml": fmt.Sprintf(`node: {name: sub-e2e, http: "127.0.0.1:%d"}
redis: {url: %q}
channels:
  - {id: 1001, name: PCS-1, protocol: modbus_tcp, poll_interval: 100ms, points: pcs.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 500ms}}
  - {id: 1002, name: PV, protocol: virtual, poll_interval: 100ms, points: pv.csv}
`, httpPort, r.URL(), modbusPort),
		"pcs.csv": pcsTable,
		"pv.csv":  "point_id,type,name,unit,signal,min,max,period\n1,m,pv_power,kW,sine,0,500,10s\n",
	})
	cfg := filepath.Join(dir, "node.yaml")
	sim := start(t, nil, "simulate", "-c", cfg)
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(sim.Output(), "modbus simulator serving") }, "simulator up")

	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	sub := rdb.Subscribe(ctx, "point:update")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}

	node := start(t, nil, "run", "-c", cfg)
	base := "http://127.0.0.1:" + strconv.Itoa(httpPort)
	testenv.Eventually(t, 15*time.Second, func() bool { code, _ := get(t, base+"/ready"); return code == 200 }, "node ready")

	// The documented hashes fill up with good values.
	for _, k := range []struct{ hash, field string }{{"comsrv:1001:m", "10001"}, {"comsrv:1001:m", "10002"}, {"comsrv:1001:s", "20001"}, {"comsrv:1001:m", "10101"}, {"comsrv:1002:m", "1"}} {
		testenv.Eventually(t, 10*time.Second, func() bool { return rdb.HGet(ctx, k.hash+":q", k.field).Val() == "good" }, "%s %s good", k.hash, k.field)
		if _, err := strconv.ParseFloat(rdb.HGet(ctx, k.hash, k.field).Val(), 64); err != nil {
			t.Fatalf("%s %s value: %v", k.hash, k.field, err)
		}
		ts, _ := strconv.ParseInt(rdb.HGet(ctx, k.hash+":ts", k.field).Val(), 10, 64)
		if d := time.Since(time.UnixMilli(ts)); d < 0 || d > 10*time.Second {
			t.Fatalf("%s %s: ts %d is not a recent Unix ms time", k.hash, k.field, ts)
		}
	}
	// point:update carries the documented payload with this node's name.
	msgCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := sub.ReceiveMessage(msgCtx)
	if err != nil {
		t.Fatal(err)
	}
	var u map[string]any
	if err := json.Unmarshal([]byte(m.Payload), &u); err != nil {
		t.Fatalf("payload %q: %v", m.Payload, err)
	}
	for _, f := range []string{"channel_id", "point_type", "point_id", "value", "timestamp", "quality", "node"} {
		if _, ok := u[f]; !ok {
			t.Fatalf("payload %s lacks %q", m.Payload, f)
		}
	}
	if u["node"] != "sub-e2e" {
		t.Fatalf("node in payload: %v", u["node"])
	}

	// HTTP routes.
	code, body := get(t, base+"/api/points?pattern=1001:m:*")
	var pts []struct {
		Key     string   `json:"key"`
		Value   *float64 `json:"value"`
		Quality string   `json:"quality"`
		Unit    string   `json:"unit"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &pts) != nil || len(pts) != 3 {
		t.Fatalf("/api/points: %d %s", code, body)
	}
	if pts[0].Key != "1001:m:10001" || pts[0].Value == nil || pts[0].Quality != "good" || pts[0].Unit != "V" {
		t.Fatalf("/api/points first entry: %+v", pts[0])
	}
	if code, body := get(t, base+"/api/points?pattern=%5B"); code != 400 || !strings.Contains(body, `"code":"bad_pattern"`) {
		t.Fatalf("bad pattern: %d %s", code, body)
	}
	code, body = get(t, base+"/api/channels")
	var chans []struct {
		ID        uint32 `json:"id"`
		Connected bool   `json:"connected"`
		Polls     uint64 `json:"polls"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &chans) != nil || len(chans) != 2 || !chans[0].Connected || chans[0].Polls == 0 {
		t.Fatalf("/api/channels: %d %s", code, body)
	}
	if code, _ := get(t, base+"/api/channels/4242"); code != 404 {
		t.Fatalf("unknown channel: %d", code)
	}
	code, body = get(t, base+"/metrics")
	for _, metric := range []string{"voltage_channel_polls_total{channel=\"1001\"}", "voltage_channel_poll_seconds_bucket",
		"voltage_points_published_total", "voltage_redis_flush_seconds", "voltage_redis_flush_size", "voltage_redis_queue_depth",
		"voltage_actor_restarts_total", "voltage_channel_poll_errors_total"} {
		if !strings.Contains(body, metric) {
			t.Errorf("/metrics lacks %s", metric)
		}
	}
	if code, body := get(t, base+"/health"); code != 200 || !strings.Contains(body, "sub-e2e") {
		t.Fatalf("/health: %d %s", code, body)
	}

	// The device goes away: points go comm_lost, /api/channels says so.
	if !sim.stop(5 * time.Second) {
		t.Fatal("simulator did not stop on SIGTERM")
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return rdb.HGet(ctx, "comsrv:1001:m:q", "10001").Val() == "comm_lost" }, "comm_lost after the device is gone")

	// A clean shutdown on SIGTERM.
	if !node.stop(10 * time.Second) {
		t.Fatal("node did not stop within 10 s of SIGTERM")
	}
	if node.err != nil {
		t.Fatalf("node exit: %v", node.err)
	}
	if out := node.Output(); !strings.Contains(out, "step=actors") || !strings.Contains(out, "msg=stopped") {
		t.Fatalf("shutdown not logged step by step:\n%s", out)
	}
}

// TestDemoWithEmbeddedDefaults runs what `make run` runs (the demo config,
// --simulate, embedded Redis) on free ports and watches values arrive in the
// embedded Redis whose address the node logs.
func TestDemoWithEmbeddedDefaults(t *testing.T) {
	httpPort, modbusPort := testenv.FreePort(t), testenv.FreePort(t)
	files := map[string]string{}
	for _, f := range []string{"demo.yaml", "points/1001.csv", "points/1002.csv"} {
		b, err := readRepoFile(filepath.Join("config", "examples", f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = b
	}
	files["demo.yaml"] = strings.NewReplacer("127.0.0.1:8080", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"port: 15020", fmt.Sprintf("port: %d", modbusPort)).Replace(files["demo.yaml"])
	if !strings.Contains(files["demo.yaml"], strconv.Itoa(modbusPort)) {
		t.Fatal("demo.yaml no longer has the ports this test rewrites")
	}
	dir := writeFiles(t, files)
	node := start(t, nil, "run", "-c", filepath.Join(dir, "demo.yaml"), "--simulate")
	base := "http://127.0.0.1:" + strconv.Itoa(httpPort)
	testenv.Eventually(t, 15*time.Second, func() bool { code, _ := get(t, base+"/ready"); return code == 200 }, "demo ready")

	var addr string
	for _, line := range strings.Split(node.Output(), "\n") {
		if strings.Contains(line, "embedded redis listening") {
			for _, f := range strings.Fields(line) {
				if strings.HasPrefix(f, "addr=") {
					addr = strings.TrimPrefix(f, "addr=")
				}
			}
		}
	}
	if addr == "" {
		t.Fatalf("embedded redis address not logged:\n%s", node.Output())
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, func() bool {
		q := rdb.HGetAll(ctx, "comsrv:1001:m:q").Val()
		v := rdb.HGetAll(ctx, "comsrv:1002:m:q").Val()
		return len(q) >= 10 && q["10001"] == "good" && v["1"] == "good"
	}, "demo values from the Modbus simulator and the virtual channel in the embedded redis")
	// The demo's computation: total_power = PCS active power + PV power.
	testenv.Eventually(t, 10*time.Second, func() bool {
		return rdb.HGet(ctx, "comsrv:9001:m:q", "1").Val() == "good"
	}, "computed point 9001:m:1 in redis")
	code, body := getAuth(t, base+"/api/computations", "demo-viewer-token-0001")
	if code != 200 || !strings.Contains(body, `"output":"9001:m:1"`) || !strings.Contains(body, `"quality":"good"`) {
		t.Fatalf("/api/computations: %d %s", code, body)
	}
	v1 := rdb.HGet(ctx, "comsrv:1001:m:ts", "10001").Val()
	testenv.Eventually(t, 10*time.Second, func() bool { return rdb.HGet(ctx, "comsrv:1001:m:ts", "10001").Val() != v1 }, "values keep moving")
}
