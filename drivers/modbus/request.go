package modbus

import (
	"fmt"
	"sort"

	"github.com/voltage-ems/voltage/config"
)

// Limits of one read request, from the Modbus application protocol.
const (
	MaxReadRegisters = 125  // function codes 3 and 4
	MaxReadBits      = 2000 // function codes 1 and 2
	DefaultMaxGap    = 16   // registers a grouped read may skip, when Parameters.MaxGap is nil
)

// Request is one read request of a poll.
type Request struct {
	Slave    uint8
	Function uint8  // 1, 2, 3 or 4
	Address  uint16 // first register or bit
	Quantity uint16 // registers (3, 4) or bits (1, 2)
	Points   []int  // indexes of the points the response carries, by address
}

// Placement says where a point's data sits: in which request, and at which
// offset (registers for 3 and 4, bits for 1 and 2) from its start.
type Placement struct {
	Request int
	Offset  int
}

// Plan is the set of requests that polls every point of a channel once.
type Plan struct {
	Requests []Request
	Points   []Placement // one per point of the channel, same order
}

// ReadFunction returns the function code that reads a point configured
// with function code fc: coils written with 5 or 15 are read back with 1,
// registers written with 6 or 16 with 3, so that control and adjustment
// points show the device's current value.
func ReadFunction(fc uint8) (uint8, error) {
	switch fc {
	case 1, 2, 3, 4:
		return fc, nil
	case 5, 15:
		return 1, nil
	case 6, 16:
		return 3, nil
	}
	return 0, fmt.Errorf("unsupported function code %d", fc)
}

// NewPlan groups points into as few read requests as possible. Points are
// grouped per slave id and read function; within a group, sorted by
// address, a point joins the current request when the unused registers
// between them are at most maxGap and the request stays within 125
// registers. For bits the gap allowed is 16*maxGap bits (the same bytes on
// the wire as maxGap registers) and the limit 2000 bits. A negative maxGap
// means DefaultMaxGap. Points sharing registers (several bits of one
// register) share a request. Requests come ordered by slave, function and
// address.
func NewPlan(points []config.Point, maxGap int) (Plan, error) {
	if maxGap < 0 {
		maxGap = DefaultMaxGap
	}
	type item struct {
		slave, fc uint8
		addr      int
		size      int
		index     int
	}
	items := make([]item, len(points))
	for i := range points {
		p := &points[i]
		fc, err := ReadFunction(p.FunctionCode)
		if err != nil {
			return Plan{}, fmt.Errorf("point %d: %w", p.ID, err)
		}
		size := 1
		if fc == 3 || fc == 4 {
			size = p.DataType.Registers()
		}
		if int(p.Address)+size > 1<<16 {
			return Plan{}, fmt.Errorf("point %d: address %d plus %d registers passes 65535", p.ID, p.Address, size)
		}
		items[i] = item{slave: p.SlaveID, fc: fc, addr: int(p.Address), size: size, index: i}
	}
	sort.SliceStable(items, func(a, b int) bool {
		x, y := &items[a], &items[b]
		if x.slave != y.slave {
			return x.slave < y.slave
		}
		if x.fc != y.fc {
			return x.fc < y.fc
		}
		return x.addr < y.addr
	})
	plan := Plan{Points: make([]Placement, len(points))}
	var cur *Request
	end := 0 // exclusive end of cur
	for _, it := range items {
		limit, gap := MaxReadRegisters, maxGap
		if it.fc == 1 || it.fc == 2 {
			limit, gap = MaxReadBits, 16*maxGap
		}
		itEnd := it.addr + it.size
		if cur != nil && cur.Slave == it.slave && cur.Function == it.fc &&
			it.addr-end <= gap && max(end, itEnd)-int(cur.Address) <= limit {
			end = max(end, itEnd)
			cur.Quantity = uint16(end - int(cur.Address))
		} else {
			plan.Requests = append(plan.Requests, Request{Slave: it.slave, Function: it.fc, Address: uint16(it.addr)})
			cur = &plan.Requests[len(plan.Requests)-1]
			end = itEnd
			cur.Quantity = uint16(it.size)
		}
		cur.Points = append(cur.Points, it.index)
		plan.Points[it.index] = Placement{Request: len(plan.Requests) - 1, Offset: it.addr - int(cur.Address)}
	}
	return plan, nil
}
