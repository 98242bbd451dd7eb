package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Bounds of the HTTP settings under node.
const (
	// MinHTTPWriteTimeout leaves history queries (up to 15 s) time to answer.
	MinHTTPWriteTimeout = 20 * time.Second
	MinHTTPMaxHeader    = 1 << 10
	MaxHTTPMaxHeader    = 1 << 20
	MinHTTPAuthRefill   = 10 * time.Millisecond
)

// applyHTTPDefaults fills the HTTP settings absent from the file.
func (l *loader) applyHTTPDefaults(n *Node) {
	durations := []struct {
		field string
		v     *time.Duration
		def   time.Duration
	}{
		{"http_read_header_timeout", &n.HTTPReadHeaderTimeout, DefaultHTTPReadHeaderTimeout},
		{"http_read_timeout", &n.HTTPReadTimeout, DefaultHTTPReadTimeout},
		{"http_write_timeout", &n.HTTPWriteTimeout, DefaultHTTPWriteTimeout},
		{"http_idle_timeout", &n.HTTPIdleTimeout, DefaultHTTPIdleTimeout},
		{"http_auth_refill", &n.HTTPAuthRefill, DefaultHTTPAuthRefill},
	}
	for _, d := range durations {
		if !l.isSet("node." + d.field) {
			*d.v = d.def
		}
	}
	if !l.isSet("node.http_max_header_bytes") {
		n.HTTPMaxHeaderBytes = DefaultHTTPMaxHeaderBytes
	}
	if !l.isSet("node.http_max_conns_per_client") {
		n.HTTPMaxConnsPerClient = DefaultHTTPMaxConnsPerClient
	}
	if !l.isSet("node.http_auth_burst") {
		n.HTTPAuthBurst = DefaultHTTPAuthBurst
	}
}

// validateHTTP checks the HTTP limits and loads the TLS files once, so
// that a missing file, a file that is not PEM or a key that does not match
// its certificate is reported at load with its line, not when the server
// starts.
func (l *loader) validateHTTP(n *Node) {
	for _, d := range []struct {
		field string
		v     time.Duration
	}{
		{"http_read_header_timeout", n.HTTPReadHeaderTimeout},
		{"http_read_timeout", n.HTTPReadTimeout},
		{"http_idle_timeout", n.HTTPIdleTimeout},
	} {
		if d.v <= 0 {
			l.errorf("node."+d.field, "must be positive, got %s", d.v)
		}
	}
	if n.HTTPReadHeaderTimeout > n.HTTPReadTimeout && n.HTTPReadTimeout > 0 {
		l.errorf("node.http_read_header_timeout", "%s is longer than node.http_read_timeout (%s), which bounds the headers too",
			n.HTTPReadHeaderTimeout, n.HTTPReadTimeout)
	}
	if n.HTTPWriteTimeout < MinHTTPWriteTimeout {
		l.errorf("node.http_write_timeout", "must be at least %s (history queries may take 15s), got %s", MinHTTPWriteTimeout, n.HTTPWriteTimeout)
	}
	if n.HTTPMaxHeaderBytes < MinHTTPMaxHeader || n.HTTPMaxHeaderBytes > MaxHTTPMaxHeader {
		l.errorf("node.http_max_header_bytes", "%d is out of range (%d..%d)", n.HTTPMaxHeaderBytes, MinHTTPMaxHeader, MaxHTTPMaxHeader)
	}
	if n.HTTPMaxConnsPerClient < 0 {
		l.errorf("node.http_max_conns_per_client", "must be 0 (no limit) or more, got %d", n.HTTPMaxConnsPerClient)
	}
	if n.HTTPAuthBurst < 1 {
		l.errorf("node.http_auth_burst", "must be at least 1, got %d", n.HTTPAuthBurst)
	}
	if n.HTTPAuthRefill < MinHTTPAuthRefill {
		l.errorf("node.http_auth_refill", "must be at least %s, got %s", MinHTTPAuthRefill, n.HTTPAuthRefill)
	}
	if n.TLS != nil {
		l.validateTLS(n.TLS)
	}
}

func (l *loader) validateTLS(t *TLS) {
	const p = "node.tls"
	read := func(field, name string) []byte {
		if strings.TrimSpace(name) == "" {
			l.errorf(p+"."+field, "required (a PEM file, relative to this file)")
			return nil
		}
		b, err := l.readFile(l.displayPath(name))
		if err != nil {
			l.errorf(p+"."+field, "cannot read %s: %s", l.displayPath(name), fileError(err))
			return nil
		}
		return b
	}
	certPEM, keyPEM := read("cert", t.Cert), read("key", t.Key)
	if certPEM != nil {
		if _, err := parseCerts(certPEM); err != nil {
			l.errorf(p+".cert", "%s: %v", l.displayPath(t.Cert), err)
			certPEM = nil
		}
	}
	if keyPEM != nil && !hasPEMKey(keyPEM) {
		l.errorf(p+".key", "%s: no PEM private key found", l.displayPath(t.Key))
		keyPEM = nil
	}
	if certPEM != nil && keyPEM != nil {
		if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
			l.errorf(p+".key", "%s does not go with %s: %s", l.displayPath(t.Key), l.displayPath(t.Cert), strings.TrimPrefix(err.Error(), "tls: "))
		}
	}
	if t.ClientCA != "" {
		if b := read("client_ca", t.ClientCA); b != nil {
			if _, err := parseCerts(b); err != nil {
				l.errorf(p+".client_ca", "%s: %v", l.displayPath(t.ClientCA), err)
			}
		}
	}
	t.Cert, t.Key = l.resolvePath(t.Cert), l.resolvePath(t.Key)
	if t.ClientCA != "" {
		t.ClientCA = l.resolvePath(t.ClientCA)
	}
}

// parseCerts reads every CERTIFICATE block of a PEM file; at least one.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for n := 1; ; n++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return out, nil
}

func hasPEMKey(data []byte) bool {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return false
		}
		if b.Type == "PRIVATE KEY" || strings.HasSuffix(b.Type, " PRIVATE KEY") {
			return true
		}
	}
}
