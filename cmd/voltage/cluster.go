package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/cluster"
	"github.com/asynkron/protoactor-go/cluster/identitylookup/disthash"
	"github.com/asynkron/protoactor-go/remote"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/actors/acquisition"
	"github.com/voltage-ems/voltage/actors/alarm"
	"github.com/voltage-ems/voltage/actors/history"
	"github.com/voltage-ems/voltage/actors/node"
	"github.com/voltage-ems/voltage/actors/placement"
	"github.com/voltage-ems/voltage/actors/redisbus"
	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

// placedParts are the parts of a node the cluster placement starts and stops.
type placedParts struct {
	system     *actor.ActorSystem
	root       *actor.PID
	channels   *actor.PID
	subscriber *actor.PID
	hist       *history.Writer
	redis      *redis.Client
}

func channelsProps(placed bool, chans []acquisition.Options, strategy actor.SupervisorStrategy) *actor.Props {
	if placed {
		return acquisition.NewPlacedChannelsProps(chans, strategy)
	}
	return acquisition.NewChannelsProps(chans, strategy)
}

// fencedSeen is the idempotency claim of a placed channel: cmd:seen:{id} is
// claimed only while this node's lease on the channel is current, so a node
// that lost the channel (a stall, a partition) never writes a command.
type fencedSeen struct {
	c     redis.UniversalClient
	keys  messages.Keys
	node  string
	lease *placement.Lease
}

func (f fencedSeen) MarkSeen(ctx context.Context, id string) (bool, error) {
	if !f.lease.Valid() {
		return false, acquisition.ErrNotOwner
	}
	first, err := placement.Fence(ctx, f.c, f.keys, f.lease.Kind, f.lease.ID, f.lease.Value(), f.keys.Seen(id), f.node, messages.CommandTTL)
	if errors.Is(err, placement.ErrNotOwner) {
		return false, acquisition.ErrNotOwner
	}
	return first, err
}

// startPlacement builds this node's units from the cluster file and starts
// the placement loop; it stops (releasing the leases) before the actors.
func (n *nodeRun) startPlacement(p *placedParts, member *cluster.Cluster) *placement.Placer {
	cl, cfg, me := n.cluster, n.cfg, n.cfg.Node.Name
	ask := func(pid *actor.PID, msg any) error {
		_, err := p.system.Root.RequestFuture(pid, msg, 10*time.Second).Result()
		return err
	}
	var units []placement.Unit
	for i := range cfg.Channels {
		ch := &cfg.Channels[i]
		pl := cl.Channels.Get(ch.ID)
		if ch.Protocol == config.ProtocolCompute || pl == nil || !slices.Contains(pl.Eligible, me) {
			continue
		}
		id := ch.ID
		units = append(units, placement.Unit{Kind: placement.KindChannel, ID: strconv.FormatUint(uint64(id), 10), Eligible: pl.Eligible,
			Start: func(l *placement.Lease) error {
				return ask(p.channels, &acquisition.StartChannel{ID: id, Guard: l.Valid,
					Seen: fencedSeen{c: p.redis, keys: n.keys, node: me, lease: l}})
			},
			Stop: func() { _ = ask(p.channels, &acquisition.StopChannel{ID: id}) },
		})
	}
	group := func(kind, child string, pl *config.Placement, present bool) {
		if !present || pl == nil || !slices.Contains(pl.Eligible, me) {
			return
		}
		units = append(units, placement.Unit{Kind: kind, ID: "group", Eligible: pl.Eligible,
			Start: func(*placement.Lease) error {
				res, err := p.system.Root.RequestFuture(p.root, &node.StartChild{Name: child}, 10*time.Second).Result()
				if err != nil {
					return err
				}
				pid := res.(*node.ChildPID).PID
				if pid == nil {
					return fmt.Errorf("%s did not start", child)
				}
				p.system.Root.Send(p.subscriber, &redisbus.RegisterConsumer{PID: pid})
				return nil
			},
			Stop: func() { _ = ask(p.root, &node.StopChild{Name: child}) },
		})
	}
	group(placement.KindComputations, "dag", cl.Computations, len(cfg.Computations) > 0)
	group(placement.KindAlarms, "alarms", cl.Alarms, len(cfg.Alarms) > 0)
	if pl := cl.History; pl != nil && slices.Contains(pl.Eligible, me) {
		units = append(units, placement.Unit{Kind: placement.KindHistory, ID: "writer", Eligible: pl.Eligible,
			Start: func(*placement.Lease) error { p.hist.SetPaused(false); return nil },
			Stop:  func() { p.hist.SetPaused(true) },
		})
	}
	self := cl.Node(me)
	started := time.Now().UnixMilli()
	pc := placement.New(placement.Options{
		Leases: &placement.Leases{C: p.redis, Keys: n.keys, Node: me, TTL: cl.LeaseTTL},
		Nodes:  cl.NodeNames(), Units: units, Log: n.log.With("component", "placement"),
		Members: func() map[string]bool { return placement.Alive(member, cl) },
		Beat: func() map[string]any {
			return map[string]any{"substation": self.Substation, "roles": strings.Join(self.Roles, ","),
				"http": self.HTTP, "version": version, "started": started}
		},
	})
	pc.Run()
	n.onStop("placement", pc.Stop)
	n.log.Info("placement running", "units", len(units), "lease_ttl", cl.LeaseTTL, "nodes", strings.Join(cl.NodeNames(), ","))
	return pc
}

