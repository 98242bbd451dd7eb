package acquisition_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	gomodbus "github.com/goburrow/modbus"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/drivers/modbus/simulator"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

const controlTable = `point_id,type,name,unit,slave_id,function_code,register_address,data_type,byte_order,bit_position,scale,offset,deadband,reverse,min,max
1,m,voltage,V,1,3,0,float32,ABCD,,1,0,0,,,
1,c,breaker,,1,5,10,bool,,,,,,,,
1,a,power_sp,kW,1,16,100,float32,ABCD,,1,0,0,,-500,500
2,a,current_sp,A,1,6,110,int16,,,0.1,0,0,,,
`

type controlEnv struct {
	h    *harness
	sim  *simulator.Simulator
	addr string
	rdb  *redis.Client
}

func startControl(t *testing.T, poll string) *controlEnv {
	t.Helper()
	r := testenv.StartRedis(t)
	port := testenv.FreePort(t)
	cfg := loadConfig(t, fmt.Sprintf(`
channels:
  - {id: 30, name: pcs, protocol: modbus_tcp, poll_interval: %s, points: c.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 300ms}}
`, poll, port), map[string]string{"c.csv": controlTable})
	sim, addr := serveFrozen(t, cfg.Channels[0].Points, port)
	h := startNode(t, cfg, r.URL())
	testenv.Eventually(t, 5*time.Second, func() bool { return h.hget(pk(30, 'm', 1), ":q") == "good" }, "channel polling")
	// The channel subscribes to cmd:30:control once started.
	testenv.Eventually(t, 5*time.Second, func() bool {
		n, _ := h.rdb.PubSubNumSub(context.Background(), messages.Keys{}.Control(30)).Result()
		return n[messages.Keys{}.Control(30)] == 1
	}, "channel subscribed to its control channel")
	return &controlEnv{h: h, sim: sim, addr: addr, rdb: h.rdb}
}

// send publishes a command as the gateway would and returns its result.
func (e *controlEnv) send(t *testing.T, cmd messages.ControlCommand) messages.CommandResult {
	t.Helper()
	return e.sendAll(t, []messages.ControlCommand{cmd})[0]
}

// sendAll publishes commands concurrently and waits for one result each
// (matched by id and order of arrival).
func (e *controlEnv) sendAll(t *testing.T, cmds []messages.ControlCommand) []messages.CommandResult {
	t.Helper()
	ctx := context.Background()
	sub := e.rdb.Subscribe(ctx, messages.Keys{}.ResultChannel(30))
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range cmds {
		if cmds[i].Timestamp == 0 {
			cmds[i].Timestamp = time.Now().UnixMilli()
		}
		b, _ := json.Marshal(&cmds[i])
		wg.Add(1)
		go func() { defer wg.Done(); e.rdb.Publish(ctx, messages.Keys{}.Control(30), b) }()
	}
	wg.Wait()
	out := make([]messages.CommandResult, 0, len(cmds))
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for len(out) < len(cmds) {
		m, err := sub.ReceiveMessage(rctx)
		if err != nil {
			t.Fatalf("%d of %d results: %v", len(out), len(cmds), err)
		}
		var r messages.CommandResult
		if err := json.Unmarshal([]byte(m.Payload), &r); err != nil {
			t.Fatalf("result %s: %v", m.Payload, err)
		}
		out = append(out, r)
	}
	return out
}

// device reads the simulated device over a second, independent Modbus TCP
// connection (not the code under test).
func (e *controlEnv) device(t *testing.T) gomodbus.Client {
	t.Helper()
	hd := gomodbus.NewTCPClientHandler(e.addr)
	hd.SlaveId, hd.Timeout = 1, time.Second
	if err := hd.Connect(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hd.Close() })
	return gomodbus.NewClient(hd)
}

func cmd(id string, t messages.PointType, pt uint32, v float64) messages.ControlCommand {
	return messages.ControlCommand{ID: id, ChannelID: 30, PointType: t, PointID: pt, Value: v, Source: "test", User: "op1"}
}

func TestControlWritesAndReadsBack(t *testing.T) {
	e := startControl(t, "100ms")
	dev := e.device(t)

	r := e.send(t, cmd("breaker-close-1", 'c', 1, 1))
	if r.Status != messages.StatusSuccess || r.Readback == nil || *r.Readback != 1 || r.Error != "" {
		t.Fatalf("coil command: %+v", r)
	}
	if b, err := dev.ReadCoils(10, 1); err != nil || b[0]&1 != 1 {
		t.Fatalf("coil 10 on the device: %v %v", b, err)
	}

	r = e.send(t, cmd("sp-1", 'a', 1, 123.5))
	if r.Status != messages.StatusSuccess || *r.Readback != 123.5 {
		t.Fatalf("setpoint: %+v", r)
	}
	regs, err := dev.ReadHoldingRegisters(100, 2)
	if err != nil || math.Float32frombits(binary.BigEndian.Uint32(regs)) != 123.5 {
		t.Fatalf("holding 100-101 on the device: % x %v", regs, err)
	}

	r = e.send(t, cmd("sp-2", 'a', 2, 12.3)) // int16 with scale 0.1: raw 123, not 122
	if r.Status != messages.StatusSuccess || math.Abs(*r.Readback-12.3) > 1e-9 {
		t.Fatalf("scaled setpoint: %+v", r)
	}
	if regs, err := dev.ReadHoldingRegisters(110, 1); err != nil || binary.BigEndian.Uint16(regs) != 123 {
		t.Fatalf("holding 110 on the device: % x %v", regs, err)
	}

	// The point hashes show what was written and read back, and the final
	// result is stored for GET /api/commands/{id}.
	testenv.Eventually(t, 2*time.Second, func() bool { return e.h.hget(pk(30, 'a', 1), "") == "123.5" }, "comsrv:30:a holds the read-back setpoint")
	stored, err := e.rdb.Get(context.Background(), messages.Keys{}.Result("sp-1")).Result()
	if err != nil || !strings.Contains(stored, `"status":"success"`) {
		t.Fatalf("cmd:result:sp-1 = %q, %v", stored, err)
	}
	if ttl := e.rdb.TTL(context.Background(), messages.Keys{}.Result("sp-1")).Val(); ttl < 23*time.Hour {
		t.Fatalf("result TTL %v, want 24 h", ttl)
	}
	// Audit: accepted and result entries with who, what and the outcome.
	entries, err := e.rdb.XRange(context.Background(), messages.Keys{}.Audit(), "-", "+").Result()
	if err != nil || len(entries) != 6 {
		t.Fatalf("audit entries: %d %v", len(entries), err)
	}
	last := entries[len(entries)-1].Values
	if last["event"] != "result" || last["id"] != "sp-2" || last["user"] != "op1" || last["status"] != "success" || last["point"] != "30:a:2" {
		t.Fatalf("audit entry: %v", last)
	}
}

