package web

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// HTTPMetrics counts what the HTTP edge refuses. A nil *HTTPMetrics counts
// nothing.
type HTTPMetrics struct {
	connsOpen     prometheus.Gauge
	connsRefused  prometheus.Counter
	authFailures  prometheus.Counter
	authThrottled prometheus.Counter
}

// NewHTTPMetrics registers the HTTP edge's metrics with reg.
func NewHTTPMetrics(reg prometheus.Registerer) *HTTPMetrics {
	m := &HTTPMetrics{
		connsOpen: prometheus.NewGauge(prometheus.GaugeOpts{Name: "voltage_http_connections_open",
			Help: "HTTP connections open (WebSocket connections included)."}),
		connsRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_http_connections_refused_total",
			Help: "HTTP connections closed at once because their client address had node.http_max_conns_per_client open."}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_http_auth_failures_total",
			Help: "Requests refused 401 for an unknown token or another scheme than Bearer."}),
		authThrottled: prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_http_auth_throttled_total",
			Help: "Requests refused 429 because their client address made too many failed authentications."}),
	}
	reg.MustRegister(m.connsOpen, m.connsRefused, m.authFailures, m.authThrottled)
	return m
}

func (m *HTTPMetrics) connOpened() {
	if m != nil {
		m.connsOpen.Inc()
	}
}

func (m *HTTPMetrics) connClosed() {
	if m != nil {
		m.connsOpen.Dec()
	}
}

func (m *HTTPMetrics) connRefused() {
	if m != nil {
		m.connsRefused.Inc()
	}
}

func (m *HTTPMetrics) authFailed() {
	if m != nil {
		m.authFailures.Inc()
	}
}

func (m *HTTPMetrics) throttled() {
	if m != nil {
		m.authThrottled.Inc()
	}
}

// clientKey is the address limits are kept for: an IPv4 address, or the
// /64 of an IPv6 address (one host usually holds a whole /64). Addresses
// that do not parse are their own key.
func clientKey(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return ip.String()
	}
	p, _ := ip.Prefix(64)
	return p.String()
}

// logLimiter lets one log line through per interval and counts the ones
// it holds back, so that a flood of refusals does not flood the log.
type logLimiter struct {
	every time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether a line may be logged at now, and how many were
// held back since the last one that was.
func (l *logLimiter) allow(now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.suppressed++
		return false, 0
	}
	l.last, suppressed, l.suppressed = now, l.suppressed, 0
	return true, suppressed
}
