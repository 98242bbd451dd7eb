package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestRootClusterExample: cluster.yaml at the repository root is valid
// with the demo config, and resolves the documented placements.
func TestRootClusterExample(t *testing.T) {
	demo, err := Load(filepath.Join("examples", "demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := LoadCluster(filepath.Join("..", "cluster.yaml"), demo)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "site-1" || c.Provider.Kind != ProviderAutomanaged || c.LeaseTTL != DefaultLeaseTTL || len(c.Nodes) != 3 {
		t.Fatalf("%+v", c)
	}
	if got := c.Channels.Get(1001).Eligible; !reflect.DeepEqual(got, []string{"sub-a1", "sub-a2"}) {
		t.Fatalf("1001 eligible %v", got)
	}
	if got := c.Channels.Get(1002).Eligible; !reflect.DeepEqual(got, []string{"sub-b1", "sub-a2"}) {
		t.Fatalf("1002 eligible %v", got)
	}
	if got := c.Alarms.Eligible; !reflect.DeepEqual(got, []string{"sub-a1", "sub-a2"}) {
		t.Fatalf("alarms eligible %v (sub-b1 has no alarms role)", got)
	}
	if !c.Node("sub-a1").HasRole("history") || c.Node("sub-b1").HasRole("history") {
		t.Fatal("roles")
	}
	if err := c.UnknownNode("sub-c9"); err == nil || !strings.Contains(err.Error(), `unknown node name "sub-c9" (the cluster has sub-a1, sub-a2, sub-b1)`) {
		t.Fatalf("unknown node: %v", err)
	}
}

func TestClusterErrors(t *testing.T) {
	node, err := parse(tcpChannel)
	if err != nil {
		t.Fatal(err)
	}
	const nodes = `nodes:
  - {name: a1, substation: A, remote: 127.0.0.1:8101, membership: 127.0.0.1:6331, http: 127.0.0.1:8081}
  - {name: b1, substation: B, roles: [acquisition], remote: 127.0.0.1:8102, membership: 127.0.0.1:6332, http: 127.0.0.1:8082}
`
	const head = "name: s\nprovider: {kind: automanaged}\n"
	f := func(yaml, want string) {
		t.Helper()
		_, err := ParseCluster([]byte(yaml), "cluster.yaml", node)
		var errs Errors
		if !errors.As(err, &errs) {
			t.Errorf("%s\nerror %v, want Errors", yaml, err)
			return
		}
		if !hasError(errs, want) {
			t.Errorf("%s\n got: %v\nwant: %s", yaml, err, want)
		}
	}
	f(head+nodes, `cluster.yaml: channels: channel 1001 of plant.yaml has no eligible node: add "1001: {substation: S}"`)
	f(head+nodes+"channels:\n  1001: {substation: C}\n", `cluster.yaml:7: channels.1001.substation: no node in substation "C" (substations: A, B)`)
	f(head+nodes+"channels:\n  1001: {nodes: [a1, z9]}\n", `cluster.yaml:7: channels.1001.nodes[1]: unknown node "z9" (the cluster has a1, b1)`)
	f(head+nodes+"channels:\n  1001: {}\n", `cluster.yaml:7: channels.1001: give substation: S or nodes: [n1, n2]`)
	f(head+nodes+"channels:\n  1001: {substation: A}\n  2002: {substation: A}\n", `cluster.yaml:8: channels.2002: channel 2002 is not in plant.yaml`)
	f(head+nodes+"channels:\n  1001: {substation: A}\nalarms: {nodes: [b1]}\n", `cluster.yaml:8: alarms.nodes[0]: node "b1" does not have the role alarms`)
	f(head+"nodes:\n  - {name: a1, remote: 127.0.0.1:8101, membership: 127.0.0.1:6331, http: 127.0.0.1:8081}\n",
		`cluster.yaml:4: nodes[0].substation: required: every node belongs to a substation`)
	f(head+"nodes:\n  - {name: a1, substation: A, remote: 127.0.0.1:8101, membership: 127.0.0.1:6331, http: 127.0.0.1:8081}\n  - {name: a2, substation: A, remote: 127.0.0.1:8101, membership: 127.0.0.1:6332, http: 127.0.0.1:8082}\n",
		`cluster.yaml:5: nodes[1].remote: duplicate address 127.0.0.1:8101 (also nodes[0].remote)`)
	f(head+"nodes:\n  - {name: a1, substation: A, remote: 127.0.0.1:8101, membership: 127.0.0.1:6331, http: 127.0.0.1:8081}\n  - {name: a1, substation: A, remote: 127.0.0.1:8102, membership: 127.0.0.1:6332, http: 127.0.0.1:8082}\n",
		`cluster.yaml:5: nodes[1].name: duplicate node name "a1" (first at line 4)`)
	f(head+"nodes:\n  - {name: a1, substation: A, roles: [cooking], remote: 127.0.0.1:8101, membership: 127.0.0.1:6331, http: 127.0.0.1:8081}\n",
		`cluster.yaml:4: nodes[0].roles[0]: unknown role "cooking"`)
	f(head+"nodes:\n  - {name: a1, substation: A, remote: localhost, membership: 127.0.0.1:6331, http: 127.0.0.1:8081}\n",
		`cluster.yaml:4: nodes[0].remote: want host:port, got "localhost"`)
	f("name: s\nprovider: {kind: zookeeper}\n"+nodes, `cluster.yaml:2: provider.kind: unknown provider "zookeeper" (want automanaged or etcd)`)
	f("name: s\nprovider: {kind: etcd}\n"+nodes, `cluster.yaml:2: provider.endpoints: required for the etcd provider`)
	f(head+"lease_ttl: 100ms\n"+nodes, `cluster.yaml:3: lease_ttl: must be at least 500ms, got 100ms`)
	f("provider: {kind: automanaged}\n"+nodes, `cluster.yaml: name: required`)
	f(head+"nodes:\n  - {name: b1, substation: B, roles: [gateway], remote: 127.0.0.1:8102, membership: 127.0.0.1:6332, http: 127.0.0.1:8082}\n",
		`cluster.yaml: alarms: no node has the role alarms`)
	f(head+nodes+"channels:\n  abc: {substation: A}\n", `cluster.yaml:7: channels.abc: want a channel id (a positive integer)`)
}

func TestClusterFileErrors(t *testing.T) {
	_, err := LoadCluster(filepath.Join(t.TempDir(), "nope.yaml"), nil)
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("missing file: %v", err)
	}
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte("name: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCluster(p, nil); err == nil || !strings.Contains(err.Error(), "c.yaml:") {
		t.Fatalf("syntax error: %v", err)
	}
}
