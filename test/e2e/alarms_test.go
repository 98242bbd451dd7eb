package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers/modbus/simulator"
	"github.com/voltage-ems/voltage/test/testenv"
)

const alarmPoints = `point_id,type,name,unit,slave_id,function_code,register_address,data_type,byte_order,bit_position,scale,offset,deadband,reverse,min,max
10001,m,voltage_a,V,1,3,0,float32,ABCD,,1,0,0,,220,240
10002,m,temperature,°C,1,3,2,float32,ABCD,,1,0,0,,20,40
`

type alarmEvent struct {
	EventID string  `json:"event_id"`
	AlarmID string  `json:"alarm_id"`
	Type    string  `json:"type"`
	State   string  `json:"state"`
	Band    string  `json:"band"`
	Level   string  `json:"level"`
	Value   float64 `json:"value"`
	Message string  `json:"message"`
	User    string  `json:"user"`
	TS      int64   `json:"ts"`
}

type alarmView struct {
	ID      string  `json:"id"`
	State   string  `json:"state"`
	Level   string  `json:"level"`
	Band    string  `json:"band"`
	Value   float64 `json:"value"`
	Since   int64   `json:"since"`
	Message string  `json:"message"`
	AckedBy string  `json:"acked_by"`
	Shelved bool    `json:"shelved"`
}

// hookReceiver is a webhook target that refuses the first fail requests
// with 503 and records the events it accepts.
type hookReceiver struct {
	mu     sync.Mutex
	fail   int
	tries  int
	ids    []string
	events []alarmEvent
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tries++
	if h.tries <= h.fail {
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	var ev alarmEvent
	if err := json.Unmarshal(body, &ev); err != nil || r.Header.Get("X-Voltage-Event-Id") != ev.EventID {
		http.Error(w, "bad event", http.StatusBadRequest)
		return
	}
	h.ids = append(h.ids, ev.EventID)
	h.events = append(h.events, ev)
}

func (h *hookReceiver) received() ([]string, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.ids...), h.tries
}

