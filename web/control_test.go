package web

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

// TestControlRejectsBadInput: every bad request is answered with its
// status, code and a clear message, and nothing is published or stored.
func TestControlRejectsBadInput(t *testing.T) {
	e := newEnv(t, testYAML)
	bus := e.watchBus()
	big := `{"value": 1, "id": "` + strings.Repeat("x", 5000) + `"}`
	cases := []struct {
		name, path, body string
		status           int
		code, fragment   string
	}{
		{"channel id not a number", "abc/1", `{"value":1}`, 400, "bad_request", `channel id "abc" is not a number`},
		{"point id not a number", "1001/x", `{"value":1}`, 400, "bad_request", `point id "x" is not a number`},
		{"point id too large", "1001/4294967296", `{"value":1}`, 400, "bad_request", "point id"},
		{"malformed JSON", "1001/3", `{"value":`, 400, "bad_request", "malformed JSON body"},
		{"trailing comma", "1001/3", `{"value": 1,}`, 400, "bad_request", "malformed JSON body: invalid character"},
		{"not an object", "1001/3", `[1]`, 400, "bad_request", "malformed JSON body"},
		{"two objects", "1001/3", `{"value":1} {"value":0}`, 400, "bad_request", "unexpected data after the JSON object"},
		{"empty body", "1001/3", ``, 400, "bad_request", "empty body"},
		{"missing value", "1001/3", `{"type":"c"}`, 400, "bad_request", "value is required"},
		{"string value", "1001/3", `{"value":"1"}`, 400, "bad_request", "value must be a number (or true/false), not a JSON string"},
		{"null value", "1001/3", `{"value":null}`, 400, "bad_request", "not a JSON null"},
		{"object value", "1001/3", `{"value":{"v":1}}`, 400, "bad_request", "not a JSON object"},
		{"huge value", "1001/1", `{"value":1e400,"type":"a"}`, 400, "bad_request", "value 1e400 is not a finite number"},
		{"unknown field", "1001/3", `{"value":1,"colour":"red"}`, 400, "bad_request", `unknown field "colour"`},
		{"duplicate value", "1001/1", `{"type":"a","value":1,"value":450}`, 400, "bad_request", `duplicate field "value"`},
		{"duplicate escaped", "1001/1", `{"type":"a","value":1,"val\u0075e":450}`, 400, "bad_request", `duplicate field "value"`},
		{"duplicate nested", "1001/1", `{"type":"a","value":{"v":1,"v":2}}`, 400, "bad_request", `duplicate field "value.v"`},
		{"wrongly cased field", "1001/3", `{"Value":1}`, 400, "bad_request", `unknown field "Value" (fields are case sensitive: did you mean "value"?)`},
		{"wrongly cased type", "1001/1", `{"value":1,"TYPE":"a"}`, 400, "bad_request", `did you mean "type"?`},
		{"type not a string", "1001/3", `{"value":1,"type":1}`, 400, "bad_request", `field "type"`},
		{"unknown type", "1001/3", `{"value":1,"type":"x"}`, 400, "bad_request", `unknown point type "x"`},
		{"bad id", "1001/3", `{"value":1,"id":"no spaces"}`, 400, "bad_request", "not allowed"},
		{"empty id", "1001/3", `{"value":1,"id":""}`, 400, "bad_request", "id must have 1 to 128 characters"},
		{"bad wait", "1001/3", `{"value":1,"wait":"forever"}`, 400, "bad_request", `wait: "forever" is not a duration`},
		{"wait too long", "1001/3", `{"value":1,"wait":"31s"}`, 400, "bad_request", "wait: 31s outside the allowed range (0, 30s]"},
		{"zero wait", "1001/3", `{"value":1,"wait":"0s"}`, 400, "bad_request", "wait: 0s outside"},
		{"negative timeout", "1001/3", `{"value":1,"timeout":"-1s"}`, 400, "bad_request", "timeout: -1s outside the allowed range (0, 1m0s]"},
		{"timeout too long", "1001/3", `{"value":1,"timeout":"61s"}`, 400, "bad_request", "timeout: 61s outside"},
		{"body too large", "1001/3", big, 413, "body_too_large", "larger than 4096 bytes"},
		{"unknown channel", "4242/1", `{"value":1}`, 404, "not_found", "unknown channel 4242"},
		{"unknown point", "1001/99", `{"value":1}`, 404, "not_found", "channel 1001 has no c or a point 99"},
		{"unknown point of a type", "1001/3", `{"value":1,"type":"a"}`, 404, "not_found", "unknown point 1001:a:3"},
		{"measurement", "1001/10001", `{"value":230}`, 400, "not_writable", "point 1001:m:10001 is a measurement: only c (control) and a (adjustment) points accept commands"},
		{"signal", "1001/20001", `{"value":1}`, 400, "not_writable", "point 1001:s:20001 is a signal"},
		{"type m given", "1001/1", `{"value":1,"type":"m"}`, 400, "not_writable", "point 1001:m:1 is a measurement"},
		{"type T given", "1001/10001", `{"value":1,"type":"T"}`, 400, "not_writable", "point 1001:m:10001 is a measurement"},
		{"virtual measurement", "1002/1", `{"value":1}`, 400, "not_writable", "point 1002:m:1 is a measurement"},
		{"c and a share the id", "1001/1", `{"value":1}`, 400, "bad_request", `channel 1001 has both 1001:c:1 and 1001:a:1: give "type": "c" or "a"`},
		{"bool point given 7", "1001/1", `{"value":7,"type":"c"}`, 400, "out_of_range", "point 1001:c:1 (breaker_cmd) is a bool: value must be 0 or 1 (false or true), not 7"},
		{"bit of a register given 0.5", "1001/3", `{"value":0.5}`, 400, "out_of_range", "is a bool"},
		{"virtual c point given 2", "1002/5", `{"value":2}`, 400, "out_of_range", "point 1002:c:5 (inverter_enable) is a bool"},
		{"above max", "1001/1", `{"value":600,"type":"a"}`, 400, "out_of_range", "value 600 outside the range of point 1001:a:1 (p_set): min -500, max 500"},
		{"below min", "1001/1", `{"value":-500.5,"type":"adjustment"}`, 400, "out_of_range", "min -500, max 500"},
		{"virtual above max", "1002/10", `{"value":100.1}`, 400, "out_of_range", "point 1002:a:10 (curtailment): min 0, max 100"},
		{"int16 after scaling", "1001/2", `{"value":4000}`, 400, "out_of_range", "value 4000 does not fit point 1001:a:2 (q_set) (int16, scale 0.1, offset 0)"},
		{"uint16 negative", "1001/4", `{"value":-1}`, 400, "out_of_range", "does not fit point 1001:a:4"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := e.control(tc.path, operatorToken, tc.body)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			er := r.errorBody(t)
			if er.Code != tc.code || !strings.Contains(er.Message, tc.fragment) {
				t.Fatalf("error %+v, want code %q and message containing %q", er, tc.code, tc.fragment)
			}
			if got := bus.flush(); len(got) > 0 {
				t.Fatalf("published %d message(s): first %s %s", len(got), got[0].Channel, got[0].Payload)
			}
			if keys := e.resultKeys(); len(keys) > 0 {
				t.Fatalf("stored %v", keys)
			}
		})
	}
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestControlPublishes: an accepted command is claimed in Redis as pending
// and published as the contract's JSON.
func TestControlPublishes(t *testing.T) {
	e := newEnv(t, testYAML)
	bus := e.watchBus()
	ctx := context.Background()
	f := func(path, token, body, wantUser string, want messages.ControlCommand) {
		t.Helper()
		before := time.Now().UnixMilli()
		r := e.control(path, token, body)
		if r.status != http.StatusAccepted {
			t.Fatalf("POST %s %s: %s", path, body, r)
		}
		ans := r.object(t)
		id, _ := ans["id"].(string)
		if ans["status"] != "pending" || id == "" {
			t.Fatalf("answer %s", r.body)
		}
		cmds := commands(t, bus.flush())
		if len(cmds) != 1 {
			t.Fatalf("published %d commands, want 1", len(cmds))
		}
		c := cmds[0]
		if c.ID != id || c.Source != "api" || c.User != wantUser || c.Timestamp < before || c.Timestamp > time.Now().UnixMilli() {
			t.Fatalf("command %+v (answer id %s)", c, id)
		}
		want.ID, want.Source, want.User, want.Timestamp = c.ID, "api", wantUser, c.Timestamp
		if c != want {
			t.Fatalf("command %+v, want %+v", c, want)
		}
		if want.ID == "" {
			t.Fatal("no id")
		}
		stored, err := e.rdb.Get(ctx, messages.Keys{}.Result(id)).Bytes()
		if err != nil {
			t.Fatalf("pending result not stored: %v", err)
		}
		var res messages.CommandResult
		if err := json.Unmarshal(stored, &res); err != nil || res.Status != messages.StatusPending || res.ID != id || res.Value != want.Value {
			t.Fatalf("stored %s", stored)
		}
		if ttl := e.rdb.TTL(ctx, messages.Keys{}.Result(id)).Val(); ttl < 23*time.Hour || ttl > 24*time.Hour {
			t.Fatalf("ttl %v", ttl)
		}
		if got := e.do(http.MethodGet, "/api/commands/"+id, viewerToken, ""); got.status != 200 || got.object(t)["status"] != "pending" {
			t.Fatalf("GET /api/commands/%s: %s", id, got)
		}
	}
	f("1001/1", operatorToken, `{"value": true, "type": "c"}`, "op1",
		messages.ControlCommand{ChannelID: 1001, PointType: messages.Control, PointID: 1, Value: 1, TimeoutMS: 5000})
	f("1001/1", adminToken, `{"value": -250.5, "type": "Adjustment", "timeout": "1500ms", "id": "client-key:1"}`, "admin1",
		messages.ControlCommand{ChannelID: 1001, PointType: messages.Adjustment, PointID: 1, Value: -250.5, TimeoutMS: 1500})
	f("1001/2", operatorToken, `{"value": 3276.7}`, "op1",
		messages.ControlCommand{ChannelID: 1001, PointType: messages.Adjustment, PointID: 2, Value: 3276.7, TimeoutMS: 5000})
	f("1002/5", operatorToken, `{"value": false}`, "op1",
		messages.ControlCommand{ChannelID: 1002, PointType: messages.Control, PointID: 5, Value: 0, TimeoutMS: 5000})
	f("1002/10", operatorToken, `{"value": 100}`, "op1",
		messages.ControlCommand{ChannelID: 1002, PointType: messages.Adjustment, PointID: 10, Value: 100, TimeoutMS: 5000})

	// Generated ids are version 4 UUIDs.
	r := e.control("1002/5", operatorToken, `{"value": 1}`)
	if id, _ := r.object(t)["id"].(string); !uuidV4.MatchString(id) {
		t.Fatalf("generated id %q is not a v4 UUID", id)
	}
	bus.flush()
}

