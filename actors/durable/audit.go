package durable

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/voltage-ems/voltage/messages"
)

// The audit trail (docs/audit.md): data_dir/audit.log holds one JSON object
// per line, a messages.AuditEvent with two more fields first:
//
//	{"seq":118,"prev":"<64 hex>","time":1764090000000,"event":"accepted",...}
//
// seq counts the entries of the trail from 1, across rotated files; prev is
// the hex SHA-256 of the bytes of the line before (without its newline), 64
// zeros for the first line of a fresh trail. When audit.log reaches
// MaxBytes it becomes audit.log.1 (audit.log.1 becomes audit.log.2, and so
// on; the oldest beyond Keep is removed) and the chain continues in the
// new audit.log: its first line carries the hash of the old file's last.

// AuditRepaired is the event of the entry AuditLog appends when it opens a
// trail whose last line was torn (a crash mid-write) and cuts that line
// off; Reason says what was cut.
const AuditRepaired = "repaired"

// Defaults of AuditOptions.
const (
	DefaultAuditMaxBytes = 32 << 20
	DefaultAuditKeep     = 10
	DefaultAuditQueue    = 4096
	DefaultAuditWait     = time.Second
)

// maxAuditBatch bounds the entries of one write and fsync.
const maxAuditBatch = 1024

// AuditOptions configure an AuditLog; zero values take the defaults.
type AuditOptions struct {
	// MaxBytes rotates audit.log once it reaches this size (32 MiB).
	MaxBytes int64
	// Keep is how many rotated files are kept: audit.log.1 to
	// audit.log.{Keep} (10).
	Keep int
	// Queue is how many entries may wait for the writer (4096).
	Queue int
	// Wait is how long Audit waits for room in a full queue before it
	// drops the entry, counts and logs it (1 s).
	Wait time.Duration
	// Node is set on entries that have none.
	Node string
	// Log gets the errors: dropped entries, failed writes, rotations
	// that failed. Default: discard.
	Log *slog.Logger
	// Registerer exports voltage_audit_* metrics (nil: not exported).
	Registerer prometheus.Registerer
	// Now is the clock of entries without a time; default time.Now.
	Now func() time.Time
}

// auditMetrics are the counters of an AuditLog.
type auditMetrics struct {
	entries prometheus.Counter
	dropped prometheus.Counter
	commit  prometheus.Histogram
}

func newAuditMetrics(reg prometheus.Registerer) auditMetrics {
	m := auditMetrics{
		entries: prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_audit_entries_total",
			Help: "Entries appended to the audit trail (data_dir/audit.log) and fsync'd."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "voltage_audit_dropped_total",
			Help: "Audit entries lost: the queue stayed full, the write or fsync failed, or the log was closed."}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "voltage_audit_commit_seconds",
			Help:    "Time of one write and fsync of the audit trail (a group of entries).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
	}
	if reg != nil {
		reg.MustRegister(m.entries, m.dropped, m.commit)
	}
	return m
}

// auditReq is an entry to append, or a flush marker.
type auditReq struct {
	ev      *messages.AuditEvent
	flushed chan error
}

// AuditLog appends the tamper-evident audit trail. Audit may be called from
// any goroutine; one goroutine writes, with group commit: the entries queued
// while a write and fsync were in progress share the next one.
type AuditLog struct {
	path string
	o    AuditOptions
	log  *slog.Logger
	m    auditMetrics
	q    chan auditReq
	stop chan struct{}
	done chan struct{}

	mu     sync.RWMutex // held for reading while enqueuing; Close takes it
	closed bool

	// Writer state: the open goroutine, then the writer goroutine only.
	f        *os.File
	size     int64
	seq      uint64
	prev     [sha256.Size]byte
	buf      []byte
	repaired string

	closeOnce sync.Once
	closeErr  error
}

var _ messages.AuditSink = (*AuditLog)(nil)

var errAuditClosed = errors.New("audit log is closed")

// OpenAudit opens (or creates) the audit trail at path (data_dir/audit.log)
// and starts its writer. The chain continues from the last entry of the
// trail, in audit.log or, when it is empty, in audit.log.1. A torn last line
// (a crash mid-write) is cut off, and the cut is itself appended as an
// AuditRepaired entry (Repaired says what was cut).
func OpenAudit(path string, o AuditOptions) (*AuditLog, error) {
	a, err := openAudit(path, o)
	if err != nil {
		return nil, err
	}
	go a.run()
	return a, nil
}

