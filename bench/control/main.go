// Command control measures command latency as an operator sees it: HTTP
// POST /control with wait, over loopback, to the result (written to the
// simulated Modbus device and read back), while the same channel polls 1000
// points every 100 ms. It builds and runs the real voltage binary with a
// real redis-server. It measures two nodes one after the other: the plain
// one (HTTP, unsigned commands on the bus) and the secured one (HTTPS,
// every command signed with auth.command_key and checked by the channel);
// both keep the audit file (data_dir/audit.log, fsync'd) and the dedupe
// store (data_dir/dedupe.db, fsync'd before each write).
//
//	go run ./bench/control [-commands 2000] [-points 1000] [-poll 100ms] [-mode both|plain|secure]
package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/voltage-ems/voltage/bench/benchnode"
	"github.com/voltage-ems/voltage/test/testenv"
)

const token = "bench-operator-token-000001"

func main() {
	commands := flag.Int("commands", 2000, "commands to send, one after the other")
	points := flag.Int("points", 1000, "points polled on the same channel")
	poll := flag.Duration("poll", 100*time.Millisecond, "poll interval")
	mode := flag.String("mode", "both", "plain, secure (HTTPS + signed commands), or both")
	flag.Parse()
	fmt.Printf("machine: %s\n", benchnode.Machine())
	for _, secure := range []bool{false, true} {
		if *mode != "both" && (*mode == "secure") != secure {
			continue
		}
		if err := run(*commands, *points, *poll, secure); err != nil {
			fmt.Fprintln(os.Stderr, "control:", err)
			os.Exit(1)
		}
	}
}

func run(commands, points int, poll time.Duration, secure bool) error {
	r, dir, err := benchnode.StartRedis()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	defer r.Stop()
	bin := filepath.Join(dir, "voltage")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/voltage").CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v: %s", err, out)
	}
	httpPort, mbPort, err := ports()
	if err != nil {
		return err
	}
	// 1000 measurements (float32 holding, uint16 input) and the setpoint.
	var csv strings.Builder
	csv.WriteString("point_id,type,name,unit,slave_id,function_code,register_address,data_type,byte_order,bit_position,scale,offset,deadband,reverse,min,max\n")
	for i := 0; i < points; i++ {
		if i%2 == 0 {
			fmt.Fprintf(&csv, "%d,m,m%d,V,1,3,%d,float32,ABCD,,1,0,0,,,\n", i+1, i, i)
		} else {
			fmt.Fprintf(&csv, "%d,m,m%d,A,1,4,%d,uint16,,,0.1,0,0,,,\n", i+1, i, i)
		}
	}
	csv.WriteString("1,a,power_sp,kW,1,16,5000,float32,ABCD,,1,0,0,,-1000,1000\n")
	scheme, client, nodeExtra, authExtra := "http", &http.Client{Timeout: 10 * time.Second}, "", ""
	if secure {
		ca, err := testenv.NewCAIn(dir, "bench")
		if err != nil {
			return err
		}
		cert, key, err := ca.IssueFiles("node")
		if err != nil {
			return err
		}
		scheme = "https"
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}}
		nodeExtra = fmt.Sprintf(", tls: {cert: %q, key: %q}", cert, key)
		authExtra = ", command_key: bench-command-key-0123456789abcdef0123"
	}
	yaml := fmt.Sprintf(`node: {name: bench, http: "127.0.0.1:%d"%s}
redis: {url: %q}
auth: {tokens: [{name: bench, token: %s, role: operator}]%s}
channels:
  - {id: 1, name: pcs, protocol: modbus_tcp, poll_interval: %s, points: p.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 1s}}
`, httpPort, nodeExtra, r.URL(), token, authExtra, poll, mbPort)
	if err := os.WriteFile(filepath.Join(dir, "p.csv"), []byte(csv.String()), 0o644); err != nil {
		return err
	}
	cfg := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		return err
	}
	node := exec.Command(bin, "run", "-c", cfg, "--simulate", "--log-level", "warn")
	node.Stderr = os.Stderr
	if err := node.Start(); err != nil {
		return err
	}
	defer func() { _ = node.Process.Signal(syscall.SIGTERM); _ = node.Wait() }()

	base := fmt.Sprintf("%s://127.0.0.1:%d", scheme, httpPort)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if resp, err := client.Get(base + "/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node not ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // polling in full swing

	if secure {
		fmt.Println("secured node: HTTPS (TLS 1.3, keep-alive), commands signed with auth.command_key and verified by the channel; audit file and dedupe store fsync'd")
	} else {
		fmt.Println("plain node: HTTP, unsigned commands; audit file and dedupe store fsync'd")
	}
	fmt.Printf("load: channel polls %d points every %v (Modbus TCP to the simulator); commands sent one after another\n", points, poll)
	lat := make([]time.Duration, 0, commands)
	failed := 0
	for i := 0; i < commands; i++ {
		body, _ := json.Marshal(map[string]any{"value": float64(i % 1000), "wait": "2s"})
		req, _ := http.NewRequest("POST", base+"/control/1/1", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		el := time.Since(start)
		var res struct{ Status string }
		_ = json.Unmarshal(b, &res)
		if resp.StatusCode != 200 || res.Status != "success" {
			failed++
			if failed < 5 {
				fmt.Fprintf(os.Stderr, "command %d: %d %s\n", i, resp.StatusCode, b)
			}
			continue
		}
		lat = append(lat, el)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	fmt.Printf("command latency HTTP request -> result (written, read back): p50 %v, p99 %v, max %v over %d commands (%d failed)\n",
		q(0.5).Round(10*time.Microsecond), q(0.99).Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond), len(lat), failed)
	return nil
}

func ports() (int, int, error) {
	a, err := testenv.PickPort()
	if err != nil {
		return 0, 0, err
	}
	b, err := testenv.PickPort()
	return a, b, err
}
