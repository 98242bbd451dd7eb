package config

import (
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/messages"
)

var update = flag.Bool("update", false, "rewrite golden files")

var testFiles = map[string]string{
	"points/1001.csv": "point_id,type,function_code,register_address,data_type\n10001,m,3,0,float32\n10002,m,3,2,float32\n1,c,5,0,bool\n",
	"points/1002.csv": "point_id,type,signal\n1,m,sine\n",
	"points/9001.csv": "point_id,type,name\n5,m,listed\n",
	"points/bad.csv":  "point_id,type,function_code,register_address,data_type\n1,m,3,0,float16\n",
}

// parse parses yaml as plant.yaml, with testFiles and extra as the files
// next to it.
func parse(yaml string, extra ...string) (*Config, error) {
	return Parse([]byte(yaml), "plant.yaml", func(name string) ([]byte, error) {
		for i := 0; i+1 < len(extra); i += 2 {
			if extra[i] == name {
				return []byte(extra[i+1]), nil
			}
		}
		if s, ok := testFiles[name]; ok {
			return []byte(s), nil
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	})
}

const tcpChannel = `channels:
  - id: 1001
    protocol: modbus_tcp
    parameters: {host: 127.0.0.1}
    points: points/1001.csv
`

func TestParseErrors(t *testing.T) {
	f := func(yaml, want string) {
		t.Helper()
		_, err := parse(yaml)
		var errs Errors
		if !errors.As(err, &errs) {
			t.Errorf("%s\nerror %T %v, want Errors", yaml, err, err)
			return
		}
		if !hasError(errs, want) {
			t.Errorf("%s\n got: %v\nwant: %s", yaml, err, want)
		}
	}
	// Strictness and YAML types.
	f("node: {name: a}\nnodes: {}\n", `plant.yaml:2: nodes: unknown field (want node, redis, influxdb, auth, channels, computations, alarms)`)
	f("node:\n  name: a\n  htp: x\n", `plant.yaml:3: node.htp: unknown field (want name, http, data_dir, http_read_header_timeout, http_read_timeout, http_write_timeout, http_idle_timeout, http_max_header_bytes, http_max_conns_per_client, http_auth_burst, http_auth_refill, tls)`)
	f("node:\n  name: a\n  name: b\n", `plant.yaml:3: node.name: duplicate key (first at line 2)`)
	f("node: [a]\n", `plant.yaml:1: node: want a mapping, got a list`)
	f("channels: {id: 1}\n", `plant.yaml:1: channels: want a list, got a mapping`)
	f("channels:\n  - id: abc\n", `plant.yaml:2: channels[0].id: want an integer, got "abc"`)
	f("channels:\n  - id: -1\n", `plant.yaml:2: channels[0].id: -1 is out of range (0..4294967295)`)
	f("channels:\n  - id: 1\n    poll_interval: 1 s\n", `plant.yaml:3: channels[0].poll_interval: invalid duration "1 s"`)
	f("channels:\n  - id: 1\n    poll_interval: 5\n", `plant.yaml:3: channels[0].poll_interval: invalid duration "5"`)
	f("influxdb:\n  batch_size: 1.5\n", `plant.yaml:2: influxdb.batch_size: want an integer, got "1.5"`)
	f("alarms:\n  - threshold: high\n", `plant.yaml:2: alarms[0].threshold: want a number, got "high"`)
	f("node:\n  name: [a, b]\n", `plant.yaml:2: node.name: want a string, got a list`)
	// Syntax errors.
	f("node:\n  name: a\n   http: b\n", `plant.yaml:3: invalid YAML: mapping values are not allowed in this context`)
	f("node: {name: a\n", `plant.yaml:1: invalid YAML: did not find expected ',' or '}'`)
	f("node: {}\n---\nredis: {}\n", `plant.yaml:2: invalid YAML: a second YAML document`)
	// Node, Redis, InfluxDB.
	f("node:\n  http: localhost\n", `plant.yaml:2: node.http: want host:port, got "localhost"`)
	f("node:\n  data_dir: \"\"\n", `plant.yaml:2: node.data_dir: must not be empty`)
	f("redis:\n  url: http://x\n", `plant.yaml:2: redis.url: unsupported scheme "http"`)
	f("influxdb:\n  url: redis://x\n", `plant.yaml:2: influxdb.url: unsupported scheme "redis"`)
	f("influxdb:\n  flush_interval: 0s\n", `plant.yaml:2: influxdb.flush_interval: must be positive, got 0s`)
	f("influxdb:\n  batch_size: 0\n", `plant.yaml:2: influxdb.batch_size: must be positive, got 0`)
	// Channels.
	f("channels:\n  - protocol: virtual\n    points: points/1002.csv\n", `plant.yaml:2: channels[0].id: required`)
	f("channels:\n  - id: 0\n    protocol: virtual\n    points: points/1002.csv\n", `plant.yaml:2: channels[0].id: must be > 0`)
	f(tcpChannel+"  - id: 1001\n    protocol: compute\n", `plant.yaml:6: channels[1].id: duplicate channel id 1001 (first at line 2)`)
	f(tcpChannel+"  - id: 1002\n    name: x\n    protocol: modbus_udp\n", `plant.yaml:8: channels[1].protocol: unknown protocol "modbus_udp" (want modbus_tcp, modbus_rtu, virtual, compute)`)
	f("channels:\n  - id: 1\n    points: points/1002.csv\n", `plant.yaml:2: channels[0].protocol: required`)
	f("channels:\n  - id: 1\n    protocol: modbus_tcp\n    points: points/1001.csv\n", `plant.yaml:2: channels[0].parameters.host: required for modbus_tcp`)
	f("channels:\n  - id: 1\n    protocol: modbus_tcp\n    parameters:\n      host: h\n      port: 0\n    points: points/1001.csv\n", `plant.yaml:6: channels[0].parameters.port: 0 is out of range (1..65535)`)
	f("channels:\n  - id: 1\n    protocol: modbus_tcp\n    parameters:\n      host: h\n      port: 65536\n    points: points/1001.csv\n", `plant.yaml:6: channels[0].parameters.port: 65536 is out of range (1..65535)`)
	f("channels:\n  - id: 1\n    protocol: modbus_tcp\n    parameters:\n      host: h\n      device: /dev/ttyS0\n    points: points/1001.csv\n", `plant.yaml:6: channels[0].parameters.device: not used by modbus_tcp`)
	f("channels:\n  - id: 1\n    protocol: modbus_tcp\n    parameters:\n      host: h\n      timeout: 0s\n    points: points/1001.csv\n", `plant.yaml:6: channels[0].parameters.timeout: must be positive, got 0s`)
	f("channels:\n  - id: 1\n    protocol: modbus_tcp\n    parameters:\n      host: h\n      max_gap: 126\n    points: points/1001.csv\n", `plant.yaml:6: channels[0].parameters.max_gap: 126 is out of range (0..125)`)
	f("channels:\n  - id: 1\n    protocol: modbus_rtu\n    points: points/1001.csv\n", `plant.yaml:2: channels[0].parameters.device: required for modbus_rtu`)
	f("channels:\n  - id: 1\n    protocol: modbus_rtu\n    parameters:\n      device: /dev/x\n      host: h\n    points: points/1001.csv\n", `plant.yaml:6: channels[0].parameters.host: not used by modbus_rtu`)
	f("channels:\n  - id: 1\n    protocol: modbus_rtu\n    parameters:\n      device: /dev/x\n      parity: X\n    points: points/1001.csv\n", `plant.yaml:6: channels[0].parameters.parity: unknown parity "X" (want N, E or O)`)
	f("channels:\n  - id: 1\n    protocol: modbus_rtu\n    parameters:\n      device: /dev/x\n      data_bits: 4\n    points: points/1001.csv\n", `plant.yaml:6: channels[0].parameters.data_bits: 4 is out of range (5..8)`)
	f("channels:\n  - id: 1\n    protocol: modbus_rtu\n    parameters:\n      device: /dev/x\n      stop_bits: 3\n    points: points/1001.csv\n", `plant.yaml:6: channels[0].parameters.stop_bits: 3 is out of range (1..2)`)
	f("channels:\n  - id: 1\n    protocol: modbus_rtu\n    parameters:\n      device: /dev/x\n      baud_rate: 0\n    points: points/1001.csv\n", `plant.yaml:6: channels[0].parameters.baud_rate: must be positive, got 0`)
	f("channels:\n  - id: 1\n    protocol: virtual\n    parameters: {host: h}\n    points: points/1002.csv\n", `plant.yaml:4: channels[0].parameters.host: not used by virtual`)
	f("channels:\n  - id: 1\n    protocol: virtual\n    poll_interval: 9ms\n    points: points/1002.csv\n", `plant.yaml:4: channels[0].poll_interval: must be at least 10ms, got 9ms`)
	f("channels:\n  - id: 1\n    protocol: virtual\n", `plant.yaml:2: channels[0].points: required for virtual channels`)
	f("channels:\n  - id: 1\n    protocol: modbus_tcp\n    parameters: {host: h}\n", `plant.yaml:2: channels[0].points: required for modbus_tcp channels`)
	f("channels:\n  - id: 1\n    protocol: virtual\n    points: points/nope.csv\n", `plant.yaml:4: channels[0].points: cannot read point table points/nope.csv: file does not exist`)
	// Point table problems carry the CSV file and line.
	f("channels:\n  - id: 1\n    protocol: modbus_tcp\n    parameters: {host: h}\n    points: points/bad.csv\n", `points/bad.csv:2: data_type: unknown data type "float16"`)
	f("channels:\n  - id: 1\n    protocol: virtual\n    points: points/1001.csv\n", `points/1001.csv:1: header: unknown column "function_code" for a virtual channel`)
	// Computations.
	f(tcpChannel+"computations:\n  - {output: \"1001:m:5\", expression: \"1\"}\n", `plant.yaml:7: computations[0].output: channel 1001 is a modbus_tcp channel, not a compute channel`)
	f(tcpChannel+"computations:\n  - {output: \"9001:m:5\", expression: \"1\"}\n", `plant.yaml:7: computations[0].output: channel 9001 is not declared (add a channel with protocol: compute)`)
	f(tcpChannel+"computations:\n  - {output: \"9001:x:5\", expression: \"1\"}\n", `plant.yaml:7: computations[0].output: bad point key "9001:x:5"`)
	f(tcpChannel+"computations:\n  - {expression: \"1\"}\n", `plant.yaml:7: computations[0].output: required`)
	f(tcpChannel+"  - {id: 9001, protocol: compute}\ncomputations:\n  - output: \"9001:m:5\"\n    expression: \" \"\n", `plant.yaml:9: computations[0].expression: required`)
	f(tcpChannel+"  - {id: 9001, protocol: compute}\ncomputations:\n  - {output: \"9001:m:5\", expression: \"1\"}\n  - {output: \"9001:T:5\", expression: \"2\"}\n",
		`plant.yaml:9: computations[1].output: duplicate output 9001:m:5 (first at line 8)`)
	f(tcpChannel+"  - {id: 9001, protocol: compute}\ncomputations:\n  - output: \"9001:m:5\"\n    expression: input1\n    inputs:\n      - \"1001:m:10001\"\n      - \"1001:m:4\"\n",
		`plant.yaml:12: computations[0].inputs[1]: unknown point 1001:m:4`)
	f(tcpChannel+"  - {id: 9001, protocol: compute}\ncomputations:\n  - output: \"9001:m:5\"\n    expression: input1\n    inputs: [\"1001-m-1\"]\n",
		`plant.yaml:10: computations[0].inputs[0]: bad point key "1001-m-1"`)
	// Alarms.
	f(tcpChannel+"alarms:\n  - {point: \"1001:m:10001\", condition: \">\", threshold: 1}\n", `plant.yaml:7: alarms[0].id: required`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: \">\", threshold: 1}\n  - {id: a, point: \"1001:m:10001\", condition: \">\", threshold: 1}\n",
		`plant.yaml:8: alarms[1].id: duplicate alarm id "a" (first at line 7)`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:3\", condition: \">\", threshold: 1}\n", `plant.yaml:7: alarms[0].point: unknown point 1001:m:3`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001\", condition: \">\", threshold: 1}\n", `plant.yaml:7: alarms[0].point: bad point key "1001"`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: \"=>\", threshold: 1}\n", `plant.yaml:7: alarms[0].condition: unknown condition "=>" (want > >= < <= == != or bands)`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: \">\"}\n", `plant.yaml:7: alarms[0].threshold: required`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: \">\", threshold: .nan}\n", `plant.yaml:7: alarms[0].threshold: must be a finite number`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: \">\", threshold: 1, level: urgent}\n", `plant.yaml:7: alarms[0].level: unknown level "urgent" (want critical, major, minor, warning, info)`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: \">\", threshold: 1, deadband: -1}\n", `plant.yaml:7: alarms[0].deadband: must be a finite number >= 0`)
	f(tcpChannel+"alarms:\n  - id: a\n    point: \"1001:m:10001\"\n    condition: \">\"\n    threshold: 1\n    on_delay: -1s\n", `plant.yaml:11: alarms[0].on_delay: must not be negative, got -1s`)
	f(tcpChannel+"alarms:\n  - id: a\n    point: \"1001:m:10001\"\n    condition: \">\"\n    threshold: 1\n    off_delay: -1s\n", `plant.yaml:11: alarms[0].off_delay: must not be negative, got -1s`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: \">\", threshold: 1, escalate_after: -1m}\n", `plant.yaml:7: alarms[0].escalate_after: must not be negative, got -1m0s`)
	f(tcpChannel+"alarms:\n  - {id: \"a b\", point: \"1001:m:10001\", condition: \">\", threshold: 1}\n", `plant.yaml:7: alarms[0].id: "a b": use 1-128 letters`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: hi, threshold: 1}\n", `plant.yaml:7: alarms[0].condition: unknown condition "hi" (want > >= < <= == != or bands; for ISA limits write condition: bands and bands: {hi: N})`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: \"==\", threshold: 1, deadband: 0.5}\n", `plant.yaml:7: alarms[0].deadband: not used with condition "==" (for discrete values); remove it`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: \">\", threshold: 1, message: \"{value} {units}\"}\n", `plant.yaml:7: alarms[0].message: unknown placeholder {units} (want {value} {threshold} {point} {unit} {name})`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: \">\", threshold: 1, notify: [\"ftp://x/y\"]}\n", `plant.yaml:7: alarms[0].notify[0]: want an http:// or https:// webhook URL, got scheme "ftp"`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: \">\", threshold: 1, notify: [\"http:///hook\"]}\n", `plant.yaml:7: alarms[0].notify[0]: the URL has no host`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: bands}\n", `plant.yaml:7: alarms[0].bands: required with condition "bands"`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: bands, threshold: 3, bands: {hi: 2}}\n", `plant.yaml:7: alarms[0].threshold: not used with condition "bands"`)
	f(tcpChannel+"alarms:\n  - {id: a, point: \"1001:m:10001\", condition: \">\", threshold: 3, bands: {hi: 2}}\n", `plant.yaml:7: alarms[0].bands: only used with condition "bands"`)
	f(tcpChannel+"alarms:\n  - id: a\n    point: \"1001:m:10001\"\n    condition: bands\n    bands:\n      hihi: 10\n      hi: 12\n", `plant.yaml:12: alarms[0].bands.hi.threshold: 12 must be below hihi (10): limits go hihi > hi > lo > lolo`)
	f(tcpChannel+"alarms:\n  - id: a\n    point: \"1001:m:10001\"\n    condition: bands\n    bands:\n      hi: {level: minor}\n", `plant.yaml:11: alarms[0].bands.hi.threshold: required`)
	f(tcpChannel+"alarms:\n  - id: a\n    point: \"1001:m:10001\"\n    condition: bands\n    bands:\n      hi: {threshold: 3, level: loud}\n", `plant.yaml:11: alarms[0].bands.hi.level: unknown level "loud"`)
	f(tcpChannel+"alarms:\n  - id: a\n    point: \"1001:m:10001\"\n    condition: bands\n    bands:\n      hi: [3]\n", `plant.yaml:11: alarms[0].bands.hi: want a number or {threshold: N, level: L}, got a list`)
	f(tcpChannel+"alarms:\n  - id: a\n    point: \"1001:m:10001\"\n    condition: bands\n    bands:\n      high: 3\n", `plant.yaml:11: alarms[0].bands.high: unknown field (want hihi, hi, lo, lolo)`)
	// Auth.
	f("auth:\n  tokens:\n    - {token: abcdefghijklmnopq, role: viewer}\n", `plant.yaml:3: auth.tokens[0].name: required`)
	f("auth:\n  tokens:\n    - {name: a, token: abcdefghijklmnopq, role: viewer}\n    - {name: a, token: bbcdefghijklmnopq, role: viewer}\n", `plant.yaml:4: auth.tokens[1].name: duplicate token name "a" (first at line 3)`)
	f("auth:\n  tokens:\n    - {name: a, token: abcdefghijklmnopq, role: root}\n", `plant.yaml:3: auth.tokens[0].role: unknown role "root" (want viewer, operator, admin)`)
	f("auth:\n  tokens:\n    - {name: a, token: abcdefghijklmnopq}\n", `plant.yaml:3: auth.tokens[0].role: required`)
	f("auth:\n  tokens:\n    - {name: a, role: admin}\n", `plant.yaml:3: auth.tokens[0].token: required`)
	f("auth:\n  tokens:\n    - {name: a, token: secret, role: admin}\n", `plant.yaml:3: auth.tokens[0].token: too short: 6 characters, want at least 16`)
	f("auth:\n  tokens:\n    - {name: a, token: abcdefghijklmnopq, role: admin}\n    - {name: b, token: abcdefghijklmnopq, role: viewer}\n", `plant.yaml:4: auth.tokens[1].token: same token as auth.tokens[0] (line 3)`)
	f("auth:\n  tokens:\n    - {name: a, token: \"${VOLTAGE_TEST_SURELY_UNSET}\", role: admin}\n", `plant.yaml:3: auth.tokens[0].token: environment variable VOLTAGE_TEST_SURELY_UNSET is not set`)
	f("auth:\n  tokens:\n    - {name: a, token: \"${VOLTAGE_TEST\", role: admin}\n", `plant.yaml:3: auth.tokens[0].token: unterminated ${`)
}

