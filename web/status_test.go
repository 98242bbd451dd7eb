package web

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestReadyAndStatusShowWarnings: a node that recovered from a damaged file
// is ready (200) and says so under warnings, on /ready and on /api/status
// (viewer role).
func TestReadyAndStatusShowWarnings(t *testing.T) {
	var warnings []Warning
	h := NewHandler(Deps{Config: loadTestConfig(t, testYAML), Gatherer: prometheus.NewRegistry(), Version: "1.2.3",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Warnings: func() []Warning { return warnings }})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	get := func(path, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/ready", ""); code != 200 || body != `{"status":"ready"}` {
		t.Fatalf("/ready without warnings: %d %s", code, body)
	}
	var st statusJSON
	code, body := get("/api/status", viewerToken)
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || st.Node != "web-test" || st.Version != "1.2.3" ||
		st.Warnings == nil || len(st.Warnings) != 0 || st.UptimeSeconds < 0 || st.Uptime == "" {
		t.Fatalf("/api/status: %d %s", code, body)
	}
	if !strings.Contains(body, `"warnings":[]`) {
		t.Fatalf("no warnings must be an empty list: %s", body)
	}
	at := time.Date(2026, 12, 6, 19, 25, 0, 0, time.UTC)
	warnings = []Warning{{Component: "history", Reason: "history.db: truncated; moved aside to history.db.corrupt-20261206T192500Z, started empty", Time: at}}
	code, body = get("/ready", "")
	want := `{"status":"ready","warnings":[{"component":"history","reason":"history.db: truncated; moved aside to history.db.corrupt-20261206T192500Z, started empty","time":"2026-12-06T19:25:00Z"}]}`
	if code != 200 || body != want {
		t.Fatalf("/ready with a warning: %d %s\nwant %s", code, body, want)
	}
	code, body = get("/api/status", viewerToken)
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || len(st.Warnings) != 1 || st.Warnings[0].Component != "history" {
		t.Fatalf("/api/status with a warning: %d %s", code, body)
	}
	if code, _ := get("/api/status", ""); code != 401 {
		t.Fatalf("/api/status without a token: %d", code)
	}
}
