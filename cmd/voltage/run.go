package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/cluster"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/actors/acquisition"
	"github.com/voltage-ems/voltage/actors/alarm"
	"github.com/voltage-ems/voltage/actors/alarm/notify"
	"github.com/voltage-ems/voltage/actors/dag"
	"github.com/voltage-ems/voltage/actors/durable"
	"github.com/voltage-ems/voltage/actors/history"
	"github.com/voltage-ems/voltage/actors/node"
	"github.com/voltage-ems/voltage/actors/placement"
	"github.com/voltage-ems/voltage/actors/redisbus"
	"github.com/voltage-ems/voltage/actors/session"
	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/supervisor"
	"github.com/voltage-ems/voltage/web"
)

// defaultGCPercent is the GOGC of a node when the environment sets none.
const defaultGCPercent = 50

func cmdRun(args []string, stdout, stderr io.Writer) error {
	f := newFlags("run", stderr)
	simulate := f.fs.Bool("simulate", false, "also serve the config's loopback Modbus TCP devices in-process")
	clusterFile := f.fs.String("cluster", "", "cluster `file` (cluster.yaml): run as one node of the cluster")
	nodeName := f.fs.String("node", "", "this node's `name` in the cluster file (with --cluster)")
	log, cfg, err := f.load(args, stderr)
	if err != nil {
		return err
	}
	var cl *config.Cluster
	if *clusterFile != "" || *nodeName != "" {
		if *clusterFile == "" || *nodeName == "" {
			return usageError{"--cluster FILE and --node NAME go together"}
		}
		if cl, err = config.LoadCluster(*clusterFile, cfg); err != nil {
			fmt.Fprintln(stderr, err)
			return fmt.Errorf("%s is not valid", *clusterFile)
		}
		me := cl.Node(*nodeName)
		if me == nil {
			fmt.Fprintln(stderr, cl.UnknownNode(*nodeName))
			return fmt.Errorf("--node %s is not in %s", *nodeName, *clusterFile)
		}
		if _, err := cl.LoadTLS(me.Name); err != nil {
			fmt.Fprintln(stderr, err)
			return fmt.Errorf("%s: the tls files of node %s are not usable", *clusterFile, me.Name)
		}
		if cfg.Redis.URL == "" {
			fmt.Fprintf(stderr, "%s: redis.url: a cluster needs one Redis shared by its nodes (the embedded one is per process)\n", cfg.File)
			return fmt.Errorf("%s is not valid for a cluster", f.config)
		}
		// Name and addresses from the cluster file; each node keeps its
		// own data (history, spool) under data_dir/{node}.
		cfg.Node.Name, cfg.Node.HTTP = me.Name, me.HTTP
		cfg.Node.DataDir = filepath.Join(cfg.Node.DataDir, me.Name)
		log = log.With("cluster", cl.Name)
	}
	if os.Getenv("GOGC") == "" {
		// As VictoriaMetrics does: trade a few percent of CPU for a heap
		// that grows to 1.5x the live data instead of 2x (100,000 point
		// actors: 250 MB peak RSS instead of 300 MB). GOGC overrides it.
		debug.SetGCPercent(defaultGCPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// protoactor logs every dead letter at info (for example the stop
	// messages of an ordered shutdown): keep its logger at warn or above.
	// Its repeated messages (remote reconnect attempts to a member that
	// is down) are throttled to one per 30 s each.
	actorLog := slog.New(newThrottle(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: max(f.level, slog.LevelWarn)}), 30*time.Second))
	n := &nodeRun{cfg: cfg, cluster: cl, log: log.With("node", cfg.Node.Name), actorLog: actorLog.With("node", cfg.Node.Name, "component", "actor"), simulate: *simulate}
	return n.run(ctx)
}