func TestErrorsNeverShowTokens(t *testing.T) {
	_, err := parse("auth:\n  tokens:\n    - {name: a, token: s3cr3t-value, role: admin}\n    - {name: b, token: s3cr3t-value-long-enough, role: admin}\n    - {name: c, token: s3cr3t-value-long-enough, role: admin}\n")
	if err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("error shows a token or is missing: %v", err)
	}
}

func TestEnvExpansion(t *testing.T) {
	t.Setenv("VOLTAGE_TEST_TOKEN", "from-the-environment-123")
	t.Setenv("VOLTAGE_TEST_PASSWORD", "pw")
	t.Setenv("VOLTAGE_TEST_EMPTY", "")
	c, err := parse(`redis: {url: "redis://:${VOLTAGE_TEST_PASSWORD}@127.0.0.1:6379/0"}
influxdb: {url: "http://127.0.0.1:8086", token: "admin:${VOLTAGE_TEST_PASSWORD}"}
auth:
  tokens:
    - {name: a, token: "${VOLTAGE_TEST_TOKEN}", role: admin}
    - {name: b, token: "prefix-$not-expanded-${VOLTAGE_TEST_PASSWORD}", role: viewer}
`)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Auth.Tokens[0].Token; got != "from-the-environment-123" {
		t.Errorf("token = %q", got)
	}
	if got := c.Auth.Tokens[1].Token; got != "prefix-$not-expanded-pw" {
		t.Errorf("token = %q", got)
	}
	if c.Redis.URL != "redis://:pw@127.0.0.1:6379/0" || c.InfluxDB.Token != "admin:pw" {
		t.Errorf("redis %q influx token %q", c.Redis.URL, c.InfluxDB.Token)
	}

	_, err = parse("auth:\n  tokens:\n    - {name: a, token: \"${VOLTAGE_TEST_EMPTY}\", role: admin}\n")
	if err == nil || err.Error() != "plant.yaml:3: auth.tokens[0].token: empty after expanding environment variables" {
		t.Errorf("empty variable: %v", err)
	}
	_, err = parse("auth:\n  tokens:\n    - {name: a, token: \"${VOLTAGE_TEST_UNSET_1}${VOLTAGE_TEST_UNSET_2}\", role: admin}\n")
	want := "plant.yaml:3: auth.tokens[0].token: environment variable VOLTAGE_TEST_UNSET_1 is not set\n" +
		"plant.yaml:3: auth.tokens[0].token: environment variable VOLTAGE_TEST_UNSET_2 is not set"
	if err == nil || err.Error() != want {
		t.Errorf("unset variables:\n got: %v\nwant: %s", err, want)
	}
}

