package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	bolt "go.etcd.io/bbolt"

	"github.com/voltage-ems/voltage/actors/durable"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

const damageViewer = "damage-viewer-token-01"

// damageNode is a node with a fast virtual channel, embedded history and
// its own data_dir, on a real redis-server.
type damageNode struct {
	cfg, data, base string
	rdb             *redis.Client
}

func newDamageNode(t *testing.T) *damageNode {
	t.Helper()
	r := testenv.StartRedis(t)
	httpPort := testenv.FreePort(t)
	dir := writeFiles(t, map[string]string{
		"node.yaml": fmt.Sprintf(`node: {name: damage, http: "127.0.0.1:%d", data_dir: data}
redis: {url: %q}
influxdb: {flush_interval: 100ms}
auth:
  tokens:
    - {name: viewer1, token: %s, role: viewer}
channels:
  - {id: 7, name: PV, protocol: virtual, poll_interval: 20ms, points: pv.csv}
`, httpPort, r.URL(), damageViewer),
		"pv.csv": "point_id,type,name,unit,signal,min,max,period\n1,m,a,kW,ramp,0,1000,7s\n2,m,b,kW,sine,0,100,5s\n",
	})
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return &damageNode{cfg: filepath.Join(dir, "node.yaml"), data: filepath.Join(dir, "data"),
		base: "http://127.0.0.1:" + strconv.Itoa(httpPort), rdb: rdb}
}

// run starts the node and waits until it is ready and has written fresh
// values of its points into Redis: it polls.
func (d *damageNode) run(t *testing.T) *proc {
	t.Helper()
	started := time.Now().UnixMilli()
	p := start(t, nil, "run", "-c", d.cfg)
	testenv.Eventually(t, 15*time.Second, func() bool { c, _ := get(t, d.base+"/ready"); return c == 200 }, "node ready")
	testenv.Eventually(t, 10*time.Second, func() bool {
		ts, _ := strconv.ParseInt(d.rdb.HGet(context.Background(), "comsrv:7:m:ts", "1").Val(), 10, 64)
		return ts >= started
	}, "points polled into redis after the start")
	return p
}

// readyWarnings returns /ready's status and warnings.
func (d *damageNode) readyWarnings(t *testing.T) (int, []durable.Problem) {
	t.Helper()
	code, body := get(t, d.base+"/ready")
	var r struct {
		Status   string            `json:"status"`
		Warnings []durable.Problem `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil || r.Status != "ready" {
		t.Fatalf("/ready: %d %s", code, body)
	}
	return code, r.Warnings
}

// status returns /api/status.
func (d *damageNode) status(t *testing.T) (node, version string, warnings []durable.Problem) {
	t.Helper()
	code, body := getAuth(t, d.base+"/api/status", damageViewer)
	var s struct {
		Node     string            `json:"node"`
		Version  string            `json:"version"`
		Uptime   string            `json:"uptime"`
		Warnings []durable.Problem `json:"warnings"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &s) != nil || s.Uptime == "" {
		t.Fatalf("/api/status: %d %s", code, body)
	}
	return s.Node, s.Version, s.Warnings
}

func sh(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// pointPage returns the root page of point 7:m:1's bucket in the (closed)
// embedded history: a page the node must read.
func pointPage(t *testing.T, path string) uint64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var root uint64
	_ = db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte("points")); b != nil {
			if p := b.Bucket([]byte("7:m:1")); p != nil {
				root = uint64(p.Root())
			}
		}
		return nil
	})
	if root == 0 {
		t.Fatal("point 7:m:1 has no page of its own yet (inline bucket): let the node run longer")
	}
	return root
}

// usedSize returns the bytes of the (closed) bbolt file that its pages
// use: the file may be longer (bbolt grows it ahead), and cutting only
// that unused tail is no damage.
func usedSize(t *testing.T, path string) int64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int64
	_ = db.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil })
	return n
}

