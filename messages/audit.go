package messages

// Audit events: what the tamper-evident audit file (data_dir/audit.log)
// records about every control attempt, whoever refused or executed it.
const (
	AuditAccepted  = "accepted"  // the channel took the command (it passed every check and the idempotency claim)
	AuditRefused   = "refused"   // refused before anything was written: 401, 403, 400, 429, a bad or missing signature, an expired command
	AuditDuplicate = "duplicate" // an id already executed: not written again
	AuditResult    = "result"    // the outcome of an accepted command (reconciled results too)
)

// AuditEvent is one entry of the audit trail. Only the fields that apply
// are set. Tokens are never recorded: User is the token's name.
type AuditEvent struct {
	Time   int64    `json:"time"`            // Unix ms
	Event  string   `json:"event"`           // AuditAccepted, AuditRefused, AuditDuplicate or AuditResult
	Node   string   `json:"node,omitempty"`  // the node that recorded it
	ID     string   `json:"id,omitempty"`    // command id
	Point  string   `json:"point,omitempty"` // "1001:c:1"
	Value  *float64 `json:"value,omitempty"`
	User   string   `json:"user,omitempty"`   // token name (HTTP) or the signed user (bus)
	Source string   `json:"source,omitempty"` // api, redis, mqtt:{target}, ...
	// Remote is the client address of an HTTP request; Route its method
	// and route ("POST /control/:channel_id/:point_id").
	Remote string `json:"remote,omitempty"`
	Route  string `json:"route,omitempty"`
	// HTTPStatus is the answer of a refused HTTP request (401, 403, 400, 429).
	HTTPStatus int      `json:"http_status,omitempty"`
	Status     string   `json:"status,omitempty"` // a result's status
	Readback   *float64 `json:"readback,omitempty"`
	Reconciled bool     `json:"reconciled,omitempty"`
	// Reason says why a command was refused or failed.
	Reason string `json:"reason,omitempty"`
	// Unsigned marks a command that came over the bus without a signature
	// (a node without auth.command_key): its user and source are the
	// publisher's claim, not authenticated.
	Unsigned bool `json:"unsigned,omitempty"`
}

// AuditSink takes audit events. Implementations must not keep the pointer.
type AuditSink interface {
	Audit(ev *AuditEvent)
}
