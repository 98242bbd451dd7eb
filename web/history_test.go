package web

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/voltage-ems/voltage/actors/history"
	"github.com/voltage-ems/voltage/messages"
)

func newHistoryServer(t *testing.T) (*httptest.Server, time.Time) {
	t.Helper()
	store, err := history.OpenEmbedded(filepath.Join(t.TempDir(), "history.db"), 0, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	// 1001:m:10001 gets 1, 2, ... 10 at one second steps from t0.
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	var us []messages.PointUpdate
	for i := 0; i < 10; i++ {
		us = append(us, messages.PointUpdate{Key: messages.PointKey{Channel: 1001, Type: 'm', Point: 10001},
			Value: float64(i + 1), Timestamp: t0.Add(time.Duration(i) * time.Second).UnixMilli()})
	}
	if err := store.Write(context.Background(), us); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(NewHandler(Deps{Config: loadTestConfig(t, testYAML), Gatherer: prometheus.NewRegistry(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), History: store}))
	t.Cleanup(srv.Close)
	return srv, t0
}

func TestHistoryAPI(t *testing.T) {
	srv, t0 := newHistoryServer(t)
	start := t0.Format(time.RFC3339)
	end := t0.Add(10 * time.Second).Format(time.RFC3339)
	r := doRequest(t, srv.URL, "GET", "/api/history?point=1001:m:10001&point=1002:m:1&start="+start+"&end="+end+"&every=5s&fn=mean", viewerToken, "")
	var body struct {
		Every  string `json:"every"`
		Fn     string `json:"fn"`
		Series []struct {
			Key    string `json:"key"`
			Unit   string `json:"unit"`
			Points []struct {
				T int64   `json:"t"`
				V float64 `json:"v"`
			} `json:"points"`
		} `json:"series"`
	}
	if r.status != 200 || json.Unmarshal(r.body, &body) != nil {
		t.Fatalf("history: %s", r)
	}
	if len(body.Series) != 2 || body.Series[0].Key != "1001:m:10001" || body.Series[0].Unit != "V" || len(body.Series[1].Points) != 0 {
		t.Fatalf("series: %s", r)
	}
	pts := body.Series[0].Points
	if len(pts) != 2 || pts[0].T != t0.UnixMilli() || pts[0].V != 3 || pts[1].V != 8 { // mean(1..5), mean(6..10)
		t.Fatalf("5 s means: %+v", pts)
	}
	for fn, want := range map[string][2]float64{"min": {1, 6}, "max": {5, 10}, "last": {5, 10}, "count": {5, 5}} {
		r := doRequest(t, srv.URL, "GET", "/api/history?point=1001:m:10001&start="+start+"&end="+end+"&every=5s&fn="+fn, viewerToken, "")
		_ = json.Unmarshal(r.body, &body)
		if p := body.Series[0].Points; len(p) != 2 || p[0].V != want[0] || p[1].V != want[1] {
			t.Errorf("fn=%s: %+v", fn, p)
		}
	}
	// Defaults: the last hour, an automatic window, mean.
	r = doRequest(t, srv.URL, "GET", "/api/history?point=1001:m:10001", viewerToken, "")
	if r.status != 200 || !strings.Contains(string(r.body), `"every":"30s"`) || !strings.Contains(string(r.body), `"fn":"mean"`) {
		t.Fatalf("defaults: %s", r)
	}
	if r := doRequest(t, srv.URL, "GET", "/api/history?point=1001:m:10001", "", ""); r.status != 401 {
		t.Fatalf("no token: %s", r)
	}
}

func TestHistoryAPIBadQueries(t *testing.T) {
	srv, _ := newHistoryServer(t)
	cases := []struct{ query, fragment string }{
		{"", "at least one point"},
		{"point=1001:m:99999", "unknown point 1001:m:99999"},
		{"point=nonsense", "point:"},
		{"point=1001:m:10001&start=-1h&end=-2h", "is not after start"},
		{"point=1001:m:10001&start=yesterday", "start:"},
		{"point=1001:m:10001&every=0s", "every: must be at least 1s"},
		{"point=1001:m:10001&every=-5m", "every:"},
		{"point=1001:m:10001&start=-400d", "longer than the 366 days"},
		{"point=1001:m:10001&start=-30d&every=1s", "more than 10000"},
		{"point=1001:m:10001&fn=median", "unknown function"},
	}
	for _, c := range cases {
		r := doRequest(t, srv.URL, "GET", "/api/history?"+c.query, viewerToken, "")
		if r.status != 400 || !strings.Contains(string(r.body), c.fragment) {
			t.Errorf("%q: got %s, want 400 containing %q", c.query, r, c.fragment)
		}
	}
	many := "point=1001:m:10001" + strings.Repeat(",1001:m:10001", 20)
	if r := doRequest(t, srv.URL, "GET", "/api/history?"+many, viewerToken, ""); r.status != 400 || !strings.Contains(string(r.body), "at most 20") {
		t.Errorf("21 points: %s", r)
	}
}