// TestControlExactlyOnce sends one id five times at once (written once, four
// duplicates) and many distinct commands at once while the channel polls
// every 10 ms (all executed, never concurrently on the connection).
func TestControlExactlyOnce(t *testing.T) {
	e := startControl(t, "10ms")
	w0 := e.sim.Writes()
	same := make([]messages.ControlCommand, 5)
	for i := range same {
		same[i] = cmd("once", 'a', 1, 42)
	}
	counts := map[messages.CommandStatus]int{}
	for _, r := range e.sendAll(t, same) {
		counts[r.Status]++
	}
	if counts[messages.StatusSuccess] != 1 || counts[messages.StatusDuplicate] != 4 {
		t.Fatalf("statuses %v, want 1 success and 4 duplicate", counts)
	}
	if n := e.sim.Writes() - w0; n != 1 {
		t.Fatalf("device saw %d writes, want 1", n)
	}
	if s := e.rdb.Get(context.Background(), messages.Keys{}.Result("once")).Val(); !strings.Contains(s, `"success"`) {
		t.Fatalf("a duplicate replaced the stored result: %s", s)
	}

	many := make([]messages.ControlCommand, 40)
	for i := range many {
		many[i] = cmd(fmt.Sprintf("many-%d", i), 'a', 1, float64(i))
	}
	for _, r := range e.sendAll(t, many) {
		if r.Status != messages.StatusSuccess {
			t.Fatalf("concurrent command: %+v", r)
		}
	}
	if n := e.sim.Writes() - w0; n != 41 {
		t.Fatalf("device saw %d writes, want 41", n)
	}
}

func TestControlRefusals(t *testing.T) {
	e := startControl(t, "100ms")
	w0 := e.sim.Writes()
	old := cmd("late", 'a', 1, 10)
	old.Timestamp = time.Now().Add(-10 * time.Second).UnixMilli()
	cases := []struct {
		c    messages.ControlCommand
		want messages.CommandStatus
		msg  string
	}{
		{old, messages.StatusTimeout, "expired"},
		{cmd("unknown", 'c', 99, 1), messages.StatusRejected, "unknown point 30:c:99"},
		{cmd("measurement", 'm', 1, 1), messages.StatusRejected, "cannot be written"},
		{cmd("too-high", 'a', 1, 600), messages.StatusRejected, "out of range"},
		{cmd("bool-7", 'c', 1, 7), messages.StatusRejected, "out of range"},
		{cmd("", 'c', 1, 1), messages.StatusRejected, "id must have"},
	}
	for _, c := range cases {
		r := e.send(t, c.c)
		if r.Status != c.want || !strings.Contains(r.Error, c.msg) {
			t.Errorf("%s: got %s %q, want %s containing %q", c.c.ID, r.Status, r.Error, c.want, c.msg)
		}
	}
	if n := e.sim.Writes() - w0; n != 0 {
		t.Fatalf("refused commands wrote %d times", n)
	}
}

func TestControlDeviceGone(t *testing.T) {
	e := startControl(t, "100ms")
	// Silent device: the write times out on the driver's timeout, well
	// within the command's own timeout.
	e.sim.SetSlaveDown(1, true)
	start := time.Now()
	r := e.send(t, cmd("silent", 'c', 1, 1))
	if r.Status == messages.StatusSuccess || r.Error == "" || time.Since(start) > 5*time.Second {
		t.Fatalf("write to a silent device: %+v after %v", r, time.Since(start))
	}
	e.sim.SetSlaveDown(1, false)

	// Disconnected device: failed with the reason, at once.
	e.sim.Close()
	testenv.Eventually(t, 5*time.Second, func() bool { return e.h.hget(pk(30, 'm', 1), ":q") == "comm_lost" }, "comm_lost")
	start = time.Now()
	r = e.send(t, cmd("offline", 'c', 1, 1))
	if r.Status != messages.StatusFailed || !strings.Contains(r.Error, "not connected") || time.Since(start) > time.Second {
		t.Fatalf("command to a disconnected device: %+v after %v", r, time.Since(start))
	}
}
