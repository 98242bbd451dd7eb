package config

import (
	"errors"
	"strings"
	"testing"
)

func TestBusErrors(t *testing.T) {
	f := func(yaml, want string) {
		t.Helper()
		_, err := parse(yaml)
		var errs Errors
		ok := errors.As(err, &errs)
		found := false
		for _, e := range errs {
			found = found || strings.Contains(e.Error(), want)
		}
		if !ok || !found {
			t.Errorf("%s\n got: %v\nwant: %s", yaml, err, want)
		}
	}
	f("redis: {url: \"redis://127.0.0.1:6379/1\"}\n",
		"plant.yaml:1: redis.url: names database 1 but redis.prefix is empty: Redis Pub/Sub ignores database numbers")
	f("redis: {url: \"unix:///run/redis.sock?db=2\"}\n", "redis.url: names database 2 but redis.prefix is empty")
	f("redis: {url: \"redis://127.0.0.1:6379/0\", prefix: \"site*\"}\n", `plant.yaml:1: redis.prefix: prefix "site*": character '*' not allowed`)
	f("redis: {url: \"redis://127.0.0.1:6379/0\", prefix: \""+strings.Repeat("a", 65)+"\"}\n", "redis.prefix: prefix")
	f("redis:\n  url: \"redis://127.0.0.1:6379/0\"\n  tls: {ca: ca.pem}\n", "plant.yaml:3: redis.tls: set, but redis.url is redis://: use rediss:// for TLS")
	f("redis:\n  tls: {ca: ca.pem}\n", "redis.tls: set, but redis.url is empty")
	f("redis:\n  url: \"rediss://127.0.0.1:6380/0\"\n  tls: {cert: c.pem}\n", "redis.tls: cert and key go together")
	f("redis:\n  url: \"rediss://127.0.0.1:6380/0\"\n  tls: {ca: missing-ca.pem}\n", "redis.tls.ca: open")
	f("auth: {command_key: short}\n", "plant.yaml:1: auth.command_key: too short: 5 characters, want at least 32")
	f("auth: {command_key_previous: \"0123456789abcdef0123456789abcdef\"}\n", "auth.command_key_previous: set without auth.command_key")
	f("auth: {command_key: \"0123456789abcdef0123456789abcdef\", command_key_previous: \"0123456789abcdef0123456789abcdef\"}\n",
		"auth.command_key_previous: same as auth.command_key")
}

func TestBusAccepted(t *testing.T) {
	f := func(yaml string) {
		t.Helper()
		if _, err := parse(yaml); err != nil {
			t.Errorf("%s\n%v", yaml, err)
		}
	}
	f("redis: {url: \"redis://127.0.0.1:6379/0\"}\n")
	f("redis: {url: \"redis://127.0.0.1:6379\"}\n")
	f("redis: {url: \"redis://user:pw@127.0.0.1:6379/3\", prefix: site-b}\n")
	f("redis: {url: \"rediss://127.0.0.1:6380/0\", prefix: \"site.a:\"}\n")
	f("auth: {command_key: \"0123456789abcdef0123456789abcdef\"}\n")
}
