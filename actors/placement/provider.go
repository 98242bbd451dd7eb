package placement

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/cluster"

	"github.com/voltage-ems/voltage/config"
)

// StaticProvider is the `automanaged` cluster provider of cluster.yaml: a
// static list of peers, each answering GET /_health on its membership
// address (bound to that address only, unlike protoactor's automanaged
// provider, which listens on every interface). Every Refresh it asks every
// peer and hands the members that answered to protoactor's member list.
//
// A member's id is "{node}@{incarnation}". protoactor blocks the id of a
// member that left for good ("members dropped after a stall never rejoin
// under the same id"), so a node that notices it was stalled (its own loop
// ran late by more than StallAfter: its peers have dropped it) takes a new
// incarnation and rejoins as a new member.
type StaticProvider struct {
	Cluster    *config.Cluster
	Node       string
	Refresh    time.Duration // default 500 ms
	Timeout    time.Duration // per health request, default 300 ms
	StallAfter time.Duration // default 3 × Refresh + Timeout
	// DropAfter is how long a peer may fail its health checks before it
	// leaves the topology (protoactor then blocks its id for good); one
	// slow answer does not drop a live peer. Default 3 × Refresh.
	DropAfter time.Duration
	// TLS, when set, serves and asks /_health over HTTPS with mutual
	// authentication: a peer counts only when its certificate names it.
	TLS *TLS
	Log *slog.Logger

	mu          sync.Mutex
	incarnation int64
	since       time.Time           // of this incarnation
	seen        map[string]seenPeer // by node name
	unlisted    int                 // consecutive checks in which a reachable peer did not list this member
	c           *cluster.Cluster
	srv         *http.Server
	clients     map[string]*http.Client // by peer node
	tlsFailing  map[string]bool         // peers whose last check failed on TLS (logged once)
	stop        chan struct{}
	done        chan struct{}
}

type health struct {
	Cluster string   `json:"cluster"`
	Node    string   `json:"node"`
	ID      string   `json:"id"`
	Remote  string   `json:"remote"`
	Members []string `json:"members"` // the member ids of its topology
}

type seenPeer struct {
	id   string
	at   time.Time
	ours bool // its last answer listed this node's current member id
}

func (p *StaticProvider) id() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.Node + "@" + strconv.FormatInt(p.incarnation, 36)
}

// NodeOf returns the node name of a member id.
func NodeOf(memberID string) string {
	n, _, _ := strings.Cut(memberID, "@")
	return n
}

// StartMember implements cluster.ClusterProvider.
func (p *StaticProvider) StartMember(c *cluster.Cluster) error {
	if p.Refresh <= 0 {
		p.Refresh = 500 * time.Millisecond
	}
	if p.Timeout <= 0 {
		p.Timeout = 300 * time.Millisecond
	}
	if p.StallAfter <= 0 {
		p.StallAfter = 3*p.Refresh + p.Timeout
	}
	if p.DropAfter <= 0 {
		p.DropAfter = 3 * p.Refresh
	}
	p.seen = map[string]seenPeer{}
	if p.Log == nil {
		p.Log = slog.Default()
	}
	self := p.Cluster.Node(p.Node)
	if self == nil {
		return fmt.Errorf("node %q is not in the cluster", p.Node)
	}
	p.c = c
	p.incarnation, p.since = time.Now().UnixNano(), time.Now()
	p.clients, p.tlsFailing = map[string]*http.Client{}, map[string]bool{}
	for _, n := range p.Cluster.Nodes {
		tr := &http.Transport{MaxIdleConnsPerHost: 2}
		if p.TLS != nil {
			tr.TLSClientConfig = p.TLS.ClientConfig(n.Name)
		}
		p.clients[n.Name] = &http.Client{Timeout: p.Timeout, Transport: tr}
	}
	ln, err := net.Listen("tcp", self.Membership)
	if err != nil {
		return fmt.Errorf("membership %s: %w", self.Membership, err)
	}
	if p.TLS != nil {
		ln = tls.NewListener(ln, p.TLS.ServerConfig())
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		var ids []string
		if set := c.MemberList.Members(); set != nil {
			for _, m := range set.Members() {
				ids = append(ids, m.Id)
			}
		}
		_ = json.NewEncoder(w).Encode(health{Cluster: p.Cluster.Name, Node: p.Node, ID: p.id(), Remote: self.Remote, Members: ids})
	})
	p.srv = &http.Server{Handler: mux, ReadHeaderTimeout: time.Second}
	if p.TLS != nil {
		// Failed handshakes (http.Server logs them), rate-limited.
		p.srv.ErrorLog = log.New(refusalWriter{p.TLS}, "", 0)
	}
	go func() { _ = p.srv.Serve(ln) }()
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	go p.monitor()
	return nil
}

// StartClient implements cluster.ClusterProvider (nodes are members only).
func (p *StaticProvider) StartClient(*cluster.Cluster) error {
	return errors.New("static provider: client mode is not supported")
}

// Shutdown implements cluster.ClusterProvider.
func (p *StaticProvider) Shutdown(bool) error {
	if p.stop == nil {
		return nil
	}
	select {
	case <-p.stop:
		return nil
	default:
	}
	close(p.stop)
	<-p.done
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return p.srv.Shutdown(ctx)
}

