package testenv

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// InfluxDatabase is the database StartInfluxDB creates; its bucket in the
// v2 API is InfluxDatabase + "/autogen".
const InfluxDatabase = "ems"

// influxdSkip is the message of tests skipped for want of influxd.
const influxdSkip = "influxd not found: build it with GOBIN=$PWD/bin go install github.com/influxdata/influxdb/cmd/influxd@v1.8.10 (.ci/run does)"

// Influx is an InfluxDB 1.8 influxd process owned by one test (or one
// harness), with its files in a directory of its own and both its listeners
// (HTTP and the backup RPC service) on 127.0.0.1.
type Influx struct {
	process
	HTTPPort int
	RPCPort  int
	dir      string
}

// URL is the base URL of the HTTP API (v1 and v2), without a trailing slash.
func (i *Influx) URL() string { return "http://127.0.0.1:" + strconv.Itoa(i.HTTPPort) }

// InfluxdPath returns the influxd binary, or "" when there is none: the
// file named by VOLTAGE_INFLUXD, else bin/influxd at the repository root
// (where .ci/run builds it), else influxd on PATH.
func InfluxdPath() string {
	if p := os.Getenv("VOLTAGE_INFLUXD"); p != "" {
		if isExecutable(p) {
			return p
		}
		return ""
	}
	if root, err := repoRoot(); err == nil {
		if p := filepath.Join(root, "bin", "influxd"); isExecutable(p) {
			return p
		}
	}
	if p, err := exec.LookPath("influxd"); err == nil {
		return p
	}
	return ""
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// repoRoot walks up from the working directory to the one holding go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// StartInfluxDB starts an influxd with its files in a temp dir, on free
// loopback ports, with Flux enabled and the database "ems" created. It
// skips the test when influxd is not found (see InfluxdPath).
func StartInfluxDB(t testing.TB) *Influx {
	t.Helper()
	if InfluxdPath() == "" {
		t.Skip(influxdSkip)
	}
	i, err := StartInfluxDBServer(t.TempDir())
	if err != nil {
		t.Fatalf("start influxd: %v", err)
	}
	i.t = t
	t.Cleanup(i.Stop)
	return i
}

// StartInfluxDBServer starts an influxd with its files in dir, outside a
// test (benchmark harnesses). The caller stops it.
func StartInfluxDBServer(dir string) (*Influx, error) {
	if InfluxdPath() == "" {
		return nil, errors.New(influxdSkip)
	}
	i := &Influx{dir: dir}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if i.HTTPPort, err = PickPort(); err != nil {
			return nil, err
		}
		if i.RPCPort, err = PickPort(); err != nil {
			return nil, err
		}
		if i.RPCPort == i.HTTPPort {
			err = fmt.Errorf("picked port %d twice", i.RPCPort)
			continue
		}
		if err = i.start(); err == nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if err := i.Exec("CREATE DATABASE " + InfluxDatabase); err != nil {
		i.Stop()
		return nil, err
	}
	return i, nil
}

// config is influxd's configuration: everything under dir, both listeners
// on loopback, nothing else listening (graphite, collectd, opentsdb, UDP
// and the unix socket are off by default and stay off), no reporting, no
// _internal monitoring database, quiet logs.
func (i *Influx) config() string {
	return fmt.Sprintf(`reporting-disabled = true
bind-address = "127.0.0.1:%d"

[meta]
  dir = %q
  logging-enabled = false

[data]
  dir = %q
  wal-dir = %q
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false
  log-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:%d"
  auth-enabled = false
  log-enabled = false
  flux-enabled = true
  pprof-enabled = false
  unix-socket-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
`, i.RPCPort,
		filepath.Join(i.dir, "meta"), filepath.Join(i.dir, "data"), filepath.Join(i.dir, "wal"),
		i.HTTPPort)
}

func (i *Influx) start() error {
	conf := filepath.Join(i.dir, "influxd.conf")
	if err := os.WriteFile(conf, []byte(i.config()), 0o644); err != nil {
		return err
	}
	logPath := filepath.Join(i.dir, "influxd.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child has its own descriptor
	i.cmd = exec.Command(InfluxdPath(), "run", "-config", conf)
	i.cmd.Stdout, i.cmd.Stderr = logFile, logFile
	// INFLUXDB_* variables override the configuration file: keep them out.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "INFLUXDB_") {
			i.cmd.Env = append(i.cmd.Env, kv)
		}
	}
	done, err := i.run()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("influxd exited: %s", lastLines(string(log), 5))
		default:
		}
		if i.ping() == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	i.kill()
	return fmt.Errorf("influxd on %s did not answer /ping within 30s", i.URL())
}

