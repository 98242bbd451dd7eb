package e2e

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckListsEveryProblem feeds `voltage check` a configuration with
// many independent problems and expects all of them, each with file:line.
func TestCheckListsEveryProblem(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"plant.yaml": `node: {name: plant, http: 127.0.0.1:8080}
channels:
  - id: 1001
    name: PCS-1
    protocol: modbus_tcp
    parameters: {host: 127.0.0.1, port: 502}
    points: pcs.csv
    colour: blue
  - id: 1001
    name: duplicate
    protocol: virtual
    points: virt.csv
`,
		"pcs.csv": `point_id,type,name,unit,slave_id,function_code,register_address,data_type,byte_order,bit_position,scale,offset,deadband,reverse
1,m,ok,V,1,3,0,float32,ABCD,,1,0,0,
1,m,dup,V,1,3,2,float32,ABCD,,1,0,0,
2,m,weird,V,1,3,4,float16,,,1,0,0,
3,m,order,V,1,3,6,float32,XYZW,,1,0,0,
4,s,coil32,,1,1,0,int32,,,,,,
5,m,far,V,1,3,65535,float32,ABCD,,1,0,0,
6,m,short,V,1,3
7,m,nan,V,1,3,8,uint16,,,abc,0,0,
`,
		"virt.csv": "point_id,type,name,unit,signal,min,max,period\n1,m,pv,kW,sine,0,100,60s\n",
	})
	out, code := runCmd(t, nil, "check", "-c", filepath.Join(dir, "plant.yaml"))
	if code == 0 {
		t.Fatalf("check passed a broken config:\n%s", out)
	}
	want := []string{
		"plant.yaml:8: channels[0].colour: unknown field",
		"plant.yaml:9: channels[1].id: duplicate channel id 1001 (first at line 3)",
		"pcs.csv:3: point_id: duplicate point 1 of type m (first at line 2)",
		"pcs.csv:4: data_type: unknown data type \"float16\"",
		"pcs.csv:5: byte_order:",
		"pcs.csv:6: data_type: function code 1 (read coils) works on single bits",
		"pcs.csv:7: register_address: register address out of range",
		"pcs.csv:8: row has 6 fields, the header has 14",
		"pcs.csv:9: scale:",
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("missing %q in:\n%s", w, out)
		}
	}
}

func TestCheckMalformedYAML(t *testing.T) {
	dir := writeFiles(t, map[string]string{"bad.yaml": "node:\n  name: x\n channels: [\n"})
	out, code := runCmd(t, nil, "check", "-c", filepath.Join(dir, "bad.yaml"))
	if code == 0 || !strings.Contains(out, "bad.yaml:") {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
}

func TestCheckExamples(t *testing.T) {
	env := []string{
		"VOLTAGE_VIEWER_TOKEN=viewer-token-for-tests-0001",
		"VOLTAGE_OPERATOR_TOKEN=operator-token-for-tests-0001",
		"VOLTAGE_ADMIN_TOKEN=admin-token-for-tests-00001",
		"VOLTAGE_COMMAND_KEY=command-key-for-tests-0123456789abcdef",
	}
	for _, f := range []string{"demo.yaml", "modbus.yaml"} {
		out, code := runCmd(t, env, "check", "-c", filepath.Join("..", "..", "config", "examples", f))
		if code != 0 || !strings.Contains(out, ": ok") {
			t.Errorf("%s: exit %d:\n%s", f, code, out)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"frobnicate"}, {"run"}, {"check", "-c"}} {
		out, code := runCmd(t, nil, args...)
		if code != 2 || !strings.Contains(out, "usage") && !strings.Contains(out, "-c") {
			t.Errorf("voltage %v: exit %d, output %q", args, code, out)
		}
	}
	out, code := runCmd(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "voltage ") {
		t.Errorf("version: %d %q", code, out)
	}
}

// TestClusterConfigErrors: the cluster file is checked with the node
// config, by check and by run, and a bad one never starts a node.
func TestClusterConfigErrors(t *testing.T) {
	demo := filepath.Join("..", "..", "config", "examples", "demo.yaml")
	root := filepath.Join("..", "..", "cluster.yaml")
	out, code := runCmd(t, nil, "check", "-c", demo, "--cluster", root)
	if code != 0 || !strings.Contains(out, "cluster.yaml: ok (cluster site-1, provider automanaged, 3 nodes in 2 substations") {
		t.Fatalf("check the root cluster.yaml: exit %d\n%s", code, out)
	}
	dir := writeFiles(t, map[string]string{"c.yaml": `name: s
provider: {kind: automanaged}
nodes:
  - {name: a1, substation: A, remote: 127.0.0.1:8101, membership: 127.0.0.1:6331, http: 127.0.0.1:8081}
  - {name: a2, remote: 127.0.0.1:8101, membership: 127.0.0.1:6332, http: 127.0.0.1:8082}
channels:
  1001: {nodes: [a1, zz]}
`})
	out, code = runCmd(t, nil, "check", "-c", demo, "--cluster", filepath.Join(dir, "c.yaml"))
	for _, want := range []string{
		`c.yaml:5: nodes[1].substation: required`,
		`c.yaml:5: nodes[1].remote: duplicate address 127.0.0.1:8101 (also nodes[0].remote)`,
		`c.yaml:7: channels.1001.nodes[1]: unknown node "zz"`,
		`channel 1002 of`,
	} {
		if code != 1 || !strings.Contains(out, want) {
			t.Errorf("check with a bad cluster file: exit %d, want %q in:\n%s", code, want, out)
		}
	}
	out, code = runCmd(t, nil, "run", "-c", demo, "--cluster", root, "--node", "sub-z9")
	if code == 0 || !strings.Contains(out, `unknown node name "sub-z9" (the cluster has sub-a1, sub-a2, sub-b1)`) {
		t.Errorf("run with an unknown node: exit %d\n%s", code, out)
	}
	out, code = runCmd(t, nil, "run", "-c", demo, "--cluster", root, "--node", "sub-a1")
	if code == 0 || !strings.Contains(out, "redis.url: a cluster needs one Redis shared by its nodes") {
		t.Errorf("run a cluster node on the embedded redis: exit %d\n%s", code, out)
	}
	if out, code := runCmd(t, nil, "run", "-c", demo, "--node", "sub-a1"); code != 2 || !strings.Contains(out, "--cluster FILE and --node NAME go together") {
		t.Errorf("--node without --cluster: exit %d\n%s", code, out)
	}
}
