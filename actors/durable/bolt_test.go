package durable

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	testBucket = []byte("samples")
	testNested = []byte("nested")
)

// makeBolt writes a bbolt file with a bucket of n keys (values of 100
// bytes) and a nested bucket, closes it, and returns the root page of the
// big bucket (a page the walk must read).
func makeBolt(t *testing.T, path string, n int) (root uint64) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(testBucket)
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			if err := b.Put(testKey(i), bytes.Repeat([]byte{byte(i)}, 100)); err != nil {
				return err
			}
		}
		nb, err := b.CreateBucket(testNested)
		if err != nil {
			return err
		}
		return nb.Put([]byte("k"), []byte("v"))
	})
	if err == nil { // a second transaction: each meta page has data under it
		err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket(testBucket).Put(testKey(n), []byte("last")) })
	}
	if err == nil {
		err = db.View(func(tx *bolt.Tx) error { root = uint64(tx.Bucket(testBucket).Root()); return nil })
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if root == 0 {
		t.Fatal("bucket is inline: give it more keys")
	}
	return root
}

func testKey(i int) []byte { return []byte(fmt.Sprintf("key-%06d", i)) }

// sh runs a command (dd, truncate) and fails the test on error.
func sh(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// ddPage overwrites page n (4096 bytes) of the file with random bytes.
func ddPage(t *testing.T, path string, n uint64) {
	t.Helper()
	sh(t, "dd", "if=/dev/urandom", "of="+path, "bs=4096", "seek="+strconv.FormatUint(n, 10), "count=1", "conv=notrunc", "status=none")
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func openBolt(t *testing.T, path string, opts BoltOptions) (*bolt.DB, *Damage) {
	t.Helper()
	db, d, err := OpenBolt(path, opts)
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db, d
}

// usable checks a store can be written and read.
func usable(t *testing.T, db *bolt.DB) {
	t.Helper()
	err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("fresh"))
		if err != nil {
			return err
		}
		return b.Put([]byte("a"), []byte("b"))
	})
	if err != nil {
		t.Fatalf("fresh store not writable: %v", err)
	}
	_ = db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket([]byte("fresh")).Get([]byte("a")); string(v) != "b" {
			t.Fatalf("fresh store reads %q", v)
		}
		return nil
	})
}

func TestOpenBoltIntactKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	makeBolt(t, path, 2000)
	var checked int
	db, d := openBolt(t, path, BoltOptions{Check: func(path [][]byte, k, v []byte) error { checked++; return nil }})
	if d != nil {
		t.Fatalf("intact file reported damaged: %v", d)
	}
	if checked != 2001+3 { // the keys, the nested bucket and its key, the top bucket
		t.Fatalf("check saw %d entries", checked)
	}
	_ = db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(testBucket).Get(testKey(1234)); len(v) != 100 || v[0] != byte(1234%256) {
			t.Fatalf("data lost: %x", v)
		}
		return nil
	})
	if m, _ := filepath.Glob(path + ".corrupt-*"); len(m) != 0 {
		t.Fatalf("intact file moved aside: %v", m)
	}
}

func TestOpenBoltMissingOrEmptyIsCreated(t *testing.T) {
	dir := t.TempDir()
	db, d := openBolt(t, filepath.Join(dir, "sub", "new.db"), BoltOptions{})
	if d != nil {
		t.Fatalf("missing file reported damaged: %v", d)
	}
	usable(t, db)
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	db, d = openBolt(t, empty, BoltOptions{})
	if d != nil {
		t.Fatalf("empty file reported damaged: %v", d)
	}
	usable(t, db)
}

// TestOpenBoltDamagedFiles damages real files the ways a disk, a crash or
// a careless hand does, with the real dd and truncate: each is detected
// without a panic or a fault escaping, moved aside unchanged, and a fresh
// empty store takes its place.
func TestOpenBoltDamagedFiles(t *testing.T) {
	zeros := make([]byte, 64<<10)
	f := func(name string, damage func(t *testing.T, path string, root uint64), want string) {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "history.db")
			root := makeBolt(t, path, 3000)
			damage(t, path, root)
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			now := time.Date(2026, 12, 6, 19, 25, 0, 0, time.UTC)
			db, d := openBolt(t, path, BoltOptions{Now: func() time.Time { return now }})
			if d == nil {
				t.Fatal("damage not detected")
			}
			t.Log(d)
			if !strings.Contains(d.Reason, want) {
				t.Fatalf("reason %q does not say %q", d.Reason, want)
			}
			if wantTo := path + ".corrupt-20261206T192500Z"; d.MovedTo != wantTo {
				t.Fatalf("moved to %q, want %q", d.MovedTo, wantTo)
			}
			after, err := os.ReadFile(d.MovedTo)
			if err != nil || !bytes.Equal(before, after) {
				t.Fatalf("damaged file not kept unchanged next to the fresh one (err %v)", err)
			}
			usable(t, db)
			_ = db.View(func(tx *bolt.Tx) error {
				if tx.Bucket(testBucket) != nil {
					t.Fatal("fresh store has the old bucket")
				}
				return nil
			})
			// The fresh file reopens clean.
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			db, d = openBolt(t, path, BoltOptions{})
			if d != nil {
				t.Fatalf("fresh file reported damaged on reopen: %v", d)
			}
			usable(t, db)
		})
	}
	f("dd over a bucket page", func(t *testing.T, path string, root uint64) { ddPage(t, path, root) }, "bbolt panicked")
	f("dd over both meta pages", func(t *testing.T, path string, _ uint64) { ddPage(t, path, 0); ddPage(t, path, 1) }, "no valid meta page")
	f("dd over the freelist page", func(t *testing.T, path string, _ uint64) { ddPage(t, path, freelistPage(t, path)) }, "freelist")
	f("truncated to half", func(t *testing.T, path string, _ uint64) {
		sh(t, "truncate", "-s", strconv.FormatInt(fileSize(t, path)/2, 10), path)
	}, "truncated")
	f("truncated to 5000 bytes", func(t *testing.T, path string, _ uint64) { sh(t, "truncate", "-s", "5000", path) }, "truncated")
	f("truncated to 100 bytes", func(t *testing.T, path string, _ uint64) { sh(t, "truncate", "-s", "100", path) }, "smaller than two pages")
	f("replaced by text", func(t *testing.T, path string, _ uint64) {
		text := strings.Repeat("2026-12-06 19:25:00 INFO this is a log file, not a database\n", 2000)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}, "not a bbolt file")
	f("replaced by zeros", func(t *testing.T, path string, _ uint64) {
		if err := os.WriteFile(path, zeros, 0o600); err != nil {
			t.Fatal(err)
		}
	}, "not a bbolt file")
	f("replaced by another program's file", func(t *testing.T, path string, _ uint64) {
		sqlite := append([]byte("SQLite format 3\x00\x10\x00\x01\x01\x00\x40\x20\x20"), zeros[:8192]...)
		if err := os.WriteFile(path, sqlite, 0o600); err != nil {
			t.Fatal(err)
		}
	}, "not a bbolt file")
}

