package placement

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/cluster"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/voltage-ems/voltage/config"
)

// EtcdProvider is the `etcd` cluster provider of cluster.yaml. Each node
// registers {Prefix}{cluster}/members/{member id} (JSON: node, id, remote)
// under an etcd lease of TTL that it keeps alive; the topology it hands to
// protoactor's member list is what a read of that prefix returns, read
// again on every watch event and every Refresh.
//
// It replaces protoactor's etcd provider, which reads the members once and
// then starts an unrevisioned watch: a member registering between the two
// is never seen until it registers again (a 3-node test lost a standby
// that way), and its member ids are actor system ids, which protoactor
// blocks for good once a member has left.
//
// Member ids are "{node}@{incarnation}", as with StaticProvider: a node
// whose lease expired (a stall longer than the TTL, or etcd unreachable
// for that long) has been dropped and blocked by its peers, so it takes a
// new incarnation and registers again.
type EtcdProvider struct {
	Cluster    *config.Cluster
	Node       string
	Endpoints  []string
	Prefix     string        // default "/voltage/"
	TTL        time.Duration // of the member lease, whole seconds, default 3 s
	Refresh    time.Duration // topology re-read, default 500 ms
	Timeout    time.Duration // per etcd request, default 1 s
	StallAfter time.Duration // default TTL
	// TLS, when set, is the client's TLS to etcd (a CA and a client
	// certificate); endpoints without a scheme are then https://.
	TLS *tls.Config
	Log *slog.Logger

	mu          sync.Mutex
	incarnation int64
	lease       clientv3.LeaseID // 0: not registered
	lost        chan struct{}    // closed when the current lease's keepalive ends
	kaCancel    context.CancelFunc

	c      *cluster.Cluster
	client *clientv3.Client
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

// etcdMember is the value of a member key.
type etcdMember struct {
	Node   string `json:"node"`
	ID     string `json:"id"`
	Remote string `json:"remote"`
}

func (p *EtcdProvider) id() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.Node + "@" + strconv.FormatInt(p.incarnation, 36)
}

func (p *EtcdProvider) prefix() string { return p.Prefix + p.Cluster.Name + "/members/" }

// StartMember implements cluster.ClusterProvider: it registers this node
// (an error when etcd cannot be reached within Timeout) and starts
// following the topology.
func (p *EtcdProvider) StartMember(c *cluster.Cluster) error {
	if p.Prefix == "" {
		p.Prefix = "/voltage/"
	}
	if p.TTL < time.Second {
		p.TTL = 3 * time.Second
	}
	if p.Refresh <= 0 {
		p.Refresh = 500 * time.Millisecond
	}
	if p.Timeout <= 0 {
		p.Timeout = time.Second
	}
	if p.StallAfter <= 0 {
		p.StallAfter = p.TTL
	}
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if p.Cluster.Node(p.Node) == nil {
		return fmt.Errorf("node %q is not in the cluster", p.Node)
	}
	endpoints := p.Endpoints
	if p.TLS != nil {
		endpoints = make([]string, len(p.Endpoints))
		for i, e := range p.Endpoints {
			if !strings.Contains(e, "://") {
				e = "https://" + e
			}
			endpoints[i] = e
		}
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: p.Timeout,
		TLS:         p.TLS,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return fmt.Errorf("etcd %v: %w", p.Endpoints, err)
	}
	p.c, p.client = c, client
	p.incarnation = time.Now().UnixNano()
	if err := p.register(); err != nil {
		client.Close()
		if errors.Is(err, context.DeadlineExceeded) {
			if terr := tlsProblem(endpoints, p.TLS, p.Timeout); terr != nil {
				err = fmt.Errorf("no answer within %v: %w", p.Timeout, terr)
			} else {
				err = fmt.Errorf("no answer within %v (is etcd running there?): %w", p.Timeout, err)
			}
		}
		return fmt.Errorf("etcd %v: registering %s: %w", p.Endpoints, p.id(), err)
	}
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	go p.run()
	return nil
}

// tlsProblem says why etcd does not answer when TLS is the reason: the
// handshake with the first endpoint that accepts a connection fails (its
// certificate is not of the CA configured), or etcd refuses this node's
// client certificate right after it. Nil without cfg, or when TLS is not
// the problem.
func tlsProblem(endpoints []string, cfg *tls.Config, timeout time.Duration) error {
	if cfg == nil {
		return nil
	}
	for _, e := range endpoints {
		if _, rest, ok := strings.Cut(e, "://"); ok {
			e = rest
		}
		c := cfg.Clone()
		if c.ServerName == "" {
			c.ServerName, _, _ = net.SplitHostPort(e)
		}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", e, c)
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			continue // nothing listens there
		}
		if err == nil {
			// TLS 1.3: a refused client certificate shows on the first read.
			_ = conn.SetReadDeadline(time.Now().Add(timeout / 4))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
			if !IsTLSError(err) {
				return nil
			}
		}
		return fmt.Errorf("TLS with %s: %w", e, err)
	}
	return nil
}

// StartClient implements cluster.ClusterProvider (nodes are members only).
func (p *EtcdProvider) StartClient(*cluster.Cluster) error {
	return errors.New("etcd provider: client mode is not supported")
}

// Shutdown implements cluster.ClusterProvider: it stops following the
// topology and revokes the member lease, so peers see this node leave at
// once. A second call does nothing.
func (p *EtcdProvider) Shutdown(bool) error {
	if p.stop == nil {
		return nil
	}
	var err error
	p.once.Do(func() {
		close(p.stop)
		<-p.done
		p.mu.Lock()
		lease, cancel := p.lease, p.kaCancel
		p.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		if lease != 0 {
			ctx, cancel := context.WithTimeout(context.Background(), p.Timeout)
			_, err = p.client.Revoke(ctx, lease)
			cancel()
		}
		_ = p.client.Close()
	})
	return err
}

