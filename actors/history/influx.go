package history

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/influxdata/influxdb-client-go/v2/api"
	influxhttp "github.com/influxdata/influxdb-client-go/v2/api/http"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

// InfluxTimeout bounds every HTTP request to InfluxDB (a write, a query, a
// ping), so that a hung server turns into a retryable error instead of a
// stuck writer.
const InfluxTimeout = 5 * time.Second

// Influx is the InfluxDB Store. It writes through influxdb-client-go's
// blocking write API with gzip, so the outcome of every batch is known,
// and queries with Flux. It speaks the v2 API, which InfluxDB 1.8 serves
// too (bucket "database/retention-policy", token "user:password" or empty,
// org ignored). Safe for concurrent use.
type Influx struct {
	client      influxdb2.Client
	write       api.WriteAPIBlocking
	query       api.QueryAPI
	bucket      string
	measurement string
	log         *slog.Logger // unused so far: errors are returned, not logged

	mu  sync.Mutex // guards buf: one body at a time
	buf []byte

	closeOnce sync.Once
}

var _ Store = (*Influx)(nil)

// NewInflux returns a Store writing to the InfluxDB at cfg.URL. It does no
// I/O: use Ping to see whether the server answers.
func NewInflux(cfg config.InfluxDB, log *slog.Logger) (*Influx, error) {
	return newInflux(cfg, log, InfluxTimeout)
}

func newInflux(cfg config.InfluxDB, log *slog.Logger, timeout time.Duration) (*Influx, error) {
	if cfg.URL == "" {
		return nil, errors.New("influxdb: url is empty")
	}
	if cfg.Bucket == "" {
		return nil, errors.New("influxdb: bucket is empty")
	}
	if m := cfg.Measurement; m == "" || m[0] == '#' || strings.ContainsAny(m, "\n\r\\\"") {
		// A leading '#' makes a line a comment; a newline ends it.
		return nil, fmt.Errorf("influxdb: measurement %q: must be non-empty, not start with '#', and hold no newline, quote or backslash", m)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := influxdb2.DefaultOptions().
		SetUseGZip(true).
		SetApplicationName("voltage")
	// SetHTTPRequestTimeout counts whole seconds; the client it builds
	// (keep-alive pool of 100) takes any duration.
	opts.HTTPClient().Timeout = timeout
	client := influxdb2.NewClientWithOptions(strings.TrimRight(cfg.URL, "/"), cfg.Token, opts)
	return &Influx{
		client:      client,
		write:       client.WriteAPIBlocking(cfg.Org, cfg.Bucket),
		query:       client.QueryAPI(cfg.Org),
		bucket:      cfg.Bucket,
		measurement: cfg.Measurement,
		log:         log,
	}, nil
}

// Write sends points as one request body. Updates without a storable value
// (NaN, see AppendLine) are skipped. An answer 400, 413 or 422 (a field type
// conflict, a malformed line, see rejected) returns an error wrapping
// ErrRejected; another status, a timeout or a connection error returns a
// plain error, worth retrying. InfluxDB 1.x answers 400 "partial write"
// when only some points were refused: the others are stored, and since a
// point written twice (same series and time) is stored once, writing the
// batch again later would duplicate nothing.
func (s *Influx) Write(ctx context.Context, points []messages.PointUpdate) error {
	s.mu.Lock()
	b := s.buf[:0]
	for i := range points {
		b = AppendLine(b, s.measurement, &points[i])
	}
	// The client reads the body in a goroutine of its own (gzip through a
	// pipe) that may outlive WriteRecord on an error path, so it gets a
	// copy, not a view of the reused buffer.
	body := string(b)
	s.buf = b
	s.mu.Unlock()
	if body == "" {
		return nil
	}
	err := s.write.WriteRecord(ctx, body)
	if err == nil {
		return nil
	}
	// The reason reads "400 Bad Request: partial write: field type
	// conflict: ...": for a 1.x JSON error body influxdb-client-go falls
	// back to the X-Influxdb-Error header, which 1.x sets.
	var herr *influxhttp.Error
	if errors.As(err, &herr) && rejected(herr.StatusCode) {
		return fmt.Errorf("influxdb write of %d points: %w: %w", len(points), ErrRejected, err)
	}
	return fmt.Errorf("influxdb write of %d points: %w", len(points), err)
}

// rejected tells the answers about the batch itself, which no retry can
// change: 400 (a malformed line, a field type conflict, "partial write"),
// 413 (body too large) and 422 (unprocessable, v2). The other 4xx are
// about the server's setup, not the data (401/403 a wrong token, 404 a
// database not created yet, 408, 429): retrying after the operator fixes it
// keeps the data, so those are plain errors, like 5xx.
func rejected(status int) bool {
	switch status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity:
		return true
	}
	return false
}

