package node

import (
	"sync"

	"github.com/asynkron/protoactor-go/actor"
)

// PoolDispatcher runs actor mailboxes on a fixed set of long-lived worker
// goroutines instead of protoactor's default of one new goroutine per
// mailbox run. With one actor per point, most messages start a mailbox run;
// a fresh goroutine then grows its stack on the first deep call, which cost
// a third of the ingest CPU. Workers keep their grown stacks.
//
// Schedule never blocks: when every worker is busy and the queue is full it
// falls back to a new goroutine, so a slow actor cannot deadlock others.
type PoolDispatcher struct {
	work       chan func()
	throughput int
	stopOnce   sync.Once
	wg         sync.WaitGroup
}

// queueSize holds a whole poll burst of a large node (every point actor's
// mailbox scheduled at once) so the fallback goroutines, each growing its
// own stack, stay the exception. 1 MiB of queue.
const queueSize = 1 << 17

// NewPoolDispatcher starts workers goroutines; throughput is how many
// messages a mailbox processes before yielding its worker.
func NewPoolDispatcher(workers, throughput int) *PoolDispatcher {
	d := &PoolDispatcher{work: make(chan func(), queueSize), throughput: throughput}
	d.wg.Add(workers)
	for i := 0; i < workers; i++ {
		go func() {
			defer d.wg.Done()
			for fn := range d.work {
				fn()
			}
		}()
	}
	return d
}

// Schedule implements actor.Dispatcher.
func (d *PoolDispatcher) Schedule(fn func()) {
	select {
	case d.work <- fn:
	default:
		go fn()
	}
}

// Throughput implements actor.Dispatcher.
func (d *PoolDispatcher) Throughput() int { return d.throughput }

// Stop ends the workers once the queued runs are done. Call it after the
// actors using the dispatcher have stopped. Idempotent.
func (d *PoolDispatcher) Stop() {
	d.stopOnce.Do(func() { close(d.work); d.wg.Wait() })
}

var _ actor.Dispatcher = (*PoolDispatcher)(nil)
