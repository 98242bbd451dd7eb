// Package browser loads the dashboard of a running node in headless
// Chromium (driven with chromedp) and checks what an operator sees: live
// values moving, channel state, a command round trip. It saves a screenshot
// to artifacts/dashboard.png.
package browser

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/test/testenv"
)

// buildVoltage builds the voltage binary into a temp dir.
func buildVoltage(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "voltage")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/voltage-ems/voltage/cmd/voltage")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build voltage: %v\n%s", err, out)
	}
	return bin
}

// node is a running voltage process whose output is collected.
type node struct {
	bin  string
	args []string
	base string // http://127.0.0.1:PORT
	cmd  *exec.Cmd
	done chan struct{}     // closed when cmd has exited
	out  testenv.LogBuffer // stdout and stderr
}

func (n *node) output() string { return n.out.String() }

// startDemo runs config/examples/demo.yaml with --simulate on free ports
// and waits until the node is ready.
func startDemo(t *testing.T, bin string) *node {
	t.Helper()
	httpPort, modbusPort := testenv.FreePort(t), testenv.FreePort(t)
	dir := t.TempDir()
	for _, f := range []string{"demo.yaml", "points/1001.csv", "points/1002.csv"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "config", "examples", f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "demo.yaml" {
			s := strings.NewReplacer("127.0.0.1:8080", fmt.Sprintf("127.0.0.1:%d", httpPort),
				"port: 15020", fmt.Sprintf("port: %d", modbusPort)).Replace(string(b))
			if !strings.Contains(s, strconv.Itoa(modbusPort)) || !strings.Contains(s, strconv.Itoa(httpPort)) {
				t.Fatal("demo.yaml no longer has the addresses this test rewrites (127.0.0.1:8080, port: 15020)")
			}
			b = []byte(s)
		}
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n := &node{bin: bin, args: []string{"run", "-c", filepath.Join(dir, "demo.yaml"), "--simulate"},
		base: "http://127.0.0.1:" + strconv.Itoa(httpPort)}
	n.start(t)
	t.Cleanup(func() {
		n.stop()
		if t.Failed() {
			t.Logf("output of voltage run:\n%s", n.output())
		}
	})
	return n
}

// start runs the node and waits until it is ready.
func (n *node) start(t *testing.T) {
	t.Helper()
	n.cmd = exec.Command(n.bin, n.args...)
	n.cmd.Stdout, n.cmd.Stderr = &n.out, &n.out
	n.done = make(chan struct{})
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(n.cmd, n.done)
	client := &http.Client{Timeout: 2 * time.Second}
	testenv.Eventually(t, 20*time.Second, func() bool {
		select {
		case <-n.done:
			t.Fatalf("voltage run exited:\n%s", n.output())
		default:
		}
		resp, err := client.Get(n.base + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "demo node ready at %s/ready", n.base)
}

// stop ends the node: SIGTERM, then kill after 10 s.
func (n *node) stop() {
	select {
	case <-n.done:
		return
	default:
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.done
	}
}