// TestAlarmsEndToEnd runs a node against a real Redis, a Modbus simulator
// and a webhook target, and checks what an operator and an integrator see:
// a raise with its message, no flood from chatter inside the deadband, no
// alarm from a spike shorter than the on-delay, the webhook retried until
// it takes the events, acknowledgement and shelving through the API with
// their errors, a communication alarm, and an active alarm that survives a
// node restart without a second raise.
func TestAlarmsEndToEnd(t *testing.T) {
	r := testenv.StartRedis(t)
	hook := &hookReceiver{fail: 2}
	hs := httptest.NewServer(hook)
	t.Cleanup(hs.Close)
	httpPort, mbPort := testenv.FreePort(t), testenv.FreePort(t)
	dir := writeFiles(t, map[string]string{
		"node.yaml": fmt.Sprintf(`node: {name: alarms-e2e, http: "127.0.0.1:%d"}
redis: {url: %q}
auth:
  tokens:
    - {name: op1, token: %s, role: operator}
    - {name: watcher, token: %s, role: viewer}
channels:
  - {id: 1001, name: PCS-1, protocol: modbus_tcp, poll_interval: 100ms, points: p.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 300ms}}
alarms:
  - {id: hv, point: "1001:m:10001", condition: ">", threshold: 250, deadband: 2, level: major,
     message: "Voltage {value} {unit} above {threshold} {unit} on {name}", notify: [%q]}
  - {id: hot, point: "1001:m:10002", condition: ">", threshold: 80, on_delay: 2s, level: minor}
`, httpPort, r.URL(), opToken, viewerToken, mbPort, hs.URL+"/hook?key=secret"),
		"p.csv": alarmPoints,
	})
	cfgPath := filepath.Join(dir, "node.yaml")
	sim := startSim(t, cfgPath, mbPort)
	set := func(i int, v float64) {
		t.Helper()
		if err := sim.SetValue(i, v); err != nil {
			t.Fatal(err)
		}
	}
	set(0, 230)
	set(1, 25)

	node := start(t, nil, "run", "-c", cfgPath)
	base := "http://127.0.0.1:" + strconv.Itoa(httpPort)
	ready := func() {
		testenv.Eventually(t, 15*time.Second, func() bool { code, _ := get(t, base+"/ready"); return code == 200 }, "node ready")
	}
	ready()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	// polled waits until the node has read value v of point 10001 or 10002.
	polled := func(pt string, v float64) {
		t.Helper()
		testenv.Eventually(t, 5*time.Second, func() bool {
			got, err := rdb.HGet(ctx, "comsrv:1001:m", pt).Float64()
			return err == nil && got == v
		}, "node polls "+pt+" = "+strconv.FormatFloat(v, 'g', -1, 64))
	}
	alarmOf := func(id string) alarmView {
		t.Helper()
		code, body := getAuth(t, base+"/api/alarms/"+id, viewerToken)
		var a alarmView
		if code != 200 || json.Unmarshal([]byte(body), &a) != nil {
			t.Fatalf("GET /api/alarms/%s: %d %s", id, code, body)
		}
		return a
	}
	events := func() []alarmEvent {
		t.Helper()
		raw, err := rdb.LRange(ctx, "alarm:events", 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		out := make([]alarmEvent, len(raw))
		for i, s := range raw { // newest first in Redis: return oldest first
			if err := json.Unmarshal([]byte(s), &out[len(raw)-1-i]); err != nil {
				t.Fatalf("alarm:events[%d] = %s: %v", i, s, err)
			}
		}
		return out
	}
	count := func(id, typ string) int {
		n := 0
		for _, e := range events() {
			if e.AlarmID == id && e.Type == typ {
				n++
			}
		}
		return n
	}

	// Every rule is listed, normal, before anything happens.
	code, body := getAuth(t, base+"/api/alarms?state=all", viewerToken)
	if code != 200 || strings.Count(body, `"state":"normal"`) != 2 {
		t.Fatalf("GET /api/alarms?state=all: %d %s", code, body)
	}
	polled("10001", 230)
	// Bad requests.
	for _, c := range []struct {
		path, token, body string
		code              int
		want              string
	}{
		{"/api/alarms/nope/ack", opToken, "", 404, "unknown alarm"},
		{"/api/alarms/hv/ack", opToken, "", 409, "normal"},
		{"/api/alarms/hv/ack", viewerToken, "", 403, "role operator"},
		{"/api/alarms/hv/shelve", opToken, `{"for":"1h"}`, 400, "reason: required"},
		{"/api/alarms/hv/shelve", opToken, `{"for":"1 hour","reason":"x"}`, 400, "for:"},
		{"/api/alarms/hv/shelve", opToken, `{"for":"1h","reason":"x","extra":1}`, 400, "unknown field"},
		{"/api/alarms/hv/unshelve", opToken, "", 409, "not shelved"},
	} {
		if code, body := post(t, base+c.path, c.token, c.body); code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("POST %s %s: %d %s, want %d with %q", c.path, c.body, code, body, c.code, c.want)
		}
	}
	if code, body := getAuth(t, base+"/api/alarms?state=open", viewerToken); code != 400 || !strings.Contains(body, "state") {
		t.Errorf("state=open: %d %s", code, body)
	}
	if code, body := getAuth(t, base+"/api/alarms/events?limit=0", viewerToken); code != 400 || !strings.Contains(body, "limit") {
		t.Errorf("limit=0: %d %s", code, body)
	}

	// Raise, then chatter around the threshold inside the deadband: one raise.
	set(0, 251)
	testenv.Eventually(t, 5*time.Second, func() bool { return alarmOf("hv").State == "active-unacked" }, "hv raised")
	a := alarmOf("hv")
	if a.Level != "major" || a.Message != "Voltage 251 V above 250 V on voltage_a" || a.Band != "limit" {
		t.Fatalf("raised alarm: %+v", a)
	}
	if m, _ := rdb.SIsMember(ctx, "idx:alarm:active", "hv").Result(); !m {
		t.Fatal("hv not in idx:alarm:active")
	}
	if code, body := getAuth(t, base+"/api/alarms?level=critical", viewerToken); code != 200 || body != "[]" {
		t.Fatalf("level=critical: %d %s", code, body)
	}
	if code, body := getAuth(t, base+"/api/alarms?level=major,minor", viewerToken); code != 200 || !strings.Contains(body, `"id":"hv"`) {
		t.Fatalf("level=major,minor: %d %s", code, body)
	}
	if code, body := getAuth(t, base+"/api/alarms?level=urgent", viewerToken); code != 400 || !strings.Contains(body, "level") {
		t.Fatalf("level=urgent: %d %s", code, body)
	}
	for _, v := range []float64{249.5, 250.5, 248.5, 251.5, 249} {
		set(0, v)
		polled("10001", v)
	}
	if n := count("hv", "raise"); n != 1 {
		t.Fatalf("chatter inside the deadband: %d raises, want 1", n)
	}
	if a := alarmOf("hv"); a.State != "active-unacked" {
		t.Fatalf("chatter cleared the alarm: %+v", a)
	}

	// A spike shorter than the on-delay raises nothing; a value held past it does.
	set(1, 95)
	polled("10002", 95)
	set(1, 30)
	polled("10002", 30)
	spikeEnd := time.Now()
	set(1, 90)
	testenv.Eventually(t, 6*time.Second, func() bool { return alarmOf("hot").State == "active-unacked" }, "hot raised after its on-delay")
	if n := count("hot", "raise"); n != 1 {
		t.Fatalf("hot: %d raises, want 1 (the spike must not raise)", n)
	}
	if since := time.UnixMilli(alarmOf("hot").Since); since.Sub(spikeEnd) < 2*time.Second {
		t.Fatalf("hot raised %v after the spike ended, before its 2 s on-delay", since.Sub(spikeEnd))
	}

	// The webhook refused twice (503), then took the raise: retried, delivered.
	testenv.Eventually(t, 10*time.Second, func() bool { ids, _ := hook.received(); return len(ids) >= 1 }, "webhook delivery")
	ids, tries := hook.received()
	if ids[0] != "hv:1" || tries < 3 {
		t.Fatalf("webhook: ids %v after %d tries, want hv:1 first after 2 refusals", ids, tries)
	}
	if strings.Contains(node.Output(), "secret") {
		t.Fatal("the webhook URL's query string (a secret) is in the log")
	}

	// The active alarm survives a node restart: same state, no second raise.
	before := len(events())
	hvBefore := alarmOf("hv")
	if !node.stop(10 * time.Second) {
		t.Fatal("node did not stop on SIGTERM")
	}
	node = start(t, nil, "run", "-c", cfgPath)
	ready()
	testenv.Eventually(t, 10*time.Second, func() bool {
		_, body := getAuth(t, base+"/metrics", viewerToken)
		m := regexp.MustCompile(`(?m)^voltage_alarm_evaluations_total (\d+)`).FindStringSubmatch(body)
		return m != nil && m[1] != "0"
	}, "alarms evaluating after the restart")
	if a := alarmOf("hv"); a.State != "active-unacked" || a.Since != hvBefore.Since {
		t.Fatalf("after restart: %+v, before %+v", a, hvBefore)
	}
	if n := len(events()); n != before {
		t.Fatalf("restart wrote %d events (%v), want none", n-before, events()[before:])
	}

	// Acknowledge (records who), then clear: normal, out of the active index.
	code, body = post(t, base+"/api/alarms/hv/ack", opToken, `{"comment":"seen"}`)
	if code != 200 || !strings.Contains(body, `"state":"active-acked"`) || !strings.Contains(body, `"acked_by":"op1"`) {
		t.Fatalf("ack: %d %s", code, body)
	}
	if code, body := post(t, base+"/api/alarms/hv/ack", opToken, ""); code != 409 || !strings.Contains(body, "already acknowledged") {
		t.Fatalf("second ack: %d %s", code, body)
	}
	set(0, 247)
	testenv.Eventually(t, 5*time.Second, func() bool { return alarmOf("hv").State == "normal" }, "hv cleared")
	if m, _ := rdb.SIsMember(ctx, "idx:alarm:active", "hv").Result(); m {
		t.Fatal("hv still in idx:alarm:active")
	}

	// Shelve: out of the active list, in the shelved one; unshelve brings it back.
	code, body = post(t, base+"/api/alarms/hot/shelve", opToken, `{"for":"1h","reason":"sensor maintenance"}`)
	if code != 200 || !strings.Contains(body, `"shelved":true`) {
		t.Fatalf("shelve: %d %s", code, body)
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		_, active := getAuth(t, base+"/api/alarms?state=active", viewerToken)
		_, shelved := getAuth(t, base+"/api/alarms?state=shelved", viewerToken)
		return !strings.Contains(active, `"id":"hot"`) && strings.Contains(shelved, `"id":"hot"`)
	}, "hot listed as shelved only")
	if code, body := post(t, base+"/api/alarms/hot/unshelve", opToken, ""); code != 200 || !strings.Contains(body, `"shelved":false`) {
		t.Fatalf("unshelve: %d %s", code, body)
	}

	// The device stops answering: a communication alarm, not a stale evaluation.
	sim.SetSlaveDown(1, true)
	testenv.Eventually(t, 10*time.Second, func() bool { a := alarmOf("hv"); return a.Band == "comm" && a.State == "active-unacked" }, "hv comm alarm")
	if a := alarmOf("hv"); !strings.Contains(a.Message, "Communication lost") {
		t.Fatalf("comm alarm message: %q", a.Message)
	}
	sim.SetSlaveDown(1, false)
	testenv.Eventually(t, 10*time.Second, func() bool { return alarmOf("hv").State == "cleared-unacked" }, "hv comm alarm cleared")

	// The event log, newest first, through the API; the webhook got every
	// hv event in order (at least once: no gaps).
	code, body = getAuth(t, base+"/api/alarms/events?limit=3", viewerToken)
	var last []alarmEvent
	if code != 200 || json.Unmarshal([]byte(body), &last) != nil || len(last) != 3 || last[0].TS < last[2].TS {
		t.Fatalf("GET /api/alarms/events?limit=3: %d %s", code, body)
	}
	if all := events(); last[0].EventID != all[len(all)-1].EventID {
		t.Fatalf("newest event from the API %s, from redis %s", last[0].EventID, all[len(all)-1].EventID)
	}
	if a := alarmOf("hv"); !strings.Contains(a.Message, "Communication restored") {
		t.Fatalf("hv after the comm alarm cleared: %+v", a)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		ids, _ := hook.received()
		var want []string
		for _, e := range events() {
			if e.AlarmID == "hv" {
				want = append(want, e.EventID)
			}
		}
		return strings.Join(dedupe(ids), ",") == strings.Join(want, ",")
	}, "every hv event delivered to the webhook in order")
}