// clusterView answers GET /api/cluster (nil without a cluster): Redis's
// view (heartbeats, leases), completed by asking every alive node over
// protoactor remote what it runs.
func (n *nodeRun) clusterView(c *redis.Client, system *actor.ActorSystem) func(ctx context.Context) (any, error) {
	if n.cluster == nil {
		return nil
	}
	return func(ctx context.Context) (any, error) {
		v, err := placement.ReadView(ctx, c, n.keys, n.cluster, n.cfg)
		if err != nil {
			return nil, err
		}
		var wg sync.WaitGroup
		for i := range v.Members {
			m := &v.Members[i]
			m.Missing = []string{}
			peer := n.cluster.Node(m.Name)
			if !m.Alive || peer == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				pid := actor.NewPID(peer.Remote, "voltage/"+placement.RemoteName)
				res, err := system.Root.RequestFuture(pid, &messages.OwnershipRequest{}, 500*time.Millisecond).Result()
				if r, ok := res.(*messages.OwnershipReply); ok && err == nil {
					m.Reachable = true
					if r.Missing != nil {
						m.Missing = r.Missing
					}
				}
			}()
		}
		wg.Wait()
		return v, nil
	}
}

// startMember makes this node a member of the protoactor cluster: remote
// on its remote address (cross-node requests) and membership from the
// configured provider. It stops after the actors.
func (n *nodeRun) startMember(system *actor.ActorSystem) (c *cluster.Cluster, err error) {
	cl := n.cluster
	self := cl.Node(n.cfg.Node.Name)
	host, portStr, _ := net.SplitHostPort(self.Remote)
	port, _ := strconv.Atoi(portStr)
	// Mutual TLS for remote, membership and etcd (the tls section), or a
	// warning: without it anyone who reaches those ports is a peer.
	m, err := cl.LoadTLS(self.Name)
	if err != nil {
		return nil, err
	}
	mtls := placement.NewTLS(cl, m, n.log.With("component", "cluster-tls"))
	if mtls == nil {
		n.log.Warn("cluster traffic is unauthenticated: anyone who reaches the remote and membership ports can join the cluster or send actor messages; set tls in " + cl.File)
	} else {
		n.log.Info("cluster traffic: mutual TLS", "files", self.TLSFiles.String(), "expires", m.Cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	var prov cluster.ClusterProvider
	switch cl.Provider.Kind {
	case config.ProviderEtcd:
		prov = &placement.EtcdProvider{Cluster: cl, Node: self.Name, Endpoints: cl.Provider.Endpoints, TLS: mtls.EtcdConfig(), Log: n.log.With("component", "membership")}
	default:
		prov = &placement.StaticProvider{Cluster: cl, Node: self.Name, TLS: mtls, Log: n.log.With("component", "membership")}
	}
	c = cluster.New(system, cluster.Configure(cl.Name, prov, disthash.New(), remote.Configure(host, port, placement.RemoteOptions(mtls, self.Remote)...)))
	defer func() { // StartMember panics when it cannot listen
		if p := recover(); p != nil {
			err = fmt.Errorf("cluster member on %s: %v", self.Remote, p)
		}
	}()
	c.StartMember()
	n.onStop("cluster member", func() {
		// Leave the membership (deregister), then stop the actor system
		// and remote. Not Shutdown(true): it waits 2 s for grain handover
		// (no grains here).
		if err := prov.Shutdown(true); err != nil {
			n.log.Warn("leaving the cluster membership", "err", err)
		}
		c.Shutdown(false)
	})
	n.log.Info("cluster member", "remote", self.Remote, "membership", self.Membership)
	return c, nil
}

// remoteStatus asks the node holding the channel's lease for its status
// (over protoactor remote, in protobuf); st is the local answer (not
// running here), returned when nobody runs the channel or the owner does
// not answer.
func (n *nodeRun) remoteStatus(ctx context.Context, system *actor.ActorSystem, c *redis.Client, st *messages.ChannelStatus) *messages.ChannelStatus {
	v, err := c.Get(ctx, n.keys.Lease(placement.KindChannel, strconv.FormatUint(uint64(st.ID), 10))).Result()
	if err != nil {
		st.LastError = "not running on this node; no node holds its lease"
		return st
	}
	owner, _ := placement.Owner(v)
	peer := n.cluster.Node(owner)
	if peer == nil || owner == n.cfg.Node.Name {
		return st
	}
	pid := actor.NewPID(peer.Remote, "voltage/"+placement.RemoteName)
	res, err := system.Root.RequestFuture(pid, &messages.ChannelStatusRequest{ChannelId: st.ID}, time.Second).Result()
	reply, ok := res.(*messages.ChannelStatusReply)
	if err != nil || !ok {
		st.Node = owner
		st.LastError = fmt.Sprintf("runs on %s, which did not answer: %v", owner, err)
		return st
	}
	return placement.StatusOf(reply)
}

// forwardAlarmEvents sends the alarm events of other nodes (alarm:event) to
// this node's live sessions, batched like the local ones: in a cluster the
// alarm group runs on one node, and every node's dashboard shows its events.
func (n *nodeRun) forwardAlarmEvents(ctx context.Context, c *redis.Client, send func([]alarm.Event)) {
	ps := c.Subscribe(ctx, n.keys.AlarmEvent())
	n.onStop("alarm event forwarder", func() { _ = ps.Close() })
	msgs := ps.Channel(redis.WithChannelSize(10000))
	go func() {
		var batch []alarm.Event
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					return
				}
				var ev alarm.Event
				if json.Unmarshal([]byte(m.Payload), &ev) != nil || ev.Node == n.cfg.Node.Name {
					continue // this node's own events reach its sessions directly
				}
				batch = append(batch, ev)
				if len(batch) >= 500 {
					send(batch)
					batch = nil
				}
			case <-tick.C:
				if len(batch) > 0 {
					send(batch)
					batch = nil
				}
			}
		}
	}()
}

