// Package node holds the root actor of a node. Everything is spawned under
// this one actor (AllForOne or Escalate directly under protoactor's guardian
// crashes the process), and stopping the node is poisoning the root: its
// children stop in reverse order of their start, draining their mailboxes.
package node

import (
	"fmt"

	"github.com/asynkron/protoactor-go/actor"
)

// Child is one part of the node, spawned by the root under Name.
type Child struct {
	Name  string
	Props *actor.Props
}

// GetChild asks the root for the PID of a child by name.
type GetChild struct{ Name string }

// ChildPID answers GetChild; PID is nil for an unknown name.
type ChildPID struct{ PID *actor.PID }

// Root spawns the node's parts in order on Started.
type Root struct {
	children []Child
	pids     map[string]*actor.PID
	order    []*actor.PID
}

// NewRootProps returns the props of the root actor. strategy supervises the
// direct children (one-for-one with backoff).
func NewRootProps(children []Child, strategy actor.SupervisorStrategy) *actor.Props {
	opts := []actor.PropsOption{}
	if strategy != nil {
		opts = append(opts, actor.WithSupervisor(strategy))
	}
	return actor.PropsFromProducer(func() actor.Actor { return &Root{children: children} }, opts...)
}

// Receive implements actor.Actor.
func (r *Root) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		r.pids = map[string]*actor.PID{}
		for _, c := range r.children {
			pid, err := ctx.SpawnNamed(c.Props, c.Name)
			if err != nil {
				panic(fmt.Sprintf("spawn %s: %v", c.Name, err))
			}
			r.pids[c.Name] = pid
			r.order = append(r.order, pid)
		}
	case *actor.Stopping:
		// Reverse order: consumers and producers first, the Redis writer last,
		// so the final updates are flushed. Each stop is waited for.
		for i := len(r.order) - 1; i >= 0; i-- {
			_ = ctx.PoisonFuture(r.order[i]).Wait()
		}
	case *GetChild:
		ctx.Respond(&ChildPID{PID: r.pids[m.Name]})
	}
}
