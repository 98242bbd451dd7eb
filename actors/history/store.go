// Package history keeps every point change: a batch writer fed by point
// updates, a Store (InfluxDB, or an embedded bbolt store in data_dir), and a
// durable spool in data_dir that holds batches the store could not take
// until it can.
package history

import (
	"context"
	"errors"
	"time"

	"github.com/voltage-ems/voltage/messages"
)

// ErrRejected is wrapped by Store.Write when the store refused the batch
// itself (an InfluxDB 4xx such as a field type conflict): retrying it cannot
// help, so the writer sets it aside and reports it instead.
var ErrRejected = errors.New("history store rejected the batch")

// Store is where history goes.
type Store interface {
	// Write stores a batch of updates. An error that wraps ErrRejected
	// means the batch must not be retried; any other error means the store
	// is unavailable and the batch should be spooled and retried.
	Write(ctx context.Context, points []messages.PointUpdate) error
	// Query answers a history query.
	Query(ctx context.Context, q Query) ([]Series, error)
	// Close releases the store. Idempotent.
	Close() error
}

// Aggregation functions of a query.
const (
	FnMean  = "mean"
	FnMin   = "min"
	FnMax   = "max"
	FnLast  = "last"
	FnCount = "count"
)

// Query asks for the history of some points over [Start, End).
type Query struct {
	Points []messages.PointKey
	Start  time.Time
	End    time.Time
	// Every is the window of the aggregation: one value per window, at
	// the window's start, windows aligned to Start.
	Every time.Duration
	Fn    string // FnMean, FnMin, FnMax, FnLast or FnCount
}

// Series is the answer for one point, in time order; windows without data
// are left out.
type Series struct {
	Key    messages.PointKey
	Points []Sample
}

// Sample is one value of a series.
type Sample struct {
	Time  time.Time
	Value float64
}

// SpoolStats describes the spool.
type SpoolStats struct {
	Batches       int   // batches waiting
	Points        int64 // points in them
	Bytes         int64 // bytes on disk they take
	DroppedPoints int64 // points dropped because the spool was full (since open)
	Rejected      int   // batches set aside (never retried)
}
