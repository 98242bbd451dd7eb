package history

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltage-ems/voltage/messages"
)

// BenchmarkOpenEmbedded measures OpenEmbedded on a large history file: the
// meta page check, the walk of every bucket and sample with the sample
// check, and the first retention pass. VOLTAGE_BENCH_HISTORY_MB sets the
// size (default 150). Warm: the file is in the page cache; cold: dropped
// from it before each open (posix_fadvise DONTNEED), as after a reboot.
//
//	go test -run '^$' -bench OpenEmbedded -benchtime 3x ./actors/history
func BenchmarkOpenEmbedded(b *testing.B) {
	mb := 150
	if s := os.Getenv("VOLTAGE_BENCH_HISTORY_MB"); s != "" {
		var err error
		if mb, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	path := filepath.Join(b.TempDir(), "history.db")
	samples := buildHistory(b, path, int64(mb)<<20)
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("history.db: %d MiB, %d samples in 1000 points", st.Size()>>20, samples)
	for _, cold := range []bool{false, true} {
		name := "warm"
		if cold {
			name = "cold"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if cold {
					b.StopTimer()
					dropCache(b, path)
					b.StartTimer()
				}
				e, err := OpenEmbedded(path, 100*365*24*time.Hour, nil)
				if err != nil {
					b.Fatal(err)
				}
				if e.Damage() != nil {
					b.Fatal(e.Damage())
				}
				b.StopTimer()
				_ = e.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(samples)/b.Elapsed().Seconds()*float64(b.N), "samples/s")
		})
	}
}

// buildHistory writes samples of 1000 points, one a second each, until the
// file reaches size bytes, and returns how many it wrote.
func buildHistory(b *testing.B, path string, size int64) int {
	e, err := OpenEmbedded(path, 100*365*24*time.Hour, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	t0 := time.Now().Add(-30 * 24 * time.Hour)
	batch := make([]messages.PointUpdate, 0, 50_000)
	n := 0
	for sec := 0; ; sec += 50 {
		if st, err := os.Stat(path); err == nil && st.Size() >= size {
			return n
		}
		batch = batch[:0]
		for s := sec; s < sec+50; s++ {
			for p := uint32(1); p <= 1000; p++ {
				batch = append(batch, messages.PointUpdate{Key: messages.PointKey{Channel: 1001, Type: messages.Measurement, Point: p},
					Timestamp: t0.Add(time.Duration(s) * time.Second).UnixMilli(), Value: float64(s) + float64(p)/1000})
			}
		}
		if err := e.Write(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
		n += len(batch)
	}
}

func dropCache(b *testing.B, path string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatal(err)
	}
}
