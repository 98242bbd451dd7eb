package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
)

// NodePlaceholder in tls.cert, tls.key (and tls.etcd.cert, tls.etcd.key)
// is replaced by the node's name: one pattern for every node's files.
const NodePlaceholder = "{node}"

// ClusterTLS is the tls section of cluster.yaml. When it is set, the
// cluster's traffic is TLS 1.2+ with mutual authentication: protoactor
// remote (gRPC) and the automanaged membership (/_health over HTTPS)
// present this node's certificate and accept only peers whose certificate
// the cluster CA signed and that name the node they are (a DNS SAN, or the
// common name of a certificate without DNS SANs); the etcd provider talks
// to etcd over TLS with a client certificate.
type ClusterTLS struct {
	CA string `yaml:"ca"` // the cluster CA (PEM): it signed every node's certificate
	// Cert and Key are this node's certificate and key (PEM), the same
	// pattern for every node with {node} in the path; a node may give its
	// own under nodes[].tls instead.
	Cert string   `yaml:"cert"`
	Key  string   `yaml:"key"`
	Etcd *EtcdTLS `yaml:"etcd"` // etcd's own CA or client certificate (default: the above)
	Line int      `yaml:"-"`
}

// EtcdTLS is tls.etcd: what the etcd provider uses instead of the cluster
// CA and the node's certificate, when etcd has its own CA.
type EtcdTLS struct {
	CA   string `yaml:"ca"`   // signed etcd's server certificate (default tls.ca)
	Cert string `yaml:"cert"` // client certificate for etcd, {node} allowed (default the node's)
	Key  string `yaml:"key"`
}

// NodeTLS is nodes[].tls: the node's own certificate and key.
type NodeTLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// TLSFile is one file of the tls settings of a node.
type TLSFile struct {
	Path  string // absolute
	Show  string // as cluster.yaml names it, joined to its directory
	Field string // where cluster.yaml names it: tls.cert, nodes[1].tls.cert, ...
	Line  int
}

// NodeTLSFiles are a node's TLS files, resolved by the loader.
type NodeTLSFiles struct {
	CA, Cert, Key             TLSFile
	EtcdCA, EtcdCert, EtcdKey TLSFile
}

// TLSMaterial is what one node needs for the cluster's mutual TLS, read
// and checked from the files of cluster.yaml.
type TLSMaterial struct {
	Node string
	CA   *x509.CertPool  // the cluster CA
	Cert tls.Certificate // this node's, Leaf set
	// For etcd: the CA that signed etcd's certificate and the client
	// certificate (the above unless tls.etcd says otherwise).
	EtcdCA   *x509.CertPool
	EtcdCert tls.Certificate
}

// CertificateNames reports whether cert names node: one of its DNS SANs,
// or its common name when it has no DNS SAN, is exactly the node's name.
func CertificateNames(cert *x509.Certificate, node string) bool {
	if len(cert.DNSNames) == 0 {
		return cert.Subject.CommonName == node
	}
	return slices.Contains(cert.DNSNames, node)
}

// CertificateNamesOf lists the names a certificate gives (for messages).
func CertificateNamesOf(cert *x509.Certificate) []string {
	if len(cert.DNSNames) == 0 {
		return []string{cert.Subject.CommonName}
	}
	return cert.DNSNames
}

func (l *loader) checkEtcdEndpoint(p, e string, withTLS bool) {
	hp := e
	if scheme, rest, ok := strings.Cut(e, "://"); ok {
		hp = rest
		switch scheme {
		case "https":
			if !withTLS {
				l.errorf(p, "%q: https needs the tls section (the CA that signed etcd's certificate, the client certificate)", e)
				return
			}
		case "http":
			if withTLS {
				l.errorf(p, "%q: tls is set, so the nodes talk to etcd over TLS: use https://%s", e, rest)
				return
			}
		default:
			l.errorf(p, "%q: want host:port or https://host:port", e)
			return
		}
	}
	if err := checkHostPort(hp); err != nil {
		l.errorf(p, "%v", err)
	}
}

