package durable

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Damage says what OpenBolt found wrong with a file and what it did.
type Damage struct {
	Path   string    // the file that was opened
	Reason string    // what was wrong, with the page, bucket or key where it shows
	Time   time.Time // when it was found
	// MovedTo is where the damaged file now is ({name}.corrupt-{time});
	// a fresh empty file took its place. Empty when the file was kept:
	// one of its two meta pages was invalid, and bbolt opened it from the
	// other one (its own crash recovery), the walk found the rest intact.
	MovedTo string
}

// String is the damage in one line, for logs and /ready.
func (d *Damage) String() string {
	if d.MovedTo == "" {
		return fmt.Sprintf("%s: %s (file kept)", filepath.Base(d.Path), d.Reason)
	}
	return fmt.Sprintf("%s: %s; moved aside to %s, started empty", filepath.Base(d.Path), d.Reason, filepath.Base(d.MovedTo))
}

// CheckFunc validates one entry met by the walk of OpenBolt. path holds the
// names of the buckets above the entry, outermost first (empty for the
// top-level buckets); v is nil when k names a nested bucket. Any error marks
// the file as damaged, with the error as the reason.
type CheckFunc func(path [][]byte, k, v []byte) error

// BoltOptions configure OpenBolt.
type BoltOptions struct {
	// Check validates the content of every key/value and bucket (nil: the
	// structure alone is checked).
	Check CheckFunc
	// Timeout is how long to wait for bbolt's own file lock (another
	// handle on the same file); default 2 s. A timeout is an error, not
	// damage.
	Timeout time.Duration
	// Now is the clock of the moved-aside name; default time.Now.
	Now func() time.Time
}

// bbolt's file format (go.etcd.io/bbolt/internal/common): every page starts
// with a 16-byte header (id, flags, count, overflow); pages 0 and 1 are meta
// pages whose body is
//
//	magic u32, version u32, page size u32, flags u32,
//	root bucket {root pgid u64, sequence u64}, freelist pgid u64,
//	high-water pgid u64, txid u64, checksum u64
//
// in the machine's byte order, the checksum being FNV-64a over the 56 bytes
// before it. Page 1 is at the page size read from page 0 (or the OS page
// size when page 0 is unreadable).
const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	pageHeaderSize = 16
	metaBodySize   = 64
	metaSumOffset  = 56
	pgidNoFreelist = ^uint64(0)
	minPageSize    = 512
	maxPageSize    = 1 << 20
)

// meta is one decoded meta page.
type meta struct {
	page                   int // 0 or 1
	magic, version, psize  uint32
	root, freelist, hwm    uint64
	txid, checksum, actual uint64
}

func readMeta(f *os.File, page int, off int64) (meta, error) {
	m := meta{page: page}
	buf := make([]byte, pageHeaderSize+metaBodySize)
	if _, err := f.ReadAt(buf, off); err != nil {
		if errors.Is(err, io.EOF) {
			return m, fmt.Errorf("meta page %d: beyond the end of the file", page)
		}
		return m, fmt.Errorf("meta page %d: %w", page, err)
	}
	b := buf[pageHeaderSize:]
	ne := binary.NativeEndian
	m.magic, m.version, m.psize = ne.Uint32(b[0:]), ne.Uint32(b[4:]), ne.Uint32(b[8:])
	m.root, m.freelist, m.hwm = ne.Uint64(b[16:]), ne.Uint64(b[32:]), ne.Uint64(b[40:])
	m.txid, m.checksum = ne.Uint64(b[48:]), ne.Uint64(b[metaSumOffset:])
	h := fnv.New64a()
	h.Write(b[:metaSumOffset])
	m.actual = h.Sum64()
	switch {
	case m.magic != boltMagic:
		return m, fmt.Errorf("meta page %d: magic %08x, want %08x (not a bbolt file)", page, m.magic, boltMagic)
	case m.version != boltVersion:
		return m, fmt.Errorf("meta page %d: format version %d, want %d", page, m.version, boltVersion)
	case m.checksum != m.actual:
		return m, fmt.Errorf("meta page %d: checksum %016x, computed %016x", page, m.checksum, m.actual)
	case m.psize < minPageSize || m.psize > maxPageSize || m.psize&(m.psize-1) != 0:
		return m, fmt.Errorf("meta page %d: page size %d", page, m.psize)
	}
	return m, nil
}

