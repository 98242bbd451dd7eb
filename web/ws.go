package web

import (
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"

	"github.com/voltage-ems/voltage/actors/session"
)

// WebSocket timing: the server pings every third of the idle timeout
// (Deps.WSIdle, default 60 s) and drops a client silent for the whole of it;
// a frame that cannot be written within writeTimeout ends the connection.
const (
	defaultWSIdle = 60 * time.Second
	writeTimeout  = 10 * time.Second
	// defaultBacklog is how many frames may wait for a slow client before
	// it is disconnected (at one frame per 100 ms: more than 6 s behind).
	defaultBacklog = 64
)

// SessionOpener starts a session for a new connection (session.Opener).
type SessionOpener interface {
	Open(conn session.Conn, user string) (*session.Handle, error)
}

var upgrader = websocket.Upgrader{
	ReadBufferSize:  4096,
	WriteBufferSize: 16384,
	// Auth is a bearer token checked before the upgrade, not a cookie, so a
	// cross-site page cannot ride on a user's session: any origin may connect.
	CheckOrigin: func(*http.Request) bool { return true },
}

// ws upgrades GET /ws (viewer and up) and runs the connection's reader and
// writer goroutines around its session actor.
func (s *server) ws(c *gin.Context) {
	if s.d.Sessions == nil {
		abort(c, http.StatusServiceUnavailable, "unavailable", "live sessions are not running on this node")
		return
	}
	ws, err := upgrader.Upgrade(c.Writer, c.Request, nil)
	if err != nil {
		return // the upgrader has answered the request
	}
	idle := s.d.WSIdle
	if idle <= 0 {
		idle = defaultWSIdle
	}
	backlog := s.d.WSBacklog
	if backlog <= 0 {
		backlog = defaultBacklog
	}
	conn := newWSConn(ws, idle, backlog)
	user := anonymous
	if p, ok := c.Get(principalKey); ok {
		user = p.(principal).name
	}
	h, err := s.d.Sessions.Open(conn, user)
	if err != nil {
		conn.Close(websocket.CloseTryAgainLater, "no session available: "+err.Error())
		go conn.writeLoop()
		return
	}
	go conn.writeLoop()
	go conn.readLoop(h)
}

type outFrame struct {
	data   []byte
	binary bool
}

// wsConn is one WebSocket connection: frames queue in a bounded channel
// that one goroutine writes out; another reads the client's messages.
type wsConn struct {
	ws          *websocket.Conn
	out         chan outFrame
	closing     chan struct{}
	once        sync.Once
	code        int
	reason      string
	idle, pings time.Duration
}

func newWSConn(ws *websocket.Conn, idle time.Duration, backlog int) *wsConn {
	return &wsConn{ws: ws, out: make(chan outFrame, backlog), closing: make(chan struct{}), idle: idle, pings: idle / 3}
}

// Send implements session.Conn.
func (c *wsConn) Send(frame []byte, binary bool) bool {
	select {
	case <-c.closing:
		return true // closed: nothing to do, not a slow client
	default:
	}
	select {
	case c.out <- outFrame{frame, binary}:
		return true
	default:
		return false
	}
}

// Close implements session.Conn: the writer stops sending frames, sends a
// close frame with the reason (after what the socket already holds, so a
// slow client that still reads learns why) and drops the connection.
func (c *wsConn) Close(code int, reason string) {
	c.once.Do(func() {
		if len(reason) > 120 { // a close frame's reason is at most 123 bytes
			reason = reason[:120]
		}
		c.code, c.reason = code, reason
		close(c.closing)
	})
}

func (c *wsConn) writeLoop() {
	ping := time.NewTicker(c.pings)
	defer ping.Stop()
	for {
		select {
		case <-c.closing:
			_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(c.code, c.reason), time.Now().Add(writeTimeout))
			_ = c.ws.Close()
			return
		case f := <-c.out:
			typ := websocket.TextMessage
			if f.binary {
				typ = websocket.BinaryMessage
			}
			_ = c.ws.SetWriteDeadline(time.Now().Add(writeTimeout))
			if err := c.ws.WriteMessage(typ, f.data); err != nil {
				c.Close(websocket.CloseGoingAway, "write failed")
			}
		case <-ping.C:
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeTimeout)); err != nil {
				c.Close(websocket.CloseGoingAway, "ping failed")
			}
		}
	}
}

func (c *wsConn) readLoop(h *session.Handle) {
	defer h.Gone()
	c.ws.SetReadLimit(session.MaxMessageBytes)
	_ = c.ws.SetReadDeadline(time.Now().Add(c.idle))
	c.ws.SetPongHandler(func(string) error { return c.ws.SetReadDeadline(time.Now().Add(c.idle)) })
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			switch {
			case errors.Is(err, websocket.ErrReadLimit):
				c.Close(websocket.CloseMessageTooBig, "message larger than 64 KiB")
			case websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway):
				c.Close(websocket.CloseNormalClosure, "")
			default:
				c.Close(websocket.CloseGoingAway, "connection idle or broken")
			}
			return
		}
		_ = c.ws.SetReadDeadline(time.Now().Add(c.idle))
		h.Deliver(data)
	}
}
