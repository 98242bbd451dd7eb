package web

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
)

func TestDashboardFiles(t *testing.T) {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	registerDashboard(r)
	get := func(path string, header ...string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		return w
	}
	f := func(path string, status int, ctype, body string) {
		t.Helper()
		w := get(path)
		if w.Code != status {
			t.Fatalf("GET %s: status %d, want %d: %s", path, w.Code, status, w.Body.String())
		}
		if got := w.Header().Get("Content-Type"); !strings.HasPrefix(got, ctype) {
			t.Errorf("GET %s: Content-Type %q, want %s", path, got, ctype)
		}
		if !strings.Contains(w.Body.String(), body) {
			t.Errorf("GET %s: body does not contain %q", path, body)
		}
	}
	f("/", 200, "text/html", `<script type="module" src="/static/app.js">`)
	f("/static/app.js", 200, "text/javascript", "export function onAlarmFrame(frame)")
	f("/static/style.css", 200, "text/css", ":root")
	f("/static/vendor/uPlot.iife.min.js", 200, "text/javascript", "uPlot")
	f("/static/vendor/uPlot.min.css", 200, "text/css", ".uplot")
	f("/static/favicon.svg", 200, "image/svg+xml", "<svg")
	f("/static/missing.js", 404, "application/json", "not_found")
	f("/static/vendor/", 404, "application/json", "not_found")   // no directory listings
	f("/static/../go.mod", 404, "application/json", "not_found") // cleaned to /go.mod: not embedded

	// Unchanged files revalidate to 304 with their ETag.
	w := get("/static/app.js")
	etag := w.Header().Get("ETag")
	if etag == "" || w.Header().Get("Cache-Control") != "no-cache" {
		t.Fatalf("app.js: ETag %q, Cache-Control %q", etag, w.Header().Get("Cache-Control"))
	}
	if w := get("/static/app.js", "If-None-Match", etag); w.Code != http.StatusNotModified {
		t.Errorf("app.js with If-None-Match: status %d, want 304", w.Code)
	}
}