// inFile checks the page numbers of a valid meta page against the file.
func (m meta) inFile(size int64) error {
	ps := uint64(m.psize)
	switch {
	case m.hwm < 4: // two meta pages, a freelist, a root
		return fmt.Errorf("meta page %d (transaction %d): high-water page %d", m.page, m.txid, m.hwm)
	case m.hwm > uint64(size)/ps: // in pages: hwm*ps may overflow for garbage
		return fmt.Errorf("meta page %d (transaction %d): its pages reach byte %d, the file ends at %d (truncated)",
			m.page, m.txid, satMul(m.hwm, ps), size)
	case m.root < 2 || m.root >= m.hwm:
		return fmt.Errorf("meta page %d (transaction %d): root page %d outside pages 2..%d", m.page, m.txid, m.root, m.hwm-1)
	case m.freelist != pgidNoFreelist && (m.freelist < 2 || m.freelist >= m.hwm):
		return fmt.Errorf("meta page %d (transaction %d): freelist page %d outside pages 2..%d", m.page, m.txid, m.freelist, m.hwm-1)
	}
	return nil
}

func satMul(a, b uint64) uint64 {
	if b != 0 && a > ^uint64(0)/b {
		return ^uint64(0)
	}
	return a * b
}

// checkMetas reads both meta pages before bbolt maps the file. damage is
// set when bbolt could not open the file safely; note when one meta page is
// invalid but bbolt can open the file from the other.
func checkMetas(f *os.File, size int64) (damage, note string) {
	osPage := int64(os.Getpagesize())
	if size < 2*minPageSize {
		return fmt.Sprintf("file is %d bytes, smaller than two pages (not a bbolt file)", size), ""
	}
	m0, err0 := readMeta(f, 0, 0)
	ps := osPage
	if err0 == nil {
		ps = int64(m0.psize)
	}
	m1, err1 := readMeta(f, 1, ps)
	if err0 != nil && err1 != nil {
		return fmt.Sprintf("no valid meta page (%v; %v)", err0, err1), ""
	}
	valid := make([]meta, 0, 2)
	if err0 == nil {
		valid = append(valid, m0)
	}
	if err1 == nil {
		valid = append(valid, m1)
	}
	if len(valid) == 2 && m0.psize != m1.psize {
		return fmt.Sprintf("meta pages disagree on the page size (%d and %d)", m0.psize, m1.psize), ""
	}
	for _, m := range valid {
		if err := m.inFile(size); err != nil {
			return err.Error(), ""
		}
	}
	switch {
	case err0 != nil:
		return "", fmt.Sprintf("%v; opened from meta page 1 (transaction %d): at most the last write before the damage is lost", err0, m1.txid)
	case err1 != nil:
		return "", fmt.Sprintf("%v; opened from meta page 0 (transaction %d): at most the last write before the damage is lost", err1, m0.txid)
	}
	return "", ""
}

// damageError is damage found by the checks, the open or the walk.
type damageError struct{ reason string }

func (e *damageError) Error() string { return e.reason }

func damagef(format string, args ...any) error {
	return &damageError{reason: fmt.Sprintf(format, args...)}
}