// Query runs q as one Flux query for all its points and returns one Series
// per requested point, in the order asked (empty Points when there is no
// data). Windows are aligned to q.Start, each sample is at its window's
// start, and windows without data are left out.
func (s *Influx) Query(ctx context.Context, q Query) ([]Series, error) {
	flux, err := s.flux(q)
	if err != nil {
		return nil, err
	}
	res, err := s.query.Query(ctx, flux)
	if err != nil {
		return nil, fmt.Errorf("influxdb query: %w", err)
	}
	defer res.Close()
	out := make([]Series, len(q.Points))
	index := make(map[messages.PointKey]int, len(q.Points))
	for i, k := range q.Points {
		out[i].Key = k
		out[i].Points = []Sample{}
		if _, dup := index[k]; !dup {
			index[k] = i
		}
	}
	for res.Next() {
		r := res.Record()
		key, ok := recordKey(r.ValueByKey("channel"), r.ValueByKey("type"), r.ValueByKey("point"))
		if !ok {
			continue
		}
		i, ok := index[key]
		if !ok {
			continue
		}
		v, ok := toFloat(r.Value())
		if !ok {
			continue
		}
		out[i].Points = append(out[i].Points, Sample{Time: r.Start(), Value: v})
	}
	if err := res.Err(); err != nil {
		return nil, fmt.Errorf("influxdb query: %w", err)
	}
	for i := range out {
		if first := index[out[i].Key]; first != i { // asked twice
			out[i].Points = slices.Clone(out[first].Points)
			continue
		}
		slices.SortFunc(out[i].Points, func(a, b Sample) int { return a.Time.Compare(b.Time) })
	}
	return out, nil
}

// flux builds the query text of q.
func (s *Influx) flux(q Query) (string, error) {
	switch q.Fn {
	case FnMean, FnMin, FnMax, FnLast, FnCount:
	default:
		return "", fmt.Errorf("history query: unknown function %q (want mean, min, max, last or count)", q.Fn)
	}
	if q.Every <= 0 {
		return "", fmt.Errorf("history query: every must be positive, got %v", q.Every)
	}
	if !q.End.After(q.Start) {
		return "", fmt.Errorf("history query: end %v is not after start %v", q.End, q.Start)
	}
	if len(q.Points) == 0 {
		return "", errors.New("history query: no points")
	}
	for _, k := range q.Points {
		if !k.Type.Valid() {
			return "", fmt.Errorf("history query: point %v: bad type", k)
		}
	}
	// Windows start at Unix epoch + offset + k*every; the offset puts one
	// boundary on q.Start.
	offset := q.Start.UnixNano() % int64(q.Every)
	if offset < 0 {
		offset += int64(q.Every)
	}
	stop := q.End.UTC().Format(time.RFC3339Nano)
	var b strings.Builder
	b.WriteString("from(bucket: ")
	b.WriteString(fluxString(s.bucket))
	b.WriteString(")\n  |> range(start: ")
	b.WriteString(q.Start.UTC().Format(time.RFC3339Nano))
	b.WriteString(", stop: ")
	b.WriteString(stop)
	b.WriteString(")\n  |> filter(fn: (r) => r._measurement == ")
	b.WriteString(fluxString(s.measurement))
	b.WriteString(` and r._field == "value" and (`)
	for i, k := range q.Points {
		if i > 0 {
			b.WriteString(" or ")
		}
		fmt.Fprintf(&b, `(r.channel == "%d" and r.type == "%c" and r.point == "%d")`, k.Channel, byte(k.Type), k.Point)
	}
	b.WriteString("))\n")
	// InfluxDB 1.8's storage read includes a row at exactly the range's
	// stop, which then lands in a window of its own: drop it here. (A
	// separate filter, so that the one above is still pushed down.)
	b.WriteString("  |> filter(fn: (r) => r._time < ")
	b.WriteString(stop)
	b.WriteString(")\n")
	// aggregateWindow (timeSrc: "_start") would do, but in Flux 0.65
	// (InfluxDB 1.8) it has no offset, so its windows align to the epoch,
	// not to q.Start: window + fn, reading _start, is the same thing
	// aligned.
	fmt.Fprintf(&b, "  |> window(every: %dns, offset: %dns, createEmpty: false)\n", int64(q.Every), offset)
	fmt.Fprintf(&b, "  |> %s()\n", q.Fn)
	b.WriteString(`  |> keep(columns: ["_start", "_value", "channel", "type", "point"])` + "\n")
	return b.String(), nil
}

// fluxString quotes s as a Flux string literal.
func fluxString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range []byte(s) {
		switch c {
		case '"', '\\', '$':
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String()
}

func recordKey(ch, typ, pt any) (messages.PointKey, bool) {
	cs, ok1 := ch.(string)
	ts, ok2 := typ.(string)
	ps, ok3 := pt.(string)
	if !ok1 || !ok2 || !ok3 || len(ts) != 1 {
		return messages.PointKey{}, false
	}
	c, err1 := strconv.ParseUint(cs, 10, 32)
	p, err2 := strconv.ParseUint(ps, 10, 32)
	if err1 != nil || err2 != nil {
		return messages.PointKey{}, false
	}
	return messages.PointKey{Channel: uint32(c), Type: messages.PointType(ts[0]), Point: uint32(p)}, true
}

func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, !math.IsNaN(x)
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	}
	return 0, false
}

// Ping reports whether InfluxDB answers (GET /ping), for readiness checks.
func (s *Influx) Ping(ctx context.Context) error {
	if _, err := s.client.Ping(ctx); err != nil {
		return fmt.Errorf("influxdb ping: %w", err)
	}
	return nil
}

// Close releases the client's idle connections. Idempotent.
func (s *Influx) Close() error {
	s.closeOnce.Do(s.client.Close)
	return nil
}
