package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gomodbus "github.com/goburrow/modbus"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/test/testenv"
)

const (
	opToken     = "e2e-operator-token-000001"
	viewerToken = "e2e-viewer-token-0000001"
)

const controlPoints = `point_id,type,name,unit,slave_id,function_code,register_address,data_type,byte_order,bit_position,scale,offset,deadband,reverse,min,max
10001,m,voltage_a,V,1,3,0,float32,ABCD,,1,0,0,,220,240
1,c,breaker_cmd,,1,5,10,bool,,,,,,,,
1,a,power_sp,kW,1,16,100,float32,ABCD,,1,0,0,,-500,500
`

func post(t *testing.T, url, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestControlEndToEnd drives the control path of a running node over HTTP
// and with `voltage control`, and checks the device with its own Modbus
// connection.
func TestControlEndToEnd(t *testing.T) {
	r := testenv.StartRedis(t)
	httpPort, mbPort := testenv.FreePort(t), testenv.FreePort(t)
	dir := writeFiles(t, map[string]string{
		"node.yaml": fmt.Sprintf(`node: {name: ctl, http: "127.0.0.1:%d"}
redis: {url: %q}
auth:
  tokens:
    - {name: op1, token: "${E2E_OP_TOKEN}", role: operator}
    - {name: watcher, token: %s, role: viewer}
channels:
  - {id: 1001, name: PCS-1, protocol: modbus_tcp, poll_interval: 100ms, points: p.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 500ms}}
`, httpPort, r.URL(), viewerToken, mbPort),
		"p.csv": controlPoints,
	})
	cfg := filepath.Join(dir, "node.yaml")
	env := []string{"E2E_OP_TOKEN=" + opToken}
	start(t, env, "run", "-c", cfg, "--simulate")
	base := "http://127.0.0.1:" + strconv.Itoa(httpPort)
	testenv.Eventually(t, 15*time.Second, func() bool { code, _ := get(t, base+"/ready"); return code == 200 }, "node ready")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	defer rdb.Close()
	testenv.Eventually(t, 10*time.Second, func() bool {
		return rdb.HGet(context.Background(), "comsrv:1001:m:q", "10001").Val() == "good"
	}, "polling")

	hd := gomodbus.NewTCPClientHandler("127.0.0.1:" + strconv.Itoa(mbPort))
	hd.SlaveId, hd.Timeout = 1, time.Second
	if err := hd.Connect(); err != nil {
		t.Fatal(err)
	}
	defer hd.Close()
	dev := gomodbus.NewClient(hd)

	// A setpoint with wait: the final result, and the device holds it.
	code, body := post(t, base+"/control/1001/1", opToken, `{"type":"a","value":-123.25,"id":"e2e-sp-1","wait":"3s"}`)
	var res struct {
		ID       string   `json:"id"`
		Status   string   `json:"status"`
		Readback *float64 `json:"readback"`
		Error    string   `json:"error"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &res) != nil || res.Status != "success" || res.Readback == nil || *res.Readback != -123.25 {
		t.Fatalf("setpoint: %d %s", code, body)
	}
	regs, err := dev.ReadHoldingRegisters(100, 2)
	if err != nil || math.Float32frombits(binary.BigEndian.Uint32(regs)) != -123.25 {
		t.Fatalf("device holding 100: % x %v", regs, err)
	}
	// The stored result, for a viewer.
	req, _ := http.NewRequest("GET", base+"/api/commands/e2e-sp-1", nil)
	req.Header.Set("Authorization", "Bearer "+viewerToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"status":"success"`) {
		t.Fatalf("GET /api/commands: %d %s", resp.StatusCode, b)
	}
	// Same id again: duplicate, not written again.
	if code, body := post(t, base+"/control/1001/1", opToken, `{"type":"a","value":50,"id":"e2e-sp-1","wait":"3s"}`); code != 200 || !strings.Contains(body, `"duplicate"`) {
		t.Fatalf("duplicate: %d %s", code, body)
	}
	if regs, _ := dev.ReadHoldingRegisters(100, 2); math.Float32frombits(binary.BigEndian.Uint32(regs)) != -123.25 {
		t.Fatal("a duplicate was written")
	}
	// A viewer may not control; bad input writes nothing.
	if code, _ := post(t, base+"/control/1001/1", viewerToken, `{"value":1}`); code != 403 {
		t.Fatalf("viewer control: %d", code)
	}
	if code, body := post(t, base+"/control/1001/1", opToken, `{"type":"a","value":600}`); code != 400 {
		t.Fatalf("out of range: %d %s", code, body)
	}

	// The operator CLI: breaker on, result printed, coil set on the device.
	out, exit := runCmd(t, []string{"VOLTAGE_TOKEN=" + opToken}, "control", "-c", cfg, "--point", "1001:c:1", "--value", "1")
	if exit != 0 || !strings.Contains(out, `"success"`) {
		t.Fatalf("voltage control: exit %d\n%s", exit, out)
	}
	if bits, err := dev.ReadCoils(10, 1); err != nil || bits[0]&1 != 1 {
		t.Fatalf("device coil 10: %v %v", bits, err)
	}
	if _, exit := runCmd(t, nil, "control", "-c", cfg, "--point", "1001:c:1", "--value", "0"); exit == 0 {
		t.Fatal("voltage control without a token succeeded")
	}

	// Redis down: 503 and nothing is queued for a late write.
	r.Stop()
	code, body = post(t, base+"/control/1001/1", opToken, `{"type":"a","value":77,"id":"during-outage"}`)
	if code != 503 {
		t.Fatalf("control with Redis down: %d %s", code, body)
	}
	r.Restart()
	testenv.Eventually(t, 15*time.Second, func() bool { code, _ := get(t, base+"/ready"); return code == 200 }, "ready again")
	testenv.Eventually(t, 15*time.Second, func() bool {
		return rdb.HGet(context.Background(), "comsrv:1001:m:q", "10001").Val() == "good"
	}, "polling into the restarted Redis")
	if regs, _ := dev.ReadHoldingRegisters(100, 2); math.Float32frombits(binary.BigEndian.Uint32(regs)) != -123.25 {
		t.Fatal("the command sent while Redis was down was written later")
	}
	// And control works again once the node has subscribed to its control
	// channel on the new Redis (go-redis re-subscribes shortly after the
	// reconnect; until then the API rightly answers 503 channel_offline).
	testenv.Eventually(t, 15*time.Second, func() bool {
		n, _ := rdb.PubSubNumSub(context.Background(), "cmd:1001:control").Result()
		return n["cmd:1001:control"] == 1
	}, "control channel subscribed again")
	code, body = post(t, base+"/control/1001/1", opToken, `{"type":"a","value":10,"wait":"3s"}`)
	if code != 200 || !bytes.Contains([]byte(body), []byte(`"success"`)) {
		t.Fatalf("control after the outage: %d %s", code, body)
	}
}