func (p *StaticProvider) monitor() {
	defer close(p.done)
	last := time.Now()
	for {
		if gap := time.Since(last); gap > p.StallAfter {
			p.rejoin("this node was stalled: its peers have dropped it", "stalled", gap.Round(time.Millisecond))
		}
		last = time.Now()
		ms := p.members()
		// A peer that answers but has not listed this member for a while
		// dropped it (and blocks its id): rejoin under a new one.
		p.mu.Lock()
		lost := p.unlisted >= 3 && time.Since(p.since) > p.DropAfter+2*p.Refresh
		p.mu.Unlock()
		if lost {
			p.rejoin("a peer dropped this node")
		}
		p.c.MemberList.UpdateClusterTopology(ms)
		select {
		case <-p.stop:
			return
		case <-time.After(p.Refresh):
		}
	}
}

func (p *StaticProvider) rejoin(why string, args ...any) {
	p.mu.Lock()
	p.incarnation, p.since, p.unlisted = time.Now().UnixNano(), time.Now(), 0
	p.mu.Unlock()
	p.Log.Warn(why+"; rejoining as a new member", append(args, "member", p.id())...)
}

// members asks every peer for its health, in parallel; a peer stays a
// member until it has failed its checks for DropAfter.
func (p *StaticProvider) members() []*cluster.Member {
	out := make([]*cluster.Member, len(p.Cluster.Nodes))
	answers := make([]*health, len(p.Cluster.Nodes))
	var wg sync.WaitGroup
	for i := range p.Cluster.Nodes {
		n := &p.Cluster.Nodes[i]
		if n.Name == p.Node {
			out[i] = member(p.id(), n.Remote)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), p.Timeout)
			defer cancel()
			scheme := "http://"
			if p.TLS != nil {
				scheme = "https://"
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, scheme+n.Membership+"/_health", nil)
			resp, err := p.clients[n.Name].Do(req)
			if p.TLS != nil {
				p.noteTLS(n.Name, err)
			}
			if err != nil {
				return
			}
			defer resp.Body.Close()
			var h health
			if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&h) != nil ||
				h.Cluster != p.Cluster.Name || h.Node != n.Name || NodeOf(h.ID) != n.Name {
				return
			}
			answers[i] = &h
		}()
	}
	wg.Wait()
	now, me := time.Now(), p.id()
	p.mu.Lock()
	unlisted := false
	for i := range p.Cluster.Nodes {
		n := &p.Cluster.Nodes[i]
		if n.Name == p.Node {
			continue
		}
		if h := answers[i]; h != nil {
			ours := false
			for _, id := range h.Members {
				ours = ours || id == me
			}
			if !ours {
				unlisted = true
			}
			p.seen[n.Name] = seenPeer{id: h.ID, at: now, ours: ours}
		}
		if sp, ok := p.seen[n.Name]; ok && now.Sub(sp.at) <= p.DropAfter {
			out[i] = member(sp.id, n.Remote)
		}
	}
	if unlisted {
		p.unlisted++
	} else {
		p.unlisted = 0
	}
	p.mu.Unlock()
	ms := out[:0]
	for _, m := range out {
		if m != nil {
			ms = append(ms, m)
		}
	}
	return ms
}

// noteTLS logs a peer whose membership check fails on TLS (a certificate
// of another CA, or one that names another node), once until it passes.
func (p *StaticProvider) noteTLS(peer string, err error) {
	failing := err != nil && IsTLSError(err)
	p.mu.Lock()
	was := p.tlsFailing[peer]
	p.tlsFailing[peer] = failing
	p.mu.Unlock()
	if failing && !was {
		p.Log.Warn("membership: peer refused: its TLS handshake failed (it stays out of the topology)", "node", peer, "err", err)
	}
}

// refusalWriter takes the membership server's log lines (a failed TLS
// handshake: a plaintext client, a certificate of another CA, one naming
// no node) to TLS's rate-limited refusal log.
type refusalWriter struct{ t *TLS }

func (w refusalWriter) Write(b []byte) (int, error) {
	w.t.refused("membership", nil, errors.New(strings.TrimSpace(string(b))))
	return len(b), nil
}

func member(id, remote string) *cluster.Member {
	host, port, _ := net.SplitHostPort(remote)
	pn, _ := strconv.Atoi(port)
	return &cluster.Member{Id: id, Host: host, Port: int32(pn)}
}

// Alive returns the node names protoactor's member list holds (nil before
// the first topology), found by their remote address in the cluster file
// (a node may briefly have two member ids there: its old incarnation's
// and its new one's).
func Alive(c *cluster.Cluster, cl *config.Cluster) map[string]bool {
	set := c.MemberList.Members()
	if set == nil || set.Len() == 0 {
		return nil
	}
	byAddr := make(map[string]string, len(cl.Nodes))
	for _, n := range cl.Nodes {
		byAddr[n.Remote] = n.Name
	}
	out := map[string]bool{}
	for _, m := range set.Members() {
		if n, ok := byAddr[net.JoinHostPort(m.Host, strconv.Itoa(int(m.Port)))]; ok {
			out[n] = true
		}
	}
	return out
}
