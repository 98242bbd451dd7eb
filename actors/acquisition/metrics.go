package acquisition

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the acquisition collectors, labelled by channel id.
type Metrics struct {
	Polls      *prometheus.CounterVec
	PollErrors *prometheus.CounterVec
	PollTime   *prometheus.HistogramVec
	Connected  *prometheus.GaugeVec
	Reconnects *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Polls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "voltage_channel_polls_total", Help: "Completed poll cycles per channel."}, []string{"channel"}),
		PollErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "voltage_channel_poll_errors_total", Help: "Poll cycles or connects that failed (connection lost) per channel."}, []string{"channel"}),
		PollTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "voltage_channel_poll_seconds", Help: "Duration of one poll cycle (all requests of the channel).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"channel"}),
		Connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "voltage_channel_connected", Help: "1 when the channel's connection is up."}, []string{"channel"}),
		Reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "voltage_channel_reconnects_total", Help: "Connection attempts after a lost or failed connection."}, []string{"channel"}),
	}
	if reg != nil {
		reg.MustRegister(m.Polls, m.PollErrors, m.PollTime, m.Connected, m.Reconnects)
	}
	return m
}

type channelMetrics struct {
	polls, errors, reconnects prometheus.Counter
	pollTime                  prometheus.Observer
	connected                 prometheus.Gauge
}

func (m *Metrics) forChannel(id uint32) channelMetrics {
	l := strconv.FormatUint(uint64(id), 10)
	return channelMetrics{
		polls: m.Polls.WithLabelValues(l), errors: m.PollErrors.WithLabelValues(l),
		reconnects: m.Reconnects.WithLabelValues(l), pollTime: m.PollTime.WithLabelValues(l),
		connected: m.Connected.WithLabelValues(l),
	}
}
