package placement

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/voltage-ems/voltage/config"
)

// TLS is one node's mutual TLS for the cluster's traffic (the tls section
// of cluster.yaml): protoactor remote (gRPC) and the automanaged
// membership (/_health over HTTPS) present this node's certificate and
// accept a peer only when the cluster CA signed its certificate and the
// certificate names the node the peer is (config.CertificateNames). A
// client that dials a peer checks the name of the node configured at
// that address; a server accepts client certificates that name a node
// of the cluster, and protoactor remote streams only from the node whose
// remote address the stream's connect request gives.
type TLS struct {
	node    string
	cert    tls.Certificate
	pool    *x509.CertPool
	nodes   map[string]bool
	remotes map[string]string // normalised remote address -> node
	etcd    *tls.Config
	log     *slog.Logger

	mu         sync.Mutex
	lastLog    time.Time
	suppressed int
}

// refusalLogEvery limits the refusal logs: a scan or a flood of bad
// handshakes logs one line per period, with the count of the others.
const refusalLogEvery = 10 * time.Second

// NewTLS builds the TLS of node m.Node from its material (nil m: nil).
func NewTLS(cl *config.Cluster, m *config.TLSMaterial, log *slog.Logger) *TLS {
	if m == nil {
		return nil
	}
	if log == nil {
		log = slog.Default()
	}
	t := &TLS{node: m.Node, cert: m.Cert, pool: m.CA, nodes: map[string]bool{}, remotes: map[string]string{}, log: log}
	for _, n := range cl.Nodes {
		t.nodes[n.Name] = true
		t.remotes[normAddr(n.Remote)] = n.Name
	}
	t.etcd = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: m.EtcdCA, Certificates: []tls.Certificate{m.EtcdCert}}
	return t
}

// normAddr is host:port as net.JoinHostPort writes it ("[::1]:8101").
func normAddr(a string) string {
	h, p, err := net.SplitHostPort(a)
	if err != nil {
		return a
	}
	return net.JoinHostPort(h, p)
}

// NameError is a peer certificate that does not name the node expected.
type NameError struct {
	Want  string   // the node, or "" for any node of the cluster
	Names []string // what the certificate names
}

func (e *NameError) Error() string {
	if e.Want == "" {
		return fmt.Sprintf("certificate names %s, no node of the cluster", strings.Join(e.Names, ", "))
	}
	return fmt.Sprintf("certificate names %s, not %s", strings.Join(e.Names, ", "), e.Want)
}

// ServerConfig is for this node's listeners: TLS 1.2+, this node's
// certificate, and a client certificate that the cluster CA signed (for
// clients) and that names a node of the cluster.
func (t *TLS) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{t.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    t.pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			leaf := cs.PeerCertificates[0] // verified by the handshake already
			for _, n := range config.CertificateNamesOf(leaf) {
				if t.nodes[n] {
					return nil
				}
			}
			return &NameError{Names: config.CertificateNamesOf(leaf)}
		},
	}
}

// ClientConfig is for connecting to node peer: TLS 1.2+, this node's
// certificate, and the server's verified against the cluster CA (for
// servers) and checked to name peer.
func (t *TLS) ClientConfig(peer string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{t.cert},
		ServerName:   peer,
		// The chain and the name are checked below: the name is the
		// node's (a DNS SAN, or the CN without DNS SANs), not a host.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			leaf := cs.PeerCertificates[0]
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: t.pool, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
			}
			if !config.CertificateNames(leaf, peer) {
				return &NameError{Want: peer, Names: config.CertificateNamesOf(leaf)}
			}
			return nil
		},
	}
}

// EtcdConfig is for the etcd client: the CA that signed etcd's
// certificate (the host name of the endpoint is checked as usual) and
// this node's client certificate (or tls.etcd's). Nil t: nil.
func (t *TLS) EtcdConfig() *tls.Config {
	if t == nil {
		return nil
	}
	return t.etcd.Clone()
}

// IsTLSError reports whether err comes from a TLS handshake that failed
// on a certificate or a protocol mismatch (not a peer that is down).
func IsTLSError(err error) bool {
	var (
		ve *tls.CertificateVerificationError
		ne *NameError
		re tls.RecordHeaderError
		ue x509.UnknownAuthorityError
		oe *net.OpError
	)
	return errors.As(err, &ve) || errors.As(err, &ne) || errors.As(err, &re) || errors.As(err, &ue) ||
		errors.As(err, &oe) && oe.Op == "remote error" // an alert from the peer: it refused this node's certificate

}

// refused logs a refused connection: the first at once, then at most one
// per refusalLogEvery with the number left out.
func (t *TLS) refused(where string, from net.Addr, err error) {
	t.mu.Lock()
	if time.Since(t.lastLog) < refusalLogEvery {
		t.suppressed++
		t.mu.Unlock()
		return
	}
	n := t.suppressed
	t.lastLog, t.suppressed = time.Now(), 0
	t.mu.Unlock()
	args := []any{"port", where, "err", err, "not_logged_before", n}
	if from != nil {
		args = append(args, "from", from.String())
	}
	t.log.Warn("cluster: refused a connection", args...)
}

