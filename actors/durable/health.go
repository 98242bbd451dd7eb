package durable

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Problem is something the node found damaged and recovered from: it keeps
// working, but an operator should know.
type Problem struct {
	Component string    `json:"component"` // history, spool, dedupe, audit
	Reason    string    `json:"reason"`
	Time      time.Time `json:"time"`
}

// maxProblems bounds the list Health keeps (the oldest go first).
const maxProblems = 100

// Health collects the problems of the node's storage for /ready and
// /api/status, and counts them in voltage_storage_recovered_total. Safe for
// concurrent use; the zero value is not usable (NewHealth).
type Health struct {
	now       func() time.Time
	recovered *prometheus.CounterVec

	mu       sync.Mutex
	problems []Problem
}

// NewHealth returns an empty registry whose counter is registered with reg
// (nil: not exported). components are exported at 0 from the start, so
// that a rate or an alert on them has a series before the first problem.
func NewHealth(reg prometheus.Registerer, components ...string) *Health {
	h := &Health{now: time.Now, recovered: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "voltage_storage_recovered_total",
		Help: "Damaged storage the node recovered from (a file moved aside and started empty, a meta page skipped, a torn audit line cut), by component.",
	}, []string{"component"})}
	for _, c := range components {
		h.recovered.WithLabelValues(c)
	}
	if reg != nil {
		reg.MustRegister(h.recovered)
	}
	return h
}

// Report records a problem of component and counts it.
func (h *Health) Report(component, reason string) {
	h.recovered.WithLabelValues(component).Inc()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.problems) == maxProblems {
		h.problems = append(h.problems[:0], h.problems[1:]...)
	}
	h.problems = append(h.problems, Problem{Component: component, Reason: reason, Time: h.now()})
}

// Problems returns the recorded problems, oldest first.
func (h *Health) Problems() []Problem {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Problem(nil), h.problems...)
}