// freelistPage reads the freelist page number from meta page 0.
func freelistPage(t *testing.T, path string) uint64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m0, err0 := readMeta(f, 0, 0)
	m1, err1 := readMeta(f, 1, 4096)
	if err0 != nil || err1 != nil {
		t.Fatal(err0, err1)
	}
	if m1.txid > m0.txid {
		return m1.freelist
	}
	return m0.freelist
}

// TestOpenBoltOneMetaPageOverwritten: bbolt keeps two meta pages so that it
// can fall back to the other when one is torn; the file is kept, opened
// from the intact one, its data readable, and the damage still reported.
func TestOpenBoltOneMetaPageOverwritten(t *testing.T) {
	for page := uint64(0); page < 2; page++ {
		t.Run(fmt.Sprint("page ", page), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.db")
			makeBolt(t, path, 3000)
			ddPage(t, path, page)
			db, d := openBolt(t, path, BoltOptions{})
			if d == nil || d.MovedTo != "" || !strings.Contains(d.Reason, fmt.Sprintf("meta page %d", page)) {
				t.Fatalf("damage %+v", d)
			}
			_ = db.View(func(tx *bolt.Tx) error {
				if tx.Bucket(testBucket) == nil {
					t.Fatal("data lost")
				}
				return nil
			})
			usable(t, db) // the next commit rewrites the bad meta page
			_ = db.Close()
			_, d = openBolt(t, path, BoltOptions{})
			if d != nil {
				t.Fatalf("still damaged after a commit: %v", d)
			}
		})
	}
}

// TestOpenBoltCheckRefusesContent: a caller's check that refuses an entry
// marks the file as damaged, naming the bucket and key.
func TestOpenBoltCheckRefusesContent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	makeBolt(t, path, 100)
	db, d := openBolt(t, path, BoltOptions{Check: func(p [][]byte, k, v []byte) error {
		if len(p) == 1 && string(k) == "key-000042" {
			return errors.New("value of 100 bytes, want 9")
		}
		return nil
	}})
	if d == nil || d.MovedTo == "" || d.Reason != "bucket samples/key-000042: value of 100 bytes, want 9" {
		t.Fatalf("damage %+v", d)
	}
	usable(t, db)
}

// TestOpenBoltLockedIsNotDamage: another handle holding the file is an
// error, and the file stays where it is.
func TestOpenBoltLockedIsNotDamage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	makeBolt(t, path, 100)
	openBolt(t, path, BoltOptions{})
	db, d, err := OpenBolt(path, BoltOptions{Timeout: 100 * time.Millisecond})
	if err == nil || d != nil || db != nil {
		t.Fatalf("second open: db %v, damage %v, err %v", db, d, err)
	}
	if m, _ := filepath.Glob(path + ".corrupt-*"); len(m) != 0 {
		t.Fatalf("locked file moved aside: %v", m)
	}
}

// TestWalkRecoversMemoryFault skips the meta check on a truncated file, so
// that bbolt maps pages past the end of the file: the fault (SIGBUS) on
// them becomes an error of the guarded open and walk, not a crash.
func TestWalkRecoversMemoryFault(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	makeBolt(t, path, 3000) // 1 MiB, pages up to 198
	// bbolt maps the next power of two above the file size (1 MiB): pages
	// 147 to 255 are mapped but past the end of the file.
	sh(t, "truncate", "-s", strconv.Itoa(147*4096), path)
	db, err := openWalked(path, BoltOptions{Timeout: time.Second})
	if err == nil {
		_ = db.Close()
		t.Fatal("truncated file walked without error")
	}
	t.Log(err)
	var de *damageError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "memory fault") {
		t.Fatalf("err %v", err)
	}
}

func TestMoveAsideTakesAFreeName(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 12, 6, 19, 25, 0, 0, time.UTC)
	var got []string
	for i := 0; i < 3; i++ {
		p := filepath.Join(dir, "h.db")
		if err := os.WriteFile(p, []byte{byte(i)}, 0o600); err != nil {
			t.Fatal(err)
		}
		to, err := moveAside(p, now)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, filepath.Base(to))
	}
	want := []string{"h.db.corrupt-20261206T192500Z", "h.db.corrupt-20261206T192500Z-2", "h.db.corrupt-20261206T192500Z-3"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("names %v, want %v", got, want)
	}
}
