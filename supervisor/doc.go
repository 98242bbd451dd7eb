// Package supervisor holds the restart-with-backoff supervision strategy
// used for every supervising actor, the backoff arithmetic behind it, and
// restart statistics and metrics.
//
// A strategy governs the children of the actor whose props carry it:
//
//	stats := supervisor.NewStats(nil)            // restarts per actor, for status pages
//	m, err := supervisor.NewMetrics(registry)    // voltage_actor_restarts_total{kind}
//	strategy := supervisor.NewStrategy(supervisor.DefaultPolicy(),
//		supervisor.Observers(stats, m.Kind("point"), supervisor.Log(log)))
//	props := actor.PropsFromProducer(newDevice, actor.WithSupervisor(strategy))
//	// the device actor's children (points) now restart alone, with backoff
//
// Spawn supervising actors under one root actor of the application, never
// directly from actor.RootContext: failures of top-level actors go to
// protoactor's default strategy, not to this one.
//
// Backoff does the same arithmetic for things that are not actors, such as
// a channel's reconnect loop.
package supervisor