func TestDefaults(t *testing.T) {
	yaml := `channels:
  - {id: 1, protocol: modbus_tcp, parameters: {host: h}, points: points/1001.csv}
  - {id: 2, protocol: modbus_rtu, parameters: {device: /dev/ttyUSB0, parity: e}, points: points/1001.csv}
  - {id: 3, protocol: virtual, points: points/1002.csv}
  - {id: 4, protocol: compute}
alarms:
  - {id: a, point: "1:m:10001", condition: ">", threshold: 1}
`
	c, err := parse(yaml)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if c.Node.Name != host || c.Node.HTTP != "127.0.0.1:8080" {
		t.Errorf("node %+v, want name %q", c.Node, host)
	}
	if want, _ := filepath.Abs("data"); c.Node.DataDir != want {
		t.Errorf("data_dir %q, want %q", c.Node.DataDir, want)
	}
	if c.File != "plant.yaml" {
		t.Errorf("file %q", c.File)
	}
	want := InfluxDB{Bucket: "ems/autogen", Measurement: "point", BatchSize: 5000, FlushInterval: time.Second,
		SpoolMaxMB: 1024, Retention: 7 * 24 * time.Hour}
	if c.InfluxDB != want {
		t.Errorf("influxdb %+v", c.InfluxDB)
	}
	tcp, rtu, virt, comp := c.Channels[0], c.Channels[1], c.Channels[2], c.Channels[3]
	if p := tcp.Parameters; p.Port != 502 || p.Timeout != time.Second || p.MaxGap == nil || *p.MaxGap != 16 || p.BaudRate != 0 {
		t.Errorf("tcp parameters %+v", p)
	}
	if p := rtu.Parameters; p.BaudRate != 9600 || p.DataBits != 8 || p.Parity != "E" || p.StopBits != 1 || p.Timeout != time.Second || *p.MaxGap != 16 || p.Port != 0 {
		t.Errorf("rtu parameters %+v", p)
	}
	if virt.Parameters != (Parameters{}) || comp.Parameters != (Parameters{}) {
		t.Errorf("virtual/compute parameters %+v %+v", virt.Parameters, comp.Parameters)
	}
	for _, ch := range c.Channels {
		if ch.PollInterval != time.Second {
			t.Errorf("channel %d poll interval %s", ch.ID, ch.PollInterval)
		}
	}
	if want, _ := filepath.Abs("points/1001.csv"); tcp.PointsFile != want {
		t.Errorf("points file %q, want %q", tcp.PointsFile, want)
	}
	if comp.PointsFile != "" || len(comp.Points) != 0 {
		t.Errorf("compute channel %+v", comp)
	}
	if tcp.Line != 2 || c.Alarms[0].Line != 7 {
		t.Errorf("lines %d %d", tcp.Line, c.Alarms[0].Line)
	}
	if c.Alarms[0].Level != "major" {
		t.Errorf("alarm level %q", c.Alarms[0].Level)
	}
}

