package notify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// PendingKey is the Redis list where a node keeps the webhook events it
// could not deliver before it stopped, for its next run (the contract's
// name, without a site prefix: messages.Keys.NotifyPending has it).
func PendingKey(node string) string { return "alarm:notify:pending:" + node }

// kept is one undelivered event in Redis. The URL is stored as its SHA-256
// (a webhook URL often carries a secret); the next run maps it back to a
// configured URL.
type kept struct {
	Target  string          `json:"target"`
	EventID string          `json:"event_id"`
	Body    json.RawMessage `json:"body"`
}

func urlHash(u string) string {
	h := sha256.Sum256([]byte(u))
	return hex.EncodeToString(h[:])
}

// Keep appends the undelivered events to the node's pending list key.
func Keep(ctx context.Context, c redis.UniversalClient, key string, evs []Undelivered) error {
	if len(evs) == 0 {
		return nil
	}
	args := make([]any, 0, len(evs))
	for _, e := range evs {
		b, err := json.Marshal(kept{Target: urlHash(e.URL), EventID: e.EventID, Body: e.Body})
		if err != nil {
			return fmt.Errorf("event %s: %w", e.EventID, err)
		}
		args = append(args, b)
	}
	return c.RPush(ctx, key, args...).Err()
}

// TakeKept reads and removes the node's pending list and returns its events
// for the configured urls, in order; dropped counts those whose URL is no
// longer configured.
func TakeKept(ctx context.Context, c redis.UniversalClient, key string, urls []string) (evs []Undelivered, dropped int, err error) {
	var lr *redis.StringSliceCmd
	if _, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		lr = p.LRange(ctx, key, 0, -1)
		p.Del(ctx, key)
		return nil
	}); err != nil {
		return nil, 0, err
	}
	byHash := make(map[string]string, len(urls))
	for _, u := range urls {
		byHash[urlHash(u)] = u
	}
	for _, raw := range lr.Val() {
		var k kept
		u, ok := "", false
		if json.Unmarshal([]byte(raw), &k) == nil {
			u, ok = byHash[k.Target]
		}
		if !ok {
			dropped++
			continue
		}
		evs = append(evs, Undelivered{URL: u, EventID: k.EventID, Body: k.Body})
	}
	return evs, dropped, nil
}