// openAudit opens the file and continues the chain; the writer is not
// started.
func openAudit(path string, o AuditOptions) (*AuditLog, error) {
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultAuditMaxBytes
	}
	if o.Keep <= 0 {
		o.Keep = DefaultAuditKeep
	}
	if o.Queue <= 0 {
		o.Queue = DefaultAuditQueue
	}
	if o.Wait <= 0 {
		o.Wait = DefaultAuditWait
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	a := &AuditLog{path: path, o: o, log: o.Log, m: newAuditMetrics(o.Registerer),
		q: make(chan auditReq, o.Queue), stop: make(chan struct{}), done: make(chan struct{})}
	if err := a.open(); err != nil {
		if a.f != nil {
			_ = a.f.Close()
		}
		return nil, fmt.Errorf("audit log %s: %w", path, err)
	}
	return a, nil
}

func (a *AuditLog) open() error {
	if err := os.MkdirAll(filepath.Dir(a.path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(a.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	a.f = f
	st, err := f.Stat()
	if err != nil {
		return err
	}
	a.size = st.Size()
	torn, tornAt, err := cutTorn(f, a.size)
	if err != nil {
		return err
	}
	a.size = tornAt
	// The chain continues from the last line of the trail.
	line, err := lastLine(f, a.size)
	if err != nil {
		return err
	}
	if line == nil {
		if line, err = lastLineOf(a.path + ".1"); err != nil {
			return err
		}
	}
	if line != nil {
		a.prev = sha256.Sum256(line)
		var h struct {
			Seq uint64 `json:"seq"`
		}
		if err := json.Unmarshal(line, &h); err != nil || h.Seq == 0 {
			// Not an entry (edited, or another file): chain to it anyway,
			// and let verify say where; the sequence restarts after it.
			a.log.Error("audit log: the last line is not an audit entry; the chain continues after it", "file", a.path)
		}
		a.seq = h.Seq
	}
	if torn != nil {
		preview := torn
		if len(preview) > 1024 {
			preview = preview[:1024]
		}
		a.repaired = fmt.Sprintf("%s: torn last line cut off at open (%d bytes after byte %d, a crash mid-write): %q",
			filepath.Base(a.path), len(torn), tornAt, preview)
		a.log.Error("audit log: torn last line cut off", "file", a.path, "bytes", len(torn), "at", tornAt)
		ev := &messages.AuditEvent{Time: a.o.Now().UnixMilli(), Event: AuditRepaired, Node: a.o.Node, Reason: a.repaired}
		if err := a.commit([]auditReq{{ev: ev}}); err != nil {
			return fmt.Errorf("record the cut: %w", err)
		}
	}
	return nil
}

// cutTorn truncates a file whose last line has no newline to its last
// newline, and returns the bytes cut and the new size.
func cutTorn(f *os.File, size int64) (torn []byte, newSize int64, err error) {
	if size == 0 {
		return nil, 0, nil
	}
	last := make([]byte, 1)
	if _, err := f.ReadAt(last, size-1); err != nil {
		return nil, 0, err
	}
	if last[0] == '\n' {
		return nil, size, nil
	}
	end, err := lastNewline(f, size)
	if err != nil {
		return nil, 0, err
	}
	torn = make([]byte, size-end)
	if _, err := f.ReadAt(torn, end); err != nil {
		return nil, 0, err
	}
	if err := f.Truncate(end); err != nil {
		return nil, 0, err
	}
	if err := f.Sync(); err != nil {
		return nil, 0, err
	}
	return torn, end, nil
}

// lastNewline returns the offset just after the last '\n' before size (0
// when there is none).
func lastNewline(f *os.File, size int64) (int64, error) {
	buf := make([]byte, 64<<10)
	for end := size; end > 0; {
		start := max(0, end-int64(len(buf)))
		b := buf[:end-start]
		if _, err := f.ReadAt(b, start); err != nil {
			return 0, err
		}
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			return start + int64(i) + 1, nil
		}
		end = start
	}
	return 0, nil
}

// lastLine returns the last line of the first size bytes of f (which end
// with a newline), without its newline; nil when there is none.
func lastLine(f *os.File, size int64) ([]byte, error) {
	if size == 0 {
		return nil, nil
	}
	start, err := lastNewline(f, size-1)
	if err != nil {
		return nil, err
	}
	line := make([]byte, size-1-start)
	if _, err := f.ReadAt(line, start); err != nil {
		return nil, err
	}
	return line, nil
}

// lastLineOf is lastLine of a rotated file (nil when there is none).
func lastLineOf(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	end, err := lastNewline(f, st.Size())
	if err != nil {
		return nil, err
	}
	return lastLine(f, end)
}

// Repaired says what the open repaired ("" when the trail ended cleanly).
func (a *AuditLog) Repaired() string { return a.repaired }

// Audit queues an entry (copied: the caller keeps ev). It returns at once,
// or after up to AuditOptions.Wait when the queue is full; an entry that
// still finds no room, or comes after Close, is dropped, counted in
// voltage_audit_dropped_total and logged at error.
func (a *AuditLog) Audit(ev *messages.AuditEvent) {
	e := *ev
	if ev.Value != nil {
		v := *ev.Value
		e.Value = &v
	}
	if ev.Readback != nil {
		v := *ev.Readback
		e.Readback = &v
	}
	if e.Time == 0 {
		e.Time = a.o.Now().UnixMilli()
	}
	if e.Node == "" {
		e.Node = a.o.Node
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.closed {
		a.drop(&e, errAuditClosed.Error())
		return
	}
	select {
	case a.q <- auditReq{ev: &e}:
		return
	default:
	}
	t := time.NewTimer(a.o.Wait)
	defer t.Stop()
	select {
	case a.q <- auditReq{ev: &e}:
	case <-t.C:
		a.drop(&e, fmt.Sprintf("audit queue full for %v (the disk is too slow or stalled)", a.o.Wait))
	}
}

func (a *AuditLog) drop(e *messages.AuditEvent, why string) {
	a.m.dropped.Inc()
	a.log.Error("audit entry dropped", "why", why, "event", e.Event, "id", e.ID, "point", e.Point, "user", e.User)
}

// Flush waits until every entry queued before it is written and fsync'd,
// and returns the error of that write (nil: on disk).
func (a *AuditLog) Flush() error {
	ch := make(chan error, 1)
	a.mu.RLock()
	if a.closed {
		a.mu.RUnlock()
		return errAuditClosed
	}
	a.q <- auditReq{flushed: ch}
	a.mu.RUnlock()
	return <-ch
}

// Close writes what is queued, fsyncs and closes the file. Idempotent.
func (a *AuditLog) Close() error {
	a.closeOnce.Do(func() {
		a.mu.Lock()
		a.closed = true
		a.mu.Unlock()
		close(a.stop)
		<-a.done
		if a.f != nil {
			if err := a.f.Close(); err != nil {
				a.closeErr = fmt.Errorf("audit log %s: close: %w", a.path, err)
			}
			a.f = nil
		}
	})
	return a.closeErr
}

// run is the writer: it takes whatever is queued, up to maxAuditBatch
// entries, and writes it with one fsync.
func (a *AuditLog) run() {
	defer close(a.done)
	batch := make([]auditReq, 0, maxAuditBatch)
	take := func() {
		for len(batch) < maxAuditBatch {
			select {
			case r := <-a.q:
				batch = append(batch, r)
			default:
				return
			}
		}
	}
	for {
		select {
		case r := <-a.q:
			batch = append(batch[:0], r)
			take()
			_ = a.commit(batch)
		case <-a.stop:
			// Nothing is enqueued any more (closed is set): drain.
			for {
				batch = batch[:0]
				take()
				if len(batch) == 0 {
					return
				}
				_ = a.commit(batch)
			}
		}
	}
}

// auditLine is the JSON of one line: the chain fields, then the event.
type auditLine struct {
	Seq  uint64 `json:"seq"`
	Prev string `json:"prev"`
	messages.AuditEvent
}

// commit appends the entries of batch to the file with one write and one
// fsync, answers its flush markers and rotates the file when it is full.
// A failed write is cut off again, so the file always ends at a whole line
// and the chain at its last entry; its entries are dropped and counted.
func (a *AuditLog) commit(batch []auditReq) error {
	a.buf = a.buf[:0]
	seq, prev := a.seq, a.prev
	n := 0
	var hexPrev [2 * sha256.Size]byte
	for _, r := range batch {
		if r.ev == nil {
			continue
		}
		hex.Encode(hexPrev[:], prev[:])
		line, err := json.Marshal(auditLine{Seq: seq + 1, Prev: string(hexPrev[:]), AuditEvent: *r.ev})
		if err != nil { // a NaN value: keep the entry, without the number
			ev := *r.ev
			ev.Value, ev.Readback = nil, nil
			ev.Reason += " (value not representable in JSON)"
			line, _ = json.Marshal(auditLine{Seq: seq + 1, Prev: string(hexPrev[:]), AuditEvent: ev})
		}
		prev = sha256.Sum256(line)
		a.buf = append(append(a.buf, line...), '\n')
		seq++
		n++
	}
	var err error
	if n > 0 {
		start := time.Now()
		err = a.write()
		if err == nil {
			a.m.commit.Observe(time.Since(start).Seconds())
			a.size += int64(len(a.buf))
			a.seq, a.prev = seq, prev
			a.m.entries.Add(float64(n))
		} else {
			a.m.dropped.Add(float64(n))
			a.log.Error("audit entries lost: write failed", "entries", n, "file", a.path, "err", err)
		}
	}
	for _, r := range batch {
		if r.flushed != nil {
			r.flushed <- err
		}
	}
	if err == nil && a.size >= a.o.MaxBytes {
		a.rotate()
	}
	return err
}

// write appends a.buf and fsyncs; on failure the file is cut back to its
// last whole line.
func (a *AuditLog) write() error {
	if a.f == nil {
		if err := a.reopen(); err != nil {
			return err
		}
	}
	_, err := a.f.Write(a.buf)
	if err == nil {
		err = a.f.Sync()
	}
	if err != nil {
		if terr := a.f.Truncate(a.size); terr != nil {
			err = fmt.Errorf("%w (and cutting the partial write failed: %v)", err, terr)
		}
	}
	return err
}

// reopen opens audit.log again after a rotation that could not.
func (a *AuditLog) reopen() error {
	f, err := os.OpenFile(a.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return err
	}
	a.f, a.size = f, st.Size()
	return nil
}

// rotate renames audit.log to audit.log.1 (shifting the older ones, the
// oldest beyond Keep removed) and starts a new audit.log.
func (a *AuditLog) rotate() {
	if err := a.f.Close(); err != nil {
		a.log.Error("audit log: close before rotation", "file", a.path, "err", err)
	}
	a.f = nil
	for i := a.o.Keep - 1; i >= 1; i-- {
		from, to := a.path+"."+strconv.Itoa(i), a.path+"."+strconv.Itoa(i+1)
		if err := os.Rename(from, to); err != nil && !errors.Is(err, fs.ErrNotExist) {
			a.log.Error("audit log: rotation", "from", from, "to", to, "err", err)
		}
	}
	if err := os.Rename(a.path, a.path+".1"); err != nil {
		a.log.Error("audit log: rotation", "from", a.path, "to", a.path+".1", "err", err)
	}
	if err := a.reopen(); err != nil {
		a.log.Error("audit log: new file after rotation (retried on the next entry)", "file", a.path, "err", err)
		return
	}
	if err := syncDir(filepath.Dir(a.path)); err != nil {
		a.log.Error("audit log: sync directory after rotation", "dir", filepath.Dir(a.path), "err", err)
	}
}

// zeroHash is the prev of the first entry of a fresh trail.
var zeroHash = string(bytes.Repeat([]byte{'0'}, 2*sha256.Size))

// readLines calls fn with every line of r (without its newline) and
// whether it ended with one.
func readLines(r io.Reader, fn func(line []byte, complete bool) error) error {
	br := newLineReader(r)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			complete := line[len(line)-1] == '\n'
			if complete {
				line = line[:len(line)-1]
			}
			if ferr := fn(line, complete); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
