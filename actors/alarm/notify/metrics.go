package notify

import "github.com/prometheus/client_golang/prometheus"

// Failure reasons, the values of the reason label of
// voltage_alarm_notify_failures_total.
const (
	reasonNetwork = "network" // connection refused, reset, DNS, ...
	reasonTimeout = "timeout" // no complete answer within Options.Timeout
	reasonStatus  = "status"  // 408, 429 or 5xx
)

// Metrics are the webhook notifier's Prometheus collectors. They are never
// labelled by target: a webhook URL may carry a secret. A nil *Metrics
// records nothing.
type Metrics struct {
	sent     prometheus.Counter
	failures *prometheus.CounterVec
	rejected prometheus.Counter
	dropped  prometheus.Counter
	pending  prometheus.Gauge

	// The children of failures, resolved once so that counting allocates
	// nothing.
	failNetwork, failTimeout, failStatus prometheus.Counter
}

// NewMetrics creates the collectors and registers them with reg (nil: not
// registered, as in unit tests). It panics if they are already registered
// with reg. Several Notifiers may share one Metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "voltage_alarm_notify_sent_total", Help: "Alarm events delivered to a webhook (2xx answer), counted once per target."}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "voltage_alarm_notify_failures_total", Help: "Failed webhook attempts that are retried, by reason (network, timeout, status)."},
			[]string{"reason"}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "voltage_alarm_notify_rejected_total", Help: "Alarm events a webhook refused for good (a 3xx or 4xx other than 408 and 429); not retried."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "voltage_alarm_notify_dropped_total", Help: "Alarm events dropped because a webhook's queue was full (the oldest queued event goes)."}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "voltage_alarm_notify_pending", Help: "Alarm events queued for or in flight to webhooks, over all targets."}),
	}
	m.failNetwork = m.failures.WithLabelValues(reasonNetwork)
	m.failTimeout = m.failures.WithLabelValues(reasonTimeout)
	m.failStatus = m.failures.WithLabelValues(reasonStatus)
	if reg != nil {
		reg.MustRegister(m.sent, m.failures, m.rejected, m.dropped, m.pending)
	}
	return m
}

func (m *Metrics) addSent() {
	if m != nil {
		m.sent.Inc()
	}
}

func (m *Metrics) addFailure(reason string) {
	if m == nil {
		return
	}
	switch reason {
	case reasonNetwork:
		m.failNetwork.Inc()
	case reasonTimeout:
		m.failTimeout.Inc()
	default:
		m.failStatus.Inc()
	}
}

func (m *Metrics) addRejected() {
	if m != nil {
		m.rejected.Inc()
	}
}

func (m *Metrics) addDropped() {
	if m != nil {
		m.dropped.Inc()
	}
}

func (m *Metrics) addPending(d int) {
	if m != nil && d != 0 {
		m.pending.Add(float64(d))
	}
}
