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
	// Placed children are not spawned at start: the cluster placement
	// starts and stops them (StartChild, StopChild) with their lease.
	Placed bool
}

// StartChild spawns the placed child Name; answered with *ChildPID.
type StartChild struct{ Name string }

// StopChild stops the child Name, draining its mailbox; answered with
// *ChildStopped once it has stopped.
type StopChild struct{ Name string }

// ChildStopped answers StopChild.
type ChildStopped struct{ Name string }

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
			if c.Placed {
				continue
			}
			pid, err := ctx.SpawnNamed(c.Props, c.Name)
			if err != nil {
				panic(fmt.Sprintf("spawn %s: %v", c.Name, err))
			}
			r.pids[c.Name] = pid
			r.order = append(r.order, pid)
		}
	case *StartChild:
		if pid := r.pids[m.Name]; pid != nil {
			ctx.Respond(&ChildPID{PID: pid})
			return
		}
		for _, c := range r.children {
			if c.Name != m.Name {
				continue
			}
			pid, err := ctx.SpawnNamed(c.Props, c.Name)
			if err != nil {
				ctx.Logger().Error("start child", "name", c.Name, "err", err)
				ctx.Respond(&ChildPID{})
				return
			}
			r.pids[c.Name] = pid
			r.order = append(r.order, pid)
			ctx.Respond(&ChildPID{PID: pid})
			return
		}
		ctx.Respond(&ChildPID{})
	case *StopChild:
		pid := r.pids[m.Name]
		if pid == nil {
			ctx.Respond(&ChildStopped{Name: m.Name})
			return
		}
		delete(r.pids, m.Name)
		for i, p := range r.order {
			if p.Equal(pid) {
				r.order = append(r.order[:i], r.order[i+1:]...)
				break
			}
		}
		sender := ctx.Sender()
		ctx.ReenterAfter(ctx.PoisonFuture(pid), func(any, error) {
			if sender != nil {
				ctx.Send(sender, &ChildStopped{Name: m.Name})
			}
		})
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
