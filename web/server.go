package web

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/actors/alarm"
	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

// ChannelStatusFunc returns the live status of one channel.
type ChannelStatusFunc func(ctx context.Context, id uint32) (*messages.ChannelStatus, error)

// Deps is what the routes need; cmd wires them.
type Deps struct {
	Config *config.Config
	Status ChannelStatusFunc
	Redis  redis.UniversalClient
	// Keys are the site's Redis key names (redis.prefix).
	Keys messages.Keys
	// CommandKey signs the commands the gateway publishes (nil: unsigned).
	CommandKey *messages.CommandKey
	Gatherer   prometheus.Gatherer
	// Ready reports why the node is not ready (nil: ready).
	Ready   func(ctx context.Context) error
	Version string
	Log     *slog.Logger
	// Context bounds the handler's background work (the subscription that
	// delivers command results to waiting requests); cancel it when the
	// node stops. Nil: context.Background(), for the life of the process.
	Context context.Context
	// Computations lists the computations with their state for
	// /api/computations (nil: 503).
	Computations func(ctx context.Context) (any, error)
	// History answers /api/history (nil: 503).
	History HistoryQuerier
	// Cluster answers GET /api/cluster (nil: this node runs alone).
	Cluster func(ctx context.Context) (any, error)
	// Alarms carries acknowledgements and shelving to the alarm actors
	// (nil: those routes answer 503; reads come from Redis).
	Alarms AlarmActions
	// Sessions starts a live session per WebSocket connection (nil: /ws
	// answers 503).
	Sessions SessionOpener
	// WSIdle is how long a WebSocket client may stay silent (no frame, no
	// pong) before it is dropped; default 60 s, pinged every third of it.
	WSIdle time.Duration
	// WSBacklog is how many frames may wait for a slow WebSocket client
	// before it is disconnected; default 64.
	WSBacklog int
	// Audit receives the refused attempts on the control and alarm action
	// routes (401, 403, 400, 404, 413, 429); nil: none.
	Audit messages.AuditSink
	// Metrics counts failed and throttled authentications (nil: none);
	// the same value goes to ServerOptions.Metrics.
	Metrics *HTTPMetrics
	// Warnings lists the problems the node recovered from (damaged files
	// moved aside), shown on /ready (still 200) and /api/status (nil: none).
	Warnings func() []Warning
}

// NewHandler builds the gin engine with every route.
func NewHandler(d Deps) http.Handler {
	gin.SetMode(gin.ReleaseMode)
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if d.Context == nil {
		d.Context = context.Background()
	}
	s := &server{d: d, points: newPointIndex(d.Config), auth: newAuthenticator(d.Config.Auth.Tokens)}
	if n := d.Config.Node; n.HTTPAuthBurst > 0 && n.HTTPAuthRefill > 0 {
		s.auth.throttle = newAuthThrottle(n.HTTPAuthBurst, n.HTTPAuthRefill, d.Log, d.Metrics)
	}
	if d.Redis != nil {
		s.results = newResultWaiter(d.Context, d.Redis, d.Keys, d.Log)
	}
	r := gin.New()
	r.Use(securityHeaders, gin.CustomRecovery(func(c *gin.Context, err any) {
		d.Log.Error("http handler panicked", "path", c.Request.URL.Path, "err", err)
		abort(c, http.StatusInternalServerError, "internal", "internal error")
	}))
	r.GET("/health", s.health)
	r.GET("/ready", s.ready)
	// Everything else needs a token (see auth.go): viewer to read,
	// operator to control.
	viewer := r.Group("/", s.auth.authenticate, s.auth.require(roleViewer))
	viewer.GET("/metrics", gin.WrapH(promhttp.HandlerFor(d.Gatherer, promhttp.HandlerOpts{})))
	viewer.GET("/ws", s.ws)
	api := viewer.Group("/api")
	api.GET("/channels", s.channels)
	api.GET("/channels/:id", s.channel)
	api.GET("/computations", s.computations)
	api.GET("/history", s.history)
	api.GET("/points", s.pointsByPattern)
	api.GET("/points/:ch/:type/:pt", s.point)
	api.GET("/commands/:id", s.command)
	api.GET("/whoami", s.whoami)
	api.GET("/cluster", s.cluster)
	api.GET("/status", s.statusHandler(time.Now()))
	api.GET("/alarms", s.listAlarms)
	api.GET("/alarms/events", s.alarmEvents)
	api.GET("/alarms/:id", s.getAlarm)
	operator := r.Group("/", s.auditRefused, s.auth.authenticate, s.auth.require(roleOperator))
	operator.POST("/control/:channel_id/:point_id", s.control)
	operator.POST("/api/alarms/:id/ack", s.ackAlarm)
	operator.POST("/api/alarms/:id/shelve", s.shelveAlarm)
	operator.POST("/api/alarms/:id/unshelve", s.unshelveAlarm)
	registerDashboard(r)
	r.NoRoute(func(c *gin.Context) {
		abort(c, http.StatusNotFound, "not_found", "no route "+c.Request.Method+" "+c.Request.URL.Path)
	})
	return r
}

type server struct {
	d       Deps
	points  *pointIndex
	auth    *authenticator
	results *resultWaiter

	alarmOnce sync.Once
	rules     map[string]*alarm.Rule
}

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func abort(c *gin.Context, status int, code, msg string) {
	e := apiError{Code: code, Message: msg}
	c.Set(errorKey, e) // for the audit of refused requests
	c.AbortWithStatusJSON(status, gin.H{"error": e})
}

func (s *server) health(c *gin.Context) {
	c.JSON(http.StatusOK, gin.H{"status": "ok", "node": s.d.Config.Node.Name, "version": s.d.Version})
}