// validateClusterTLS checks the tls section and nodes[].tls and resolves
// every node's files (Cluster.Nodes[i].TLSFiles). The files themselves
// are read by LoadTLS, on the node that uses them (a node has only its
// own certificate and key).
func (l *loader) validateClusterTLS(c *Cluster) {
	t := c.TLS
	if t == nil {
		for i := range c.Nodes {
			if c.Nodes[i].TLS != nil {
				p := indexPath("nodes", i) + ".tls"
				l.errorf(p, "needs the cluster's tls section (its ca, which signed this certificate)")
			}
		}
		return
	}
	file := func(field, v string, node string) TLSFile {
		v = strings.ReplaceAll(v, NodePlaceholder, node)
		return TLSFile{Path: l.resolvePath(v), Show: l.displayPath(v), Field: field, Line: l.line(field)}
	}
	pair := func(p string, cert, key string) bool {
		ok := true
		if cert == "" && key != "" {
			l.errorf(p+".cert", "required with %s.key (the certificate of that key)", p)
			ok = false
		}
		if key == "" && cert != "" {
			l.errorf(p+".key", "required with %s.cert (the certificate's private key)", p)
			ok = false
		}
		if ok && strings.Contains(cert, NodePlaceholder) != strings.Contains(key, NodePlaceholder) {
			l.errorf(p+".key", "use %s in both cert and key, or in neither (%q, %q)", NodePlaceholder, cert, key)
			ok = false
		}
		return ok
	}
	t.Line = l.line("tls")
	switch {
	case t.CA == "":
		l.errorf("tls.ca", "required: the cluster CA (PEM) that signed every node's certificate")
	case strings.Contains(t.CA, NodePlaceholder):
		l.errorf("tls.ca", "the cluster has one CA: %s is for cert and key", NodePlaceholder)
	}
	shared := t.Cert != "" && !strings.Contains(t.Cert, NodePlaceholder)
	topOK := pair("tls", t.Cert, t.Key)
	var etcdOK bool
	if e := t.Etcd; e != nil {
		if c.Provider.Kind != ProviderEtcd {
			l.errorf("tls.etcd", "only for the etcd provider (provider.kind is %s)", c.Provider.Kind)
		}
		if strings.Contains(e.CA, NodePlaceholder) {
			l.errorf("tls.etcd.ca", "one CA signed etcd's certificate: %s is for cert and key", NodePlaceholder)
		}
		etcdOK = pair("tls.etcd", e.Cert, e.Key)
		if e.CA == "" && e.Cert == "" {
			l.errorf("tls.etcd", "give ca (etcd's CA), or cert and key (a client certificate for etcd), or both")
		}
	}
	users := 0 // nodes that use tls.cert
	for i := range c.Nodes {
		n := &c.Nodes[i]
		p := indexPath("nodes", i)
		f := &NodeTLSFiles{CA: file("tls.ca", t.CA, n.Name)}
		switch {
		case n.TLS != nil:
			if !pair(p+".tls", n.TLS.Cert, n.TLS.Key) {
				continue
			}
			if n.TLS.Cert == "" {
				l.errorf(p+".tls", "give cert and key (this node's certificate), or leave tls out to use the cluster's tls.cert")
				continue
			}
			f.Cert, f.Key = file(p+".tls.cert", n.TLS.Cert, n.Name), file(p+".tls.key", n.TLS.Key, n.Name)
		case t.Cert != "":
			if !topOK {
				continue
			}
			users++
			f.Cert, f.Key = file("tls.cert", t.Cert, n.Name), file("tls.key", t.Key, n.Name)
		default:
			l.errorf(p, "no certificate for node %s: give tls.cert and tls.key with %s in the paths, or %s.tls: {cert, key}", n.Name, NodePlaceholder, p)
			continue
		}
		f.EtcdCA, f.EtcdCert, f.EtcdKey = f.CA, f.Cert, f.Key
		if e := t.Etcd; e != nil && etcdOK {
			if e.CA != "" {
				f.EtcdCA = file("tls.etcd.ca", e.CA, n.Name)
			}
			if e.Cert != "" {
				f.EtcdCert, f.EtcdKey = file("tls.etcd.cert", e.Cert, n.Name), file("tls.etcd.key", e.Key, n.Name)
			}
		}
		n.TLSFiles = f
	}
	if shared && users > 1 {
		l.errorf("tls.cert", "%q has no %s: %d nodes would present the same certificate and could pose as each other (use certs/%s.crt, or nodes[].tls per node)",
			t.Cert, NodePlaceholder, users, NodePlaceholder)
	}
}