// nodeRun is one run of a node: start the parts in order, wait for the
// signal, stop them in reverse order, every step logged with its duration.
type nodeRun struct {
	cfg      *config.Config
	cluster  *config.Cluster // nil: a single node
	log      *slog.Logger
	actorLog *slog.Logger
	simulate bool
	keys     messages.Keys // the site's Redis names (redis.prefix)
	stops    []func()
	// health lists the damaged files the node recovered from (/ready,
	// /api/status); audit is the tamper-evident audit file and dedupe the
	// durable store of executed command ids, both in data_dir.
	health *durable.Health
	audit  *durable.AuditLog
	dedupe *durable.Dedupe
}

func (n *nodeRun) step(name string, f func() error) error {
	start := time.Now()
	if err := f(); err != nil {
		n.log.Error("start failed", "step", name, "err", err)
		return fmt.Errorf("%s: %w", name, err)
	}
	n.log.Info("started", "step", name, "took", time.Since(start).Round(time.Microsecond))
	return nil
}

func (n *nodeRun) onStop(name string, f func()) {
	n.stops = append(n.stops, func() {
		start := time.Now()
		f()
		n.log.Info("stopped", "step", name, "took", time.Since(start).Round(time.Microsecond))
	})
}

func (n *nodeRun) stopAll() {
	for i := len(n.stops) - 1; i >= 0; i-- {
		n.stops[i]()
	}
}

