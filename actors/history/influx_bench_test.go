package history

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

func BenchmarkAppendLine(b *testing.B) {
	u := messages.PointUpdate{Key: messages.PointKey{Channel: 1001, Type: messages.Measurement, Point: 10001},
		Value: 230.53, Timestamp: 1764090000000, Quality: messages.Good, Node: "sub-a"}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendLine(buf[:0], "point", &u)
	}
	b.SetBytes(int64(len(buf)))
}

// benchSeries is how many series the write benchmarks spread over: 10
// channels of 1000 points.
const benchSeries = 10_000

// benchPoints fills batch with the next points of a steady stream: every
// series in turn, one sample per series per millisecond, so no point
// overwrites another.
func benchPoints(batch []messages.PointUpdate, seq *atomic.Int64) {
	first := seq.Add(int64(len(batch))) - int64(len(batch))
	t0 := time.Date(2025, 11, 25, 0, 0, 0, 0, time.UTC).UnixMilli()
	for i := range batch {
		n := first + int64(i)
		s := n % benchSeries
		batch[i] = messages.PointUpdate{
			Key:       messages.PointKey{Channel: 1001 + uint32(s/1000), Type: messages.Measurement, Point: 10001 + uint32(s%1000)},
			Value:     math.Round(230+10*math.Sin(float64(n)/1000)*1000) / 1000,
			Timestamp: t0 + n/benchSeries,
			Quality:   messages.Good,
		}
	}
}

// BenchmarkInfluxWrite measures points/s through Store.Write into a local
// influxd: the default (batches of 5000, one writer, as the batch writer
// sends them), then larger batches and concurrent writers to see where
// influxd itself tops out.
func BenchmarkInfluxWrite(b *testing.B) {
	srv := testenv.StartInfluxDB(b)
	s, err := NewInflux(config.InfluxDB{URL: srv.URL(), Bucket: testenv.InfluxDatabase + "/autogen", Measurement: "point"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var seq atomic.Int64
	for _, c := range []struct{ batch, writers int }{{5000, 1}, {20000, 1}, {5000, 2}, {5000, 4}, {20000, 4}} {
		b.Run(fmt.Sprintf("batch=%d/writers=%d", c.batch, c.writers), func(b *testing.B) {
			benchWrite(b, c.batch, c.writers, func(batch []messages.PointUpdate) error {
				return s.Write(context.Background(), batch)
			}, &seq)
		})
	}
	// influxd alone: prebuilt uncompressed bodies through the 1.x /write
	// API, no encoding or gzip on the client side.
	for _, c := range []struct{ batch, writers int }{{5000, 1}, {5000, 4}, {20000, 4}} {
		b.Run(fmt.Sprintf("raw/batch=%d/writers=%d", c.batch, c.writers), func(b *testing.B) {
			client := &http.Client{Timeout: 30 * time.Second}
			url := srv.URL() + "/write?db=" + testenv.InfluxDatabase
			benchWrite(b, c.batch, c.writers, func(batch []messages.PointUpdate) error {
				var body []byte
				for i := range batch {
					body = AppendLine(body, "point", &batch[i])
				}
				return postBody(client, url, body)
			}, &seq)
		})
	}
}

// benchWrite runs b.N batches of size points through write, from writers
// goroutines, and reports points/s. Building the batches is not timed.
func benchWrite(b *testing.B, size, writers int, write func([]messages.PointUpdate) error, seq *atomic.Int64) {
	batches := make(chan []messages.PointUpdate, writers*2)
	go func() {
		defer close(batches)
		for i := 0; i < b.N; i++ {
			batch := make([]messages.PointUpdate, size)
			benchPoints(batch, seq)
			batches <- batch
		}
	}()
	// Let the producer get ahead before the clock starts.
	for len(batches) < cap(batches) && len(batches) < b.N {
		time.Sleep(time.Millisecond)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for batch := range batches {
				if err := write(batch); err != nil {
					failed.Store(err)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N*size)/elapsed.Seconds(), "points/s")
}

func postBody(c *http.Client, url string, body []byte) error {
	resp, err := c.Post(url, "text/plain", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("POST /write: %s: %s", resp.Status, msg)
	}
	return nil
}
