package config

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/voltage-ems/voltage/test/testenv"
)

const tlsNodes = `nodes:
  - {name: a1, substation: A, remote: 127.0.0.1:8101, membership: 127.0.0.1:6331, http: 127.0.0.1:8081}
  - {name: a2, substation: A, remote: 127.0.0.1:8102, membership: 127.0.0.1:6332, http: 127.0.0.1:8082}
`

func TestClusterTLSErrors(t *testing.T) {
	f := func(yaml, want string) {
		t.Helper()
		_, err := ParseCluster([]byte(yaml), "cluster.yaml", nil)
		var errs Errors
		if !errors.As(err, &errs) {
			t.Errorf("%s\nerror %v, want Errors", yaml, err)
			return
		}
		if !hasError(errs, want) {
			t.Errorf("%s\n got: %v\nwant: %s", yaml, err, want)
		}
	}
	const head = "name: s\nprovider: {kind: automanaged}\n"
	f(head+"tls: {cert: \"c/{node}.crt\", key: \"c/{node}.key\"}\n"+tlsNodes,
		`cluster.yaml:3: tls.ca: required: the cluster CA (PEM) that signed every node's certificate`)
	f(head+"tls: {ca: \"c/{node}-ca.crt\", cert: \"c/{node}.crt\", key: \"c/{node}.key\"}\n"+tlsNodes,
		`cluster.yaml:3: tls.ca: the cluster has one CA: {node} is for cert and key`)
	f(head+"tls: {ca: ca.crt, cert: \"c/{node}.crt\"}\n"+tlsNodes,
		`cluster.yaml:3: tls.key: required with tls.cert (the certificate's private key)`)
	f(head+"tls: {ca: ca.crt, cert: \"c/{node}.crt\", key: c/node.key}\n"+tlsNodes,
		`cluster.yaml:3: tls.key: use {node} in both cert and key, or in neither ("c/{node}.crt", "c/node.key")`)
	f(head+"tls:\n  ca: ca.crt\n  cert: c/site.crt\n  key: c/site.key\n"+tlsNodes,
		`cluster.yaml:5: tls.cert: "c/site.crt" has no {node}: 2 nodes would present the same certificate and could pose as each other`)
	f(head+"tls: {ca: ca.crt}\n"+tlsNodes,
		`cluster.yaml:5: nodes[0]: no certificate for node a1: give tls.cert and tls.key with {node} in the paths, or nodes[0].tls: {cert, key}`)
	f(head+"nodes:\n  - {name: a1, substation: A, remote: 127.0.0.1:8101, membership: 127.0.0.1:6331, http: 127.0.0.1:8081, tls: {cert: a1.crt, key: a1.key}}\n",
		`cluster.yaml:4: nodes[0].tls: needs the cluster's tls section (its ca, which signed this certificate)`)
	f(head+"tls: {ca: ca.crt}\nnodes:\n  - {name: a1, substation: A, remote: 127.0.0.1:8101, membership: 127.0.0.1:6331, http: 127.0.0.1:8081,\n     tls: {key: a1.key}}\n",
		`cluster.yaml:6: nodes[0].tls.cert: required with nodes[0].tls.key (the certificate of that key)`)
	f(head+"tls: {ca: ca.crt, cert: \"c/{node}.crt\", key: \"c/{node}.key\", etcd: {ca: etcd-ca.crt}}\n"+tlsNodes,
		`cluster.yaml:3: tls.etcd: only for the etcd provider (provider.kind is automanaged)`)
	f("name: s\nprovider: {kind: etcd, endpoints: [\"https://127.0.0.1:2379\"]}\n"+tlsNodes,
		`cluster.yaml:2: provider.endpoints[0]: "https://127.0.0.1:2379": https needs the tls section`)
	f("name: s\nprovider: {kind: etcd, endpoints: [\"http://127.0.0.1:2379\"]}\ntls: {ca: ca.crt, cert: \"c/{node}.crt\", key: \"c/{node}.key\"}\n"+tlsNodes,
		`cluster.yaml:2: provider.endpoints[0]: "http://127.0.0.1:2379": tls is set, so the nodes talk to etcd over TLS: use https://127.0.0.1:2379`)
	f("name: s\nprovider: {kind: etcd, endpoints: [\"unix://x\"]}\n"+tlsNodes,
		`cluster.yaml:2: provider.endpoints[0]: "unix://x": want host:port or https://host:port`)
	f("name: s\nprovider: {kind: etcd, endpoints: [\"127.0.0.1:2379\"]}\ntls:\n  ca: ca.crt\n  cert: \"c/{node}.crt\"\n  key: \"c/{node}.key\"\n  etcd: {cert: e.crt}\n"+tlsNodes,
		`cluster.yaml:7: tls.etcd.key: required with tls.etcd.cert`)
	f(head+"tls: {ca: ca.crt, cert: \"c/{node}.crt\", key: \"c/{node}.key\", min_version: 1.0}\n"+tlsNodes,
		`cluster.yaml:3: tls.min_version: unknown field (want ca, cert, key, etcd)`)
	f(head+"tls: {ca: ca.crt, cert: c/{node}.crt, key: c/{node}.key}\n"+tlsNodes,
		`cluster.yaml:2: invalid YAML: did not find expected ',' or '}' (inside {...}, quote a path with {node}: cert: "certs/{node}.crt")`)
}

