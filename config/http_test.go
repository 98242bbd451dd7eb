package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/test/testenv"
)

func TestHTTPDefaults(t *testing.T) {
	c, err := parse("node: {name: n}\n")
	if err != nil {
		t.Fatal(err)
	}
	n := c.Node
	if n.HTTPReadHeaderTimeout != 5*time.Second || n.HTTPReadTimeout != 10*time.Second || n.HTTPWriteTimeout != time.Minute ||
		n.HTTPIdleTimeout != time.Minute || n.HTTPMaxHeaderBytes != 16384 || n.HTTPMaxConnsPerClient != 128 ||
		n.HTTPAuthBurst != 10 || n.HTTPAuthRefill != 6*time.Second || n.TLS != nil {
		t.Fatalf("defaults %+v", n)
	}
	c, err = parse("node: {http_max_conns_per_client: 0, http_read_timeout: 2s, http_read_header_timeout: 1s, http_idle_timeout: 500ms, http_auth_burst: 3, http_auth_refill: 1s}\n")
	if err != nil {
		t.Fatal(err)
	}
	n = c.Node
	if n.HTTPMaxConnsPerClient != 0 || n.HTTPReadTimeout != 2*time.Second || n.HTTPReadHeaderTimeout != time.Second ||
		n.HTTPIdleTimeout != 500*time.Millisecond || n.HTTPAuthBurst != 3 || n.HTTPAuthRefill != time.Second {
		t.Fatalf("explicit values %+v", n)
	}
}

func TestHTTPErrors(t *testing.T) {
	f := func(node, want string) {
		t.Helper()
		_, err := parse("node:\n" + node)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s\n got: %v\nwant: %s", node, err, want)
		}
	}
	f("  http_read_timeout: 0s\n", "plant.yaml:2: node.http_read_timeout: must be positive, got 0s")
	f("  http_idle_timeout: -1s\n", "plant.yaml:2: node.http_idle_timeout: must be positive")
	f("  http_read_header_timeout: 20s\n", "plant.yaml:2: node.http_read_header_timeout: 20s is longer than node.http_read_timeout (10s)")
	f("  http_write_timeout: 5s\n", "plant.yaml:2: node.http_write_timeout: must be at least 20s")
	f("  http_max_header_bytes: 10\n", "plant.yaml:2: node.http_max_header_bytes: 10 is out of range (1024..1048576)")
	f("  http_max_conns_per_client: -1\n", "plant.yaml:2: node.http_max_conns_per_client: must be 0 (no limit) or more")
	f("  http_auth_burst: 0\n", "plant.yaml:2: node.http_auth_burst: must be at least 1")
	f("  http_auth_refill: 1ms\n", "plant.yaml:2: node.http_auth_refill: must be at least 10ms")
	f("  tls: {key: k.pem}\n", "plant.yaml:2: node.tls.cert: required")
}

// TestTLSFiles: the TLS files are read at load, relative to the YAML file,
// and every problem is reported with its line.
func TestTLSFiles(t *testing.T) {
	ca := testenv.NewCA(t, "cfg")
	cert, key := ca.Issue(t, "node")
	_, otherKey := ca.Issue(t, "other")
	dir := t.TempDir()
	for name, src := range map[string]string{"tls/node.crt": cert, "tls/node.key": key, "tls/other.key": otherKey, "tls/ca.crt": ca.CertPEM} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, "tls"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "tls/garbage.pem"), []byte("not PEM at all\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(tlsYAML string) (*Config, error) {
		t.Helper()
		p := filepath.Join(dir, "node.yaml")
		if err := os.WriteFile(p, []byte("node:\n  name: n\n  tls: "+tlsYAML+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return Load(p)
	}
	c, err := load("{cert: tls/node.crt, key: tls/node.key, client_ca: tls/ca.crt}")
	if err != nil {
		t.Fatal(err)
	}
	if c.Node.TLS.Cert != filepath.Join(dir, "tls/node.crt") || c.Node.TLS.Key != filepath.Join(dir, "tls/node.key") ||
		c.Node.TLS.ClientCA != filepath.Join(dir, "tls/ca.crt") {
		t.Fatalf("paths not made absolute: %+v", c.Node.TLS)
	}
	f := func(tlsYAML string, want ...string) {
		t.Helper()
		_, err := load(tlsYAML)
		for _, w := range want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("tls %s\n got: %v\nwant: %s", tlsYAML, err, w)
			}
		}
	}
	yamlFile := filepath.Join(dir, "node.yaml")
	f("{cert: tls/missing.crt, key: tls/node.key}",
		yamlFile+":3: node.tls.cert: cannot read "+filepath.Join(dir, "tls/missing.crt")+": no such file or directory")
	f("{cert: tls/garbage.pem, key: tls/garbage.pem, client_ca: tls/garbage.pem}",
		yamlFile+":3: node.tls.cert: "+filepath.Join(dir, "tls/garbage.pem")+": no PEM certificate found",
		yamlFile+":3: node.tls.key: "+filepath.Join(dir, "tls/garbage.pem")+": no PEM private key found",
		yamlFile+":3: node.tls.client_ca: "+filepath.Join(dir, "tls/garbage.pem")+": no PEM certificate found")
	f("{cert: tls/node.crt, key: tls/other.key}",
		yamlFile+":3: node.tls.key: "+filepath.Join(dir, "tls/other.key")+" does not go with "+filepath.Join(dir, "tls/node.crt")+": private key does not match public key")
	f("{cert: tls/node.key, key: tls/node.key}", "node.tls.cert: "+filepath.Join(dir, "tls/node.key")+": no PEM certificate found")
}