func (n *nodeRun) run(ctx context.Context) error {
	defer n.stopAll()
	cfg, log := n.cfg, n.log
	keys := messages.NewKeys(cfg.Redis.Prefix)
	n.keys = keys
	cmdKey := messages.NewCommandKey(cfg.Auth.CommandKey, cfg.Auth.CommandKeyPrevious)
	if cmdKey == nil {
		log.Warn("auth.command_key is not set: commands on the Redis bus are not authenticated " +
			"(anyone who can PUBLISH on cmd:{channel}:control writes to the devices)")
	}
	if keys.Prefix() != "" {
		log.Info("redis keys and channels prefixed (redis.prefix)", "prefix", keys.Prefix())
	}
	// go-redis reports pool dial failures through its own logger, twice a
	// second per client while Redis is down; our writer already warns with
	// backoff, so keep go-redis's at debug.
	redis.SetLogger(redisLog{log.With("component", "go-redis")})
	var (
		ro           *redis.Options
		reg          = prometheus.NewRegistry()
		system       *actor.ActorSystem
		rootPID      *actor.PID
		channels     *actor.PID
		writer       *redisbus.Writer
		api          *redis.Client
		feed         *session.Feed
		sessions     *session.Opener
		hist         *history.Writer
		computations func(ctx context.Context) (any, error)
		alarmActions web.AlarmActions
		placed       *placedParts
		placer       *placement.Placer
		member       *cluster.Cluster
		store        history.Store
		alarmStore   *alarm.Store
	)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// First, before anything opens a file in data_dir or a port: a second
	// node on the same data_dir stops here, saying which process has it.
	if err := n.step("data_dir lock", func() error {
		l, err := durable.LockDataDir(cfg.Node.DataDir)
		if err != nil {
			return err
		}
		n.onStop("data_dir lock", func() { _ = l.Release() })
		n.health = durable.NewHealth(reg, "history", "spool", "dedupe", "audit")
		return nil
	}); err != nil {
		return err
	}
	if err := n.step("redis", func() (err error) {
		if ro, err = n.redis(); err != nil {
			return err
		}
		api = redis.NewClient(ro) // API reads, idempotency checks
		n.onStop("redis api client", func() { _ = api.Close() })
		return nil
	}); err != nil {
		return err
	}
	if n.simulate {
		if err := n.step("simulator", n.startSimulators); err != nil {
			return err
		}
	}
	if err := n.step("history", func() (err error) {
		if hist, store, err = n.history(reg); err != nil {
			return err
		}
		n.onStop("history", hist.Stop) // idempotent: normally its actor stops it first
		return nil
	}); err != nil {
		return err
	}
	if err := n.step("audit and dedupe", n.openAuditDedupe(reg)); err != nil {
		return err
	}
	if err := n.step("actors", func() error {
		system = actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
			return n.actorLog
		}))
		if n.cluster != nil {
			var err error
			if member, err = n.startMember(system); err != nil {
				return err
			}
		}
		stats := supervisor.NewStats(nil)
		sm, err := supervisor.NewMetrics(reg)
		if err != nil {
			return err
		}
		strategy := func(kind string) actor.SupervisorStrategy {
			return supervisor.NewStrategy(supervisor.DefaultPolicy(),
				supervisor.Observers(stats, sm.Kind(kind), supervisor.Log(log)))
		}
		bm := redisbus.NewMetrics(reg, func() float64 { return float64(writer.QueueDepth()) })
		writer = redisbus.NewWriter(ro, redisbus.WriterOptions{Node: cfg.Node.Name, Keys: keys,
			// Alarm states come back into a Redis that lost them at the
			// moment the point hashes do.
			OnResync: func() { alarmStore.Resync() }, Log: log.With("component", "redis-writer"), Metrics: bm})
		// Local consumers (live sessions) get this node's updates directly,
		// batched every 20 ms (the L1 path); other nodes' come through the
		// Redis subscriber.
		hubPID := system.NewLocalPID("voltage/sessions")
		feed = session.NewFeed(func(b *messages.PointUpdates) { system.Root.Send(hubPID, b) }, 20*time.Millisecond)
		n.onStop("session feed", feed.Stop)
		// Computations read this node's updates through a feed of their own
		// and publish their outputs to the same sinks, except that feed.
		dagPID := system.NewLocalPID("voltage/dag")
		dagFeed := session.NewFeed(func(b *messages.PointUpdates) { system.Root.Send(dagPID, b) }, 20*time.Millisecond)
		n.onStop("computation feed", dagFeed.Stop)
		// Alarm rules read this node's updates and computed points through a
		// third feed, flushed more often: update -> event latency.
		alarmsPID := system.NewLocalPID("voltage/alarms")
		alarmFeed := session.NewFeed(func(b *messages.PointUpdates) { system.Root.Send(alarmsPID, b) }, 5*time.Millisecond)
		n.onStop("alarm feed", alarmFeed.Stop)
		watched := alarm.NewWatched(cfg, alarmFeed)
		outputs := acquisition.Tee{writer, feed, hist}
		sink := acquisition.Tee{writer, feed, hist, dagFeed}
		if len(cfg.Alarms) > 0 {
			outputs = append(outputs, watched)
			sink = append(sink, watched)
		}
		alarmRedis := redis.NewClient(ro)
		n.onStop("alarm redis client", func() { _ = alarmRedis.Close() })
		alarmMetrics := alarm.NewMetrics(reg, func() float64 { return float64(alarmStore.Queued()) })
		alarmStore = alarm.NewStore(alarmRedis, alarm.StoreOptions{Node: cfg.Node.Name, Keys: keys, Log: log.With("component", "alarm-store"), Metrics: alarmMetrics})
		n.onStop("alarm store", func() { alarmStore.Stop(5 * time.Second) })
		nlog := log.With("component", "alarm-notify")
		notifier := notify.New(notify.Options{Log: nlog, Metrics: notify.NewMetrics(reg)})
		n.requeueWebhooks(notifier, alarmRedis, keys, nlog)
		n.onStop("alarm webhooks", func() {
			// Stop waits for queued deliveries: keep it short at shutdown.
			// What is left is kept in Redis for the next run.
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if und := notifier.Stop(sctx); len(und) > 0 {
				kctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				if err := notify.Keep(kctx, alarmRedis, keys.NotifyPending(cfg.Node.Name), und); err != nil {
					nlog.Error("undelivered webhook events lost: cannot keep them in redis", "events", len(und), "err", err)
				} else {
					nlog.Info("undelivered webhook events kept in redis for the next run", "events", len(und), "key", keys.NotifyPending(cfg.Node.Name))
				}
			}
		})
		var known []messages.PointKey
		for i := range cfg.Channels {
			for j := range cfg.Channels[i].Points {
				known = append(known, cfg.Channels[i].Points[j].Key(cfg.Channels[i].ID))
			}
		}
		names := keys
		readPoints := func(keys []messages.PointKey) ([]messages.PointUpdate, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return redisbus.ReadPoints(ctx, api, names, keys)
		}
		am := acquisition.NewMetrics(reg)
		seen := redisbus.NewIdempotency(api, cfg.Node.Name, keys)
		// Every accepted, refused and duplicate command and every result
		// goes to Redis (audit:commands, results) and to the audit file.
		commandSink := acquisition.CommandSinks{writer, acquisition.AuditCommands{Sink: n.audit, Node: cfg.Node.Name}}
		dispatcher := node.NewPoolDispatcher(2*runtime.GOMAXPROCS(0), 300)
		policy := supervisor.DefaultPolicy()
		var chans []acquisition.Options
		for i := range cfg.Channels {
			ch := &cfg.Channels[i]
			if ch.Protocol == config.ProtocolCompute {
				continue
			}
			chans = append(chans, acquisition.Options{
				Channel: ch, Node: cfg.Node.Name, Sink: sink, Log: log, Metrics: am,
				Supervisor: strategy("point"), Dispatcher: dispatcher,
				CommandSource: system.NewLocalPID("voltage/redis-subscriber"), Seen: seen, Commands: commandSink,
				CommandKey: cmdKey, Dedupe: n.dedupe,
				Restarts: stats.Under,
				ReconnectDelay: func(k int) time.Duration {
					return policy.Delay(k, rand.Float64())
				},
			})
		}
		subProps := actor.PropsFromProducer(redisbus.NewSubscriberActor(func(deliver func([]messages.PointUpdate)) *redisbus.Subscriber {
			return redisbus.NewSubscriber(ro, cfg.Node.Name, keys, deliver, log.With("component", "redis-subscriber"), bm)
		}))
		root := node.NewRootProps([]node.Child{
			{Name: "redis-writer", Props: actor.PropsFromProducer(func() actor.Actor { return &redisbus.WriterActor{W: writer} })},
			{Name: "redis-subscriber", Props: subProps},
			{Name: "history", Props: actor.PropsFromProducer(func() actor.Actor { return &history.WriterActor{W: hist} })},
			{Name: "sessions", Props: session.NewHubProps(known, readPoints, strategy("session"))},
			{Name: "dag", Placed: n.cluster != nil, Props: dag.NewProps(dag.Options{Config: cfg, Node: cfg.Node.Name, Sink: outputs,
				Store: dag.RedisStateStore{Client: api, Keys: keys}, Log: log.With("component", "dag"),
				Supervisor: strategy("computation"), OnWave: dagMetrics(reg)}, stats.For)},
			{Name: "alarms", Placed: n.cluster != nil, Props: alarm.NewProps(alarm.Options{Config: cfg, Node: cfg.Node.Name,
				Redis: alarmRedis, Store: alarmStore, Notifier: notifier, Metrics: alarmMetrics,
				Live: func(evs []alarm.Event) {
					system.Root.Send(hubPID, &session.Broadcast{Frame: &alarm.Frame{Type: "alarm", Events: evs}})
				},
				Log: log.With("component", "alarms"), Supervisor: strategy("alarm"), Dispatcher: dispatcher})},
			{Name: "channels", Props: channelsProps(n.cluster != nil, chans, strategy("channel"))},
			{Name: placement.RemoteName, Props: placement.NewRemoteProps(cfg.Node.Name, system.NewLocalPID("voltage/channels"), alarmsPID,
				func() placement.Status {
					if placer == nil {
						return placement.Status{}
					}
					return placer.Status()
				})},
		}, strategy("service"))
		rootPID, err = system.Root.SpawnNamed(root, "voltage")
		if err != nil {
			return err
		}
		res, err := system.Root.RequestFuture(rootPID, &node.GetChild{Name: "channels"}, 5*time.Second).Result()
		if err != nil {
			return err
		}
		channels = res.(*node.ChildPID).PID
		subscriber := system.NewLocalPID("voltage/redis-subscriber")
		system.Root.Send(subscriber, &redisbus.RegisterConsumer{PID: hubPID})
		system.Root.Send(subscriber, &redisbus.RegisterConsumer{PID: system.NewLocalPID("voltage/history")})
		if n.cluster == nil { // in a cluster, registered when placement starts them
			system.Root.Send(subscriber, &redisbus.RegisterConsumer{PID: dagPID})
			system.Root.Send(subscriber, &redisbus.RegisterConsumer{PID: alarmsPID})
		} else {
			hist.SetPaused(true) // until this node holds the history lease
		}
		placed = &placedParts{system: system, root: rootPID, channels: channels, subscriber: subscriber, hist: hist, redis: api}
		if n.cluster != nil {
			n.forwardAlarmEvents(ctx, alarmRedis, func(evs []alarm.Event) {
				system.Root.Send(hubPID, &session.Broadcast{Frame: &alarm.Frame{Type: "alarm", Events: evs}})
			})
		}
		alarmActions = alarm.Requests{Root: system.Root, PID: alarmsPID}
		if n.cluster != nil { // the alarm group may run on another node
			alarmActions = &clusterAlarms{n: n, system: system, redis: api, local: alarm.Requests{Root: system.Root, PID: alarmsPID}}
		}
		computations = func(ctx context.Context) (any, error) {
			res, err := system.Root.RequestFuture(dagPID, &dag.GetComputations{}, time.Second).Result()
			if err != nil {
				return nil, err
			}
			return res.(*dag.Computations).Items, nil
		}
		sessions = session.NewOpener(system.Root, hubPID)
		n.onStop("actors", func() {
			if err := system.Root.PoisonFuture(rootPID).Wait(); err != nil {
				log.Warn("actors did not stop in time", "err", err)
			}
			if n.cluster == nil { // a cluster member shuts its system down when it leaves
				system.Shutdown()
			}
			dispatcher.Stop()
		})
		return nil
	}); err != nil {
		return err
	}

	if n.cluster != nil {
		if err := n.step("placement", func() error {
			placer = n.startPlacement(placed, member)
			return nil
		}); err != nil {
			return err
		}
	}

	if err := n.step("http", func() error {
		hlog := log.With("component", "http")
		opts, err := web.ServerOptionsOf(&cfg.Node)
		if err != nil {
			return err
		}
		opts.Log, opts.Metrics = hlog, web.NewHTTPMetrics(reg)
		h := web.NewHandler(web.Deps{
			Config: cfg, Redis: api, Keys: keys, CommandKey: cmdKey, Audit: n.audit, Gatherer: reg, Version: version, Log: hlog, Context: ctx, Metrics: opts.Metrics,
			Sessions: sessions, History: store, Computations: computations, Alarms: alarmActions, Cluster: n.clusterView(api, system),
			Warnings: n.warnings,
			Status: func(ctx context.Context, id uint32) (*messages.ChannelStatus, error) {
				res, err := system.Root.RequestFuture(channels, &messages.GetChannelStatus{ChannelID: id}, time.Second).Result()
				if err != nil {
					return nil, err
				}
				st := res.(*messages.ChannelStatus)
				if !st.Running && n.cluster != nil {
					return n.remoteStatus(ctx, system, api, st), nil // ask the node that runs it
				}
				return st, nil
			},
			Ready: func(ctx context.Context) error {
				if err := api.Ping(ctx).Err(); err != nil {
					return fmt.Errorf("redis unreachable: %w", err)
				}
				if n.cluster == nil && len(cfg.Alarms) > 0 && !alarmStore.Seeded() {
					return errors.New("alarms: the rules' states are not loaded and written to redis yet")
				}
				if placer != nil {
					if st := placer.Status(); st.Cycle.IsZero() {
						return errors.New("placement: first cycle not done")
					} else if len(st.Missing) > 0 {
						return fmt.Errorf("placement: this node should run %s but does not hold the lease yet", strings.Join(st.Missing, ", "))
					}
				}
				return nil
			},
		})
		ln, err := web.Listen(cfg.Node.HTTP, opts)
		if err != nil {
			return err
		}
		srv := web.NewServer(h, opts)
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server failed", "err", err)
			}
		}()
		base, try := "http://"+ln.Addr().String(), "curl "
		if opts.TLS != nil {
			base, try = "https://"+ln.Addr().String(), "curl --cacert CA.crt "
			if cfg.Node.TLS.ClientCA != "" {
				try += "--cert CLIENT.crt --key CLIENT.key "
			}
		}
		log.Info("http listening", "addr", base, "try", try+base+"/api/points?pattern=*")
		n.onStop("http", func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		})
		return nil
	}); err != nil {
		return err
	}

	log.Info("node running", "channels", len(cfg.Channels))
	<-ctx.Done()
	log.Info("shutting down")
	return nil
}

