package history

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/supervisor"
)

// spool is what the writer needs of the durable spool (*Spool).
type spool interface {
	Append(points []messages.PointUpdate) error
	Oldest() (id uint64, points []messages.PointUpdate, ok bool, err error)
	Remove(id uint64) error
	SetAside(id uint64, reason string) error
	Stats() SpoolStats
	Close() error
}

// WriterOptions tune the batch writer.
type WriterOptions struct {
	BatchSize     int               // flush when this many points are queued; default 5000
	FlushInterval time.Duration     // flush at least this often; default 1 s
	WriteTimeout  time.Duration     // of one store write; default 10 s
	Retry         supervisor.Policy // backoff between replay attempts; default 100 ms doubling to 5 s
	// MaxBuffer bounds the points waiting in memory while the store is
	// slower than the updates come: beyond it they go to the spool (on
	// disk, in order) and are replayed from there. Default 20 batches.
	MaxBuffer int
	Log       *slog.Logger
	Metrics   *Metrics
}

// Writer batches every point update into the Store. While the store takes
// batches they go straight to it; once a write fails, that batch and every
// later one go to the spool, in order, and a replayer drains the spool
// oldest first with backoff until it is empty again. A batch the store
// rejects (ErrRejected) is set aside in the spool and reported, never
// retried. Publish never blocks on the store.
type Writer struct {
	store Store
	sp    spool
	opt   WriterOptions
	// paused drops updates: in a cluster, another node holds the history
	// writer's lease.
	paused atomic.Bool

	mu   sync.Mutex
	buf  []messages.PointUpdate
	kick chan struct{}

	lastShed time.Time // of the last shed warning (loop goroutine)

	startOnce, stopOnce sync.Once
	cancel              context.CancelFunc
	done                chan struct{}

	failures int // consecutive failed writes (loop goroutine only)
}

// NewWriter writes into store, spooling into sp.
func NewWriter(store Store, sp spool, opt WriterOptions) *Writer {
	if opt.BatchSize <= 0 {
		opt.BatchSize = 5000
	}
	if opt.FlushInterval <= 0 {
		opt.FlushInterval = time.Second
	}
	if opt.MaxBuffer <= 0 {
		opt.MaxBuffer = 20 * opt.BatchSize
	}
	if opt.WriteTimeout <= 0 {
		opt.WriteTimeout = 10 * time.Second
	}
	if opt.Retry == (supervisor.Policy{}) {
		// Retry a down store soon after it is back: 100 ms doubling to 5 s.
		opt.Retry = supervisor.DefaultPolicy()
		opt.Retry.Max = 5 * time.Second
	}
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Metrics == nil {
		opt.Metrics = NewMetrics(nil)
	}
	return &Writer{store: store, sp: sp, opt: opt, kick: make(chan struct{}, 1), done: make(chan struct{})}
}

// Publish queues one update (it implements acquisition.Sink). The stores
// skip updates without a value (a point never read).
func (w *Writer) Publish(u *messages.PointUpdate) {
	if w.paused.Load() {
		return
	}
	w.mu.Lock()
	w.buf = append(w.buf, *u)
	n := len(w.buf)
	w.mu.Unlock()
	if n == w.opt.BatchSize {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// SetPaused stops (true) or resumes (false) taking updates; what is
// buffered or spooled is still written.
func (w *Writer) SetPaused(paused bool) { w.paused.Store(paused) }

// Start runs the writer until Stop. Idempotent.
func (w *Writer) Start() {
	w.startOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		w.cancel = cancel
		go w.loop(ctx)
	})
}

// Stop writes or spools what is queued, then closes the spool and the
// store. Idempotent.
func (w *Writer) Stop() {
	w.stopOnce.Do(func() {
		if w.cancel != nil {
			w.cancel()
			<-w.done
		}
		if batch := w.take(); len(batch) > 0 {
			w.deliver(context.Background(), batch)
		}
		if err := w.sp.Close(); err != nil {
			w.opt.Log.Warn("history: close spool", "err", err)
		}
		if err := w.store.Close(); err != nil {
			w.opt.Log.Warn("history: close store", "err", err)
		}
	})
}

func (w *Writer) take() []messages.PointUpdate {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := w.buf
	w.buf = make([]messages.PointUpdate, 0, min(cap(b), w.opt.BatchSize))
	return b
}

// takeBatch takes at most one batch, the oldest points.
func (w *Writer) takeBatch() []messages.PointUpdate {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) <= w.opt.BatchSize {
		b := w.buf
		w.buf = make([]messages.PointUpdate, 0, min(cap(b), w.opt.BatchSize))
		return b
	}
	b := append([]messages.PointUpdate(nil), w.buf[:w.opt.BatchSize]...)
	w.buf = append(w.buf[:0], w.buf[w.opt.BatchSize:]...)
	return b
}

