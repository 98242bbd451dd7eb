package config

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Cluster provider kinds.
const (
	ProviderAutomanaged = "automanaged"
	ProviderEtcd        = "etcd"
)

// Node roles in a cluster.
var Roles = []string{"acquisition", "computation", "alarms", "history", "gateway"}

// Default cluster settings.
const (
	DefaultLeaseTTL = 3 * time.Second
	MinLeaseTTL     = 500 * time.Millisecond
)

// Cluster is cluster.yaml: the nodes of a site and where each unit may run
// (ARCHITECTURE §8).
type Cluster struct {
	File     string        `yaml:"-"`
	Name     string        `yaml:"name"`
	Provider Provider      `yaml:"provider"`
	LeaseTTL time.Duration `yaml:"lease_ttl"`
	Nodes    []ClusterNode `yaml:"nodes"`
	// Channels maps a channel id to its eligible nodes; a channel of the
	// node config that is not listed has no eligible node (an error).
	Channels ChannelPlacements `yaml:"channels"`
	// Computations, Alarms and History place the computation group, the
	// alarm group and the history writer; default: every node with the
	// role, in file order.
	Computations *Placement `yaml:"computations"`
	Alarms       *Placement `yaml:"alarms"`
	History      *Placement `yaml:"history"`
	// TLS, when set, makes the cluster's traffic (remote, membership,
	// etcd) TLS 1.2+ with mutual authentication (cluster_tls.go).
	TLS *ClusterTLS `yaml:"tls"`
}

// Provider says where membership comes from.
type Provider struct {
	Kind      string   `yaml:"kind"`      // automanaged (static peers) or etcd
	Endpoints []string `yaml:"endpoints"` // etcd only
}

// ClusterNode is one node of the cluster.
type ClusterNode struct {
	Name       string   `yaml:"name"`
	Substation string   `yaml:"substation"`
	Roles      []string `yaml:"roles"`      // default: every role
	Remote     string   `yaml:"remote"`     // protoactor remote host:port
	Membership string   `yaml:"membership"` // gossip/membership host:port (automanaged)
	HTTP       string   `yaml:"http"`       // the node's API
	TLS        *NodeTLS `yaml:"tls"`        // this node's certificate, instead of the cluster's tls.cert/tls.key
	Line       int      `yaml:"-"`
	// TLSFiles are the node's TLS files, resolved (nil without tls).
	TLSFiles *NodeTLSFiles `yaml:"-"`
}

// HasRole reports whether the node has role r.
func (n *ClusterNode) HasRole(r string) bool { return slices.Contains(n.Roles, r) }

// Placement lists a unit's eligible nodes: the nodes of a substation (in
// file order) or an explicit ordered list.
type Placement struct {
	Substation string   `yaml:"substation"`
	Nodes      []string `yaml:"nodes"`
	Line       int      `yaml:"-"`
	// Eligible is the resolved, ordered list (set by the loader).
	Eligible []string `yaml:"-"`
}

// ChannelPlacement is the placement of one channel.
type ChannelPlacement struct {
	ID uint32
	Placement
}

// ChannelPlacements are the channels: entries in file order.
type ChannelPlacements struct {
	Items []ChannelPlacement
}

// Get returns the placement of channel id, or nil.
func (c *ChannelPlacements) Get(id uint32) *ChannelPlacement {
	for i := range c.Items {
		if c.Items[i].ID == id {
			return &c.Items[i]
		}
	}
	return nil
}

func (c *ChannelPlacements) decodeNode(d *decoder, n *yaml.Node, path string) {
	*c = ChannelPlacements{}
	if n.Kind != yaml.MappingNode {
		d.fail(n.Line, path, "want a mapping of channel id -> {substation: S} or {nodes: [...]}, got %s", kindName(n))
		return
	}
	seen := map[uint32]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), n.Content[i+1]
		p := joinPath(path, k.Value)
		id, err := strconv.ParseUint(k.Value, 10, 32)
		if k.Kind != yaml.ScalarNode || err != nil || id == 0 {
			d.fail(k.Line, p, "want a channel id (a positive integer), got %s", kindName(k))
			continue
		}
		if first, dup := seen[uint32(id)]; dup {
			d.fail(k.Line, p, "duplicate channel %d (first at line %d)", id, first)
			continue
		}
		seen[uint32(id)] = k.Line
		d.lines[p] = k.Line
		cp := ChannelPlacement{ID: uint32(id)}
		d.decode(v, reflect.ValueOf(&cp.Placement).Elem(), p)
		cp.Line = k.Line
		c.Items = append(c.Items, cp)
	}
}