// RemoteOptions are the options of this node's protoactor remote at
// address self. With t: TLS server credentials that require a client
// certificate (ServerConfig), a check of every stream's connect request
// against that certificate, dial credentials that verify the peer's
// (ClientConfig of the node configured at the dialled address), and self
// as the advertised address (the one peers' certificates are checked
// against).
//
// Always, TLS or not, the server refuses what would end the process:
// the unary methods of protoactor's Remoting service (they panic:
// "implement me"), and a message batch whose indices point outside its
// tables (protoactor indexes them unchecked).
//
// protoactor remote dials with grpc.WithInsecure() unless dial options
// are given (remote.WithDialOptions replaces them) and serves with the
// server options given (none by default).
func RemoteOptions(t *TLS, self string) []remote.ConfigOption {
	unary := grpc.UnaryInterceptor(func(_ context.Context, _ any, info *grpc.UnaryServerInfo, _ grpc.UnaryHandler) (any, error) {
		return nil, status.Errorf(codes.Unimplemented, "%s is not served", info.FullMethod)
	})
	stream := grpc.StreamInterceptor(t.streamGuard)
	if t == nil {
		return []remote.ConfigOption{remote.WithServerOptions(unary, stream)}
	}
	creds := &remoteCreds{t: t, server: credentials.NewTLS(t.ServerConfig())}
	return []remote.ConfigOption{
		remote.WithAdvertisedHost(self),
		remote.WithServerOptions(grpc.Creds(creds), unary, stream),
		remote.WithDialOptions(grpc.WithTransportCredentials(creds)),
	}
}

// remoteCreds are gRPC transport credentials: the server side is
// ServerConfig's; the client side finds the node at the dialled address
// (protoactor dials the PID's address, gRPC gives it as the authority)
// and verifies that the server's certificate names it.
type remoteCreds struct {
	t      *TLS
	server credentials.TransportCredentials
}

func (c *remoteCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	node, ok := c.t.remotes[normAddr(authority)]
	if !ok {
		raw.Close()
		return nil, nil, fmt.Errorf("remote %s: no node of the cluster has this address", authority)
	}
	return credentials.NewTLS(c.t.ClientConfig(node)).ClientHandshake(ctx, authority, raw)
}

func (c *remoteCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.server.ServerHandshake(raw)
	if err != nil {
		c.t.refused("remote", raw.RemoteAddr(), err)
	}
	return conn, info, err
}

func (c *remoteCreds) Info() credentials.ProtocolInfo { return c.server.Info() }

func (c *remoteCreds) Clone() credentials.TransportCredentials {
	return &remoteCreds{t: c.t, server: c.server.Clone()}
}

// OverrideServerName implements credentials.TransportCredentials (the
// name checked is always the node's).
func (c *remoteCreds) OverrideServerName(string) error { return nil }

// streamGuard checks a protoactor remote stream. With TLS (t not nil),
// its first message must be a connect request from a node (a server
// connection whose address is a node's remote address) whose name the
// client certificate gives. Always, a message batch must be well formed.
// A message that fails ends the stream before protoactor sees it.
func (t *TLS) streamGuard(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	g := &guardedStream{ServerStream: ss, t: t}
	p, _ := peer.FromContext(ss.Context())
	if p != nil {
		g.from = p.Addr
	}
	if t == nil {
		return handler(srv, g)
	}
	if p != nil {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			g.leaf = ti.State.PeerCertificates[0]
		}
	}
	if g.leaf == nil {
		err := errors.New("no client certificate")
		t.refused("remote", g.from, err)
		return status.Error(codes.Unauthenticated, err.Error())
	}
	return handler(srv, g)
}

type guardedStream struct {
	grpc.ServerStream
	t    *TLS // nil: no identity check
	leaf *x509.Certificate
	from net.Addr
	node string // set by a valid connect request
}

func (s *guardedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	rm, _ := m.(*remote.RemoteMessage)
	err := s.check(rm)
	if err == nil {
		return nil
	}
	if s.t != nil {
		s.t.refused("remote", s.from, err)
	}
	return status.Error(codes.PermissionDenied, err.Error())
}

func (s *guardedStream) check(rm *remote.RemoteMessage) error {
	if rm == nil {
		return errors.New("not a remote message")
	}
	if b := rm.GetMessageBatch(); b != nil {
		if err := checkBatch(b); err != nil {
			return err
		}
	}
	if s.t == nil {
		return nil
	}
	cr := rm.GetConnectRequest()
	if cr == nil {
		if s.node == "" {
			return errors.New("a message before the connect request")
		}
		return nil
	}
	sc := cr.GetServerConnection()
	if sc == nil {
		return errors.New("connect request of a client: only nodes connect")
	}
	node, ok := s.t.remotes[normAddr(sc.Address)]
	switch {
	case !ok:
		return fmt.Errorf("connect request from %s: no node of the cluster has this address", sc.Address)
	case !config.CertificateNames(s.leaf, node):
		return fmt.Errorf("connect request from %s (node %s): %w", sc.Address, node, &NameError{Want: node, Names: config.CertificateNamesOf(s.leaf)})
	}
	s.node = node
	return nil
}

// remoteSerializers is how many serializers protoactor remote registers
// (protobuf 0, JSON 1); it indexes its table with the envelope's id.
const remoteSerializers = 2

// checkBatch refuses a batch whose envelopes point outside its tables.
func checkBatch(b *remote.MessageBatch) error {
	for i, e := range b.Envelopes {
		switch {
		case e.Target < 0 || int(e.Target) >= len(b.Targets) || b.Targets[e.Target] == nil:
			return fmt.Errorf("message batch: envelope %d: target %d of %d", i, e.Target, len(b.Targets))
		case e.Sender < 0 || int(e.Sender) > len(b.Senders) || (e.Sender > 0 && b.Senders[e.Sender-1] == nil):
			return fmt.Errorf("message batch: envelope %d: sender %d of %d", i, e.Sender, len(b.Senders))
		case e.TypeId < 0 || int(e.TypeId) >= len(b.TypeNames):
			return fmt.Errorf("message batch: envelope %d: type %d of %d", i, e.TypeId, len(b.TypeNames))
		case e.SerializerId < 0 || e.SerializerId >= remoteSerializers:
			return fmt.Errorf("message batch: envelope %d: serializer %d of %d", i, e.SerializerId, remoteSerializers)
		}
	}
	return nil
}