var influxHTTP = &http.Client{Timeout: 10 * time.Second}

func (i *Influx) ping() error {
	c := http.Client{Timeout: 500 * time.Millisecond}
	resp, err := c.Get(i.URL() + "/ping")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("GET /ping: %s", resp.Status)
	}
	return nil
}

// Restart starts the server again with the same ports and files (Stop
// kills it as a crash would: what was acknowledged is in the WAL and
// survives). Started by StartInfluxDB, a failure fails the test.
func (i *Influx) Restart() { i.restart(i.start, "influxd on "+i.URL()) }

// Exec runs an InfluxQL statement that returns no rows (CREATE, DROP)
// through the 1.x /query API.
func (i *Influx) Exec(stmt string) error {
	_, err := i.query("POST", stmt)
	return err
}

// WriteLines writes line protocol (nanosecond timestamps) into the
// database through the 1.x /write API, bypassing the code under test.
func (i *Influx) WriteLines(lines string) error {
	resp, err := influxHTTP.Post(i.URL()+"/write?db="+InfluxDatabase, "text/plain", strings.NewReader(lines))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("POST /write: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// Count returns the number of values of the field "value" in measurement
// (SELECT count(value) FROM measurement, over all time), failing the test
// on error.
func (i *Influx) Count(t testing.TB, measurement string) int64 {
	t.Helper()
	n, err := i.CountValues(measurement)
	if err != nil {
		t.Fatalf("count %s: %v", measurement, err)
	}
	return n
}

// CountValues is Count for harnesses.
func (i *Influx) CountValues(measurement string) (int64, error) {
	q := "SELECT count(value) FROM " + quoteIdent(measurement)
	res, err := i.query("GET", q)
	if err != nil {
		return 0, err
	}
	if len(res.Results) != 1 {
		return 0, fmt.Errorf("%s: %d results", q, len(res.Results))
	}
	r := res.Results[0]
	if len(r.Series) == 0 {
		return 0, nil // no such measurement (yet)
	}
	if len(r.Series) != 1 || len(r.Series[0].Values) != 1 || len(r.Series[0].Values[0]) != 2 {
		return 0, fmt.Errorf("%s: unexpected answer %+v", q, r.Series)
	}
	n, err := r.Series[0].Values[0][1].Int64()
	if err != nil {
		return 0, fmt.Errorf("%s: count: %w", q, err)
	}
	return n, nil
}

type influxQLResponse struct {
	Results []struct {
		Series []struct {
			Name    string          `json:"name"`
			Columns []string        `json:"columns"`
			Values  [][]json.Number `json:"values"`
		} `json:"series"`
		Error string `json:"error"`
	} `json:"results"`
	Error string `json:"error"`
}

func (i *Influx) query(method, q string) (*influxQLResponse, error) {
	form := url.Values{"db": {InfluxDatabase}, "q": {q}, "epoch": {"ns"}}
	var (
		resp *http.Response
		err  error
	)
	if method == "POST" {
		resp, err = influxHTTP.PostForm(i.URL()+"/query", form)
	} else {
		resp, err = influxHTTP.Get(i.URL() + "/query?" + form.Encode())
	}
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var res influxQLResponse
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	if err := dec.Decode(&res); err != nil {
		return nil, fmt.Errorf("%s: %s: %s", q, resp.Status, strings.TrimSpace(string(body)))
	}
	if res.Error != "" {
		return nil, fmt.Errorf("%s: %s", q, res.Error)
	}
	for _, r := range res.Results {
		if r.Error != "" {
			return nil, fmt.Errorf("%s: %s", q, r.Error)
		}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", q, resp.Status)
	}
	return &res, nil
}

// quoteIdent quotes an InfluxQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
