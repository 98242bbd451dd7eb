package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

// tlsSection is the tls section of a cluster.yaml for a test CA whose
// node certificates are {node}.crt and {node}.key in its directory.
func tlsSection(ca *testenv.CA) string {
	return fmt.Sprintf("tls:\n  ca: %s\n  cert: %s/{node}.crt\n  key: %s/{node}.key\n", ca.CertPEM, ca.Dir, ca.Dir)
}

// certTLS is a client TLS configuration that trusts ca and presents the
// certificate name of issuer (sent even when the server asks for
// another CA's; "" for none).
func certTLS(t *testing.T, ca, issuer *testenv.CA, name, serverName string) *tls.Config {
	t.Helper()
	cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: serverName, MinVersion: tls.VersionTLS12}
	if name != "" {
		pair, err := tls.LoadX509KeyPair(filepath.Join(issuer.Dir, name+".crt"), filepath.Join(issuer.Dir, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	}
	return cfg
}

// remoteStream speaks protoactor remote's gRPC to addr as a peer would:
// it opens the Receive stream with creds (nil: plaintext), sends msgs
// and returns what ended the stream: nil when the node took everything
// (a connect response for a connect request, and the stream closed
// cleanly after the last message), else the error.
func remoteStream(t *testing.T, addr string, creds credentials.TransportCredentials, msgs ...*remote.RemoteMessage) error {
	t.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.Dial(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := remote.NewRemotingClient(conn).Receive(ctx)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if err := st.Send(m); err != nil {
			break // Recv says why
		}
	}
	if msgs[0].GetConnectRequest() != nil {
		m, err := st.Recv()
		if err != nil {
			return err
		}
		if m.GetConnectResponse() == nil {
			return fmt.Errorf("answer %v to the connect request", m)
		}
	}
	_ = st.CloseSend()
	if _, err = st.Recv(); err == io.EOF {
		return nil
	}
	return err
}

func connectFrom(addr string) *remote.RemoteMessage {
	return &remote.RemoteMessage{MessageType: &remote.RemoteMessage_ConnectRequest{ConnectRequest: &remote.ConnectRequest{
		ConnectionType: &remote.ConnectRequest_ServerConnection{ServerConnection: &remote.ServerConnection{SystemId: "mallory", Address: addr}}}}}
}

// ackBatch is a message batch carrying an operator's acknowledgement of
// alarm hv by user to the remote actor at target (what a node sends when
// its API receives an ack for an alarm group running elsewhere); replies
// go to a PID at replyTo.
func ackBatch(t *testing.T, target, replyTo, user string) *remote.RemoteMessage {
	t.Helper()
	data, typeName, err := remote.Serialize(&messages.AlarmActionRequest{Action: "ack", Id: "hv", User: user}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return &remote.RemoteMessage{MessageType: &remote.RemoteMessage_MessageBatch{MessageBatch: &remote.MessageBatch{
		TypeNames: []string{typeName},
		Targets:   []*actor.PID{actor.NewPID(target, "voltage/remote")},
		Senders:   []*actor.PID{actor.NewPID(replyTo, "mallory")},
		Envelopes: []*remote.MessageEnvelope{{MessageData: data, Target: 0, Sender: 1, TypeId: 0, SerializerId: 0}},
	}}}
}

// TestClusterTLS runs two nodes with the cluster's mutual TLS and an
// impostor: a voltage process in the slot of a third node (its addresses)
// holding the second node's certificate, with its own Redis. The two form
// the cluster, place and poll the channel, answer GET /api/cluster and a
// channel status across nodes over remote; the impostor is refused by
// both. Attacks on the owner's remote port (plaintext gRPC, a certificate
// of another CA, none, another node's certificate, a message before the
// connect request, a malformed batch, a unary call) and on its membership
// port (plain HTTP, another CA, none, a certificate naming no node) are
// refused: none of them acknowledges the active alarm, which a peer's
// genuine request then does. Finally kill -9 of the owner fails over.
func TestClusterTLS(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	ca, evil := testenv.NewCA(t, "site"), testenv.NewCA(t, "evil")
	for _, n := range []string{"n1", "n2", "n3", "outsider"} {
		ca.Issue(t, n)
	}
	evil.Issue(t, "n2")

	dir, mbPorts, httpPorts := clusterSite(t, []string{"n1", "n2", "n3"}, r.URL(), "{kind: automanaged}", `alarms:
  - {id: hv, point: "1001:m:10001", condition: ">", threshold: 250}
`)
	clusterFile := filepath.Join(dir, "cluster.yaml")
	appendFile(t, clusterFile, tlsSection(ca))
	cl, err := config.LoadCluster(clusterFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	n1, n2, n3 := cl.Node("n1"), cl.Node("n2"), cl.Node("n3")

	// The impostor: n2's certificate in n3's slot. Its own cluster file
	// calls that slot n2 (a node checks that its certificate names it),
	// its own Redis keeps it out of the leases.
	r2 := testenv.StartRedis(t)
	impostorDir := writeFiles(t, map[string]string{
		"p.csv": clusterPoints,
		"node.yaml": fmt.Sprintf(`redis: {url: %q}
channels:
  - {id: 1001, name: PCS-1, protocol: modbus_tcp, poll_interval: 100ms, points: p.csv,
     parameters: {host: 127.0.0.1, port: %d, timeout: 300ms}}
`, r2.URL(), testenv.FreePort(t)),
		"cluster.yaml": fmt.Sprintf(`name: e2e
provider: {kind: automanaged}
nodes:
  - {name: n1, substation: A, remote: %s, membership: %s, http: %s}
  - {name: n2, substation: A, remote: %s, membership: %s, http: %s}
channels:
  1001: {substation: A}
`, n1.Remote, n1.Membership, n1.HTTP, n3.Remote, n3.Membership, n3.HTTP) + tlsSection(ca),
	})

	sim := startSim(t, filepath.Join(dir, "n1.yaml"), mbPorts["n1"], mbPorts["n2"])
	procs := map[string]*proc{}
	for _, n := range []string{"n1", "n2"} {
		procs[n] = start(t, nil, "run", "-c", filepath.Join(dir, n+".yaml"), "--cluster", clusterFile, "--node", n)
	}
	impostor := start(t, nil, "run", "-c", filepath.Join(impostorDir, "node.yaml"), "--cluster", filepath.Join(impostorDir, "cluster.yaml"), "--node", "n2")
	owner := func() string { return leaseOwner(rdb, "lease:channel:1001") }
	pollsFrom := func(n string, t0 time.Time, within time.Duration) time.Time {
		t.Helper()
		return firstRequest(t, sim, mbPorts[n], n, t0, within)
	}
	testenv.Eventually(t, 20*time.Second, func() bool { return owner() == "n1" }, "n1 owns channel 1001")
	pollsFrom("n1", time.Now(), 5*time.Second)
	for _, n := range []string{"n1", "n2"} {
		if out := procs[n].Output(); !strings.Contains(out, "cluster traffic: mutual TLS") || strings.Contains(out, "unauthenticated") {
			t.Fatalf("%s does not say it runs with TLS:\n%s", n, out)
		}
	}

	// GET /api/cluster on n2: both nodes alive and reachable over remote
	// (with TLS), n3's slot neither.
	type member struct {
		Name      string `json:"name"`
		Alive     bool   `json:"alive"`
		Reachable bool   `json:"reachable"`
	}
	view := func(n string) map[string]member {
		var v struct {
			Members []member `json:"members"`
		}
		code, body := getAuth(t, fmt.Sprintf("http://127.0.0.1:%d/api/cluster", httpPorts[n]), opToken)
		if code != 200 || json.Unmarshal([]byte(body), &v) != nil {
			return nil
		}
		out := map[string]member{}
		for _, m := range v.Members {
			out[m.Name] = m
		}
		return out
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		v := view("n2")
		return v["n1"].Alive && v["n1"].Reachable && v["n2"].Alive && v["n2"].Reachable && !v["n3"].Alive && !v["n3"].Reachable
	}, "GET /api/cluster on n2: n1 and n2 alive and reachable over remote, n3 neither")
	// A channel status across nodes: n2 asks the owner over remote.
	testenv.Eventually(t, 5*time.Second, func() bool {
		code, body := getAuth(t, fmt.Sprintf("http://127.0.0.1:%d/api/channels/1001", httpPorts["n2"]), opToken)
		var ch struct {
			Node      string `json:"node"`
			Connected bool   `json:"connected"`
			Polls     uint64 `json:"polls"`
		}
		return code == 200 && json.Unmarshal([]byte(body), &ch) == nil && ch.Node == "n1" && ch.Connected && ch.Polls > 0
	}, "n2 reporting channel 1001's status from n1")

	// The impostor is refused: n1 and n2 find n2's certificate in n3's
	// slot of the membership, and n1 refuses its remote streams (it
	// gossips to n1, whose /_health it may read: its certificate is one
	// of the cluster's).
	for _, n := range []string{"n1", "n2"} {
		testenv.Eventually(t, 10*time.Second, func() bool {
			out := procs[n].Output()
			return strings.Contains(out, "membership: peer refused") && strings.Contains(out, "node=n3") &&
				strings.Contains(out, "certificate names localhost, n2, not n3")
		}, "%s refusing the impostor in n3's membership slot", n)
	}
	testenv.Eventually(t, 15*time.Second, func() bool {
		return strings.Contains(impostor.Output(), "(node n3): certificate names localhost, n2, not n3")
	}, "n1 refusing the impostor's remote stream (its connect request comes from n3's address)")
	if v := view("n1"); v["n3"].Reachable {
		t.Errorf("n3's slot reachable from n1: %+v", v)
	}

	// The alarm group runs on n1; raise hv there.
	if err := sim.SetValue(0, 260); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		return rdb.HGet(ctx, "alarm:hv", "state").Val() == "active-unacked"
	}, "alarm hv raised on n1")

	// Attacks on n1's remote port, each trying to acknowledge hv.
	refused := func(name string, creds credentials.TransportCredentials, want string, msgs ...*remote.RemoteMessage) {
		t.Helper()
		err := remoteStream(t, n1.Remote, creds, msgs...)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error with %q", name, err, want)
		}
	}
	attack := func(user string) *remote.RemoteMessage { return ackBatch(t, n1.Remote, n2.Remote, user) }
	refused("plaintext gRPC", nil, "Unavailable", connectFrom(n2.Remote), attack("plaintext"))
	refused("a certificate of another CA naming n2", credentials.NewTLS(certTLS(t, ca, evil, "n2", "n1")), "Unavailable", connectFrom(n2.Remote), attack("evil-ca"))
	refused("no client certificate", credentials.NewTLS(certTLS(t, ca, nil, "", "n1")), "Unavailable", connectFrom(n2.Remote), attack("no-cert"))
	refused("a certificate of the CA naming no node", credentials.NewTLS(certTLS(t, ca, ca, "outsider", "n1")), "Unavailable", connectFrom(n2.Remote), attack("outsider"))
	n3cert := credentials.NewTLS(certTLS(t, ca, ca, "n3", "n1"))
	refused("n3's certificate, connecting as n2", n3cert, "certificate names localhost, n3, not n2", connectFrom(n2.Remote), attack("n3-as-n2"))
	refused("a batch before the connect request", n3cert, "a message before the connect request", attack("no-connect"))
	malformed := attack("malformed")
	malformed.GetMessageBatch().Envelopes[0].Target = 7
	refused("a malformed batch", n3cert, "message batch: envelope 0: target 7 of 1", connectFrom(n3.Remote), malformed)
	conn, err := grpc.Dial(n1.Remote, grpc.WithTransportCredentials(n3cert))
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = remote.NewRemotingClient(conn).ListProcesses(dctx, &remote.ListProcessesRequest{})
	cancel()
	conn.Close()
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("ListProcesses (protoactor panics on it): %v", err)
	}
	if code, _ := get(t, fmt.Sprintf("http://127.0.0.1:%d/health", httpPorts["n1"])); code != 200 {
		t.Fatalf("n1 down after the attacks: %d\n%s", code, procs["n1"].Output())
	}
	if !strings.Contains(procs["n1"].Output(), "cluster: refused a connection") {
		t.Errorf("n1 logged no refusal")
	}
	// A genuine peer's request (n2's certificate, n2's address) goes
	// through: the attacks above were refused, not malformed.
	if err := remoteStream(t, n1.Remote, credentials.NewTLS(certTLS(t, ca, ca, "n2", "n1")), connectFrom(n2.Remote), attack("n2-genuine")); err != nil {
		t.Fatalf("n2's genuine request: %v", err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		return rdb.HGet(ctx, "alarm:hv", "state").Val() == "active-acked"
	}, "hv acknowledged by the genuine request")
	if by := rdb.HGet(ctx, "alarm:hv", "acked_by").Val(); by != "n2-genuine" {
		t.Errorf("hv acknowledged by %q: an attack got through", by)
	}

	// Attacks on n1's membership port.
	health := "https://" + n1.Membership + "/_health"
	httpsGet := func(cfg *tls.Config) (int, string, error) {
		c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := c.Get(health)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	if code, body := get(t, "http://"+n1.Membership+"/_health"); code == 200 || strings.Contains(body, `"node"`) {
		t.Errorf("plain HTTP on the membership port: %d %s", code, body)
	}
	for _, c := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"a certificate of another CA", certTLS(t, ca, evil, "n2", "n1")},
		{"no client certificate", certTLS(t, ca, nil, "", "n1")},
		{"a certificate of the CA naming no node", certTLS(t, ca, ca, "outsider", "n1")},
	} {
		if code, body, err := httpsGet(c.cfg); err == nil {
			t.Errorf("membership with %s: %d %s", c.name, code, body)
		}
	}
	if code, body, err := httpsGet(certTLS(t, ca, ca, "n2", "n1")); err != nil || code != 200 || !strings.Contains(body, `"node":"n1"`) {
		t.Errorf("membership with n2's certificate: %d %s %v", code, body, err)
	}

	// kill -9 of the owner: n2 takes over.
	killed := time.Now()
	if err := procs["n1"].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	took := pollsFrom("n2", killed, 10*time.Second).Sub(killed)
	t.Logf("failover after kill -9 with TLS: %v", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("failover took %v, want under 5 s", took)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		v := view("n2")
		return owner() == "n2" && !v["n1"].Alive && v["n2"].Alive && v["n2"].Reachable
	}, "GET /api/cluster on n2: n1 dead, n2 owning the channel")
}