// TestControlChannelOffline: nobody subscribes to cmd:{ch}:control, so the
// command is not queued: 503 and the claim is removed (the id can be sent
// again).
func TestControlChannelOffline(t *testing.T) {
	e := newEnv(t, testYAML)
	for range 2 {
		r := e.control("1002/5", operatorToken, `{"value": 1, "id": "offline-1"}`)
		if r.status != http.StatusServiceUnavailable {
			t.Fatalf("status %s, want 503", r)
		}
		if er := r.errorBody(t); er.Code != "channel_offline" || er.Message != "no node is running channel 1002" {
			t.Fatalf("error %+v", er)
		}
		if keys := e.resultKeys(); len(keys) > 0 {
			t.Fatalf("pending result left behind: %v", keys)
		}
	}
}

// TestControlRedisDown: 503 redis_unavailable, and after Redis is back
// nothing was queued for a late write.
func TestControlRedisDown(t *testing.T) {
	e := newEnv(t, testYAML)
	e.redis.Stop()
	for _, body := range []string{`{"value": 1}`, `{"value": 1, "wait": "1s"}`} {
		r := e.control("1002/5", operatorToken, body)
		if r.status != http.StatusServiceUnavailable || r.errorBody(t).Code != "redis_unavailable" {
			t.Fatalf("status %s, want 503 redis_unavailable", r)
		}
	}
	if r := e.do(http.MethodGet, "/api/commands/some-id", viewerToken, ""); r.status != http.StatusServiceUnavailable {
		t.Fatalf("GET /api/commands with redis down: %s", r)
	}
	e.redis.Restart()
	bus := e.watchBus()
	if got := bus.flush(); len(got) > 0 {
		t.Fatalf("published after the restart: %s", got[0].Payload)
	}
	if keys := e.resultKeys(); len(keys) > 0 {
		t.Fatalf("stored %v", keys)
	}
	// And the gateway works again.
	if r := e.control("1002/5", operatorToken, `{"value": 1}`); r.status != http.StatusAccepted {
		t.Fatalf("after redis restart: %s", r)
	}
}