func TestExplicitValuesKept(t *testing.T) {
	c, err := parse(`node: {name: n1, http: "0.0.0.0:9000", data_dir: /var/lib/voltage}
influxdb: {url: "http://influx:8086", bucket: b, measurement: m, batch_size: 10, flush_interval: 250ms}
channels:
  - id: 1
    protocol: modbus_rtu
    parameters: {device: /dev/ttyS1, baud_rate: 19200, data_bits: 7, parity: O, stop_bits: 2, timeout: 300ms, max_gap: 0}
    poll_interval: 10ms
    points: /abs/points.csv
`)
	if err == nil || !strings.Contains(err.Error(), "cannot read point table /abs/points.csv") {
		t.Fatalf("want a missing-file error, got %v", err)
	}
	c, err = parse(`node: {name: n1, http: "0.0.0.0:9000", data_dir: /var/lib/voltage}
influxdb: {url: "http://influx:8086", bucket: b, measurement: m, batch_size: 10, flush_interval: 250ms}
channels:
  - id: 1
    protocol: modbus_rtu
    parameters: {device: /dev/ttyS1, baud_rate: 19200, data_bits: 7, parity: O, stop_bits: 2, timeout: 300ms, max_gap: 0}
    poll_interval: 10ms
    points: /abs/points.csv
`, "/abs/points.csv", testFiles["points/1001.csv"])
	if err != nil {
		t.Fatal(err)
	}
	if n := c.Node; n.Name != "n1" || n.HTTP != "0.0.0.0:9000" || n.DataDir != "/var/lib/voltage" {
		t.Errorf("node %+v", c.Node)
	}
	p := c.Channels[0].Parameters
	if p.BaudRate != 19200 || p.DataBits != 7 || p.Parity != "O" || p.StopBits != 2 || p.Timeout != 300*time.Millisecond || *p.MaxGap != 0 {
		t.Errorf("parameters %+v", p)
	}
	if c.Channels[0].PollInterval != 10*time.Millisecond || c.Channels[0].PointsFile != "/abs/points.csv" {
		t.Errorf("channel %+v", c.Channels[0])
	}
}