// TestClusterTLSEtcd: the etcd provider with TLS to a real etcd that
// serves TLS only and requires client certificates: two nodes register,
// see each other and place the channel; a request across nodes works.
func TestClusterTLSEtcd(t *testing.T) {
	ca := testenv.NewCA(t, "site")
	e := testenv.StartEtcd(t, testenv.EtcdTLS(ca))
	r := testenv.StartRedis(t)
	for _, n := range []string{"n1", "n2"} {
		ca.Issue(t, n)
	}
	dir, mbPorts, httpPorts := clusterSite(t, []string{"n1", "n2"}, r.URL(), fmt.Sprintf("{kind: etcd, endpoints: [%q]}", e.URL()), "")
	appendFile(t, filepath.Join(dir, "cluster.yaml"), tlsSection(ca))
	sim := startSim(t, filepath.Join(dir, "n1.yaml"), mbPorts["n1"], mbPorts["n2"])
	procs := map[string]*proc{}
	for _, n := range []string{"n1", "n2"} {
		procs[n] = start(t, nil, "run", "-c", filepath.Join(dir, n+".yaml"), "--cluster", filepath.Join(dir, "cluster.yaml"), "--node", n)
	}
	testenv.Eventually(t, 20*time.Second, func() bool {
		for _, q := range sim.RequestLog() {
			if q.Port == mbPorts["n1"] {
				return true
			}
		}
		return false
	}, "n1 polling")
	testenv.Eventually(t, 10*time.Second, func() bool {
		var v struct {
			Members []struct {
				Name      string `json:"name"`
				Alive     bool   `json:"alive"`
				Reachable bool   `json:"reachable"`
			} `json:"members"`
		}
		code, body := getAuth(t, fmt.Sprintf("http://127.0.0.1:%d/api/cluster", httpPorts["n2"]), opToken)
		return code == 200 && json.Unmarshal([]byte(body), &v) == nil && len(v.Members) == 2 &&
			v.Members[0].Alive && v.Members[0].Reachable && v.Members[1].Alive && v.Members[1].Reachable
	}, "GET /api/cluster on n2: both nodes alive and reachable")
	testenv.Eventually(t, 5*time.Second, func() bool {
		code, body := getAuth(t, fmt.Sprintf("http://127.0.0.1:%d/api/channels/1001", httpPorts["n2"]), opToken)
		return code == 200 && strings.Contains(body, `"node":"n1"`) && strings.Contains(body, `"connected":true`)
	}, "n2 reporting channel 1001's status from n1")
	for _, n := range []string{"n1", "n2"} {
		if out := procs[n].Output(); strings.Contains(out, "etcd unreachable") {
			t.Errorf("%s:\n%s", n, out)
		}
	}
}

