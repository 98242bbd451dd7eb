package redisbus

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/messages"
)

// UpdateChannel is the contract's Redis channel of point updates (without
// a site prefix; see messages.Keys).
const UpdateChannel = "point:update"

// WriterOptions tune the writer. Zero values take the contract defaults.
type WriterOptions struct {
	Node          string        // stamped on nothing; kept for logs
	Keys          messages.Keys // the site's key names (redis.prefix)
	FlushInterval time.Duration // default 20 ms
	FlushUpdates  int           // flush when this many updates are queued; default 1000
	MaxQueue      int           // queued updates before coalescing to newest-per-point; default 100000
	MaxCommands   int           // queued command results and audit entries; default 10000, oldest dropped beyond
	RetryMin      time.Duration // first retry after a failed flush; default 100 ms
	RetryMax      time.Duration // default 5 s
	Log           *slog.Logger
	Metrics       *Metrics
	// OnResync is called after the writer rewrote every point's hashes into
	// a Redis that may have lost them (a new connection, a restart), from
	// the flush goroutine; it must not block.
	OnResync func()
}

// Writer pipelines point state into Redis: HSET of the value, ts and q hashes
// and PUBLISH point:update, in the order the updates were produced.
type Writer struct {
	client *redis.Client
	opt    WriterOptions

	mu       sync.Mutex
	pending  []messages.PointUpdate
	spare    []messages.PointUpdate
	state    map[messages.PointKey]messages.PointUpdate // newest of every point
	dirty    map[messages.PointKey]struct{}             // changed while coalescing
	coalesce bool                                       // Redis failing or queue overflowing
	full     bool                                       // every point's hashes must be rewritten

	commands       []commandEvent // audit entries and results, oldest first, bounded
	droppedResults atomic.Int64

	newConn atomic.Bool  // a new connection was opened: Redis may be a new, empty one
	conns   atomic.Int64 // connections opened so far
	written atomic.Int64 // updates published to Redis
	kick    chan struct{}

	startOnce, stopOnce sync.Once
	cancel              context.CancelFunc
	done                chan struct{}

	enc encoder // used by the flush loop only
}

// NewWriter creates a writer with its own Redis client built from ro.
func NewWriter(ro *redis.Options, opt WriterOptions) *Writer {
	if opt.FlushInterval <= 0 {
		opt.FlushInterval = 20 * time.Millisecond
	}
	if opt.FlushUpdates <= 0 {
		opt.FlushUpdates = 1000
	}
	if opt.MaxQueue <= 0 {
		opt.MaxQueue = 100000
	}
	if opt.MaxCommands <= 0 {
		opt.MaxCommands = 10000
	}
	if opt.RetryMin <= 0 {
		opt.RetryMin = 100 * time.Millisecond
	}
	if opt.RetryMax <= 0 {
		opt.RetryMax = 5 * time.Second
	}
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Metrics == nil {
		opt.Metrics = NewMetrics(nil, nil)
	}
	w := &Writer{
		opt:   opt,
		state: make(map[messages.PointKey]messages.PointUpdate),
		dirty: make(map[messages.PointKey]struct{}),
		kick:  make(chan struct{}, 1),
		done:  make(chan struct{}),
		enc:   newEncoder(opt.Keys),
	}
	ro = cloneOptions(ro)
	prev := ro.OnConnect
	ro.OnConnect = func(ctx context.Context, cn *redis.Conn) error {
		if w.conns.Add(1) > 1 { // the first connection finds whatever Redis holds
			w.newConn.Store(true)
		}
		if prev != nil {
			return prev(ctx, cn)
		}
		return nil
	}
	w.client = redis.NewClient(ro)
	return w
}

func cloneOptions(ro *redis.Options) *redis.Options {
	c := *ro
	if c.PoolSize == 0 {
		c.PoolSize = 2 // one flush loop; a second for Close races
	}
	return &c
}

// Publish queues one update. It never blocks on Redis and does not allocate
// once the queue has grown to its working size.
func (w *Writer) Publish(u *messages.PointUpdate) {
	w.mu.Lock()
	w.state[u.Key] = *u
	if w.coalesce {
		w.dirty[u.Key] = struct{}{}
		w.mu.Unlock()
		return
	}
	w.pending = append(w.pending, *u)
	n := len(w.pending)
	if n > w.opt.MaxQueue {
		w.toCoalesceLocked(w.pending)
		w.pending = w.pending[:0]
	}
	w.mu.Unlock()
	if n == w.opt.FlushUpdates {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// QueueDepth is the number of updates waiting for Redis.
func (w *Writer) QueueDepth() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending) + len(w.dirty) + len(w.commands)
}

// Published is the number of updates written to Redis so far.
func (w *Writer) Published() int64 { return w.written.Load() }

// Points is the number of distinct points the writer holds state for.
func (w *Writer) Points() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.state)
}

func (w *Writer) toCoalesceLocked(batch []messages.PointUpdate) {
	w.coalesce = true
	for i := range batch {
		w.dirty[batch[i].Key] = struct{}{}
	}
}