// shed moves what is buffered beyond MaxBuffer to the spool: the store is
// slower than the updates, and memory must not grow with the backlog.
func (w *Writer) shed() {
	w.mu.Lock()
	if len(w.buf) <= w.opt.MaxBuffer {
		w.mu.Unlock()
		return
	}
	b := w.buf
	w.buf = make([]messages.PointUpdate, 0, w.opt.BatchSize)
	w.mu.Unlock()
	for i := 0; i < len(b); i += w.opt.BatchSize {
		chunk := b[i:min(i+w.opt.BatchSize, len(b))]
		if err := w.sp.Append(chunk); err != nil {
			w.opt.Metrics.Lost.Add(float64(len(chunk)))
			w.opt.Log.Error("history: points lost: store behind and spool failed", "points", len(chunk), "err", err)
		}
	}
	if now := time.Now(); now.Sub(w.lastShed) > time.Minute {
		w.lastShed = now
		w.opt.Log.Warn("history: the store is slower than the updates; the backlog goes to the spool", "points", len(b), "max_buffer", w.opt.MaxBuffer)
	}
}

func (w *Writer) loop(ctx context.Context) {
	defer close(w.done)
	t := time.NewTicker(w.opt.FlushInterval)
	defer t.Stop()
	var retryAt time.Time
	for {
		wait := w.opt.FlushInterval
		if !retryAt.IsZero() {
			wait = max(time.Until(retryAt), time.Millisecond)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-t.C:
		case <-w.kick:
		case <-timer.C:
		}
		timer.Stop()
		for {
			batch := w.takeBatch()
			if len(batch) == 0 {
				break
			}
			w.deliver(ctx, batch)
			w.shed()
			if len(batch) < w.opt.BatchSize || ctx.Err() != nil {
				break
			}
		}
		if w.sp.Stats().Batches > 0 && (retryAt.IsZero() || !time.Now().Before(retryAt)) {
			switch w.replay(ctx) {
			case replayFailed:
				retryAt = time.Now().Add(w.opt.Retry.Delay(w.failures, rand.Float64()))
			case replayMore: // new batches get their turn, then replay goes on
				retryAt = time.Time{}
				select {
				case w.kick <- struct{}{}:
				default:
				}
			default:
				retryAt = time.Time{}
			}
		}
		w.opt.Metrics.observeSpool(w.sp.Stats())
	}
}

// deliver writes a batch, or spools it when the spool is not empty (order)
// or the write fails.
func (w *Writer) deliver(ctx context.Context, batch []messages.PointUpdate) {
	if w.sp.Stats().Batches == 0 {
		err := w.write(ctx, batch)
		switch {
		case err == nil:
			return
		case errors.Is(err, ErrRejected):
			w.setAside(batch, err)
			return
		}
	}
	if err := w.sp.Append(batch); err != nil {
		w.opt.Metrics.Lost.Add(float64(len(batch)))
		w.opt.Log.Error("history: batch lost: store unavailable and spool failed", "points", len(batch), "err", err)
	}
}

func (w *Writer) write(ctx context.Context, batch []messages.PointUpdate) error {
	wctx, cancel := context.WithTimeout(ctx, w.opt.WriteTimeout)
	defer cancel()
	start := time.Now()
	err := w.store.Write(wctx, batch)
	if errors.Is(err, ErrRejected) {
		return err // the store is up; the batch is the problem (reported by the caller)
	}
	if err != nil {
		w.failures++
		w.opt.Metrics.Errors.Inc()
		if w.failures == 1 || w.failures%10 == 0 {
			w.opt.Log.Warn("history: write failed, spooling", "points", len(batch), "failures", w.failures, "err", err)
		}
		return err
	}
	if w.failures > 0 {
		w.opt.Log.Info("history: store writes again", "after_failures", w.failures)
	}
	w.failures = 0
	w.opt.Metrics.Written.Add(float64(len(batch)))
	w.opt.Metrics.Batches.Inc()
	w.opt.Metrics.WriteSeconds.Observe(time.Since(start).Seconds())
	return nil
}