// TestClusterTLSConfig: a node whose certificate names another node
// does not start, nor does one whose files are missing: each says which
// line and file. Without tls a node warns that the cluster's traffic is
// unauthenticated, and still survives what used to end it from anywhere
// on the network: a call to a unary Remoting method (protoactor panics
// "implement me") and a batch whose indices are out of range.
func TestClusterTLSConfig(t *testing.T) {
	ca := testenv.NewCA(t, "site")
	ca.Issue(t, "n1")
	r := testenv.StartRedis(t)
	dir, _, httpPorts := clusterSite(t, []string{"n1", "n2", "n3"}, r.URL(), "{kind: automanaged}", "")
	clusterFile := filepath.Join(dir, "cluster.yaml")
	b, err := os.ReadFile(clusterFile)
	if err != nil {
		t.Fatal(err)
	}
	plain := string(b) // name, provider, nodes (lines 4-6), channels
	withTLS := strings.Replace(plain, "  - {name: n2,", fmt.Sprintf("  - {tls: {cert: %s/n1.crt, key: %s/n1.key}, name: n2,", ca.Dir, ca.Dir), 1) + tlsSection(ca)
	if err := os.WriteFile(clusterFile, []byte(withTLS), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(node string) (string, int) {
		return runCmd(t, nil, "run", "-c", filepath.Join(dir, node+".yaml"), "--cluster", clusterFile, "--node", node)
	}
	out, code := run("n2")
	if code != 1 || !strings.Contains(out, clusterFile+":5: nodes[1].tls.cert: "+ca.Dir+"/n1.crt: names localhost, n1, not n2: a node's certificate must name it") {
		t.Errorf("n2 with n1's certificate: exit %d\n%s", code, out)
	}
	out, code = run("n3")
	if code != 1 || !strings.Contains(out, clusterFile+":11: tls.cert: "+ca.Dir+"/n3.crt: no such file or directory") ||
		!strings.Contains(out, clusterFile+":12: tls.key: "+ca.Dir+"/n3.key: no such file or directory") {
		t.Errorf("n3 without its files: exit %d\n%s", code, out)
	}

	// Without tls: a warning.
	if err := os.WriteFile(clusterFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	p := start(t, nil, "run", "-c", filepath.Join(dir, "n1.yaml"), "--cluster", clusterFile, "--node", "n1")
	healthy := func() bool {
		code, _ := get(t, fmt.Sprintf("http://127.0.0.1:%d/health", httpPorts["n1"]))
		return code == 200
	}
	testenv.Eventually(t, 10*time.Second, healthy, "n1 serving")
	if !strings.Contains(p.Output(), "cluster traffic is unauthenticated") {
		t.Errorf("n1 without tls does not warn:\n%s", p.Output())
	}
	cl, err := config.LoadCluster(clusterFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := cl.Node("n1").Remote
	conn, err := grpc.Dial(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := remote.NewRemotingClient(conn).ListProcesses(cctx, &remote.ListProcessesRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("ListProcesses: %v", err)
	}
	malformed := ackBatch(t, addr, addr, "x")
	malformed.GetMessageBatch().Envelopes[0].TypeId = 5
	if err := remoteStream(t, addr, nil, connectFrom(addr), malformed); status.Code(err) != codes.PermissionDenied {
		t.Errorf("malformed batch: %v", err)
	}
	if !healthy() {
		t.Fatalf("n1 died:\n%s", p.Output())
	}
}

// appendFile appends text to the file at path.
func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}