// Start runs the flush loop until Stop. It is idempotent.
func (w *Writer) Start() {
	w.startOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		w.cancel = cancel
		go w.loop(ctx)
	})
}

// Stop flushes what is queued (trying for at most timeout) and closes the
// client. It is idempotent.
func (w *Writer) Stop(timeout time.Duration) {
	w.stopOnce.Do(func() {
		if w.cancel != nil {
			w.cancel()
			<-w.done
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := w.flush(ctx); err != nil {
			w.opt.Log.Warn("redis writer: final flush failed", "err", err, "queued", w.QueueDepth())
		}
		_ = w.client.Close()
	})
}

func (w *Writer) loop(ctx context.Context) {
	defer close(w.done)
	t := time.NewTicker(w.opt.FlushInterval)
	defer t.Stop()
	retry := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.kick:
		}
		err := w.flush(ctx)
		if err == nil {
			retry = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		retry = nextRetry(retry, w.opt.RetryMin, w.opt.RetryMax)
		w.opt.Log.Warn("redis writer: flush failed, keeping newest state of each point",
			"err", err, "retry_in", retry, "coalesced", w.QueueDepth())
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

func nextRetry(cur, min, max time.Duration) time.Duration {
	if cur == 0 {
		return min
	}
	if cur *= 2; cur > max {
		cur = max
	}
	return cur
}

// flush writes the queued point updates, then the queued command events
// (so a write's readback value is in the hashes before its result is out).
func (w *Writer) flush(ctx context.Context) error {
	if err := w.flushPoints(ctx); err != nil {
		return err
	}
	return w.flushCommands(ctx)
}

// flushPoints writes what is queued. On failure nothing is lost: the batch's
// points are marked dirty and the writer coalesces until a flush succeeds.
func (w *Writer) flushPoints(ctx context.Context) error {
	if w.newConn.Swap(false) {
		w.mu.Lock()
		w.full = true
		w.mu.Unlock()
	}
	w.mu.Lock()
	if !w.coalesce && !w.full {
		batch := w.pending
		w.pending = w.spare[:0]
		w.mu.Unlock()
		if len(batch) == 0 {
			w.spare = batch
			return nil
		}
		err := w.write(ctx, batch, nil)
		if err != nil {
			w.mu.Lock()
			w.toCoalesceLocked(batch)
			w.full = true
			w.mu.Unlock()
		}
		w.spare = batch[:0]
		return err
	}
	// Coalescing or rewriting: publish the newest state of every dirty point
	// (and of every point still in the queue), and when full is set rewrite
	// the hashes of all points.
	for i := range w.pending {
		w.dirty[w.pending[i].Key] = struct{}{}
	}
	w.pending = w.pending[:0]
	pubs := make([]messages.PointUpdate, 0, len(w.dirty))
	for k := range w.dirty {
		pubs = append(pubs, w.state[k])
	}
	var all []messages.PointUpdate
	full := w.full
	if full {
		all = make([]messages.PointUpdate, 0, len(w.state))
		for _, u := range w.state {
			all = append(all, u)
		}
	}
	clear(w.dirty)
	w.coalesce = true // new updates go to dirty until this write is done
	w.full = false
	w.mu.Unlock()
	sortByTime(pubs)

	err := w.write(ctx, pubs, all)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		for i := range pubs {
			w.dirty[pubs[i].Key] = struct{}{}
		}
		w.full = w.full || full
		return err
	}
	if full {
		w.opt.Metrics.Resyncs.Inc()
		w.opt.Log.Info("redis writer: point hashes rewritten", "points", len(all), "published", len(pubs))
		if w.opt.OnResync != nil {
			w.opt.OnResync()
		}
	}
	// Hand what arrived meanwhile back to the ordinary queue.
	for k := range w.dirty {
		w.pending = append(w.pending, w.state[k])
	}
	sortByTime(w.pending)
	clear(w.dirty)
	w.coalesce = false
	return nil
}

// maxPipeline bounds the updates of one pipeline, so a large backlog (the
// first poll of 100,000 points, a replay) neither holds a huge buffer nor
// stalls Redis for other clients.
const maxPipeline = 5000

// write sends hashOnly (state rewrite, no publish) and then pubs (HSETs and
// a PUBLISH each, in order) in pipelines of at most maxPipeline updates.
func (w *Writer) write(ctx context.Context, pubs, hashOnly []messages.PointUpdate) error {
	for len(hashOnly) > 0 {
		n := min(len(hashOnly), maxPipeline)
		if err := w.writeChunk(ctx, nil, hashOnly[:n]); err != nil {
			return err
		}
		hashOnly = hashOnly[n:]
	}
	for len(pubs) > 0 {
		n := min(len(pubs), maxPipeline)
		if err := w.writeChunk(ctx, pubs[:n], nil); err != nil {
			return err
		}
		pubs = pubs[n:]
	}
	return nil
}

// writeChunk sends one pipeline.
func (w *Writer) writeChunk(ctx context.Context, pubs, hashOnly []messages.PointUpdate) error {
	start := time.Now()
	e := &w.enc
	e.reset()
	pipe := w.client.Pipeline()
	if len(hashOnly) > 0 {
		for i := range hashOnly {
			e.addHash(&hashOnly[i])
		}
		e.flushHashes(ctx, pipe)
	}
	for i := range pubs {
		e.addHash(&pubs[i])
	}
	e.flushHashes(ctx, pipe) // HSET before PUBLISH: a subscriber reading the hash sees the new value
	for i := range pubs {
		pipe.Publish(ctx, e.updates, e.json(&pubs[i]))
	}
	cmds, err := pipe.Exec(ctx)
	if err == nil {
		for _, c := range cmds {
			if c.Err() != nil {
				err = c.Err()
				break
			}
		}
	}
	if err != nil {
		w.opt.Metrics.FlushErrors.Inc()
		return err
	}
	w.opt.Metrics.FlushSeconds.Observe(time.Since(start).Seconds())
	w.opt.Metrics.FlushSize.Observe(float64(len(pubs)))
	w.opt.Metrics.Published.Add(float64(len(pubs)))
	w.written.Add(int64(len(pubs)))
	return nil
}

// sortByTime orders coalesced updates by sample time, so replayed messages
// come out in the order they were produced.
func sortByTime(us []messages.PointUpdate) {
	slices.SortStableFunc(us, func(a, b messages.PointUpdate) int { return cmp.Compare(a.Timestamp, b.Timestamp) })
}

// encoder builds pipeline arguments in one reusable byte arena; strings handed
// to go-redis point into it and stay valid until the next reset (after Exec).
type encoder struct {
	names   messages.Keys
	updates string // names.Updates(), built once: PUBLISH runs per update
	arena   []byte
	groups  map[hashID]*hashGroup
	order   []*hashGroup
	keys    map[hashID][3]string
}

type hashID struct {
	ch uint32
	t  messages.PointType
}

type hashGroup struct {
	id                hashID
	values, ts, quals []any
}

func newEncoder(names messages.Keys) encoder {
	return encoder{names: names, updates: names.Updates(), groups: map[hashID]*hashGroup{}, keys: map[hashID][3]string{}}
}

func (e *encoder) reset() {
	e.arena = e.arena[:0]
	if cap(e.arena) == 0 {
		e.arena = make([]byte, 0, 256<<10)
	}
}

// str appends b's tail to the arena and returns it as a string without copying.
// The arena must not grow while strings into it are alive, so a full arena
// starts a fresh one (the old one stays referenced by the strings).
func (e *encoder) str(build func([]byte) []byte) string {
	start := len(e.arena)
	e.arena = build(e.arena) // if it grew, earlier strings keep the old array alive
	b := e.arena[start:]
	return unsafe.String(unsafe.SliceData(b), len(b))
}

func (e *encoder) addHash(u *messages.PointUpdate) {
	id := hashID{u.Key.Channel, u.Key.Type}
	g := e.groups[id]
	if g == nil {
		g = &hashGroup{id: id}
		e.groups[id] = g
	}
	if len(g.values) == 0 {
		e.order = append(e.order, g)
	}
	field := e.str(func(b []byte) []byte { return strconv.AppendUint(b, uint64(u.Key.Point), 10) })
	g.values = append(g.values, field, e.str(func(b []byte) []byte { return messages.AppendValue(b, u.Value) }))
	g.ts = append(g.ts, field, e.str(func(b []byte) []byte { return strconv.AppendInt(b, u.Timestamp, 10) }))
	g.quals = append(g.quals, field, qualityArgs[u.Quality])
}

const maxFieldsPerHSET = 1000

// qualityArgs are the quality names boxed once, so the hot path does not box them.
var qualityArgs = func() (a [256]any) {
	for i := range a {
		a[i] = messages.Quality(i).String()
	}
	return a
}()

func (e *encoder) flushHashes(ctx context.Context, pipe redis.Pipeliner) {
	for _, g := range e.order {
		k := e.hashKeys(g.id)
		for i := 0; i < len(g.values); i += 2 * maxFieldsPerHSET {
			j := min(i+2*maxFieldsPerHSET, len(g.values))
			pipe.HSet(ctx, k[0], g.values[i:j]...)
			pipe.HSet(ctx, k[1], g.ts[i:j]...)
			pipe.HSet(ctx, k[2], g.quals[i:j]...)
		}
		// go-redis copies the arguments into its command: the slices can be reused.
		g.values, g.ts, g.quals = g.values[:0], g.ts[:0], g.quals[:0]
	}
	e.order = e.order[:0]
}

func (e *encoder) hashKeys(id hashID) [3]string {
	k, ok := e.keys[id]
	if !ok {
		base := e.names.PointHash(id.ch, id.t)
		k = [3]string{base, base + ":ts", base + ":q"}
		e.keys[id] = k
	}
	return k
}

func (e *encoder) json(u *messages.PointUpdate) string {
	return e.str(func(b []byte) []byte { return u.AppendJSON(b) })
}
