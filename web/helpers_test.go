package web

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

// Tokens of testYAML.
const (
	viewerToken   = "viewer-token-00001"
	operatorToken = "operator-token-0001"
	adminToken    = "admin-token-000001"
)

const testYAML = `node: {name: web-test}
auth:
  tokens:
    - {name: view1, token: ` + viewerToken + `, role: viewer}
    - {name: op1, token: ` + operatorToken + `, role: operator}
    - {name: admin1, token: ` + adminToken + `, role: admin}
channels:
  - {id: 1001, name: PCS, protocol: modbus_tcp, parameters: {host: 127.0.0.1, port: 15020}, points: pcs.csv}
  - {id: 1002, name: PV, protocol: virtual, points: pv.csv}
`

// noTokensYAML is testYAML without auth.
var noTokensYAML = testYAML[:strings.Index(testYAML, "auth:")] + testYAML[strings.Index(testYAML, "channels:"):]

var testFiles = map[string]string{
	"pcs.csv": `point_id,type,name,unit,slave_id,function_code,register_address,data_type,byte_order,bit_position,scale,offset,deadband,reverse,min,max
10001,m,voltage_a,V,1,3,0,float32,ABCD,,1,0,0.1,,220,240
20001,s,breaker_closed,,1,1,0,bool,,,,,,,,
1,c,breaker_cmd,,1,5,10,bool,,,,,,,,
1,a,p_set,kW,1,16,100,float32,ABCD,,1,0,0,,-500,500
2,a,q_set,kvar,1,16,102,int16,,,0.1,0,0,,,
3,c,contactor,,2,6,20,bool,,0,,,,,,
4,a,current_limit,A,1,6,104,uint16,,,1,0,0,,,
`,
	"pv.csv": `point_id,type,name,unit,signal,min,max,period
1,m,pv_power,kW,sine,0,500,60s
5,c,inverter_enable,,,,,
10,a,curtailment,%,,0,100,
`,
}

func loadTestConfig(t testing.TB, yaml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), "/cfg/node.yaml", func(name string) ([]byte, error) {
		for f, body := range testFiles {
			if strings.HasSuffix(name, "/"+f) {
				return []byte(body), nil
			}
		}
		return nil, fmt.Errorf("no test file %s", name)
	})
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

// env is a handler over a real redis-server, without channel actors.
type env struct {
	t     *testing.T
	redis *testenv.Redis
	rdb   *redis.Client
	srv   *httptest.Server
}

func newEnv(t *testing.T, yaml string) *env {
	t.Helper()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: 1})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h := NewHandler(Deps{
		Config: loadTestConfig(t, yaml), Redis: rdb, Gatherer: prometheus.NewRegistry(), Version: "test",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Context: ctx,
		Ready: func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &env{t: t, redis: r, rdb: rdb, srv: srv}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

// errorBody decodes {"error":{"code","message"}}.
func (r response) errorBody(t testing.TB) apiError {
	t.Helper()
	var e struct {
		Error apiError `json:"error"`
	}
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error.Code == "" {
		t.Fatalf("not an error body: %s", r)
	}
	return e.Error
}

func (r response) object(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("not a JSON object: %s", r)
	}
	return m
}

func (e *env) do(method, path, token, body string) response {
	e.t.Helper()
	return doRequest(e.t, e.srv.URL, method, path, token, body)
}

func doRequest(t testing.TB, base, method, path, token, body string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (e *env) control(path, token, body string) response {
	e.t.Helper()
	return e.do(http.MethodPost, "/control/"+path, token, body)
}

// resultKeys lists the cmd:result:* keys.
func (e *env) resultKeys() []string {
	e.t.Helper()
	keys, err := e.rdb.Keys(context.Background(), "cmd:result:*").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return keys
}

// busWatch records every message published on cmd:* (and, being a
// subscriber, makes PUBLISH on cmd:{ch}:control count one receiver).
type busWatch struct {
	t   *testing.T
	rdb *redis.Client
	mu  sync.Mutex
	got []*redis.Message
	seq int
}

func (e *env) watchBus() *busWatch {
	e.t.Helper()
	w := &busWatch{t: e.t, rdb: e.rdb}
	ps := e.rdb.PSubscribe(context.Background(), "cmd:*")
	if _, err := ps.Receive(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = ps.Close() })
	ch := ps.Channel()
	go func() {
		for m := range ch {
			w.mu.Lock()
			w.got = append(w.got, m)
			w.mu.Unlock()
		}
	}()
	return w
}

// flush publishes a marker, waits until the watcher has seen it and
// returns (and forgets) the messages seen before it.
func (w *busWatch) flush() []*redis.Message {
	w.t.Helper()
	w.seq++
	marker := fmt.Sprintf("marker-%d", w.seq)
	if err := w.rdb.Publish(context.Background(), "cmd:marker", marker).Err(); err != nil {
		w.t.Fatal(err)
	}
	var before []*redis.Message
	testenv.Eventually(w.t, 5*time.Second, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		for i, m := range w.got {
			if m.Channel == "cmd:marker" && m.Payload == marker {
				before = append(before, w.got[:i]...)
				w.got = append([]*redis.Message(nil), w.got[i+1:]...)
				return true
			}
		}
		return false
	}, "marker %s seen", marker)
	return before
}

// commands returns the control commands among msgs.
func commands(t testing.TB, msgs []*redis.Message) []messages.ControlCommand {
	t.Helper()
	var out []messages.ControlCommand
	for _, m := range msgs {
		if !strings.HasSuffix(m.Channel, ":control") {
			continue
		}
		c, err := messages.ParseCommand([]byte(m.Payload))
		if err != nil {
			t.Fatalf("published command %s: %v", m.Payload, err)
		}
		out = append(out, *c)
	}
	return out
}
