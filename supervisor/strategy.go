package supervisor

import (
	"math/rand/v2"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// Observer is told about every restart a Strategy schedules. It is called
// on the supervisor's goroutine when the restart is scheduled (delay before
// it happens), so it must be quick and must not block. One strategy may
// serve many supervisors, so an Observer must be safe for concurrent use.
type Observer interface {
	// Restarted reports that child failed for reason, that this is its
	// failures-th consecutive failure, and that it restarts after delay.
	Restarted(child *actor.PID, reason interface{}, failures int, delay time.Duration)
}

// StopObserver is implemented by Observers that also want to know when a
// Strategy gives up on a child (MaxRestarts exceeded) and stops it.
type StopObserver interface {
	Stopped(child *actor.PID, reason interface{}, failures int)
}

// Observers combines several observers into one; nil ones are skipped.
// The result implements StopObserver and forwards Stopped to those that do.
func Observers(obs ...Observer) Observer {
	list := make(multi, 0, len(obs))
	for _, o := range obs {
		if o != nil {
			list = append(list, o)
		}
	}
	return list
}

type multi []Observer

func (m multi) Restarted(child *actor.PID, reason interface{}, failures int, delay time.Duration) {
	for _, o := range m {
		o.Restarted(child, reason, failures, delay)
	}
}

func (m multi) Stopped(child *actor.PID, reason interface{}, failures int) {
	for _, o := range m {
		if s, ok := o.(StopObserver); ok {
			s.Stopped(child, reason, failures)
		}
	}
}

// Strategy is a one-for-one actor.SupervisorStrategy that restarts a
// failing child alone after an exponential backoff (see Policy), and stops
// it once it failed more than Policy.MaxRestarts times in a row.
//
// Giving up stops the child instead of escalating: escalation to a parent
// that sits directly under protoactor's guardian crashes the process. The
// parent sees the usual *actor.Terminated for the stopped child if it wants
// to react.
//
// Consecutive failures are counted in the child's own
// actor.RestartStatistics (kept by protoactor across restarts), so one
// Strategy can be shared by any number of supervisors.
type Strategy struct {
	policy   Policy
	observer Observer
	rand     func() float64
}

var _ actor.SupervisorStrategy = (*Strategy)(nil)

// NewStrategy returns a Strategy with the given policy (zero fields take
// DefaultPolicy's values) reporting to observer (which may be nil).
func NewStrategy(p Policy, observer Observer) *Strategy {
	return &Strategy{policy: p.withDefaults(), observer: observer, rand: rand.Float64}
}

// Policy returns the strategy's policy with defaults applied.
func (s *Strategy) Policy() Policy { return s.policy }

// HandleFailure implements actor.SupervisorStrategy. It never blocks: the
// restart is scheduled with time.AfterFunc. Until then the child's mailbox
// stays suspended, so messages sent to it wait (the message that caused the
// failure is dropped, as protoactor does). Every decision is also published
// on the actor system's event stream as an *actor.SupervisorEvent.
func (s *Strategy) HandleFailure(system *actor.ActorSystem, sup actor.Supervisor, child *actor.PID, rs *actor.RestartStatistics, reason interface{}, _ interface{}) {
	// The count restarts when the last failure is more than Reset ago.
	if rs.NumberOfFailures(s.policy.Reset) == 0 {
		rs.Reset()
	}
	rs.Fail()
	n := rs.FailureCount()

	if s.policy.GiveUp(n) {
		rs.Reset()
		publish(system, child, reason, actor.StopDirective)
		if so, ok := s.observer.(StopObserver); ok {
			so.Stopped(child, reason, n)
		}
		sup.StopChildren(child)
		return
	}

	delay := s.policy.Delay(n, s.rand())
	if s.observer != nil {
		s.observer.Restarted(child, reason, n, delay)
	}
	time.AfterFunc(delay, func() {
		publish(system, child, reason, actor.RestartDirective)
		sup.RestartChildren(child)
	})
}

func publish(system *actor.ActorSystem, child *actor.PID, reason interface{}, d actor.Directive) {
	if system == nil || system.EventStream == nil {
		return
	}
	system.EventStream.Publish(&actor.SupervisorEvent{Child: child, Reason: reason, Directive: d})
}
