package redisbus

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/messages"
)

// Subscriber receives point:update from Redis and hands other nodes' updates
// to deliver in batches; updates produced by this node (same Node name) are
// dropped because local consumers already got them directly. go-redis
// re-subscribes by itself after a reconnect.
type Subscriber struct {
	client  *redis.Client
	ps      *redis.PubSub
	node    string
	keys    messages.Keys
	updates string // keys.Updates(), built once: compared per message
	deliver func([]messages.PointUpdate)
	control func(*messages.ControlCommand)
	log     *slog.Logger
	m       *Metrics

	startOnce, stopOnce sync.Once
	cancel              context.CancelFunc
	done                chan struct{}
	ready               chan struct{}
}

// maxBatch bounds one delivered batch.
const maxBatch = 1000

// NewSubscriber creates a subscriber with its own client built from ro,
// listening on the site's channels (keys). deliver is called from the
// subscriber's goroutine; it must not keep the slice.
func NewSubscriber(ro *redis.Options, node string, keys messages.Keys, deliver func([]messages.PointUpdate), log *slog.Logger, m *Metrics) *Subscriber {
	if log == nil {
		log = slog.Default()
	}
	if m == nil {
		m = NewMetrics(nil, nil)
	}
	c := *ro
	client := redis.NewClient(&c)
	return &Subscriber{client: client, ps: client.Subscribe(context.Background()), node: node, keys: keys, updates: keys.Updates(), deliver: deliver,
		log: log, m: m, done: make(chan struct{}), ready: make(chan struct{})}
}

// OnControl sets the function that receives control commands arriving on
// the cmd:{ch}:control channels added with AddChannels. Call before Start.
func (s *Subscriber) OnControl(f func(*messages.ControlCommand)) { s.control = f }

// AddChannels subscribes to more Redis channels. go-redis remembers them
// even when Redis is unreachable and subscribes again after a reconnect.
func (s *Subscriber) AddChannels(ctx context.Context, names ...string) error {
	return s.ps.Subscribe(ctx, names...)
}

// RemoveChannels unsubscribes from channels added with AddChannels.
func (s *Subscriber) RemoveChannels(ctx context.Context, names ...string) error {
	return s.ps.Unsubscribe(ctx, names...)
}

// Start subscribes and runs the receive loop until Stop. Idempotent.
func (s *Subscriber) Start() {
	s.startOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		s.cancel = cancel
		go s.loop(ctx)
	})
}

// Ready is closed once the first subscription is confirmed by Redis.
func (s *Subscriber) Ready() <-chan struct{} { return s.ready }

// Stop ends the loop and closes the client. Idempotent.
func (s *Subscriber) Stop() {
	s.stopOnce.Do(func() {
		if s.cancel != nil {
			s.cancel()
			<-s.done
		}
		_ = s.client.Close()
	})
}

func (s *Subscriber) loop(ctx context.Context) {
	defer close(s.done)
	ps := s.ps
	defer ps.Close()
	// Subscribe with a confirmation so Ready means "receiving"; retry while
	// Redis is not there yet.
	for {
		err := ps.Subscribe(ctx, s.updates)
		if err == nil {
			if _, err = ps.Receive(ctx); err == nil {
				break
			}
		}
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("redis subscriber: subscribe failed, retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	close(s.ready)
	ch := ps.Channel(redis.WithChannelSize(10000))
	batch := make([]messages.PointUpdate, 0, maxBatch)
	for {
		var msg *redis.Message
		select {
		case <-ctx.Done():
			return
		case msg = <-ch:
		}
		batch = s.add(batch, msg)
	drain:
		for len(batch) < maxBatch {
			select {
			case msg = <-ch:
				batch = s.add(batch, msg)
			default:
				break drain
			}
		}
		if len(batch) > 0 {
			s.deliver(batch)
			s.m.Received.Add(float64(len(batch)))
			batch = batch[:0]
		}
	}
}

func (s *Subscriber) add(batch []messages.PointUpdate, msg *redis.Message) []messages.PointUpdate {
	if msg == nil {
		return batch
	}
	if msg.Channel != s.updates {
		s.command(msg)
		return batch
	}
	var u messages.PointUpdate
	if err := u.UnmarshalJSON([]byte(msg.Payload)); err != nil {
		s.m.ReceiveErrors.Inc()
		s.log.Debug("redis subscriber: invalid point update", "err", err)
		return batch
	}
	if u.Node == s.node {
		s.m.ReceivedOwn.Inc()
		return batch
	}
	return append(batch, u)
}

// command decodes a control command (signed envelope or bare); checking
// the signature and validation are left to the channel, which answers bad
// commands with a rejected result. A command whose channel_id is not the
// channel it was published on is dropped: it is routed by where it was
// published, never by what its payload claims.
func (s *Subscriber) command(msg *redis.Message) {
	ch, ok := s.controlChannelID(msg.Channel)
	if !ok {
		return
	}
	cmd, err := messages.DecodeCommand([]byte(msg.Payload))
	if err != nil {
		s.m.ReceiveErrors.Inc()
		s.log.Warn("redis subscriber: undecodable control command dropped", "channel", msg.Channel, "err", err)
		return
	}
	if cmd.ChannelID != ch {
		s.m.ReceiveErrors.Inc()
		s.log.Warn("redis subscriber: control command for another channel dropped", "channel", msg.Channel, "channel_id", cmd.ChannelID, "id", cmd.ID)
		return
	}
	if s.control != nil {
		s.control(cmd)
	}
}

// controlChannelID parses {prefix}cmd:{ch}:control.
func (s *Subscriber) controlChannelID(name string) (uint32, bool) {
	rest, ok := strings.CutPrefix(name, s.keys.Name("cmd:"))
	if !ok {
		return 0, false
	}
	id, ok := strings.CutSuffix(rest, ":control")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(id, 10, 32)
	return uint32(n), err == nil
}
