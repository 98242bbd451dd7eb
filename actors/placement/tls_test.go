package placement

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/test/testenv"
)

// tlsSite is a cluster of three nodes a1, a2, a3 with a test CA; a1 and
// a2 are honest, "impostor" holds a2's certificate and sits in a3's slot.
type tlsSite struct {
	cl       *config.Cluster
	ca, evil *testenv.CA
	a1, a2   *TLS
	impostor *TLS
	log      *testenv.LogBuffer
}

func newTLSSite(t *testing.T) *tlsSite {
	t.Helper()
	s := &tlsSite{ca: testenv.NewCA(t, "cluster"), evil: testenv.NewCA(t, "evil"), log: &testenv.LogBuffer{}}
	for _, n := range []string{"a1", "a2", "a3", "outsider"} {
		s.ca.Issue(t, n)
	}
	s.evil.Issue(t, "a1")
	y := fmt.Sprintf("name: s\nprovider: {kind: automanaged}\ntls: {ca: %s, cert: \"%s/{node}.crt\", key: \"%s/{node}.key\"}\nnodes:\n", s.ca.CertPEM, s.ca.Dir, s.ca.Dir)
	for _, n := range []string{"a1", "a2", "a3"} {
		y += fmt.Sprintf("  - {name: %s, substation: A, remote: 127.0.0.1:%d, membership: 127.0.0.1:%d, http: 127.0.0.1:%d}\n",
			n, testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t))
	}
	p := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(p, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	var err error
	if s.cl, err = config.LoadCluster(p, nil); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(s.log, nil))
	load := func(n string) *TLS {
		m, err := s.cl.LoadTLS(n)
		if err != nil {
			t.Fatal(err)
		}
		return NewTLS(s.cl, m, log)
	}
	s.a1, s.a2 = load("a1"), load("a2")
	// LoadTLS refuses a certificate that does not name the node; an
	// attacker with a stolen certificate does not ask it.
	m, err := s.cl.LoadTLS("a2")
	if err != nil {
		t.Fatal(err)
	}
	m.Node = "a3"
	s.impostor = NewTLS(s.cl, m, log)
	return s
}