// LoadTLS reads and checks the TLS files of node: the CA, the node's
// certificate and key (a pair, signed by the CA for servers and clients,
// naming the node), and etcd's. It returns nil without a tls section;
// its errors are Errors (file:line: field: problem).
func (c *Cluster) LoadTLS(node string) (*TLSMaterial, error) {
	n := c.Node(node)
	if c.TLS == nil || n == nil || n.TLSFiles == nil {
		return nil, nil
	}
	f := n.TLSFiles
	errs := &collector{}
	fail := func(tf TLSFile, format string, args ...any) {
		errs.add(c.File, tf.Line, tf.Field, "%s: "+format, append([]any{tf.Show}, args...)...)
	}
	pool := func(tf TLSFile) *x509.CertPool {
		b, err := os.ReadFile(tf.Path)
		if err != nil {
			fail(tf, "%s", fileError(err))
			return nil
		}
		p, n := x509.NewCertPool(), 0
		for rest := b; ; {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			if blk.Type != "CERTIFICATE" {
				continue
			}
			cert, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				fail(tf, "certificate %d: %v", n+1, err)
				return nil
			}
			p.AddCert(cert)
			n++
		}
		if n == 0 {
			fail(tf, "no PEM certificate in it")
			return nil
		}
		return p
	}
	keyPair := func(cf, kf TLSFile) (tls.Certificate, bool) {
		cb, cerr := os.ReadFile(cf.Path)
		kb, kerr := os.ReadFile(kf.Path)
		if cerr != nil {
			fail(cf, "%s", fileError(cerr))
		}
		if kerr != nil {
			fail(kf, "%s", fileError(kerr))
		}
		if cerr != nil || kerr != nil {
			return tls.Certificate{}, false
		}
		pair, err := tls.X509KeyPair(cb, kb)
		if err != nil {
			fail(cf, "with %s: %v", kf.Show, err)
			return tls.Certificate{}, false
		}
		return pair, true
	}
	m := &TLSMaterial{Node: node, CA: pool(f.CA)}
	cert, ok := keyPair(f.Cert, f.Key)
	if ok && m.CA != nil {
		m.Cert = cert
		leaf := cert.Leaf
		for _, u := range []struct {
			usage x509.ExtKeyUsage
			what  string
		}{{x509.ExtKeyUsageServerAuth, "a server (TLS Web Server Authentication)"}, {x509.ExtKeyUsageClientAuth, "a client (TLS Web Client Authentication)"}} {
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.CA, Intermediates: intermediates(cert), KeyUsages: []x509.ExtKeyUsage{u.usage}}); err != nil {
				var inv x509.CertificateInvalidError
				if errors.As(err, &inv) && inv.Reason == x509.IncompatibleUsage {
					fail(f.Cert, "not usable as %s: every node is both", u.what)
				} else {
					fail(f.Cert, "not valid under the cluster CA %s: %v", f.CA.Show, err)
				}
				break
			}
		}
		if !CertificateNames(leaf, node) {
			fail(f.Cert, "names %s, not %s: a node's certificate must name it in its DNS SANs (or as its common name when it has none)",
				strings.Join(CertificateNamesOf(leaf), ", "), node)
		}
	}
	m.EtcdCA, m.EtcdCert = m.CA, m.Cert
	if c.Provider.Kind == ProviderEtcd && c.TLS.Etcd != nil {
		if f.EtcdCA != f.CA {
			m.EtcdCA = pool(f.EtcdCA)
		}
		if f.EtcdCert != f.Cert {
			m.EtcdCert, _ = keyPair(f.EtcdCert, f.EtcdKey)
		}
	}
	if len(errs.errs) > 0 {
		return nil, errs.sorted()
	}
	return m, nil
}

// intermediates are the certificates that follow the leaf in its chain.
func intermediates(c tls.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, der := range c.Certificate[1:] {
		if cert, err := x509.ParseCertificate(der); err == nil {
			p.AddCert(cert)
		}
	}
	return p
}

// String describes the files (for logs).
func (f *NodeTLSFiles) String() string {
	return fmt.Sprintf("ca %s, cert %s, key %s", f.CA.Show, f.Cert.Show, f.Key.Show)
}
