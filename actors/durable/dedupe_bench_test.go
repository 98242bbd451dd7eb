package durable

import (
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkDedupeClaim measures Claim of new ids (each committed and
// fsync'd before it returns): one caller at a time (every claim its own
// commit), and 64 concurrent callers (claims share commits through bbolt's
// Batch).
//
//	go test -run '^$' -bench DedupeClaim -benchtime 2s ./actors/durable
func BenchmarkDedupeClaim(b *testing.B) {
	open := func(b *testing.B) *Dedupe {
		d, err := OpenDedupe(filepath.Join(b.TempDir(), "dedupe.db"), DedupeOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = d.Close() })
		return d
	}
	b.Run("serial", func(b *testing.B) {
		d := open(b)
		now := time.Now()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			if first, err := d.Claim("cmd-"+strconv.Itoa(i), now); err != nil || !first {
				b.Fatal(first, err)
			}
		}
	})
	b.Run("parallel64", func(b *testing.B) {
		d := open(b)
		now := time.Now()
		var seq atomic.Int64
		b.ReportAllocs()
		b.SetParallelism(32) // x GOMAXPROCS (2 here): 64 callers
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := "cmd-" + strconv.FormatInt(seq.Add(1), 10)
				if first, err := d.Claim(id, now); err != nil || !first {
					b.Error(first, err)
					return
				}
			}
		})
	})
	b.Run("duplicate", func(b *testing.B) {
		d := open(b)
		now := time.Now()
		if _, err := d.Claim("cmd-1", now); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if first, err := d.Claim("cmd-1", now); err != nil || first {
				b.Fatal(first, err)
			}
		}
	})
}