func (s *tlsSite) pair(t *testing.T, ca *testenv.CA, name string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(filepath.Join(ca.Dir, name+".crt"), filepath.Join(ca.Dir, name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serveTLS accepts TLS connections with cfg and writes "ok" to each one
// whose handshake succeeded.
func serveTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				if c.(*tls.Conn).Handshake() == nil {
					_, _ = c.Write([]byte("ok"))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// exchange dials addr with cfg and reads the server's "ok": TLS 1.3
// refuses a client certificate after the client's handshake is done,
// so a refusal shows on the first read.
func exchange(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(b) != "ok" {
		return fmt.Errorf("read %q", b)
	}
	return nil
}

// TestTLSHandshakes: the membership's TLS. A node's client accepts the
// peer it dials only with a certificate of the cluster CA naming that
// peer; a node's server accepts clients with a certificate of the cluster
// CA naming a node of the cluster.
func TestTLSHandshakes(t *testing.T) {
	s := newTLSSite(t)
	a2 := serveTLS(t, s.a2.ServerConfig())
	impostor := serveTLS(t, s.impostor.ServerConfig()) // a3's slot, a2's certificate
	evilServer := serveTLS(t, &tls.Config{Certificates: []tls.Certificate{s.pair(t, s.evil, "a1")}})

	f := func(name, addr string, cfg *tls.Config, want string) {
		t.Helper()
		err := exchange(addr, cfg)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: got %v, want %q", name, err, want)
		case want != "" && !IsTLSError(err):
			t.Errorf("%s: %v is not a TLS error", name, err)
		}
	}
	f("a1 to a2", a2, s.a1.ClientConfig("a2"), "")
	f("a1 to the impostor in a3's slot", impostor, s.a1.ClientConfig("a3"), "certificate names localhost, a2, not a3")
	f("a1 to a server of another CA", evilServer, s.a1.ClientConfig("a1"), "x509: certificate signed by unknown authority")
	clientCfg := func(c ...tls.Certificate) *tls.Config {
		cfg := &tls.Config{RootCAs: s.ca.Pool(), ServerName: "a2", MinVersion: tls.VersionTLS12}
		if len(c) > 0 { // sent even when the server asks for another CA's
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c[0], nil }
		}
		return cfg
	}
	f("no client certificate", a2, clientCfg(), "certificate required")
	f("a client certificate of another CA", a2, clientCfg(s.pair(t, s.evil, "a1")), "unknown certificate authority")
	f("a certificate of the CA naming no node", a2, clientCfg(s.pair(t, s.ca, "outsider")), "bad certificate")
	old := clientCfg(s.pair(t, s.ca, "a1"))
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	f("TLS 1.1", a2, old, "protocol version")
	f("a client certificate naming a node", a2, clientCfg(s.pair(t, s.ca, "a1")), "")
}

// recorder is a Remoting service that records what reaches it (what
// protoactor's endpoint reader would act on) and answers connect requests.
type recorder struct {
	remote.UnimplementedRemotingServer
	mu   sync.Mutex
	msgs []*remote.RemoteMessage
}

func (r *recorder) Receive(stream remote.Remoting_ReceiveServer) error {
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.msgs = append(r.msgs, m)
		r.mu.Unlock()
		if m.GetConnectRequest() != nil {
			if err := stream.Send(&remote.RemoteMessage{MessageType: &remote.RemoteMessage_ConnectResponse{ConnectResponse: &remote.ConnectResponse{}}}); err != nil {
				return err
			}
		}
	}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

// serveRemote serves a recorder with the server options of a remote
// configured with opts, on addr.
func serveRemote(t *testing.T, addr string, opts []remote.ConfigOption) *recorder {
	t.Helper()
	cfg := remote.Configure("127.0.0.1", 0, opts...)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(cfg.ServerOptions...)
	rec := &recorder{}
	remote.RegisterRemotingServer(srv, rec)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return rec
}

func connect(addr string) *remote.RemoteMessage {
	return &remote.RemoteMessage{MessageType: &remote.RemoteMessage_ConnectRequest{ConnectRequest: &remote.ConnectRequest{
		ConnectionType: &remote.ConnectRequest_ServerConnection{ServerConnection: &remote.ServerConnection{SystemId: "x", Address: addr}}}}}
}

func batch(target int32) *remote.RemoteMessage {
	return &remote.RemoteMessage{MessageType: &remote.RemoteMessage_MessageBatch{MessageBatch: &remote.MessageBatch{
		TypeNames: []string{"actor.PID"},
		Targets:   []*actor.PID{{Address: "x", Id: "voltage/remote"}},
		Envelopes: []*remote.MessageEnvelope{{Target: target}},
	}}}
}

// stream opens a Receive stream to addr with the dial options of opts,
// sends msgs and returns the first answer's error (nil: a connect
// response came back, or the stream stayed open for a moment).
func stream(t *testing.T, addr string, dial []grpc.DialOption, msgs ...*remote.RemoteMessage) error {
	t.Helper()
	conn, err := grpc.Dial(addr, dial...)
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
			break // the answer says why
		}
	}
	if msgs[0].GetConnectRequest() != nil {
		_, err = st.Recv()
		if err != nil {
			return err
		}
	}
	// A refused message ends the stream; an accepted one leaves it open.
	_ = st.CloseSend()
	_, err = st.Recv()
	if err == io.EOF || status.Code(err) == codes.DeadlineExceeded {
		return nil
	}
	return err
}

func dialOpts(opts []remote.ConfigOption) []grpc.DialOption {
	return remote.Configure("127.0.0.1", 0, opts...).DialOptions
}