func TestEmptyConfig(t *testing.T) {
	for _, yaml := range []string{"", "# nothing\n", "{}\n"} {
		c, err := parse(yaml)
		if err != nil || c.Node.HTTP != DefaultHTTP {
			t.Errorf("%q: %v", yaml, err)
		}
	}
}

func TestMergeKeys(t *testing.T) {
	c, err := parse(`channels:
  - &pcs {id: 1, protocol: modbus_tcp, parameters: {host: h, port: 1502}, points: points/1001.csv}
  - <<: *pcs
    id: 2
    parameters: {host: h2}
`)
	if err != nil {
		t.Fatal(err)
	}
	if ch := c.Channel(2); ch == nil || ch.Parameters.Host != "h2" || ch.Parameters.Port != 502 || len(ch.Points) != 3 || ch.Line != 3 {
		t.Errorf("merged channel %+v", ch)
	}
}

func TestLookups(t *testing.T) {
	c, err := parse(tcpChannel + `  - {id: 1002, protocol: virtual, points: points/1002.csv}
  - {id: 9001, protocol: compute, points: points/9001.csv}
computations:
  - {output: "9001:m:1", name: total, expression: "input1 + input2", inputs: ["1001:m:10001", "1002:T:1"]}
  - {output: "9001:m:2", expression: "input1 * 2", inputs: ["9001:m:1"]}
  - {output: "9001:m:5", name: from-csv, expression: "1"}
alarms:
  - {id: total-high, point: "9001:m:2", condition: ">=", threshold: 1000, level: critical}
`)
	if err != nil {
		t.Fatal(err)
	}
	if ch := c.Channel(1002); ch == nil || ch.Protocol != ProtocolVirtual {
		t.Errorf("Channel(1002) = %+v", ch)
	}
	if ch := c.Channel(7); ch != nil {
		t.Errorf("Channel(7) = %+v", ch)
	}
	key := func(s string) messages.PointKey {
		k, err := messages.ParsePointKey(s)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	if ch, p := c.Point(key("1001:c:1")); ch == nil || ch.ID != 1001 || p.FunctionCode != 5 {
		t.Errorf("Point(1001:c:1) = %v %+v", ch, p)
	}
	if ch, p := c.Point(key("1001:s:1")); ch != nil || p != nil {
		t.Errorf("Point(1001:s:1) = %v %+v", ch, p)
	}
	comp := c.Channel(9001)
	if len(comp.Points) != 3 || comp.Points[0].Name != "listed" || comp.Points[1].Name != "total" || comp.Points[2].ID != 2 {
		t.Errorf("compute points %+v", comp.Points)
	}
	if _, p := c.Point(key("9001:m:2")); p == nil || p.Scale != 1 || p.BitPosition != -1 {
		t.Errorf("Point(9001:m:2) = %+v", p)
	}

	// A Config built by hand has no index; lookups still work.
	hand := &Config{Channels: []Channel{{ID: 5, Points: []Point{{ID: 1, Type: messages.Signal}}}}}
	if ch, p := hand.Point(key("5:s:1")); ch == nil || p == nil {
		t.Error("hand-built Config: point not found")
	}
	if hand.Channel(5) == nil || hand.Channel(6) != nil {
		t.Error("hand-built Config: Channel lookup wrong")
	}
	// Changed after Load: the index misses, the scan finds it.
	c.Channels = append(c.Channels, Channel{ID: 77})
	if c.Channel(77) == nil {
		t.Error("channel appended after Load not found")
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/does-not-exist.yaml")
	var errs Errors
	if !errors.As(err, &errs) || err.Error() != "testdata/does-not-exist.yaml: no such file or directory" {
		t.Errorf("got %T %v", err, err)
	}
}

// TestManyErrors checks that one file with many problems reports all of them,
// YAML and CSV, in file and line order.
func TestManyErrors(t *testing.T) {
	_, err := Load("testdata/many_errors.yaml")
	if err == nil {
		t.Fatal("no error")
	}
	var fe *FieldError
	if !errors.As(err, &fe) || fe.File != "testdata/many_errors.yaml" || fe.Line == 0 {
		t.Errorf("first FieldError %+v", fe)
	}
	got := err.Error() + "\n"
	golden := "testdata/many_errors.golden"
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("errors differ from %s (go test -run TestManyErrors -update to rewrite):\n%s", golden, got)
	}
	if n := strings.Count(got, "\n"); n < 35 {
		t.Errorf("%d errors, want all of them (35 or more)", n)
	}
}

// TestAlarmBands: the band shorthand, default levels and the limits in order.
func TestAlarmBands(t *testing.T) {
	cfg, err := parse(tcpChannel + `alarms:
  - id: v
    point: "1001:m:10001"
    condition: bands
    bands:
      hihi: {threshold: 260}
      hi: 250
      lo: {threshold: 210, level: warning}
      lolo: 200
    deadband: 2
`)
	if err != nil {
		t.Fatal(err)
	}
	got := cfg.Alarms[0].Limits()
	want := []BandLimit{
		{Name: "hihi", Op: ">", Threshold: 260, Level: "critical", Severity: 2},
		{Name: "hi", Op: ">", Threshold: 250, Level: "major", Severity: 1},
		{Name: "lolo", Op: "<", Threshold: 200, Level: "critical", Severity: 2},
		{Name: "lo", Op: "<", Threshold: 210, Level: "warning", Severity: 1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("limits:\n got %+v\nwant %+v", got, want)
	}
	if cfg.Alarms[0].Line != 7 || cfg.Alarms[0].Level != "major" {
		t.Fatalf("line %d level %q, want 7 major", cfg.Alarms[0].Line, cfg.Alarms[0].Level)
	}
}
