package config

import (
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/voltage-ems/voltage/messages"
)

// MinCommandKeyLength is the shortest auth.command_key accepted.
const MinCommandKeyLength = 32

// validateBus checks what protects the Redis bus: the key prefix and its
// interplay with the database number, the TLS files of rediss://, and the
// command signing keys.
func (l *loader) validateBus(c *Config) {
	r := &c.Redis
	if err := messages.ValidPrefix(r.Prefix); err != nil {
		l.errorf("redis.prefix", "%v", err)
	}
	if r.URL != "" && !l.dec.bad["redis.url"] {
		if u, err := url.Parse(r.URL); err == nil {
			if db := redisDB(u); db != "" && db != "0" && r.Prefix == "" {
				l.errorf("redis.url", "names database %s but redis.prefix is empty: Redis Pub/Sub ignores database numbers, "+
					"so the nodes using the other databases of this server would receive this node's commands and updates "+
					"(and write to its devices); set redis.prefix (for example prefix: site-b) to isolate the sites", db)
			}
			if r.TLS != nil && u.Scheme != "rediss" {
				l.errorf("redis.tls", "set, but redis.url is %s://: use rediss:// for TLS", u.Scheme)
			}
		}
	}
	if r.URL == "" && r.TLS != nil {
		l.errorf("redis.tls", "set, but redis.url is empty (the embedded server speaks no TLS)")
	}
	if t := r.TLS; t != nil {
		if t.CA != "" {
			t.CA = l.resolvePath(t.CA)
			if pem, err := os.ReadFile(t.CA); err != nil {
				l.errorf("redis.tls.ca", "%v", err)
			} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
				l.errorf("redis.tls.ca", "%s holds no PEM certificate", t.CA)
			}
		}
		switch {
		case (t.Cert == "") != (t.Key == ""):
			l.errorf("redis.tls", "cert and key go together (a client certificate needs its key)")
		case t.Cert != "":
			t.Cert, t.Key = l.resolvePath(t.Cert), l.resolvePath(t.Key)
			if _, err := tls.LoadX509KeyPair(t.Cert, t.Key); err != nil {
				l.errorf("redis.tls.cert", "%v", err)
			}
		}
	}
	a := &c.Auth
	for _, k := range []struct{ path, v string }{{"auth.command_key", a.CommandKey}, {"auth.command_key_previous", a.CommandKeyPrevious}} {
		switch {
		case l.dec.bad[k.path] || !l.isSet(k.path):
		case strings.TrimSpace(k.v) == "":
			l.errorf(k.path, "empty after expanding environment variables")
		case len(k.v) < MinCommandKeyLength:
			l.errorf(k.path, "too short: %d characters, want at least %d (for example: openssl rand -hex 32)", len(k.v), MinCommandKeyLength)
		}
	}
	if a.CommandKeyPrevious != "" && a.CommandKey == "" {
		l.errorf("auth.command_key_previous", "set without auth.command_key")
	}
	if a.CommandKeyPrevious != "" && a.CommandKeyPrevious == a.CommandKey {
		l.errorf("auth.command_key_previous", "same as auth.command_key")
	}
}

// redisDB returns the database number a Redis URL names ("" when none):
// the path of redis:// and rediss:// URLs, the db query parameter of
// unix:// ones.
func redisDB(u *url.URL) string {
	if u.Scheme == "unix" {
		return u.Query().Get("db")
	}
	db := strings.Trim(u.Path, "/")
	if db == "" {
		return ""
	}
	if n, err := strconv.Atoi(db); err == nil {
		return strconv.Itoa(n)
	}
	return db
}