// LoadCluster reads and checks cluster.yaml. nodeCfg, when given, is the
// node configuration whose channels the cluster must place.
func LoadCluster(path string, nodeCfg *Config) (*Cluster, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Errors{{File: path, Msg: fileError(err)}}
	}
	return ParseCluster(data, path, nodeCfg)
}

// ParseCluster is LoadCluster with the YAML text given.
func ParseCluster(data []byte, file string, nodeCfg *Config) (*Cluster, error) {
	errs := &collector{}
	l := &loader{file: file, dir: filepath.Dir(file), errs: errs, dec: newDecoder(file, errs)}
	c := &Cluster{File: file}
	root, err := parseYAML(data)
	if err != nil {
		e := syntaxError(file, err)
		if bytes.Contains(data, []byte(NodePlaceholder)) {
			// {node} unquoted inside a flow mapping ends it.
			e.Msg += ` (inside {...}, quote a path with {node}: cert: "certs/{node}.crt")`
		}
		return nil, Errors{e}
	}
	if !isNull(root) {
		l.dec.decode(root, reflect.ValueOf(c).Elem(), "")
	}
	l.validateCluster(c, nodeCfg)
	if len(errs.errs) > 0 {
		return nil, errs.sorted()
	}
	return c, nil
}

// Node returns the node called name, or nil.
func (c *Cluster) Node(name string) *ClusterNode {
	for i := range c.Nodes {
		if c.Nodes[i].Name == name {
			return &c.Nodes[i]
		}
	}
	return nil
}

// NodeNames lists the node names in file order.
func (c *Cluster) NodeNames() []string {
	out := make([]string, len(c.Nodes))
	for i := range c.Nodes {
		out[i] = c.Nodes[i].Name
	}
	return out
}

// UnknownNode is the error of a --node name the cluster does not list.
func (c *Cluster) UnknownNode(name string) error {
	return Errors{{File: c.File, Field: "nodes", Msg: fmt.Sprintf("unknown node name %q (the cluster has %s)", name, strings.Join(c.NodeNames(), ", "))}}
}