// TestRemoteGuard: protoactor remote's gRPC with the cluster's TLS. Only a
// node whose certificate names it, connecting first, gets messages
// through; a plaintext client, a client of another CA, an impostor
// (another node's certificate) and a message before the connect request
// are refused before the service sees anything, and so are a malformed
// batch and the unary methods (which would panic in protoactor).
func TestRemoteGuard(t *testing.T) {
	s := newTLSSite(t)
	addr := func(n string) string { return s.cl.Node(n).Remote }
	a2 := serveRemote(t, addr("a2"), RemoteOptions(s.a2, addr("a2")))
	a1Dial := dialOpts(RemoteOptions(s.a1, addr("a1")))
	impDial := dialOpts(RemoteOptions(s.impostor, addr("a3")))

	// f sends msgs to a2: through of them reach the service, and the
	// stream ends with an error containing want ("": none).
	f := func(name string, dial []grpc.DialOption, want string, through int, msgs ...*remote.RemoteMessage) {
		t.Helper()
		before := a2.count()
		err := stream(t, addr("a2"), dial, msgs...)
		got := a2.count() - before
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: got %v, want %q", name, err, want)
		}
		if got != through {
			t.Errorf("%s: %d messages reached the service, want %d", name, got, through)
		}
	}
	f("a1, connect and a batch", a1Dial, "", 2, connect(addr("a1")), batch(0))
	f("the impostor in a3's slot", impDial, "PermissionDenied desc = connect request from "+addr("a3")+" (node a3): certificate names localhost, a2, not a3", 0, connect(addr("a3")), batch(0))
	f("a1 claiming a2's address", a1Dial, "certificate names localhost, a1, not a2", 0, connect(addr("a2")), batch(0))
	f("an address of no node", a1Dial, "connect request from 127.0.0.1:1: no node of the cluster has this address", 0, connect("127.0.0.1:1"))
	f("a batch before the connect request", a1Dial, "a message before the connect request", 0, batch(0))
	f("a malformed batch", a1Dial, "message batch: envelope 0: target 3 of 1", 1, connect(addr("a1")), batch(3))
	f("plaintext", []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, "Unavailable", 0, connect(addr("a1")), batch(0))
	evil := s.evil.ClientTLS(t, filepath.Join(s.evil.Dir, "a1.crt"), filepath.Join(s.evil.Dir, "a1.key"))
	evil.RootCAs, evil.ServerName = s.ca.Pool(), "a2"
	evilCert := evil.Certificates[0]
	evil.Certificates, evil.GetClientCertificate = nil, func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &evilCert, nil }
	f("a client of another CA", []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(evil))}, "Unavailable", 0, connect(addr("a1")), batch(0))
	if out := s.log.String(); !strings.Contains(out, "cluster: refused a connection") || !strings.Contains(out, "port=remote") {
		t.Errorf("no refusal logged:\n%s", out)
	}

	// The unary methods answer Unimplemented instead of panicking.
	conn, err := grpc.Dial(addr("a2"), a1Dial...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := remote.NewRemotingClient(conn).ListProcesses(ctx, &remote.ListProcessesRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("ListProcesses: %v", err)
	}

	// a1 dials the impostor in a3's slot: its certificate names a2.
	serveRemote(t, addr("a3"), RemoteOptions(s.impostor, addr("a3")))
	conn3, err := grpc.Dial(addr("a3"), a1Dial...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn3.Close()
	if _, err := remote.NewRemotingClient(conn3).Receive(ctx); err == nil || !strings.Contains(err.Error(), "certificate names localhost, a2, not a3") {
		t.Errorf("a1 to the impostor: %v", err)
	}
	// An address that is no node's is not dialled: no handshake there.
	other := serveTLS(t, s.a2.ServerConfig())
	if err := stream(t, other, a1Dial, connect(addr("a1"))); err == nil || !strings.Contains(err.Error(), "remote "+other+": no node of the cluster has this address") {
		t.Errorf("dial outside the cluster: %v", err)
	}

	// Without TLS the stream is plaintext as before, and a malformed
	// batch or a unary call still cannot end the process.
	plainAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	plain := serveRemote(t, plainAddr, RemoteOptions(nil, plainAddr))
	plainDial := dialOpts(RemoteOptions(nil, plainAddr))
	if err := stream(t, plainAddr, plainDial, connect("127.0.0.1:9"), batch(0)); err != nil || plain.count() != 2 {
		t.Errorf("plaintext without tls: %v, %d messages", err, plain.count())
	}
	if err := stream(t, plainAddr, plainDial, connect("127.0.0.1:9"), batch(7)); status.Code(err) != codes.PermissionDenied || plain.count() != 3 {
		t.Errorf("malformed batch without tls: %v, %d messages", err, plain.count())
	}
	connP, err := grpc.Dial(plainAddr, plainDial...)
	if err != nil {
		t.Fatal(err)
	}
	defer connP.Close()
	if _, err := remote.NewRemotingClient(connP).GetProcessDiagnostics(ctx, &remote.GetProcessDiagnosticsRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("GetProcessDiagnostics without tls: %v", err)
	}
}

// TestEtcdTLSProblem: a node whose etcd serves a certificate of another
// CA does not start, and says that TLS is why etcd does not answer.
func TestEtcdTLSProblem(t *testing.T) {
	s := newTLSSite(t)
	e := testenv.StartEtcd(t, testenv.EtcdTLS(s.evil))
	p := &EtcdProvider{Cluster: s.cl, Node: "a1", Endpoints: []string{e.Endpoint()}, TLS: s.a1.EtcdConfig()}
	err := p.StartMember(nil) // fails while registering, before it uses the cluster
	if err == nil || !strings.Contains(err.Error(), "no answer within 1s: TLS with "+e.Endpoint()+": tls: failed to verify certificate: x509: certificate signed by unknown authority") {
		t.Fatalf("etcd of another CA: %v", err)
	}
}