// clusterAlarms carries an operator's action to the node that runs the
// alarm group (the holder of lease:alarms:group): here directly, elsewhere
// over protoactor remote.
type clusterAlarms struct {
	n      *nodeRun
	system *actor.ActorSystem
	redis  *redis.Client
	local  alarm.Requests
}

func (a *clusterAlarms) do(ctx context.Context, req *messages.AlarmActionRequest, local func() (alarm.State, error)) (alarm.State, error) {
	v, err := a.redis.Get(ctx, a.n.keys.Lease(placement.KindAlarms, "group")).Result()
	if err != nil {
		return alarm.State{}, fmt.Errorf("%w (no node runs the alarm group now)", alarm.ErrNotReady)
	}
	owner, _ := placement.Owner(v)
	if owner == a.n.cfg.Node.Name {
		return local()
	}
	peer := a.n.cluster.Node(owner)
	if peer == nil {
		return alarm.State{}, fmt.Errorf("the alarm group runs on %q, which is not in the cluster file", owner)
	}
	pid := actor.NewPID(peer.Remote, "voltage/"+placement.RemoteName)
	res, err := a.system.Root.RequestFuture(pid, req, 5*time.Second).Result()
	if err != nil {
		return alarm.State{}, fmt.Errorf("alarm group on %s: %w", owner, err)
	}
	reply, ok := res.(*messages.AlarmActionReply)
	if !ok {
		return alarm.State{}, fmt.Errorf("alarm group on %s: unexpected reply", owner)
	}
	return placement.AlarmOutcome(reply)
}

func (a *clusterAlarms) Ack(ctx context.Context, id, user, comment string) (alarm.State, error) {
	return a.do(ctx, &messages.AlarmActionRequest{Action: "ack", Id: id, User: user, Comment: comment},
		func() (alarm.State, error) { return a.local.Ack(ctx, id, user, comment) })
}

func (a *clusterAlarms) Shelve(ctx context.Context, id, user, reason string, d time.Duration) (alarm.State, error) {
	return a.do(ctx, &messages.AlarmActionRequest{Action: "shelve", Id: id, User: user, Reason: reason, ForMs: d.Milliseconds()},
		func() (alarm.State, error) { return a.local.Shelve(ctx, id, user, reason, d) })
}

func (a *clusterAlarms) Unshelve(ctx context.Context, id, user string) (alarm.State, error) {
	return a.do(ctx, &messages.AlarmActionRequest{Action: "unshelve", Id: id, User: user},
		func() (alarm.State, error) { return a.local.Unshelve(ctx, id, user) })
}