// OpenBolt opens (or creates) the bbolt file at path, creating its
// directory, and makes sure a damaged file cannot take the process down:
//
//   - before bbolt maps the file, its size and both meta pages are checked
//     (magic, version, page size, checksum, root, freelist and high-water
//     page within the file: a truncated file ends before its high-water
//     mark);
//   - then the file is opened and every bucket, nested bucket and
//     key/value is walked once in a goroutine where a memory fault on the
//     mapping (SIGBUS, SIGSEGV) or a bbolt panic is recovered as an error;
//     opts.Check validates the content along the way.
//
// A damaged file (garbage pages, truncated, another format, zeros) is
// closed and moved aside as {name}.corrupt-{UTC time}, a fresh empty file
// is created in its place, and the returned Damage says what happened; the
// caller logs it and reports it. A missing or empty file is simply created.
// The error is for what is not damage: the directory cannot be written,
// another handle holds the file (bbolt's lock times out), the damaged file
// cannot be moved.
func OpenBolt(path string, opts BoltOptions) (*bolt.DB, *Damage, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, nil, err
	}
	reason, note, err := precheck(path)
	if err != nil {
		return nil, nil, err
	}
	if reason == "" {
		db, err := openWalked(path, opts)
		if err == nil {
			if note != "" {
				return db, &Damage{Path: path, Reason: note, Time: opts.Now()}, nil
			}
			return db, nil, nil
		}
		var de *damageError
		if !errors.As(err, &de) {
			return nil, nil, err
		}
		reason = de.reason
	}
	moved, err := moveAside(path, opts.Now())
	if err != nil {
		return nil, nil, fmt.Errorf("damaged (%s), and moving it aside failed: %w", reason, err)
	}
	d := &Damage{Path: path, Reason: reason, MovedTo: moved, Time: opts.Now()}
	db, err := openWalked(path, opts)
	if err != nil {
		return nil, d, fmt.Errorf("damaged (%s) and moved to %s, but the fresh file does not open: %w", reason, moved, err)
	}
	return db, d, nil
}

// precheck checks the meta pages of an existing, non-empty file.
func precheck(path string) (reason, note string, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", nil
	}
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", "", err
	}
	if !st.Mode().IsRegular() {
		return "", "", fmt.Errorf("not a regular file (%s)", st.Mode())
	}
	if st.Size() == 0 {
		return "", "", nil // bbolt initialises it
	}
	reason, note = checkMetas(f, st.Size())
	if reason == "" {
		reason = preread(f)
	}
	return reason, note, nil
}

// preread reads the whole file once, in order, before bbolt maps it. bbolt
// advises the kernel that its mapping is read at random, so the walk would
// fault the pages in one by one: 2 s for a 150 MiB history.db out of the
// page cache here, against 0.2 s after this read (docs/storage.md). A read
// error (a bad sector) is damage: through the mapping it would be a SIGBUS.
func preread(f *os.File) (reason string) {
	buf := make([]byte, 1<<20)
	var off int64
	for {
		n, err := f.ReadAt(buf, off)
		off += int64(n)
		if errors.Is(err, io.EOF) {
			return ""
		}
		if err != nil {
			return fmt.Sprintf("read error at byte %d: %v", off, err)
		}
	}
}

// openWalked opens the file and walks it, both with memory faults and
// panics turned into damage errors.
func openWalked(path string, opts BoltOptions) (*bolt.DB, error) {
	var file *os.File // kept to release it if bbolt panics inside Open
	bo := &bolt.Options{
		Timeout:      opts.Timeout,
		FreelistType: bolt.FreelistMapType,
		OpenFile: func(name string, flag int, mode os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, mode)
			file = f
			return f, err
		},
	}
	if os.Getenv("VOLTAGE_PREREAD") == "read" {
		if f, err := os.Open(path); err == nil {
			buf := make([]byte, 1<<20)
			for {
				if _, err := f.Read(buf); err != nil {
					break
				}
			}
			f.Close()
		}
	}
	var db *bolt.DB
	err := guarded(func() error {
		var err error
		db, err = bolt.Open(path, 0o600, bo)
		if err != nil {
			return err
		}
		return db.View(func(tx *bolt.Tx) error { return walk(tx, opts.Check) })
	})
	if err == nil {
		return db, nil
	}
	switch {
	case db != nil:
		closeQuietly(db)
	case file != nil:
		// bbolt panicked inside Open: its mapping is lost (the address
		// space stays reserved until exit), the descriptor and its lock
		// are released here.
		_ = file.Close()
	}
	var de *damageError
	if errors.As(err, &de) {
		return nil, err
	}
	// What bbolt's Open refuses is damage too, except a lock held by
	// another handle and errors of the file system itself.
	var pe *fs.PathError
	if errors.Is(err, berrors.ErrTimeout) || errors.As(err, &pe) {
		return nil, err
	}
	return nil, &damageError{reason: "bbolt refuses the file: " + err.Error()}
}

func closeQuietly(db *bolt.DB) {
	_ = guarded(db.Close)
}