// requeueWebhooks queues again the webhook events the previous run could
// not deliver (kept in Redis at its shutdown).
func (n *nodeRun) requeueWebhooks(nt *notify.Notifier, c *redis.Client, keys messages.Keys, log *slog.Logger) {
	var urls []string
	for i := range n.cfg.Alarms {
		urls = append(urls, n.cfg.Alarms[i].Notify...)
	}
	if len(urls) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	evs, dropped, err := notify.TakeKept(ctx, c, keys.NotifyPending(n.cfg.Node.Name), urls)
	if err != nil {
		log.Warn("webhook events kept by the previous run not read (they stay in redis for the next start)", "err", err)
		return
	}
	for _, e := range evs {
		nt.Send([]string{e.URL}, e.EventID, e.Body)
	}
	if len(evs) > 0 || dropped > 0 {
		log.Info("webhook events of the previous run queued again", "events", len(evs), "dropped_url_no_longer_configured", dropped)
	}
}

// history opens the history store (InfluxDB, or the embedded store in
// data_dir when influxdb.url is empty), the spool in data_dir and the batch
// writer. The writer closes both when its actor stops.
func (n *nodeRun) history(reg prometheus.Registerer) (*history.Writer, history.Store, error) {
	cfg, log := n.cfg, n.log.With("component", "history")
	if err := os.MkdirAll(cfg.Node.DataDir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("node.data_dir: %w", err)
	}
	var store history.Store
	if cfg.InfluxDB.URL == "" {
		path := filepath.Join(cfg.Node.DataDir, "history.db")
		e, err := history.OpenEmbedded(path, cfg.InfluxDB.Retention, log)
		if err != nil {
			return nil, nil, err
		}
		if d := e.Damage(); d != nil {
			n.health.Report("history", d.String())
		}
		log.Info("embedded history (influxdb.url is empty)", "file", path, "retention", cfg.InfluxDB.Retention)
		store = e
	} else {
		i, err := history.NewInflux(cfg.InfluxDB, log)
		if err != nil {
			return nil, nil, err
		}
		log.Info("history to influxdb", "bucket", cfg.InfluxDB.Bucket)
		store = i
	}
	sp, err := history.OpenSpool(filepath.Join(cfg.Node.DataDir, "spool.db"), int64(cfg.InfluxDB.SpoolMaxMB)<<20, log)
	if err != nil {
		_ = store.Close()
		return nil, nil, err
	}
	if d := sp.Damage(); d != nil {
		n.health.Report("spool", d.String())
	}
	if st := sp.Stats(); st.Batches > 0 {
		log.Info("spooled history from a previous run will be replayed", "batches", st.Batches, "points", st.Points)
	}
	w := history.NewWriter(store, sp, history.WriterOptions{BatchSize: cfg.InfluxDB.BatchSize,
		FlushInterval: cfg.InfluxDB.FlushInterval, Log: log, Metrics: history.NewMetrics(reg)})
	return w, store, nil
}