// expectRecovered checks a node that started on damaged files: ready (200)
// with a warning per damaged file, the same on /api/status and /metrics,
// the damaged files next to fresh ones.
func (d *damageNode) expectRecovered(t *testing.T, p *proc, want map[string]string) {
	t.Helper()
	code, ws := d.readyWarnings(t)
	node, _, sws := d.status(t)
	if code != 200 || node != "damage" || len(ws) != len(want) || len(sws) != len(want) {
		t.Fatalf("/ready %d warnings %+v, /api/status %+v; want %v\n%s", code, ws, sws, want, p.Output())
	}
	for _, w := range ws {
		file := map[string]string{"history": "history.db", "spool": "spool.db"}[w.Component]
		if !strings.Contains(w.Reason, want[w.Component]) || !strings.Contains(w.Reason, "moved aside to "+file+".corrupt-") {
			t.Fatalf("warning %+v, want a %s reason with %q", w, w.Component, want[w.Component])
		}
		moved := regexp.MustCompile(`moved aside to (\S+\.corrupt-\d{8}T\d{6}Z(-\d+)?)`).FindStringSubmatch(w.Reason)
		if moved == nil {
			t.Fatalf("no moved-aside name in %q", w.Reason)
		}
		if _, err := os.Stat(filepath.Join(d.data, moved[1])); err != nil {
			t.Fatalf("damaged file not next to the fresh one: %v", err)
		}
		if _, err := os.Stat(filepath.Join(d.data, file)); err != nil {
			t.Fatalf("no fresh %s: %v", file, err)
		}
		if !strings.Contains(p.Output(), "level=ERROR") || !strings.Contains(p.Output(), "damaged file moved aside") {
			t.Fatalf("damage not logged as an error:\n%s", p.Output())
		}
	}
	_, metrics := getAuth(t, d.base+"/metrics", damageViewer)
	for c := range want {
		if !strings.Contains(metrics, fmt.Sprintf("voltage_storage_recovered_total{component=%q} 1\n", c)) {
			t.Fatalf("metric of %s not 1:\n%s", c, grepLines(metrics, "voltage_storage_recovered_total"))
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestDamagedHistoryAndSpoolDoNotStopTheNode damages history.db and
// spool.db the ways issue 12 found (a page overwritten by dd: bbolt
// panicked at start; a truncated file: SIGBUS), restarting the real binary
// after each: it starts, polls into Redis, is ready with the warnings, and
// the damaged files are kept next to fresh ones.
func TestDamagedHistoryAndSpoolDoNotStopTheNode(t *testing.T) {
	d := newDamageNode(t)
	hist, spool := filepath.Join(d.data, "history.db"), filepath.Join(d.data, "spool.db")
	p := d.run(t)
	if code, ws := d.readyWarnings(t); code != 200 || len(ws) != 0 {
		t.Fatalf("intact node: /ready %d, warnings %+v", code, ws)
	}
	// Enough samples that the point's samples fill a page of their own.
	testenv.Eventually(t, 10*time.Second, func() bool {
		_, body := getAuth(t, d.base+"/api/history?point=7:m:1&start=-1h&end=now&every=1h&fn=count", damageViewer)
		var h struct {
			Series []struct {
				Points []struct {
					V float64 `json:"v"`
				} `json:"points"`
			} `json:"series"`
		}
		return json.Unmarshal([]byte(body), &h) == nil && len(h.Series) == 1 && len(h.Series[0].Points) == 1 && h.Series[0].Points[0].V >= 100
	}, "100 samples of 7:m:1 in the history")
	p.stop(10 * time.Second)

	// 1. A page of history.db overwritten, both meta pages of spool.db.
	sh(t, "dd", "if=/dev/urandom", "of="+hist, "bs=4096", fmt.Sprint("seek=", pointPage(t, hist)), "count=1", "conv=notrunc", "status=none")
	sh(t, "dd", "if=/dev/urandom", "of="+spool, "bs=4096", "count=2", "conv=notrunc", "status=none")
	p = d.run(t)
	d.expectRecovered(t, p, map[string]string{"history": "bbolt panicked reading the file", "spool": "no valid meta page"})
	// The fresh history works: the API answers from it.
	testenv.Eventually(t, 10*time.Second, func() bool {
		code, body := getAuth(t, d.base+"/api/history?point=7:m:1&start=-1m&end=now&every=1m&fn=count", damageViewer)
		return code == 200 && strings.Contains(body, `"v":`)
	}, "history of the fresh store")
	p.stop(10 * time.Second)

	// 2. Both truncated, their last used page cut off: bbolt's mapping
	// faulted (SIGBUS) reading past the end of the file.
	sh(t, "truncate", "-s", fmt.Sprint(usedSize(t, hist)-4096), hist)
	sh(t, "truncate", "-s", fmt.Sprint(usedSize(t, spool)-4096), spool)
	p = d.run(t)
	d.expectRecovered(t, p, map[string]string{"history": "(truncated)", "spool": "(truncated)"})
	if m, _ := filepath.Glob(hist + ".corrupt-*"); len(m) != 2 {
		t.Fatalf("damaged history files kept: %v", m)
	}
	p.stop(10 * time.Second)

	// 3. Intact again: no warnings.
	p = d.run(t)
	if code, ws := d.readyWarnings(t); code != 200 || len(ws) != 0 {
		t.Fatalf("restart on intact files: /ready %d, warnings %+v", code, ws)
	}
}

// TestSecondNodeOnSameDataDir: a second voltage run on a data_dir in use
// exits non-zero, saying so and naming the pid of the node that has it.
func TestSecondNodeOnSameDataDir(t *testing.T) {
	d := newDamageNode(t)
	p := d.run(t)
	out, code := runCmd(t, nil, "run", "-c", d.cfg)
	want := fmt.Sprintf("data_dir %s is in use by another voltage process (pid %d)", d.data, p.cmd.Process.Pid)
	if code == 0 || !strings.Contains(out, want) {
		t.Fatalf("second node: exit %d, output:\n%s\nwant %q", code, out, want)
	}
	if strings.Contains(out, "timeout") {
		t.Fatalf("second node still speaks of a timeout:\n%s", out)
	}
	// The first node is unharmed.
	if c, _ := get(t, d.base+"/ready"); c != 200 {
		t.Fatalf("first node /ready %d after the second start", c)
	}
	// Once it is gone, even killed, the data_dir is free.
	_ = p.cmd.Process.Kill()
	<-p.done
	d.run(t)
}

// TestAuditVerifyCommand runs voltage audit verify on the trail of a node
// (empty: nothing audits yet), on an intact trail of entries, and on the
// same trail with one line edited.
func TestAuditVerifyCommand(t *testing.T) {
	d := newDamageNode(t)
	d.run(t).stop(10 * time.Second)
	out, code := runCmd(t, nil, "audit", "verify", "-c", d.cfg)
	if code != 0 || !strings.Contains(out, "ok: 0 entries in 1 file\n") {
		t.Fatalf("verify of the node's trail: exit %d\n%s", code, out)
	}

	dir := t.TempDir()
	a, err := durable.OpenAudit(filepath.Join(dir, "audit.log"), durable.AuditOptions{Node: "sub-a", MaxBytes: 2000})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		v := float64(i)
		a.Audit(&messages.AuditEvent{Time: time.Now().UnixMilli(), Event: messages.AuditAccepted, ID: fmt.Sprint("cmd-", i),
			Point: "1001:c:1", Value: &v, User: "operator1", Source: "api"})
		if err := a.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	files, _, err := durable.AuditFiles(filepath.Join(dir, "audit.log"))
	if err != nil || len(files) < 3 {
		t.Fatalf("rotated files %v (%v)", files, err)
	}
	out, code = runCmd(t, nil, "audit", "verify", "--dir", dir)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("ok: 20 entries in %d files\n", len(files))) || !strings.Contains(out, "last entry: seq 20, sha256 ") {
		t.Fatalf("verify of an intact trail: exit %d\n%s", code, out)
	}
	// An operator edits who sent command 2 in the oldest file.
	p := files[0]
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(b), `"id":"cmd-1","point":"1001:c:1","value":1,"user":"operator1"`, `"id":"cmd-1","point":"1001:c:1","value":1,"user":"operator2"`, 1)
	if edited == string(b) {
		t.Fatalf("entry of cmd-1 not in %s:\n%s", p, b)
	}
	if err := os.WriteFile(p, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = runCmd(t, nil, "audit", "verify", "--dir", dir)
	want := filepath.Base(p) + ":3: prev does not match line 2 (entry edited or removed)"
	if code != 1 || !strings.Contains(out, want) || strings.Contains(out, "ok:") {
		t.Fatalf("verify of an edited trail: exit %d, want 1 and %q\n%s", code, want, out)
	}
}
