package supervisor

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
)

// Stats counts restarts and stops per label, for status pages such as a
// channel's restart count. It is an Observer and a StopObserver and is safe
// for concurrent use. Labels are unbounded (one per actor), so Stats is not
// exported to Prometheus as such; use Metrics for that.
type Stats struct {
	label func(*actor.PID) string

	mu       sync.Mutex
	restarts map[string]int
	stops    map[string]int
	total    int
}

// NewStats returns empty Stats that label a child with label(child), or
// with the PID's Id (for example "root/channels/1001/dev1/1001:m:10001")
// when label is nil.
func NewStats(label func(*actor.PID) string) *Stats {
	if label == nil {
		label = func(pid *actor.PID) string { return pid.GetId() }
	}
	return &Stats{label: label, restarts: map[string]int{}, stops: map[string]int{}}
}

// Restarted implements Observer.
func (s *Stats) Restarted(child *actor.PID, _ interface{}, _ int, _ time.Duration) {
	s.Record(s.label(child))
}

// Stopped implements StopObserver.
func (s *Stats) Stopped(child *actor.PID, _ interface{}, _ int) {
	l := s.label(child)
	s.mu.Lock()
	s.stops[l]++
	s.mu.Unlock()
}

// Record counts one restart of label; for restarts that do not go through
// a Strategy, such as a channel's reconnect.
func (s *Stats) Record(label string) {
	s.mu.Lock()
	s.restarts[label]++
	s.total++
	s.mu.Unlock()
}

// Total returns the number of restarts recorded.
func (s *Stats) Total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// For returns the number of restarts recorded for label.
func (s *Stats) For(label string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarts[label]
}

// Under returns the number of restarts recorded for prefix and for every
// label below it (prefix + "/..."), for example all restarts of a channel
// actor, its devices and its points.
func (s *Stats) Under(prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for l, c := range s.restarts {
		if l == prefix || (strings.HasPrefix(l, prefix) && strings.HasPrefix(l[len(prefix):], "/")) {
			n += c
		}
	}
	return n
}

// Stops returns the number of times the actor with label was stopped
// because it exceeded Policy.MaxRestarts.
func (s *Stats) Stops(label string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stops[label]
}

// Metrics exports restart counts to Prometheus by kind of actor ("point",
// "device", "channel", ...), never by actor, so the number of series stays
// small.
type Metrics struct {
	restarts *prometheus.CounterVec
	stops    *prometheus.CounterVec
}

// NewMetrics registers voltage_actor_restarts_total{kind} and
// voltage_actor_supervisor_stops_total{kind} with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "voltage_actor_restarts_total",
			Help: "Restarts of failed actors scheduled by their supervisor, by kind of actor.",
		}, []string{"kind"}),
		stops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "voltage_actor_supervisor_stops_total",
			Help: "Actors stopped by their supervisor after too many consecutive failures, by kind of actor.",
		}, []string{"kind"}),
	}
	for _, c := range []prometheus.Collector{m.restarts, m.stops} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register actor restart metrics: %w", err)
		}
	}
	return m, nil
}

// Kind returns an Observer (and StopObserver) that counts the restarts of
// a supervisor's children under kind. The series exists from this call on,
// at 0.
func (m *Metrics) Kind(kind string) Observer {
	return kindObserver{restarts: m.restarts.WithLabelValues(kind), stops: m.stops.WithLabelValues(kind)}
}

type kindObserver struct {
	restarts, stops prometheus.Counter
}

func (k kindObserver) Restarted(*actor.PID, interface{}, int, time.Duration) { k.restarts.Inc() }

func (k kindObserver) Stopped(*actor.PID, interface{}, int) { k.stops.Inc() }

// Log returns an Observer (and StopObserver) that logs each restart at warn
// level and each stop at error level, with keys actor, err, failures and
// delay.
func Log(log *slog.Logger) Observer {
	return logObserver{log: log}
}

type logObserver struct{ log *slog.Logger }

func (l logObserver) Restarted(child *actor.PID, reason interface{}, failures int, delay time.Duration) {
	l.log.Warn("actor failed, restarting", "actor", child.GetId(), "err", reason, "failures", failures, "delay", delay)
}

func (l logObserver) Stopped(child *actor.PID, reason interface{}, failures int) {
	l.log.Error("actor failed too often, stopped", "actor", child.GetId(), "err", reason, "failures", failures)
}