// openAuditDedupe opens the audit file (data_dir/audit.log) and the dedupe
// store (data_dir/dedupe.db); both close after the actors have stopped.
func (n *nodeRun) openAuditDedupe(reg prometheus.Registerer) func() error {
	return func() error {
		dir := n.cfg.Node.DataDir
		alog := n.log.With("component", "audit")
		a, err := durable.OpenAudit(filepath.Join(dir, "audit.log"), durable.AuditOptions{Node: n.cfg.Node.Name, Log: alog, Registerer: reg})
		if err != nil {
			return err
		}
		n.audit = a
		n.onStop("audit log", func() {
			if err := a.Close(); err != nil {
				alog.Error("audit log: close", "err", err)
			}
		})
		if r := a.Repaired(); r != "" {
			n.health.Report("audit", r)
		}
		dlog := n.log.With("component", "dedupe")
		d, err := durable.OpenDedupe(filepath.Join(dir, "dedupe.db"), durable.DedupeOptions{Log: dlog, Registerer: reg})
		if err != nil {
			return err
		}
		n.dedupe = d
		n.onStop("dedupe store", func() {
			if err := d.Close(); err != nil {
				dlog.Error("dedupe store: close", "err", err)
			}
		})
		if dm := d.Damage(); dm != nil {
			n.health.Report("dedupe", dm.String())
		}
		return nil
	}
}