// TestControlDuplicate: the same id twice is published once; the second
// answer is duplicate with the stored original.
func TestControlDuplicate(t *testing.T) {
	e := newEnv(t, testYAML)
	bus := e.watchBus()
	body := `{"value": 1, "type": "c", "id": "dup-1"}`
	if r := e.control("1001/1", operatorToken, body); r.status != http.StatusAccepted {
		t.Fatalf("first: %s", r)
	}
	r := e.control("1001/1", operatorToken, body)
	if r.status != http.StatusOK {
		t.Fatalf("second: %s", r)
	}
	var ans struct {
		ID       string                  `json:"id"`
		Status   string                  `json:"status"`
		Original *messages.CommandResult `json:"original"`
	}
	if err := json.Unmarshal(r.body, &ans); err != nil || ans.ID != "dup-1" || ans.Status != "duplicate" ||
		ans.Original == nil || ans.Original.ID != "dup-1" || ans.Original.Status != messages.StatusPending {
		t.Fatalf("second answer %s", r.body)
	}
	if n := len(commands(t, bus.flush())); n != 1 {
		t.Fatalf("published %d commands, want 1", n)
	}
	// A duplicate is found whatever the rest of the body says.
	if r := e.control("1002/5", operatorToken, `{"value": 0, "id": "dup-1"}`); r.status != http.StatusOK || r.object(t)["status"] != "duplicate" {
		t.Fatalf("same id, other point: %s", r)
	}
	if n := len(commands(t, bus.flush())); n != 0 {
		t.Fatalf("published %d commands, want 0", n)
	}
}