func (s *server) ready(c *gin.Context) {
	if s.d.Ready != nil {
		ctx, cancel := context.WithTimeout(c.Request.Context(), 2*time.Second)
		defer cancel()
		if err := s.d.Ready(ctx); err != nil {
			abort(c, http.StatusServiceUnavailable, "not_ready", err.Error())
			return
		}
	}
	c.JSON(http.StatusOK, s.readyBody())
}

// channelJSON is a channel's configuration and live status.
type channelJSON struct {
	ID            uint32    `json:"id"`
	Name          string    `json:"name"`
	Protocol      string    `json:"protocol"`
	PollInterval  string    `json:"poll_interval"`
	Points        int       `json:"points"`
	Connected     bool      `json:"connected"`
	LastPoll      time.Time `json:"last_poll"`
	LastLatencyMS float64   `json:"last_poll_latency_ms"`
	Polls         uint64    `json:"polls"`
	Errors        uint64    `json:"errors"`
	LastError     string    `json:"last_error"`
	Reconnects    uint64    `json:"reconnects"`
	Restarts      int       `json:"restarts"`
	BadPoints     int       `json:"bad_points"`
	// Node runs the channel (empty for a computed channel, or a cluster
	// channel nobody runs).
	Node string `json:"node,omitempty"`
}

func (s *server) channelStatus(ctx context.Context, ch *config.Channel) channelJSON {
	j := channelJSON{ID: ch.ID, Name: ch.Name, Protocol: ch.Protocol, PollInterval: ch.PollInterval.String(), Points: len(ch.Points)}
	if ch.Protocol == config.ProtocolCompute || s.d.Status == nil {
		return j
	}
	st, err := s.d.Status(ctx, ch.ID)
	if err != nil {
		j.LastError = "status unavailable: " + err.Error()
		return j
	}
	j.Connected, j.LastPoll, j.Polls, j.Errors = st.Connected, st.LastPoll, st.Polls, st.Errors
	j.LastLatencyMS = float64(st.LastLatency.Microseconds()) / 1000
	j.LastError, j.Reconnects, j.Restarts, j.BadPoints = st.LastError, st.Reconnects, st.Restarts, st.BadPoints
	if st.Running {
		j.Node = st.Node
	}
	return j
}

func (s *server) channels(c *gin.Context) {
	out := make([]channelJSON, 0, len(s.d.Config.Channels))
	for i := range s.d.Config.Channels {
		out = append(out, s.channelStatus(c.Request.Context(), &s.d.Config.Channels[i]))
	}
	c.JSON(http.StatusOK, out)
}

func (s *server) channel(c *gin.Context) {
	id, err := strconv.ParseUint(c.Param("id"), 10, 32)
	if err != nil {
		abort(c, http.StatusBadRequest, "bad_request", "channel id "+strconv.Quote(c.Param("id"))+" is not a number")
		return
	}
	ch := s.d.Config.Channel(uint32(id))
	if ch == nil {
		abort(c, http.StatusNotFound, "not_found", "unknown channel "+c.Param("id"))
		return
	}
	c.JSON(http.StatusOK, s.channelStatus(c.Request.Context(), ch))
}

func (s *server) pointsByPattern(c *gin.Context) {
	pattern := c.DefaultQuery("pattern", "*")
	m, err := compilePattern(pattern)
	if err != nil {
		abort(c, http.StatusBadRequest, "bad_pattern", "query parameter pattern: "+err.Error())
		return
	}
	sel := s.points.match(m)
	vals, err := readPoints(c.Request.Context(), s.d.Redis, s.d.Keys, sel)
	if err != nil {
		abort(c, http.StatusServiceUnavailable, "redis_unavailable", "reading current values from redis: "+err.Error())
		return
	}
	c.JSON(http.StatusOK, vals)
}

func (s *server) point(c *gin.Context) {
	key, err := messages.ParsePointKey(c.Param("ch") + ":" + c.Param("type") + ":" + c.Param("pt"))
	if err != nil {
		abort(c, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	p := s.points.get(key)
	if p == nil {
		abort(c, http.StatusNotFound, "not_found", "unknown point "+key.String())
		return
	}
	vals, err := readPoints(c.Request.Context(), s.d.Redis, s.d.Keys, []*pointInfo{p})
	if err != nil {
		abort(c, http.StatusServiceUnavailable, "redis_unavailable", "reading current value from redis: "+err.Error())
		return
	}
	c.JSON(http.StatusOK, vals[0])
}

func (s *server) computations(c *gin.Context) {
	if s.d.Computations == nil {
		abort(c, http.StatusServiceUnavailable, "unavailable", "computations are not running on this node")
		return
	}
	items, err := s.d.Computations(c.Request.Context())
	if err != nil {
		abort(c, http.StatusServiceUnavailable, "unavailable", "computations: "+err.Error())
		return
	}
	c.JSON(http.StatusOK, items)
}

// whoami answers GET /api/whoami: the caller's token name and role, so that
// a page can offer only what the role allows.
func (s *server) whoami(c *gin.Context) {
	p := principalOf(c)
	c.JSON(http.StatusOK, gin.H{"name": p.name, "role": p.role.String()})
}

// cluster answers GET /api/cluster: members, substations, unit owners and
// lease ages, as Redis shows them (the same answer on every node).
func (s *server) cluster(c *gin.Context) {
	if s.d.Cluster == nil {
		abort(c, http.StatusNotFound, "not_found", "this node runs alone (started without --cluster)")
		return
	}
	v, err := s.d.Cluster(c.Request.Context())
	if err != nil {
		abort(c, http.StatusServiceUnavailable, "redis_unavailable", "reading the cluster state from redis: "+err.Error())
		return
	}
	c.JSON(http.StatusOK, v)
}
