package messages

import (
	"fmt"
	"strconv"
)

// Keys names every Redis key and Pub/Sub channel of one site: the names of
// the contract (ARCHITECTURE §4) behind an optional prefix (redis.prefix).
// With the empty prefix they are exactly the contract's names; with prefix
// "site-a" every name starts with "site-a:" ("site-a:comsrv:1001:m",
// "site-a:point:update"), so the nodes of different sites can share one
// redis-server without seeing each other's commands, updates, alarms or
// leases. Pub/Sub ignores database numbers, so the prefix, not the DB, is
// what isolates sites. The zero value is the contract's names.
type Keys struct{ p string }

// NewKeys returns the names of a site with prefix (empty: the contract's).
// A non-empty prefix gets a ":" appended unless it ends with one. It must
// pass ValidPrefix.
func NewKeys(prefix string) Keys {
	if prefix != "" && prefix[len(prefix)-1] != ':' {
		prefix += ":"
	}
	return Keys{p: prefix}
}

// ValidPrefix accepts 1 to 64 letters, digits and . _ - : (no glob
// characters, which would break the PSUBSCRIBE patterns of the node).
func ValidPrefix(prefix string) error {
	if len(prefix) > 64 {
		return fmt.Errorf("prefix %q: longer than 64 characters", prefix)
	}
	for i := 0; i < len(prefix); i++ {
		b := prefix[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '.' || b == '_' || b == '-' || b == ':') {
			return fmt.Errorf("prefix %q: character %q not allowed (letters, digits, '.', '_', '-', ':')", prefix, b)
		}
	}
	return nil
}

// Prefix is what every name starts with ("" or "site-a:").
func (k Keys) Prefix() string { return k.p }

// Name is the site's name for a contract name ("point:update" ->
// "site-a:point:update").
func (k Keys) Name(contract string) string { return k.p + contract }

// Updates is the Pub/Sub channel of point updates (point:update).
func (k Keys) Updates() string { return k.p + "point:update" }

// PointHash is the hash of the values of channel ch's points of type t
// (comsrv:{ch}:{type}); its ":ts" and ":q" siblings hold times and qualities.
func (k Keys) PointHash(ch uint32, t PointType) string {
	return k.p + "comsrv:" + strconv.FormatUint(uint64(ch), 10) + ":" + t.String()
}

// Control is the Pub/Sub channel commands for channel ch are published on
// (cmd:{ch}:control).
func (k Keys) Control(ch uint32) string {
	return k.p + "cmd:" + strconv.FormatUint(uint64(ch), 10) + ":control"
}

// ResultChannel is the Pub/Sub channel results of channel ch are published
// on (cmd:{ch}:result).
func (k Keys) ResultChannel(ch uint32) string {
	return k.p + "cmd:" + strconv.FormatUint(uint64(ch), 10) + ":result"
}

// ResultPattern matches the result channels of every channel (cmd:*:result).
func (k Keys) ResultPattern() string { return k.p + "cmd:*:result" }

// Result is the string holding the final result of command id
// (cmd:result:{id}).
func (k Keys) Result(id string) string { return k.p + "cmd:result:" + id }

// Seen is the idempotency marker of command id (cmd:seen:{id}, SET NX).
func (k Keys) Seen(id string) string { return k.p + "cmd:seen:" + id }

// Audit is the stream of accepted commands and their results
// (audit:commands).
func (k Keys) Audit() string { return k.p + "audit:commands" }

// Alarm is the state hash of alarm rule id (alarm:{id}).
func (k Keys) Alarm(id string) string { return k.p + "alarm:" + id }

// AlarmActive is the set of the ids of alarms not normal (idx:alarm:active).
func (k Keys) AlarmActive() string { return k.p + "idx:alarm:active" }

// AlarmEvents is the list of alarm events, newest first (alarm:events).
func (k Keys) AlarmEvents() string { return k.p + "alarm:events" }

// AlarmEvent is the Pub/Sub channel of live alarm events (alarm:event).
func (k Keys) AlarmEvent() string { return k.p + "alarm:event" }

// AlarmStore is the marker by which node's alarm store notices a Redis that
// lost its alarm states (alarm:store:{node}).
func (k Keys) AlarmStore(node string) string { return k.p + "alarm:store:" + node }

// NotifyPending is the list of webhook events node could not deliver before
// it stopped (alarm:notify:pending:{node}).
func (k Keys) NotifyPending(node string) string { return k.p + "alarm:notify:pending:" + node }

// DagState is the hash of the stateful computation functions (dag:state).
func (k Keys) DagState() string { return k.p + "dag:state" }

// Lease is the lease of a placed unit (lease:{kind}:{id}).
func (k Keys) Lease(kind, id string) string { return k.p + "lease:" + kind + ":" + id }

// Fence is the counter of a unit's fencing tokens (lease:fence:{kind}:{id}).
func (k Keys) Fence(kind, id string) string { return k.p + "lease:fence:" + kind + ":" + id }

// Node is the heartbeat hash of a cluster node (node:{name}).
func (k Keys) Node(name string) string { return k.p + "node:" + name }