func (l *loader) validateCluster(c *Cluster, nodeCfg *Config) {
	if strings.TrimSpace(c.Name) == "" {
		l.errorf("name", "required (the cluster's name, e.g. site-1)")
	}
	switch c.Provider.Kind {
	case ProviderAutomanaged:
		if len(c.Provider.Endpoints) > 0 {
			l.errorf("provider.endpoints", "not used by the automanaged provider (its peers are the nodes' membership addresses)")
		}
	case ProviderEtcd:
		if len(c.Provider.Endpoints) == 0 {
			l.errorf("provider.endpoints", "required for the etcd provider (host:port of each etcd member)")
		}
		for i, e := range c.Provider.Endpoints {
			l.checkEtcdEndpoint(indexPath("provider.endpoints", i), e, c.TLS != nil)
		}
	case "":
		l.errorf("provider.kind", "required: automanaged or etcd")
	default:
		l.errorf("provider.kind", "unknown provider %q (want automanaged or etcd)", c.Provider.Kind)
	}
	if !l.isSet("lease_ttl") {
		c.LeaseTTL = DefaultLeaseTTL
	} else if c.LeaseTTL < MinLeaseTTL {
		l.errorf("lease_ttl", "must be at least %s, got %s", MinLeaseTTL, c.LeaseTTL)
	}
	if len(c.Nodes) == 0 {
		l.errorf("nodes", "required: at least one node")
	}
	names := map[string]int{}
	addrs := map[string]string{} // address -> "nodes[i].field"
	substations := map[string][]string{}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		p := indexPath("nodes", i)
		n.Line = l.line(p)
		switch {
		case strings.TrimSpace(n.Name) == "":
			l.errorf(p+".name", "required")
		case !alarmIDRe.MatchString(n.Name):
			l.errorf(p+".name", "%q: use letters, digits, '.', '_' or '-' (it is part of Redis keys)", n.Name)
		default:
			if first, dup := names[n.Name]; dup {
				l.errorf(p+".name", "duplicate node name %q (first at line %d)", n.Name, first)
			} else {
				names[n.Name] = l.line(p + ".name")
			}
		}
		if strings.TrimSpace(n.Substation) == "" {
			l.errorf(p+".substation", "required: every node belongs to a substation")
		} else {
			substations[n.Substation] = append(substations[n.Substation], n.Name)
		}
		if !l.isSet(p + ".roles") {
			n.Roles = slices.Clone(Roles)
		}
		for j, r := range n.Roles {
			if !slices.Contains(Roles, r) {
				l.errorf(indexPath(p+".roles", j), "unknown role %q (want %s)", r, strings.Join(Roles, ", "))
			}
		}
		for _, f := range []struct {
			name string
			v    string
		}{{"remote", n.Remote}, {"membership", n.Membership}, {"http", n.HTTP}} {
			fp := p + "." + f.name
			if f.v == "" {
				l.errorf(fp, "required (host:port)")
				continue
			}
			if err := checkHostPort(f.v); err != nil {
				l.errorf(fp, "%v", err)
				continue
			}
			if other, dup := addrs[f.v]; dup {
				l.errorf(fp, "duplicate address %s (also %s)", f.v, other)
			} else {
				addrs[f.v] = fp
			}
		}
	}
	resolve := func(pl *Placement, p, role, what string) {
		switch {
		case pl.Substation != "" && len(pl.Nodes) > 0:
			l.errorf(p, "give either substation or nodes, not both")
			return
		case pl.Substation != "":
			nodes, ok := substations[pl.Substation]
			if !ok {
				l.errorf(p+".substation", "no node in substation %q (substations: %s)", pl.Substation, strings.Join(sortedKeys(substations), ", "))
				return
			}
			for _, n := range nodes {
				if nd := c.Node(n); nd != nil && nd.HasRole(role) {
					pl.Eligible = append(pl.Eligible, n)
				}
			}
		case len(pl.Nodes) > 0:
			seen := map[string]bool{}
			for j, n := range pl.Nodes {
				np := indexPath(p+".nodes", j)
				nd := c.Node(n)
				switch {
				case nd == nil:
					l.errorf(np, "unknown node %q (the cluster has %s)", n, strings.Join(c.NodeNames(), ", "))
				case seen[n]:
					l.errorf(np, "node %q listed twice", n)
				case !nd.HasRole(role):
					l.errorf(np, "node %q does not have the role %s", n, role)
				default:
					pl.Eligible = append(pl.Eligible, n)
				}
				seen[n] = true
			}
			if len(pl.Eligible) < len(pl.Nodes) {
				return // reported above
			}
		default:
			l.errorf(p, "give substation: S or nodes: [n1, n2]")
			return
		}
		if len(pl.Eligible) == 0 {
			l.errorf(p, "%s has no eligible node (no node with the role %s)", what, role)
		}
	}
	for i := range c.Channels.Items {
		cp := &c.Channels.Items[i]
		resolve(&cp.Placement, "channels."+strconv.FormatUint(uint64(cp.ID), 10), "acquisition", "channel "+strconv.FormatUint(uint64(cp.ID), 10))
	}
	group := func(pl **Placement, key, role string) {
		if *pl == nil {
			*pl = &Placement{}
			for _, n := range c.Nodes {
				if n.HasRole(role) {
					(*pl).Eligible = append((*pl).Eligible, n.Name)
				}
			}
			if len((*pl).Eligible) == 0 && len(c.Nodes) > 0 {
				l.errorf(key, "no node has the role %s: the %s would run nowhere", role, key)
			}
			return
		}
		resolve(*pl, key, role, "the "+key)
	}
	l.validateClusterTLS(c)
	group(&c.Computations, "computations", "computation")
	group(&c.Alarms, "alarms", "alarms")
	group(&c.History, "history", "history")
	if nodeCfg != nil {
		for _, ch := range nodeCfg.Channels {
			if ch.Protocol == ProtocolCompute {
				continue
			}
			if c.Channels.Get(ch.ID) == nil {
				l.errorf("channels", "channel %d of %s has no eligible node: add \"%d: {substation: S}\"", ch.ID, nodeCfg.File, ch.ID)
			}
		}
		for _, cp := range c.Channels.Items {
			if ch := nodeCfg.Channel(cp.ID); ch == nil {
				l.errorf("channels."+strconv.FormatUint(uint64(cp.ID), 10), "channel %d is not in %s", cp.ID, nodeCfg.File)
			}
		}
	}
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return fmt.Errorf("want host:port, got %q", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("bad port in %q", s)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