// TestControlConcurrentDuplicates: 20 concurrent POSTs with the same id:
// exactly one is published and accepted, 19 are duplicates.
func TestControlConcurrentDuplicates(t *testing.T) {
	e := newEnv(t, testYAML)
	bus := e.watchBus()
	const n = 20
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		statuses = map[string]int{}
	)
	for range n {
		wg.Go(func() {
			r := doRequest(t, e.srv.URL, http.MethodPost, "/control/1001/1", operatorToken, `{"value": 0, "type": "c", "id": "same-id"}`)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case r.status == http.StatusAccepted:
				statuses["pending"]++
			case r.status == http.StatusOK && strings.Contains(string(r.body), `"status":"duplicate"`):
				statuses["duplicate"]++
			default:
				statuses[r.String()]++
			}
		})
	}
	wg.Wait()
	if statuses["pending"] != 1 || statuses["duplicate"] != n-1 {
		t.Fatalf("answers %v, want 1 pending and %d duplicate", statuses, n-1)
	}
	if got := len(commands(t, bus.flush())); got != 1 {
		t.Fatalf("published %d commands, want 1", got)
	}
}

// How fakeChannel answers.
const (
	storeAndPublish = iota // as the channel actor does
	storeOnly              // the waiter finds the result by polling
	publishOnly            // the waiter gets the result from its subscription
)

// fakeChannel plays the channel actor: it answers every command of channel
// ch with a success result (SET cmd:result:{id}, PUBLISH on cmd:{ch}:result).
func fakeChannel(t *testing.T, rdb *redis.Client, ch uint32, mode int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sub := rdb.Subscribe(ctx, messages.Keys{}.Control(ch))
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); _ = sub.Close(); <-done })
	go func() {
		defer close(done)
		for m := range sub.Channel() {
			cmd, err := messages.ParseCommand([]byte(m.Payload))
			if err != nil {
				t.Errorf("command %s: %v", m.Payload, err)
				continue
			}
			res := messages.ResultOf(cmd, messages.StatusSuccess, "", time.Now())
			rb := cmd.Value
			res.Readback = &rb
			b, _ := json.Marshal(res)
			if mode != publishOnly {
				_ = rdb.Set(ctx, messages.Keys{}.Result(cmd.ID), b, messages.CommandTTL).Err()
			}
			if mode != storeOnly {
				_ = rdb.Publish(ctx, messages.Keys{}.ResultChannel(ch), b).Err()
			}
		}
	}()
}