// register grants a lease, puts this member's key under it and keeps the
// lease alive; p.lost is closed when the keepalive ends (the lease expired
// or could not be renewed before it would).
func (p *EtcdProvider) register() error {
	self := p.Cluster.Node(p.Node)
	v, _ := json.Marshal(etcdMember{Node: p.Node, ID: p.id(), Remote: self.Remote})
	ctx, cancel := context.WithTimeout(context.Background(), p.Timeout)
	defer cancel()
	g, err := p.client.Grant(ctx, int64(p.TTL/time.Second))
	if err != nil {
		return err
	}
	if _, err := p.client.Put(ctx, p.prefix()+p.id(), string(v), clientv3.WithLease(g.ID)); err != nil {
		_, _ = p.client.Revoke(ctx, g.ID)
		return err
	}
	kctx, kcancel := context.WithCancel(context.Background())
	ka, err := p.client.KeepAlive(kctx, g.ID)
	if err != nil {
		kcancel()
		_, _ = p.client.Revoke(ctx, g.ID)
		return err
	}
	lost := make(chan struct{})
	go func() {
		for range ka { // drained until the lease ends
		}
		close(lost)
	}()
	p.mu.Lock()
	p.lease, p.lost, p.kaCancel = g.ID, lost, kcancel
	p.mu.Unlock()
	return nil
}

// rejoin drops the current registration (its id is blocked by the peers
// that saw it leave) and registers under a new incarnation; on failure the
// loop tries again.
func (p *EtcdProvider) rejoin(why string, args ...any) {
	p.mu.Lock()
	old, cancel := p.lease, p.kaCancel
	p.lease, p.kaCancel, p.lost = 0, nil, nil
	p.incarnation = time.Now().UnixNano()
	p.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if old != 0 {
		ctx, c := context.WithTimeout(context.Background(), p.Timeout)
		_, _ = p.client.Revoke(ctx, old) // gone already, most likely
		c()
	}
	p.Log.Warn(why+"; rejoining as a new member", append(args, "member", p.id())...)
	_ = p.register() // on failure the loop tries again (and says so)
}

func (p *EtcdProvider) run() {
	defer close(p.done)
	// Watches live in wctx; one that ended (closed or errored) is replaced
	// after the next read.
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	defer wcancel()
	var (
		watch  clientv3.WatchChan
		waited time.Duration // the last wait, past its timer
		failed int
	)
	for {
		// A wait that overran by more than a member lease: this process
		// was stalled, its key has expired and its peers dropped it.
		if waited > p.StallAfter {
			p.rejoin("this node was stalled: its member lease expired", "stalled", waited.Round(time.Millisecond))
		}
		p.mu.Lock()
		lease, lost := p.lease, p.lost
		p.mu.Unlock()
		if lease == 0 {
			if err := p.register(); err != nil {
				failed++
				if failed == 1 || failed%20 == 0 {
					p.Log.Warn("etcd unreachable: cannot register this member; retrying", "err", err, "attempts", failed)
				}
			} else {
				p.Log.Info("registered in etcd again", "member", p.id(), "after_attempts", failed)
				failed = 0
			}
		} else if lost != nil {
			select {
			case <-lost:
				p.rejoin("the member lease ended (etcd unreachable or this node stalled)")
			default:
			}
		}

		ms, rev, ok := p.read()
		if ok {
			p.c.MemberList.UpdateClusterTopology(ms)
			if watch == nil {
				watch = p.client.Watch(wctx, p.prefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
			}
		}
		timer, began := time.NewTimer(p.Refresh), time.Now()
		select {
		case <-p.stop:
			timer.Stop()
			return
		case r, open := <-watch: // a nil channel (no watch) never fires
			if !open || r.Err() != nil {
				watch = nil // started again after the next read
			}
		case <-lost:
		case <-timer.C:
		}
		timer.Stop()
		waited = max(time.Since(began)-p.Refresh, 0)
	}
}

// read returns the members registered in etcd (this node always among
// them), keeping only keys that name a node of the cluster at its
// configured remote address. ok is false when etcd could not be read; the
// topology then stays as it was (leases in Redis, not membership, keep two
// nodes from running one unit).
func (p *EtcdProvider) read() (ms []*cluster.Member, rev int64, ok bool) {
	ctx, cancel := context.WithTimeout(context.Background(), p.Timeout)
	defer cancel()
	resp, err := p.client.Get(ctx, p.prefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, false
	}
	me := p.id()
	self := p.Cluster.Node(p.Node)
	ms = append(ms, member(me, self.Remote))
	listed := false
	for _, kv := range resp.Kvs {
		var m etcdMember
		if json.Unmarshal(kv.Value, &m) != nil || NodeOf(m.ID) != m.Node || string(kv.Key) != p.prefix()+m.ID {
			continue
		}
		if m.ID == me {
			listed = true
			continue
		}
		n := p.Cluster.Node(m.Node)
		if n == nil || n.Name == p.Node || n.Remote != m.Remote {
			continue
		}
		ms = append(ms, member(m.ID, n.Remote))
	}
	p.mu.Lock()
	registered := p.lease != 0
	p.mu.Unlock()
	if registered && !listed {
		// The key expired although the keepalive has not ended yet (a
		// stall): peers have dropped this id.
		p.rejoin("this member's key is gone from etcd")
		ms[0] = member(p.id(), self.Remote)
	}
	return ms, resp.Header.Revision, true
}