// dedupe drops repeated deliveries (at least once) of the same event.
func dedupe(ids []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// TestWebhookEventsKeptAcrossRestart: the webhook target is down when the
// node stops; the undelivered event waits in Redis (without the URL's
// secret) and the next run delivers it once the target is up.
func TestWebhookEventsKeptAcrossRestart(t *testing.T) {
	r := testenv.StartRedis(t)
	httpPort, mbPort, hookPort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	hookURL := fmt.Sprintf("http://127.0.0.1:%d/hook?key=secret", hookPort)
	dir := writeFiles(t, map[string]string{
		"node.yaml": fmt.Sprintf(`node: {name: keep-e2e, http: "127.0.0.1:%d"}
redis: {url: %q}
channels:
  - {id: 1001, name: PCS-1, protocol: modbus_tcp, poll_interval: 100ms, points: p.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 300ms}}
alarms:
  - {id: hv, point: "1001:m:10001", condition: ">", threshold: 250, notify: [%q]}
`, httpPort, r.URL(), mbPort, hookURL),
		"p.csv": alarmPoints,
	})
	cfgPath := filepath.Join(dir, "node.yaml")
	sim := startSim(t, cfgPath, mbPort)
	if err := sim.SetValue(0, 255); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()

	node := start(t, nil, "run", "-c", cfgPath)
	base := "http://127.0.0.1:" + strconv.Itoa(httpPort)
	testenv.Eventually(t, 15*time.Second, func() bool { code, _ := get(t, base+"/ready"); return code == 200 }, "node ready")
	testenv.Eventually(t, 10*time.Second, func() bool { return rdb.LLen(ctx, "alarm:events").Val() == 1 }, "hv raised")
	if !node.stop(10 * time.Second) {
		t.Fatal("node did not stop on SIGTERM")
	}
	kept, err := rdb.LRange(ctx, "alarm:notify:pending:keep-e2e", 0, -1).Result()
	if err != nil || len(kept) != 1 || !strings.Contains(kept[0], `"event_id":"hv:1"`) || strings.Contains(kept[0], "secret") {
		t.Fatalf("kept for the next run: %v %v\n%s", kept, err, node.Output())
	}

	hook := &hookReceiver{}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", hookPort))
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: hook, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	start(t, nil, "run", "-c", cfgPath)
	testenv.Eventually(t, 15*time.Second, func() bool { ids, _ := hook.received(); return len(ids) >= 1 }, "the kept event delivered")
	if ids, _ := hook.received(); ids[0] != "hv:1" {
		t.Fatalf("delivered %v, want hv:1", ids)
	}
	if n := rdb.Exists(ctx, "alarm:notify:pending:keep-e2e").Val(); n != 0 {
		t.Fatal("the pending list is still in redis")
	}
}

// startSim serves the first channel of the node config at cfgPath from an
// in-process simulator, on each of ports (a node per port in the cluster
// tests, so its request log tells the nodes apart).
func startSim(t *testing.T, cfgPath string, ports ...int) *simulator.Simulator {
	t.Helper()
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	sim, err := simulator.New(cfg.Channels[0].Points, simulator.WithRequestLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	for _, p := range ports {
		if _, err := sim.Serve(fmt.Sprintf("127.0.0.1:%d", p)); err != nil {
			t.Fatal(err)
		}
	}
	return sim
}
