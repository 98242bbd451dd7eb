package web

import (
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/voltage-ems/voltage/messages"
)

// contentSecurityPolicy lets the dashboard load its own files and talk to
// its own origin (the API and the WebSocket) and nothing else: no inline
// script or style, no framing, no <base>, forms posted only here.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

// securityHeaders sets the headers of every answer: the policy above,
// nosniff, no referrer, no framing, and no caching (the dashboard's files
// revalidate instead: see dashboard.go).
func securityHeaders(c *gin.Context) {
	h := c.Writer.Header()
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-store")
}

// Gin context keys of what the audit of a refused request reports.
const (
	errorKey = "voltage.error" // the apiError answered (see abort)
	auditKey = "voltage.audit" // *auditInfo set by the handler
)

// auditInfo is what a control or alarm handler learned of the request
// before refusing it.
type auditInfo struct {
	point string
	id    string
	value *float64
	alarm string
}

// auditNote returns the request's auditInfo, creating it.
func auditNote(c *gin.Context) *auditInfo {
	if v, ok := c.Get(auditKey); ok {
		if a, ok := v.(*auditInfo); ok {
			return a
		}
	}
	a := &auditInfo{}
	c.Set(auditKey, a)
	return a
}

// refusedStatus are the answers that make a refused control attempt.
var refusedStatus = map[int]bool{
	http.StatusBadRequest: true, http.StatusUnauthorized: true, http.StatusForbidden: true,
	http.StatusNotFound: true, http.StatusRequestEntityTooLarge: true, http.StatusTooManyRequests: true,
}

// auditRefused records every refused request of its group (the control and
// alarm action routes) to Deps.Audit: who, from where, on what, and why.
func (s *server) auditRefused(c *gin.Context) {
	c.Next()
	if s.d.Audit == nil || !refusedStatus[c.Writer.Status()] {
		return
	}
	ev := messages.AuditEvent{Time: time.Now().UnixMilli(), Event: messages.AuditRefused, Node: s.d.Config.Node.Name,
		Source: "api", Remote: c.Request.RemoteAddr, Route: c.Request.Method + " " + c.FullPath(), HTTPStatus: c.Writer.Status()}
	if v, ok := c.Get(principalKey); ok {
		ev.User = v.(principal).name
	}
	if v, ok := c.Get(errorKey); ok {
		ev.Reason = v.(apiError).Message
	}
	a := auditNote(c)
	ev.Point, ev.ID, ev.Value = a.point, a.id, a.value
	if ev.Point == "" {
		ev.Point = s.auditPoint(c)
	}
	if a.alarm == "" {
		a.alarm = c.Param("id")
	}
	if a.alarm != "" && ev.Reason != "" {
		ev.Reason = "alarm " + strconv.Quote(a.alarm) + ": " + ev.Reason
	}
	s.d.Audit.Audit(&ev)
}

// auditPoint names the target of a request refused before its handler
// resolved it: "1001:*:1" for a control path (type not known yet), the
// point of an alarm rule.
func (s *server) auditPoint(c *gin.Context) string {
	if ch, pt := c.Param("channel_id"), c.Param("point_id"); ch != "" {
		if _, err := strconv.ParseUint(ch, 10, 32); err != nil {
			return ""
		}
		if _, err := strconv.ParseUint(pt, 10, 32); err != nil {
			return ""
		}
		return ch + ":*:" + pt
	}
	if r := s.alarmRules()[c.Param("id")]; r != nil {
		return r.PointStr
	}
	return ""
}
