package acquisition

import (
	"strconv"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/voltage-ems/voltage/messages"
)

// pointSample is one reading on its way to a point actor. Samples of a poll
// live in one slice per device; point actors get pointers into it.
type pointSample struct {
	index   int
	value   float64
	quality messages.Quality
	ts      int64
}

// deviceSamples carries one poll's samples of one device.
type deviceSamples struct{ samples []pointSample }

// markQuality sets the quality of points (all of the device when indexes is
// nil) without a new value: comm_lost on disconnect, stale when not refreshed.
type markQuality struct {
	quality messages.Quality
	ts      int64
	indexes []int
}

// pointMark is what a point actor receives for a markQuality.
type pointMark struct {
	quality messages.Quality
	ts      int64
}

// deviceActor owns the point actors of one slave (device) of a channel.
type deviceActor struct {
	spec      *channelSpec
	indexes   []int // channel point indexes of this device, in order
	points    map[int]*actor.PID
	pointProp *actor.Props
}

func (d *deviceActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		d.points = make(map[int]*actor.PID, len(d.indexes))
		for _, i := range d.indexes {
			name := pointName(&d.spec.ch.Points[i])
			pid, err := ctx.SpawnNamed(d.pointProp, name)
			if err != nil {
				panic("spawn point actor " + name + ": " + err.Error())
			}
			d.points[i] = pid
		}
	case *deviceSamples:
		for i := range m.samples {
			if pid := d.points[m.samples[i].index]; pid != nil {
				ctx.Send(pid, &m.samples[i])
			}
		}
	case *markQuality:
		pm := &pointMark{quality: m.quality, ts: m.ts}
		if m.indexes == nil {
			for _, pid := range d.points {
				ctx.Send(pid, pm)
			}
			return
		}
		for _, i := range m.indexes {
			if pid := d.points[i]; pid != nil {
				ctx.Send(pid, pm)
			}
		}
	case *messages.GetPoint:
		for i, pid := range d.points {
			if d.spec.ch.Points[i].ID == m.Key.Point && d.spec.ch.Points[i].Type == m.Key.Type {
				ctx.Forward(pid)
				return
			}
		}
		ctx.Respond(&messages.PointValue{Key: m.Key, Found: false})
	}
}

// pointActor applies change detection to one point's samples.
type pointActor struct {
	spec *channelSpec
	st   pointState
	out  messages.PointUpdate // reused: a local handed to the Sink interface would escape to the heap
}

func (p *pointActor) Receive(ctx actor.Context) {
	var ok bool
	switch m := ctx.Message().(type) {
	case *actor.Started:
		pt, found := p.spec.pointByName(ctx.Self().Id)
		if !found {
			panic("point actor " + ctx.Self().Id + ": no such point in channel " + strconv.FormatUint(uint64(p.spec.ch.ID), 10))
		}
		p.st = newPointState(pt.Key(p.spec.ch.ID), p.spec.node, pt.Deadband)
	case *pointSample:
		if p.out, ok = p.st.sample(m.value, m.quality, m.ts); ok {
			p.spec.opt.Sink.Publish(&p.out)
		}
	case *pointMark:
		if p.out, ok = p.st.mark(m.quality, m.ts); ok {
			p.spec.opt.Sink.Publish(&p.out)
		}
	case *messages.GetPoint:
		ctx.Respond(&messages.PointValue{Key: p.st.key, Found: p.st.has, Value: p.st.value,
			Timestamp: p.st.ts, Quality: p.st.quality})
	}
}
