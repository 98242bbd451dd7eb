package alarm

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the alarm engine's Prometheus metrics.
type Metrics struct {
	evaluations   prometheus.Counter
	events        *prometheus.CounterVec
	latency       prometheus.Histogram
	written       prometheus.Counter
	storeFailures prometheus.Counter
	dropped       prometheus.Counter
}

// NewMetrics registers the alarm metrics; queued reports the events waiting
// for Redis (nil: not exported).
func NewMetrics(reg prometheus.Registerer, queued func() float64) *Metrics {
	m := &Metrics{
		evaluations: prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_alarm_evaluations_total",
			Help: "Alarm rule evaluations (one per input update per rule)."}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voltage_alarm_events_total",
			Help: "Alarm events by type (raise, change, clear, ack, escalate, shelve, unshelve)."}, []string{"type"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "voltage_alarm_event_latency_seconds",
			Help:    "From the sample that caused an alarm transition to its event written and published in Redis.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		written: prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_alarm_events_written_total",
			Help: "Alarm events written to Redis (alarm:events and alarm:event)."}),
		storeFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_alarm_store_failures_total",
			Help: "Failed attempts to write alarm states and events to Redis (retried)."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_alarm_events_dropped_total",
			Help: "Alarm events dropped because Redis was unreachable and the queue was full."}),
	}
	reg.MustRegister(m.evaluations, m.events, m.latency, m.written, m.storeFailures, m.dropped)
	if queued != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "voltage_alarm_store_queue",
			Help: "Alarm events waiting to be written to Redis."}, queued))
	}
	return m
}