// TestClusterTLSFiles: paths are relative to cluster.yaml, {node} is
// the node's name, nodes[].tls overrides, tls.etcd defaults to the rest.
func TestClusterTLSFiles(t *testing.T) {
	dir := t.TempDir()
	y := `name: s
provider: {kind: etcd, endpoints: ["https://127.0.0.1:2379", "127.0.0.1:2380"]}
tls:
  ca: pki/ca.crt
  cert: pki/{node}.crt
  key: /etc/voltage/{node}.key
  etcd: {ca: pki/etcd-ca.crt}
nodes:
  - {name: a1, substation: A, remote: 127.0.0.1:8101, membership: 127.0.0.1:6331, http: 127.0.0.1:8081}
  - {name: a2, substation: A, remote: 127.0.0.1:8102, membership: 127.0.0.1:6332, http: 127.0.0.1:8082,
     tls: {cert: other/a2-cert.pem, key: other/a2-key.pem}}
`
	c, err := ParseCluster([]byte(y), filepath.Join(dir, "cluster.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	a1, a2 := c.Node("a1").TLSFiles, c.Node("a2").TLSFiles
	f := func(got TLSFile, path, field string, line int) {
		t.Helper()
		if got.Path != path || got.Field != field || got.Line != line {
			t.Errorf("got %+v, want %s at %s (line %d)", got, path, field, line)
		}
	}
	f(a1.CA, filepath.Join(dir, "pki/ca.crt"), "tls.ca", 4)
	f(a1.Cert, filepath.Join(dir, "pki/a1.crt"), "tls.cert", 5)
	f(a1.Key, "/etc/voltage/a1.key", "tls.key", 6)
	f(a1.EtcdCA, filepath.Join(dir, "pki/etcd-ca.crt"), "tls.etcd.ca", 7)
	f(a1.EtcdCert, filepath.Join(dir, "pki/a1.crt"), "tls.cert", 5)
	f(a2.Cert, filepath.Join(dir, "other/a2-cert.pem"), "nodes[1].tls.cert", 11)
	f(a2.EtcdKey, filepath.Join(dir, "other/a2-key.pem"), "nodes[1].tls.key", 11)
	if c.Node("a1").TLSFiles.Cert.Show != filepath.Join(dir, "pki/a1.crt") {
		t.Errorf("show %q", a1.Cert.Show)
	}

	// One node, one certificate without {node}: fine.
	one := "name: s\nprovider: {kind: automanaged}\ntls: {ca: ca.crt, cert: node.crt, key: node.key}\nnodes:\n  - {name: a1, substation: A, remote: 127.0.0.1:8101, membership: 127.0.0.1:6331, http: 127.0.0.1:8081}\n"
	if _, err := ParseCluster([]byte(one), "cluster.yaml", nil); err != nil {
		t.Fatal(err)
	}
	// Without tls: no files, LoadTLS says nothing.
	c, err = ParseCluster([]byte("name: s\nprovider: {kind: automanaged}\n"+tlsNodes), "cluster.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := c.LoadTLS("a1"); m != nil || err != nil || c.Node("a1").TLSFiles != nil {
		t.Fatalf("no tls: %v %v", m, err)
	}
}

// TestClusterLoadTLS reads real certificates of a test CA: a node's own
// is accepted; one of another CA, one naming another node, a missing file
// and a key of another certificate are errors naming the line and field.
func TestClusterLoadTLS(t *testing.T) {
	ca := testenv.NewCA(t, "cluster")
	ca.Issue(t, "a1")
	ca.Issue(t, "a2")
	evil := testenv.NewCA(t, "evil")
	evil.Issue(t, "a3")
	dir := t.TempDir()
	y := "name: s\nprovider: {kind: automanaged}\n" +
		"tls: {ca: " + ca.CertPEM + ", cert: \"" + ca.Dir + "/{node}.crt\", key: \"" + ca.Dir + "/{node}.key\"}\n" + `nodes:
  - {name: a1, substation: A, remote: 127.0.0.1:8101, membership: 127.0.0.1:6331, http: 127.0.0.1:8081}
  - {name: a2, substation: A, remote: 127.0.0.1:8102, membership: 127.0.0.1:6332, http: 127.0.0.1:8082}
  - {name: a3, substation: A, remote: 127.0.0.1:8103, membership: 127.0.0.1:6333, http: 127.0.0.1:8083,
     tls: {cert: ` + evil.Dir + `/a3.crt, key: ` + evil.Dir + `/a3.key}}
  - {name: a4, substation: A, remote: 127.0.0.1:8104, membership: 127.0.0.1:6334, http: 127.0.0.1:8084,
     tls: {cert: ` + ca.Dir + `/a1.crt, key: ` + ca.Dir + `/a1.key}}
  - {name: a5, substation: A, remote: 127.0.0.1:8105, membership: 127.0.0.1:6335, http: 127.0.0.1:8085}
  - {name: a6, substation: A, remote: 127.0.0.1:8106, membership: 127.0.0.1:6336, http: 127.0.0.1:8086,
     tls: {cert: ` + ca.Dir + `/a1.crt, key: ` + ca.Dir + `/a2.key}}
`
	p := filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(p, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := LoadCluster(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.LoadTLS("a1")
	if err != nil {
		t.Fatal(err)
	}
	if m.Cert.Leaf == nil || !CertificateNames(m.Cert.Leaf, "a1") || m.CA == nil || m.EtcdCA != m.CA {
		t.Fatalf("a1: %+v", m)
	}
	f := func(node, want string) {
		t.Helper()
		_, err := c.LoadTLS(node)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v\nwant %s", node, err, want)
		}
	}
	f("a3", p+":8: nodes[2].tls.cert: "+evil.Dir+"/a3.crt: not valid under the cluster CA "+ca.CertPEM+": x509: certificate signed by unknown authority")
	f("a4", p+":10: nodes[3].tls.cert: "+ca.Dir+"/a1.crt: names localhost, a1, not a4: a node's certificate must name it in its DNS SANs")
	f("a5", p+":3: tls.cert: "+ca.Dir+"/a5.crt: no such file or directory")
	f("a5", p+":3: tls.key: "+ca.Dir+"/a5.key: no such file or directory")
	f("a6", p+":13: nodes[5].tls.cert: "+ca.Dir+"/a1.crt: with "+ca.Dir+"/a2.key: tls: private key does not match public key")

	if err := os.WriteFile(ca.CertPEM, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f("a1", p+":3: tls.ca: "+ca.CertPEM+": no PEM certificate in it")
}

func TestCertificateNames(t *testing.T) {
	f := func(cn string, dns []string, node string, want bool) {
		t.Helper()
		c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: dns}
		if got := CertificateNames(c, node); got != want {
			t.Errorf("CN %q DNS %v names %q: %v, want %v", cn, dns, node, got, want)
		}
	}
	f("sub-a1", nil, "sub-a1", true)                              // common name, no DNS SAN
	f("sub-a1", []string{"localhost"}, "sub-a1", false)           // DNS SANs win over the CN
	f("x", []string{"localhost", "sub-a1"}, "sub-a1", true)       // a DNS SAN
	f("sub-a1", []string{"sub-a1.site.example"}, "sub-a1", false) // exactly the name
	f("", []string{"*.example", "SUB-A1"}, "sub-a1", false)       // no wildcard, case matters
	f("sub-a10", []string{"sub-a10"}, "sub-a1", false)            // no prefix match
	f("sub-a1", []string{"sub-a2"}, "sub-a2", true)               // its own
	f("sub-a2", []string{"sub-a2", "sub-a1"}, "sub-a1", true)     // a cert for two nodes names both (the CA decides)
}

// TestRootClusterExampleTLS: the commented tls section of cluster.yaml at
// the repository root, uncommented, is valid.
func TestRootClusterExampleTLS(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "cluster.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		switch {
		case l == "# tls:":
			in = true
			l = "tls:"
		case in && strings.HasPrefix(l, "#   ") && !strings.HasPrefix(l, "#   #"):
			l = strings.TrimPrefix(l, "#")
		default:
			in = false
		}
		out = append(out, l)
	}
	demo, err := Load(filepath.Join("examples", "demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "cluster.yaml")
	c, err := ParseCluster([]byte(strings.Join(out, "\n")), file, demo)
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS == nil || c.Node("sub-b1").TLSFiles.Key.Path != filepath.Join(filepath.Dir(file), "certs", "sub-b1.key") {
		t.Fatalf("tls %+v", c.TLS)
	}
}