// guarded runs f in a goroutine of its own where a memory fault on the
// mapped file becomes a panic, and recovers any panic as a damage error.
func guarded(f func() error) error {
	done := make(chan error, 1)
	go func() {
		debug.SetPanicOnFault(true) // this goroutine only; it ends here
		defer func() {
			if r := recover(); r != nil {
				done <- panicDamage(r)
			}
		}()
		done <- f()
	}()
	return <-done
}

func panicDamage(r any) error {
	// With SetPanicOnFault, a fault is a runtime.Error that has the
	// faulting address.
	if fe, ok := r.(interface{ Addr() uintptr }); ok {
		return damagef("memory fault at 0x%x reading the mapped file (truncated or overwritten): %v", fe.Addr(), r)
	}
	return damagef("bbolt panicked reading the file: %v", r)
}

// walker visits every bucket and key/value of a transaction once.
type walker struct {
	check CheckFunc
	roots map[uint64]string // page of a non-inline bucket -> its path
	keys  int
	sink  byte
}

// maxDepth bounds the nesting of buckets the walk follows.
const maxDepth = 64

func walk(tx *bolt.Tx, check CheckFunc) error {
	w := &walker{check: check, roots: map[uint64]string{}}
	c := tx.Cursor()
	var prev []byte
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if err := w.entry(nil, tx.Bucket, k, v, prev, 0); err != nil {
			return err
		}
		prev = k
	}
	return nil
}

func (w *walker) entry(path [][]byte, bucket func([]byte) *bolt.Bucket, k, v, prev []byte, depth int) error {
	at := func() string { return pathString(path, k) }
	if prev != nil && bytes.Compare(prev, k) >= 0 {
		return damagef("%s: keys out of order", at())
	}
	w.keys++
	if v != nil {
		if len(path) == 0 {
			return damagef("%s: a value at the top level, where bbolt keeps only buckets", at())
		}
		if len(v) > 0 {
			w.sink ^= v[len(v)-1] // fault now on a value whose pages are gone
		}
		if w.check != nil {
			if err := w.check(path, k, v); err != nil {
				return damagef("%s: %v", at(), err)
			}
		}
		return nil
	}
	b := bucket(k)
	if b == nil {
		return damagef("%s: marked as a bucket but not readable as one", at())
	}
	if w.check != nil {
		if err := w.check(path, k, nil); err != nil {
			return damagef("%s: %v", at(), err)
		}
	}
	if depth >= maxDepth {
		return damagef("%s: buckets nested deeper than %d", at(), maxDepth)
	}
	if root := uint64(b.Root()); root != 0 {
		if other, ok := w.roots[root]; ok {
			return damagef("%s: shares its root page %d with bucket %s", at(), root, other)
		}
		w.roots[root] = at()
	}
	sub := append(path[:len(path):len(path)], k)
	c := b.Cursor()
	var p []byte
	for k2, v2 := c.First(); k2 != nil; k2, v2 = c.Next() {
		if err := w.entry(sub, b.Bucket, k2, v2, p, depth+1); err != nil {
			return err
		}
		p = k2
	}
	return nil
}

// pathString names an entry for a damage reason: bucket/bucket/key, each
// part printed as text when it is, else as hex.
func pathString(path [][]byte, k []byte) string {
	var sb strings.Builder
	sb.WriteString("bucket ")
	for _, p := range path {
		sb.WriteString(printable(p))
		sb.WriteByte('/')
	}
	sb.WriteString(printable(k))
	return sb.String()
}

func printable(b []byte) string {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return fmt.Sprintf("0x%x", b)
		}
	}
	return string(b)
}

// moveAside renames the file to {name}.corrupt-{UTC time} (with a counter
// when that name is taken) and syncs the directory.
func moveAside(path string, now time.Time) (string, error) {
	base := path + ".corrupt-" + now.UTC().Format("20060102T150405Z")
	to := base
	for i := 2; ; i++ {
		if _, err := os.Lstat(to); errors.Is(err, fs.ErrNotExist) {
			break
		}
		to = fmt.Sprintf("%s-%d", base, i)
	}
	if err := os.Rename(path, to); err != nil {
		return "", err
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return to, err
	}
	return to, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