// setAside keeps a rejected batch in the spool's rejected bucket.
func (w *Writer) setAside(batch []messages.PointUpdate, reason error) {
	w.opt.Metrics.Rejected.Inc()
	w.opt.Log.Error("history: store rejected a batch; set aside in the spool", "points", len(batch), "err", reason)
	if err := w.sp.Append(batch); err != nil {
		w.opt.Log.Error("history: cannot keep the rejected batch", "err", err)
		return
	}
	// The spool was empty (that is when batches are written directly), so
	// the batch just appended is the oldest.
	if id, _, ok, err := w.sp.Oldest(); err == nil && ok {
		_ = w.sp.SetAside(id, reason.Error())
	}
}

// Outcomes of a replay pass.
const (
	replayDone   = iota // the spool is empty
	replayMore          // the pass's budget is used up: more to do at once
	replayFailed        // a write failed: try again after the backoff
)

// replayBudget bounds the batches one pass writes, so that new points keep
// moving to the spool (not piling up in memory) during a long replay.
const replayBudget = 20

// replay drains the spool oldest first.
func (w *Writer) replay(ctx context.Context) int {
	for n := 0; ctx.Err() == nil; n++ {
		if n == replayBudget {
			return replayMore
		}
		id, batch, ok, err := w.sp.Oldest()
		if err != nil {
			w.opt.Log.Error("history: read spool", "err", err)
			return replayFailed
		}
		if !ok {
			return replayDone
		}
		err = w.write(ctx, batch)
		switch {
		case err == nil:
			w.opt.Metrics.Replayed.Add(float64(len(batch)))
		case errors.Is(err, ErrRejected):
			w.opt.Metrics.Rejected.Inc()
			w.opt.Log.Error("history: store rejected a spooled batch; set aside", "points", len(batch), "err", err)
			if err := w.sp.SetAside(id, err.Error()); err != nil {
				return replayFailed
			}
			continue
		default:
			return replayFailed
		}
		if err := w.sp.Remove(id); err != nil {
			w.opt.Log.Error("history: remove replayed batch", "err", err)
			return replayFailed
		}
	}
	return replayFailed
}

// Metrics are the history writer's collectors.
type Metrics struct {
	Written, Replayed, Lost prometheus.Counter
	Batches, Errors         prometheus.Counter
	Rejected                prometheus.Counter
	WriteSeconds            prometheus.Histogram
	spoolBatches            prometheus.Gauge
	spoolPoints             prometheus.Gauge
	spoolBytes              prometheus.Gauge
	spoolDropped            prometheus.Gauge
}

// NewMetrics creates the collectors and registers them with reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Written:  prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_history_points_written_total", Help: "Points written to the history store."}),
		Replayed: prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_history_points_replayed_total", Help: "Points written from the spool after an outage."}),
		Lost:     prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_history_points_lost_total", Help: "Points lost because neither the store nor the spool took them."}),
		Batches:  prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_history_batches_total", Help: "Batches written to the history store."}),
		Errors:   prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_history_write_errors_total", Help: "Failed history writes (the batch is spooled)."}),
		Rejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_history_batches_rejected_total", Help: "Batches the store refused (set aside in the spool)."}),
		WriteSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "voltage_history_write_seconds", Help: "Latency of one history batch write.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 10)}),
		spoolBatches: prometheus.NewGauge(prometheus.GaugeOpts{Name: "voltage_history_spool_batches", Help: "Batches waiting in the spool."}),
		spoolPoints:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "voltage_history_spool_points", Help: "Points waiting in the spool."}),
		spoolBytes:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "voltage_history_spool_bytes", Help: "Bytes the spool takes on disk."}),
		spoolDropped: prometheus.NewGauge(prometheus.GaugeOpts{Name: "voltage_history_spool_dropped_points", Help: "Points dropped because the spool was full (since start)."}),
	}
	if reg != nil {
		reg.MustRegister(m.Written, m.Replayed, m.Lost, m.Batches, m.Errors, m.Rejected, m.WriteSeconds,
			m.spoolBatches, m.spoolPoints, m.spoolBytes, m.spoolDropped)
	}
	return m
}

func (m *Metrics) observeSpool(s SpoolStats) {
	m.spoolBatches.Set(float64(s.Batches))
	m.spoolPoints.Set(float64(s.Points))
	m.spoolBytes.Set(float64(s.Bytes))
	m.spoolDropped.Set(float64(s.DroppedPoints))
}

// WriterActor places a Writer in the actor tree: started on Started,
// drained and stopped on Stopping; other nodes' updates arrive as
// *messages.PointUpdates from the Redis subscriber.
type WriterActor struct{ W *Writer }

// Receive implements actor.Actor.
func (a *WriterActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.W.Start()
	case *actor.Stopping:
		a.W.Stop()
	case *messages.PointUpdates:
		for i := range m.Updates {
			a.W.Publish(&m.Updates[i])
		}
	}
}
