package redisbus

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the writer's and subscriber's Prometheus collectors.
type Metrics struct {
	Published     prometheus.Counter
	FlushSize     prometheus.Histogram
	FlushSeconds  prometheus.Histogram
	FlushErrors   prometheus.Counter
	Resyncs       prometheus.Counter
	Received      prometheus.Counter
	ReceivedOwn   prometheus.Counter
	ReceiveErrors prometheus.Counter
}

// NewMetrics creates the collectors and registers them with reg (nil: not
// registered, as in unit tests). queueDepth is sampled at scrape time.
func NewMetrics(reg prometheus.Registerer, queueDepth func() float64) *Metrics {
	m := &Metrics{
		Published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "voltage_points_published_total", Help: "Point updates written to Redis (HSET + PUBLISH point:update)."}),
		FlushSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "voltage_redis_flush_size", Help: "Point updates per Redis pipeline flush.",
			Buckets: []float64{1, 10, 50, 100, 250, 500, 1000, 2500, 10000}}),
		FlushSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "voltage_redis_flush_seconds", Help: "Latency of one Redis pipeline flush.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12)}),
		FlushErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "voltage_redis_flush_errors_total", Help: "Failed Redis flushes (the data is kept and replayed)."}),
		Resyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "voltage_redis_resyncs_total", Help: "Full rewrites of all point hashes after a Redis outage or reconnect."}),
		Received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "voltage_redis_updates_received_total", Help: "point:update messages from other nodes delivered to local consumers."}),
		ReceivedOwn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "voltage_redis_updates_own_dropped_total", Help: "point:update messages of this node dropped by the subscriber."}),
		ReceiveErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "voltage_redis_updates_invalid_total", Help: "point:update messages that could not be parsed."}),
	}
	if reg != nil {
		reg.MustRegister(m.Published, m.FlushSize, m.FlushSeconds, m.FlushErrors, m.Resyncs,
			m.Received, m.ReceivedOwn, m.ReceiveErrors)
		if queueDepth != nil {
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "voltage_redis_queue_depth", Help: "Point updates waiting for the Redis writer (queued or coalesced)."}, queueDepth))
		}
	}
	return m
}
