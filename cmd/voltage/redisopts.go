package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/config"
)

// redisOptions turns redis.url (and redis.tls for rediss://) into go-redis
// options. The URL may carry an ACL user and password
// (redis://user:password@host:port/0).
func redisOptions(c *config.Redis) (*redis.Options, error) {
	ro, err := redis.ParseURL(c.URL)
	if err != nil {
		return nil, fmt.Errorf("redis.url: %w", err)
	}
	if c.TLS == nil {
		return ro, nil
	}
	if ro.TLSConfig == nil { // validated at load: rediss:// only
		return nil, fmt.Errorf("redis.tls: set, but redis.url is not rediss://")
	}
	tc := ro.TLSConfig
	tc.MinVersion = tls.VersionTLS12
	if c.TLS.ServerName != "" {
		tc.ServerName = c.TLS.ServerName
	}
	if c.TLS.CA != "" {
		pem, err := os.ReadFile(c.TLS.CA)
		if err != nil {
			return nil, fmt.Errorf("redis.tls.ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redis.tls.ca: %s holds no PEM certificate", c.TLS.CA)
		}
		tc.RootCAs = pool
	}
	if c.TLS.Cert != "" {
		pair, err := tls.LoadX509KeyPair(c.TLS.Cert, c.TLS.Key)
		if err != nil {
			return nil, fmt.Errorf("redis.tls.cert: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return ro, nil
}