// TestControlWait: with wait, the answer is the channel's result.
func TestControlWait(t *testing.T) {
	e := newEnv(t, testYAML)
	fakeChannel(t, e.rdb, 1001, storeAndPublish)
	fakeChannel(t, e.rdb, 1002, storeOnly)
	f := func(path, body string, want float64) {
		t.Helper()
		start := time.Now()
		r := e.control(path, operatorToken, body)
		if r.status != http.StatusOK {
			t.Fatalf("POST %s %s: %s", path, body, r)
		}
		var res messages.CommandResult
		if err := json.Unmarshal(r.body, &res); err != nil || res.Status != messages.StatusSuccess || res.Readback == nil || *res.Readback != want || res.ID == "" {
			t.Fatalf("result %s", r.body)
		}
		t.Logf("POST %s: result after %v", path, time.Since(start))
		g := e.do(http.MethodGet, "/api/commands/"+res.ID, viewerToken, "")
		if g.status != http.StatusOK || g.object(t)["status"] != "success" {
			t.Fatalf("GET /api/commands/%s: %s", res.ID, g)
		}
	}
	f("1001/1", `{"value": 250, "type": "a", "wait": "2s"}`, 250)
	f("1002/10", `{"value": 42.5, "wait": "2s", "id": "wait-poll"}`, 42.5)

}

// TestControlWaitAfterRedisRestart: the result subscription comes back
// after a Redis restart (results are only published here, so polling
// cannot find them).
func TestControlWaitAfterRedisRestart(t *testing.T) {
	e := newEnv(t, testYAML)
	fakeChannel(t, e.rdb, 1002, publishOnly) // go-redis resubscribes it too
	f := func() bool {
		r := e.control("1002/5", operatorToken, `{"value": 1, "wait": "1s"}`)
		return r.status == http.StatusOK && r.object(t)["status"] == "success"
	}
	testenv.Eventually(t, 5*time.Second, f, "control with wait")
	e.redis.Restart()
	testenv.Eventually(t, 15*time.Second, f, "control with wait after a redis restart")
}

// TestControlWaitTimeout: no result within wait: 504, and the command can
// be looked up later.
func TestControlWaitTimeout(t *testing.T) {
	e := newEnv(t, testYAML)
	e.watchBus() // a subscriber that never answers
	start := time.Now()
	r := e.control("1001/3", operatorToken, `{"value": 1, "wait": "300ms", "id": "slow-1"}`)
	if r.status != http.StatusGatewayTimeout {
		t.Fatalf("status %s, want 504", r)
	}
	if took := time.Since(start); took < 300*time.Millisecond || took > 3*time.Second {
		t.Fatalf("answered after %v", took)
	}
	er := r.errorBody(t)
	if er.Code != "timeout" || er.Message != "no result for command slow-1 within 300ms; GET /api/commands/slow-1 later" {
		t.Fatalf("error %+v", er)
	}
	if g := e.do(http.MethodGet, "/api/commands/slow-1", viewerToken, ""); g.status != 200 || g.object(t)["status"] != "pending" {
		t.Fatalf("GET: %s", g)
	}
}

// TestCommandsLookup: GET /api/commands/:id answers 200, 404 and 400.
func TestCommandsLookup(t *testing.T) {
	e := newEnv(t, testYAML)
	stored := `{"id":"abc","channel_id":1001,"point_type":"c","point_id":1,"value":1,"status":"failed","readback":null,"error":"device disconnected","timestamp":1764090000123}`
	if err := e.rdb.Set(context.Background(), messages.Keys{}.Result("abc"), stored, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	f := func(path, token string, status int, want string) {
		t.Helper()
		r := e.do(http.MethodGet, path, token, "")
		if r.status != status || !strings.Contains(string(r.body), want) {
			t.Fatalf("GET %s: %s, want %d with %q", path, r, status, want)
		}
	}
	f("/api/commands/abc", viewerToken, 200, stored)
	f("/api/commands/abc?token="+viewerToken, "", 200, stored)
	f("/api/commands/nope", viewerToken, 404, `"message":"unknown command nope"`)
	f("/api/commands/a*b", viewerToken, 400, `"code":"bad_request"`)
	f("/api/commands/abc", "", 401, `"code":"unauthorized"`)
}

func TestNewCommandID(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := newCommandID()
		if !uuidV4.MatchString(id) || seen[id] {
			t.Fatalf("id %q (repeated: %v)", id, seen[id])
		}
		if err := messages.ValidCommandID(id); err != nil {
			t.Fatal(err)
		}
		seen[id] = true
	}
}
