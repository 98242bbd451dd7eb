package dag

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/expr-lang/expr"

	"github.com/voltage-ems/voltage/config"
)

// StateStore keeps the stateful functions' state of each computation (by
// output key) across restarts of its node actor and of the node.
type StateStore interface {
	Load(ctx context.Context, output string) ([]byte, error) // nil, nil: none saved
	Save(ctx context.Context, output string, state []byte) error
}

// evaluate asks a node actor for its computation's value in a wave.
type evaluate struct {
	wave   uint64
	idx    int
	inputs []float64
	now    time.Time
}

// evaluated answers evaluate.
type evaluated struct {
	wave  uint64
	idx   int
	value float64
	err   string
}

// saveEvery is how often a node persists its stateful functions' state
// (and on stop).
const saveEvery = 5 * time.Second

// nodeActor evaluates one computation. Its stateful functions' state is
// loaded on Started and saved every saveEvery and on Stopping, so an
// energy counter continues across restarts.
type nodeActor struct {
	comp  *config.Computation
	store StateStore
	log   *slog.Logger

	st       *State
	env      map[string]any
	now      time.Time
	lastSave time.Time
}

func (a *nodeActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.st = NewState(a.comp.StatefulCalls())
		a.env = a.comp.NewEnv(func(site int, x float64) float64 { return a.st.Call(site, x, a.now) })
		a.load()
	case *evaluate:
		a.now = m.now
		for i, b := range a.comp.Inputs.Bindings {
			a.env[b.Name] = m.inputs[i]
		}
		res := &evaluated{wave: m.wave, idx: m.idx}
		out, err := expr.Run(a.comp.Program(), a.env)
		switch v, ok := config.ResultValue(out); {
		case err != nil:
			res.err = err.Error()
		case !ok:
			res.err = fmt.Sprintf("result %v is not a number", out)
		case math.IsNaN(v) || math.IsInf(v, 0):
			res.err = fmt.Sprintf("result is %v (for example a division by zero)", v)
		default:
			res.value = v
		}
		ctx.Respond(res)
		if len(a.comp.StatefulCalls()) > 0 && m.now.Sub(a.lastSave) >= saveEvery {
			a.lastSave = m.now
			a.save(false)
		}
	case *actor.Stopping, *actor.Restarting:
		a.save(true)
	}
}

func (a *nodeActor) load() {
	if a.store == nil || len(a.comp.StatefulCalls()) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	b, err := a.store.Load(ctx, a.comp.Output)
	if err != nil {
		a.log.Warn("computation state not loaded: starting fresh", "output", a.comp.Output, "err", err)
		return
	}
	if b == nil {
		return
	}
	if err := a.st.UnmarshalBinary(b); err != nil {
		a.log.Warn("saved computation state not usable: starting fresh", "output", a.comp.Output, "err", err)
	}
}

// save persists the state; off the actor's goroutine unless sync.
func (a *nodeActor) save(sync bool) {
	if a.store == nil || len(a.comp.StatefulCalls()) == 0 || a.st == nil {
		return
	}
	b, err := a.st.MarshalBinary()
	if err != nil {
		a.log.Warn("computation state not encodable", "output", a.comp.Output, "err", err)
		return
	}
	store, out, log := a.store, a.comp.Output, a.log
	do := func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := store.Save(ctx, out, b); err != nil {
			log.Warn("computation state not saved", "output", out, "err", err)
		}
	}
	if sync {
		do()
		return
	}
	go do()
}
