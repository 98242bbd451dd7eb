package testenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

const etcdSkip = "etcd not on PATH (Debian package etcd-server; .ci/run installs it)"

// Etcd is a single-member etcd owned by one test.
type Etcd struct {
	process
	ClientPort, PeerPort int
	dir, path            string
	ca                   *CA // with EtcdTLS
	certFile, keyFile    string
}

// EtcdOption changes how StartEtcd runs etcd.
type EtcdOption func(*Etcd)

// EtcdTLS serves etcd's client API over TLS only, with a certificate of ca
// (CN etcd, valid for 127.0.0.1), and requires a client certificate that
// ca signed (--client-cert-auth).
func EtcdTLS(ca *CA) EtcdOption { return func(e *Etcd) { e.ca = ca } }

// Endpoint is host:port of the client API.
func (e *Etcd) Endpoint() string { return "127.0.0.1:" + strconv.Itoa(e.ClientPort) }

// URL is the client API's URL: https:// with EtcdTLS, else http://.
func (e *Etcd) URL() string {
	if e.ca != nil {
		return "https://" + e.Endpoint()
	}
	return "http://" + e.Endpoint()
}

// StartEtcd starts etcd with its data in a temp dir on free loopback ports;
// it skips the test when etcd is not installed.
func StartEtcd(t testing.TB, opts ...EtcdOption) *Etcd {
	t.Helper()
	path, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip(etcdSkip)
	}
	e := &Etcd{dir: t.TempDir(), path: path}
	e.t = t
	for _, o := range opts {
		o(e)
	}
	if e.ca != nil {
		e.certFile, e.keyFile = e.ca.Issue(t, "etcd")
	}
	for attempt := 0; attempt < 5; attempt++ {
		e.ClientPort, e.PeerPort = FreePort(t), FreePort(t)
		if e.ClientPort == e.PeerPort {
			continue
		}
		if err = e.start(path); err == nil {
			t.Cleanup(e.Stop)
			return e
		}
	}
	t.Fatalf("start etcd: %v", err)
	return nil
}

// Restart kills etcd and starts it again on the same ports and data (its
// keys and leases survive, as after a crash of a real etcd member).
func (e *Etcd) Restart() { e.restart(func() error { return e.start(e.path) }, "etcd on "+e.Endpoint()) }

func (e *Etcd) start(path string) error {
	client := e.URL()
	peer := "http://127.0.0.1:" + strconv.Itoa(e.PeerPort)
	log, err := os.OpenFile(filepath.Join(e.dir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close() // the child has its own descriptor
	args := []string{"--name", "test", "--data-dir", filepath.Join(e.dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "test=" + peer, "--log-outputs", "stderr"}
	hc := http.DefaultClient
	if e.ca != nil {
		args = append(args, "--cert-file", e.certFile, "--key-file", e.keyFile,
			"--trusted-ca-file", e.ca.CertPEM, "--client-cert-auth")
		hc = &http.Client{Transport: &http.Transport{TLSClientConfig: e.ca.ClientTLS(e.t, e.certFile, e.keyFile)}}
	}
	e.cmd = exec.Command(path, args...)
	e.cmd.Stdout, e.cmd.Stderr = log, log
	done, err := e.run()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			b, _ := os.ReadFile(log.Name())
			return fmt.Errorf("etcd exited: %s", lastLines(string(b), 5))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, client+"/health", nil)
		resp, err := hc.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.kill()
	return fmt.Errorf("etcd on %s not healthy within 10s", e.Endpoint())
}