// warnings lists what the node recovered from, for /ready and /api/status.
func (n *nodeRun) warnings() []web.Warning {
	ps := n.health.Problems()
	out := make([]web.Warning, len(ps))
	for i, p := range ps {
		out[i] = web.Warning{Component: p.Component, Reason: p.Reason, Time: p.Time}
	}
	return out
}

// redis returns the options of the configured Redis, or starts the embedded
// one when redis.url is empty.
func (n *nodeRun) redis() (*redis.Options, error) {
	if n.cfg.Redis.URL != "" {
		ro, err := redisOptions(&n.cfg.Redis)
		if err != nil {
			return nil, err
		}
		n.log.Info("using redis", "addr", ro.Addr, "db", ro.DB, "user", ro.Username, "tls", ro.TLSConfig != nil)
		return ro, nil
	}
	m := miniredis.NewMiniRedis()
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("embedded redis: %w", err)
	}
	n.onStop("embedded redis", m.Close)
	host, port, _ := strings.Cut(m.Addr(), ":")
	n.log.Info("embedded redis listening (redis.url is empty)", "addr", m.Addr(),
		"watch", fmt.Sprintf("redis-cli -h %s -p %s subscribe point:update", host, port))
	return &redis.Options{Addr: m.Addr()}, nil
}

// redisLog adapts slog to go-redis's internal logger.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...interface{}) {
	l.log.DebugContext(ctx, fmt.Sprintf(format, v...))
}

// dagMetrics exports the computation waves: evaluations and the latency from
// the oldest input sample of a wave to its end.
func dagMetrics(reg prometheus.Registerer) func(inputs, evaluations int, oldest, done time.Time) {
	evals := prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_dag_evaluations_total", Help: "Computations evaluated."})
	waves := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "voltage_dag_wave_seconds",
		Help:    "From the oldest input sample of a computation wave to all its outputs published.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)})
	reg.MustRegister(evals, waves)
	return func(_, evaluations int, oldest, done time.Time) {
		evals.Add(float64(evaluations))
		if !oldest.IsZero() {
			waves.Observe(done.Sub(oldest).Seconds())
		}
	}
}
