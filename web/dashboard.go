package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
)

// dashboardFiles is the operator dashboard: plain HTML, CSS and ES modules
// plus the vendored uPlot chart library (vendor/), served as they are, with
// no build step.
//
//go:embed dashboard
var dashboardFiles embed.FS

// dashboardFile is one embedded file with its validator.
type dashboardFile struct {
	body  []byte
	etag  string
	ctype string
}

// dashboardTypes are the content types of the dashboard's files, fixed here
// rather than taken from the host's mime.types (which differ between systems
// for .js).
var dashboardTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
}

// loadDashboard reads every embedded file under dashboard/, keyed by its
// path relative to it ("index.html", "vendor/uPlot.min.css").
func loadDashboard() (map[string]dashboardFile, error) {
	files := map[string]dashboardFile{}
	err := fs.WalkDir(dashboardFiles, "dashboard", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := dashboardFiles.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		ctype, ok := dashboardTypes[path.Ext(p)]
		if !ok {
			ctype = "text/plain; charset=utf-8" // LICENSE files
		}
		files[strings.TrimPrefix(p, "dashboard/")] = dashboardFile{body: b, etag: `"` + hex.EncodeToString(sum[:8]) + `"`, ctype: ctype}
		return nil
	})
	return files, err
}

// registerDashboard serves the dashboard page at GET / and its files under
// /static/. They need no token: the page asks for one (or takes ?token= from
// its URL) and sends it with every API call and on /ws.
func registerDashboard(r *gin.Engine) {
	files, err := loadDashboard()
	if err != nil || files["index.html"].body == nil {
		// Cannot happen with a binary that compiled: the files are embedded.
		panic("web: embedded dashboard is incomplete")
	}
	serve := func(c *gin.Context, name string) {
		f, ok := files[name]
		if !ok {
			abort(c, http.StatusNotFound, "not_found", "no dashboard file "+name)
			return
		}
		// Revalidate on every load, so the page of a new binary is picked
		// up at once; unchanged files answer 304.
		c.Header("Cache-Control", "no-cache")
		c.Header("ETag", f.etag)
		c.Header("Content-Type", f.ctype)
		c.Header("X-Content-Type-Options", "nosniff")
		http.ServeContent(c.Writer, c.Request, name, time.Time{}, bytes.NewReader(f.body))
	}
	index := func(c *gin.Context) { serve(c, "index.html") }
	static := func(c *gin.Context) {
		serve(c, strings.TrimPrefix(path.Clean(c.Param("filepath")), "/"))
	}
	r.GET("/", index)
	r.HEAD("/", index)
	r.GET("/static/*filepath", static)
	r.HEAD("/static/*filepath", static)
}
