// Package dag runs the computations of the config (derived points) as a
// graph of actors, one per computation, recomputed in topological order
// when their inputs change.
//
// State holds what the stateful expression functions (integrate, rate, avg,
// delta) remember between evaluations of one computation. It is a plain
// value, owned by one node actor, and encodes itself with MarshalBinary so
// that the runtime can persist it (in Redis) and an energy counter survives
// restarts of the actor and of the node.
package dag
