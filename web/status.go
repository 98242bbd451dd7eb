package web

import (
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
)

// Warning is a problem the node recovered from: it works, but an operator
// should know (a damaged history.db moved aside and started empty, a torn
// audit line cut off).
type Warning struct {
	Component string    `json:"component"` // history, spool, dedupe, audit
	Reason    string    `json:"reason"`
	Time      time.Time `json:"time"`
}

// warnings returns Deps.Warnings, never nil.
func (s *server) warnings() []Warning {
	if s.d.Warnings == nil {
		return []Warning{}
	}
	if w := s.d.Warnings(); w != nil {
		return w
	}
	return []Warning{}
}

// readyBody is /ready's answer when the node is ready; the warnings are
// there when it recovered from something (still 200: it works).
func (s *server) readyBody() gin.H {
	h := gin.H{"status": "ready"}
	if w := s.warnings(); len(w) > 0 {
		h["warnings"] = w
	}
	return h
}

// statusJSON is the answer of GET /api/status.
type statusJSON struct {
	Node    string    `json:"node"`
	Version string    `json:"version"`
	Started time.Time `json:"started"` // when the HTTP API started
	// Uptime is the time since Started, as a Go duration ("1h2m3s"), and
	// UptimeSeconds the same in seconds.
	Uptime        string    `json:"uptime"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	Warnings      []Warning `json:"warnings"`
}

// statusHandler answers GET /api/status: node name, version, uptime since
// started, and the problems the node recovered from.
func (s *server) statusHandler(started time.Time) gin.HandlerFunc {
	return func(c *gin.Context) {
		up := time.Since(started)
		c.JSON(http.StatusOK, statusJSON{Node: s.d.Config.Node.Name, Version: s.d.Version, Started: started.UTC(),
			Uptime: up.Round(time.Second).String(), UptimeSeconds: up.Seconds(), Warnings: s.warnings()})
	}
}
