package config

import (
	"path/filepath"
	"testing"

	"github.com/voltage-ems/voltage/messages"
)

func TestExamplesLoad(t *testing.T) {
	t.Setenv("VOLTAGE_VIEWER_TOKEN", "viewer-token-0123456789")
	t.Setenv("VOLTAGE_OPERATOR_TOKEN", "operator-token-0123456789")
	t.Setenv("VOLTAGE_ADMIN_TOKEN", "admin-token-0123456789")
	t.Setenv("VOLTAGE_COMMAND_KEY", "command-key-0123456789abcdef0123456789")
	files, err := filepath.Glob("examples/*.yaml")
	if err != nil || len(files) < 2 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := Load(f)
			if err != nil {
				t.Fatalf("Load(%s):\n%v", f, err)
			}
			if len(c.Channels) == 0 {
				t.Fatal("no channels")
			}
			for _, ch := range c.Channels {
				if ch.Protocol != ProtocolCompute && len(ch.Points) == 0 {
					t.Errorf("channel %d has no points", ch.ID)
				}
			}
		})
	}
}

func TestDemoExample(t *testing.T) {
	c, err := Load("examples/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Node.Name != "demo" || c.Node.HTTP != "127.0.0.1:8080" || c.Redis.URL != "" {
		t.Errorf("node %+v redis %+v", c.Node, c.Redis)
	}
	abs, _ := filepath.Abs("examples/data")
	if c.Node.DataDir != abs {
		t.Errorf("data_dir = %q, want %q", c.Node.DataDir, abs)
	}
	pcs := c.Channel(1001)
	if pcs == nil || pcs.Name != "PCS-1" || pcs.Protocol != ProtocolModbusTCP || pcs.Parameters.Port != 15020 || pcs.PollInterval.String() != "500ms" {
		t.Fatalf("channel 1001 = %+v", pcs)
	}
	if n := len(pcs.Points); n < 18 {
		t.Errorf("channel 1001 has %d points, want about 20", n)
	}
	slaves := map[uint8]bool{}
	have := map[string]bool{}
	for _, p := range pcs.Points {
		slaves[p.SlaveID] = true
		switch {
		case p.DataType == Float32 && p.ByteOrder == ABCD:
			have["float32 ABCD"] = true
		case p.DataType == Float32 && p.ByteOrder == CDAB:
			have["float32 CDAB"] = true
		case p.DataType == Int16 && p.Scale == 0.1:
			have["int16 scale 0.1"] = true
		case p.DataType == Uint32:
			have["uint32"] = true
		}
		switch {
		case p.FunctionCode == 1:
			have["coil"] = true
		case p.FunctionCode == 2:
			have["discrete input"] = true
		case p.FunctionCode == 3 && p.BitPosition >= 0:
			have["register bit"] = true
		case p.Type == messages.Control && p.FunctionCode == 5:
			have["breaker command"] = true
		case p.Type == messages.Adjustment && p.FunctionCode == 16 && p.Min != nil && p.Max != nil:
			have["setpoint"] = true
		}
	}
	if !slaves[1] || !slaves[2] || len(slaves) != 2 {
		t.Errorf("slaves %v, want 1 and 2", slaves)
	}
	for _, want := range []string{"float32 ABCD", "float32 CDAB", "int16 scale 0.1", "uint32", "coil", "discrete input", "register bit", "breaker command", "setpoint"} {
		if !have[want] {
			t.Errorf("demo points lack a %s", want)
		}
	}
	pv := c.Channel(1002)
	signals := map[string]bool{}
	for _, p := range pv.Points {
		if p.Signal != "" {
			signals[p.Signal] = true
		}
	}
	if len(signals) != 5 {
		t.Errorf("virtual signals %v, want all five", signals)
	}
	ch, p := c.Point(messages.PointKey{Channel: 9001, Type: messages.Measurement, Point: 1})
	if ch == nil || p == nil || p.Name != "total_power" {
		t.Errorf("computed point 9001:m:1 = %v %+v", ch, p)
	}
	if len(c.Alarms) != 5 || c.Alarms[0].Condition != ConditionBands || len(c.Alarms[0].Limits()) != 4 ||
		c.Alarms[0].Limits()[0].Level != "critical" || c.Alarms[4].Point != "9001:m:1" {
		t.Errorf("alarms %+v", c.Alarms)
	}
}
