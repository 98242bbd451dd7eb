package placement

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

// View is the cluster as Redis shows it (GET /api/cluster).
type View struct {
	Name        string              `json:"name"`
	Provider    string              `json:"provider"`
	LeaseTTLMs  int64               `json:"lease_ttl_ms"`
	Members     []Member            `json:"members"`
	Substations map[string][]string `json:"substations"`
	Units       []UnitView          `json:"units"`
}

// Member is one node of the cluster file with its heartbeat.
type Member struct {
	Name       string   `json:"name"`
	Substation string   `json:"substation"`
	Roles      []string `json:"roles"`
	HTTP       string   `json:"http"`
	Alive      bool     `json:"alive"`
	Started    int64    `json:"started,omitempty"`
	Updated    int64    `json:"updated,omitempty"`
	Version    string   `json:"version,omitempty"`
	Owned      []string `json:"owned"`
	// Reachable: the node answered an ownership request over protoactor
	// remote just now; Missing lists the units it should run but does
	// not hold (from that answer).
	Reachable bool     `json:"reachable"`
	Missing   []string `json:"missing"`
}

// UnitView is one placed unit and its lease.
type UnitView struct {
	Kind     string   `json:"kind"`
	ID       string   `json:"id"`
	Eligible []string `json:"eligible"`
	Owner    string   `json:"owner"` // "" while nobody holds the lease
	Token    int64    `json:"token,omitempty"`
	// LeaseAgeMs is the time since the owner last acquired or renewed
	// the lease; LeaseLeftMs how long it stays valid without renewal.
	LeaseAgeMs  int64 `json:"lease_age_ms,omitempty"`
	LeaseLeftMs int64 `json:"lease_left_ms,omitempty"`
}

// Units lists the placed units of a cluster for a node config: its
// channels, and the groups the config has.
func Units(cl *config.Cluster, cfg *config.Config) []UnitView {
	var out []UnitView
	for _, cp := range cl.Channels.Items {
		out = append(out, UnitView{Kind: KindChannel, ID: strconv.FormatUint(uint64(cp.ID), 10), Eligible: cp.Eligible})
	}
	if len(cfg.Computations) > 0 && cl.Computations != nil {
		out = append(out, UnitView{Kind: KindComputations, ID: "group", Eligible: cl.Computations.Eligible})
	}
	if len(cfg.Alarms) > 0 && cl.Alarms != nil {
		out = append(out, UnitView{Kind: KindAlarms, ID: "group", Eligible: cl.Alarms.Eligible})
	}
	if cl.History != nil {
		out = append(out, UnitView{Kind: KindHistory, ID: "writer", Eligible: cl.History.Eligible})
	}
	return out
}

// ReadView reads the members' heartbeats and the units' leases.
func ReadView(ctx context.Context, c redis.UniversalClient, keys messages.Keys, cl *config.Cluster, cfg *config.Config) (*View, error) {
	units := Units(cl, cfg)
	pipe := c.Pipeline()
	beats := make([]*redis.MapStringStringCmd, len(cl.Nodes))
	for i := range cl.Nodes {
		beats[i] = pipe.HGetAll(ctx, keys.Node(cl.Nodes[i].Name))
	}
	vals := make([]*redis.StringCmd, len(units))
	ttls := make([]*redis.DurationCmd, len(units))
	for i, u := range units {
		vals[i] = pipe.Get(ctx, keys.Lease(u.Kind, u.ID))
		ttls[i] = pipe.PTTL(ctx, keys.Lease(u.Kind, u.ID))
	}
	cmds, err := pipe.Exec(ctx)
	if err != nil {
		for _, c := range cmds {
			if e := c.Err(); e != nil && !errors.Is(e, redis.Nil) {
				return nil, e
			}
		}
	}
	v := &View{Name: cl.Name, Provider: cl.Provider.Kind, LeaseTTLMs: cl.LeaseTTL.Milliseconds(), Substations: map[string][]string{}}
	for i := range cl.Nodes {
		n := &cl.Nodes[i]
		h := beats[i].Val()
		m := Member{Name: n.Name, Substation: n.Substation, Roles: n.Roles, HTTP: n.HTTP, Alive: len(h) > 0, Owned: []string{}}
		if m.Alive {
			m.Started, _ = strconv.ParseInt(h["started"], 10, 64)
			m.Updated, _ = strconv.ParseInt(h["updated"], 10, 64)
			m.Version = h["version"]
			if h["owned"] != "" {
				m.Owned = strings.Split(h["owned"], ",")
			}
		}
		v.Members = append(v.Members, m)
		v.Substations[n.Substation] = append(v.Substations[n.Substation], n.Name)
	}
	for i := range units {
		u := units[i]
		if val := vals[i].Val(); val != "" {
			u.Owner, u.Token = Owner(val)
			if left := ttls[i].Val(); left > 0 {
				u.LeaseLeftMs = left.Milliseconds()
				u.LeaseAgeMs = max(cl.LeaseTTL-left, 0).Milliseconds()
			}
		}
		if u.Eligible == nil {
			u.Eligible = []string{}
		}
		v.Units = append(v.Units, u)
	}
	slices.SortStableFunc(v.Units, func(a, b UnitView) int { return strings.Compare(a.Kind, b.Kind) })
	return v, nil
}
