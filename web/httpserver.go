package web

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/voltage-ems/voltage/config"
)

// ServerOptions are the limits of the node's HTTP server (node.http_* and
// node.tls in the configuration; docs/http.md).
type ServerOptions struct {
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration // the whole request, body included
	WriteTimeout      time.Duration // POST /control with wait extends its own
	IdleTimeout       time.Duration // between requests on a keep-alive connection
	MaxHeaderBytes    int
	// MaxConnsPerClient is how many connections a client address (an
	// IPv6 /64) may hold open; 0: no limit.
	MaxConnsPerClient int
	// TLS serves HTTPS (and wss://) only; nil: plain HTTP.
	TLS *tls.Config

	Log     *slog.Logger // nil: slog.Default()
	Metrics *HTTPMetrics // nil: none
}

// ServerOptionsOf returns the options configured for node n, its TLS
// certificate (and client CAs) loaded.
func ServerOptionsOf(n *config.Node) (ServerOptions, error) {
	o := ServerOptions{
		ReadHeaderTimeout: n.HTTPReadHeaderTimeout, ReadTimeout: n.HTTPReadTimeout,
		WriteTimeout: n.HTTPWriteTimeout, IdleTimeout: n.HTTPIdleTimeout,
		MaxHeaderBytes: n.HTTPMaxHeaderBytes, MaxConnsPerClient: n.HTTPMaxConnsPerClient,
	}
	if n.TLS != nil {
		c, err := TLSConfig(n.TLS)
		if err != nil {
			return o, err
		}
		o.TLS = c
	}
	return o, nil
}

// TLSConfig builds the server side of node.tls: TLS 1.2 or newer, HTTP/1.1
// (the WebSocket upgrade needs it), and with client_ca a verified client
// certificate required of every connection.
func TLSConfig(t *config.TLS) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		return nil, fmt.Errorf("node.tls: %s, %s: %w", t.Cert, t.Key, err)
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}, NextProtos: []string{"http/1.1"}}
	if t.ClientCA != "" {
		pem, err := os.ReadFile(t.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("node.tls.client_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("node.tls.client_ca: %s: no PEM certificate found", t.ClientCA)
		}
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// NewServer returns the HTTP server of handler h with o's timeouts and
// header limit, speaking HTTP/1.1 only (over TLS when o.TLS is set; serve
// it with a listener from Listen or WrapListener, which does the TLS).
//
// The timeouts do not reach WebSocket connections: gorilla's Upgrade
// clears the deadlines of the connection it takes over (hijacks), and from
// then on ws.go keeps its own (pings, idle and write timeouts).
func NewServer(h http.Handler, o ServerOptions) *http.Server {
	lg := o.Log
	if lg == nil {
		lg = slog.Default()
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		ReadTimeout:       o.ReadTimeout,
		WriteTimeout:      o.WriteTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    o.MaxHeaderBytes,
		ErrorLog:          log.New(&serverErrorLog{log: lg, lim: logLimiter{every: 10 * time.Second}}, "", 0),
	}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	return srv
}

// serverErrorLog carries net/http's own messages (failed TLS handshakes,
// malformed requests) to slog, one line per 10 s at most.
type serverErrorLog struct {
	log *slog.Logger
	lim logLimiter
}

func (w *serverErrorLog) Write(p []byte) (int, error) {
	if ok, held := w.lim.allow(time.Now()); ok {
		w.log.Warn("http server", "err", strings.TrimSpace(string(p)), "held_back", held)
	}
	return len(p), nil
}

// Listen listens on TCP address addr and wraps the listener with
// WrapListener.
func Listen(addr string, o ServerOptions) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return WrapListener(ln, o), nil
}

// WrapListener caps the connections each client address may hold open
// (o.MaxConnsPerClient; one more is closed as soon as it is accepted,
// counted and logged at most every 10 s) and then, with o.TLS, speaks TLS.
// The cap comes first, so a refused client costs no handshake.
func WrapListener(ln net.Listener, o ServerOptions) net.Listener {
	lg := o.Log
	if lg == nil {
		lg = slog.Default()
	}
	ln = &clientLimitListener{Listener: ln, max: o.MaxConnsPerClient, log: lg, m: o.Metrics,
		open: map[string]int{}, logs: logLimiter{every: 10 * time.Second}}
	if o.TLS != nil {
		ln = tls.NewListener(ln, o.TLS)
	}
	return ln
}

// clientLimitListener counts the open connections of each client address.
type clientLimitListener struct {
	net.Listener
	max  int // 0: no limit
	log  *slog.Logger
	m    *HTTPMetrics
	logs logLimiter

	mu   sync.Mutex
	open map[string]int
}

func (l *clientLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := clientKey(c.RemoteAddr().String())
		l.mu.Lock()
		n := l.open[key]
		if l.max > 0 && n >= l.max {
			l.mu.Unlock()
			_ = c.Close()
			l.m.connRefused()
			if ok, held := l.logs.allow(time.Now()); ok {
				l.log.Warn("connection closed: too many open connections from this client address (node.http_max_conns_per_client)",
					"remote", key, "open", n, "max", l.max, "closed_since_last_line", held+1)
			}
			continue
		}
		l.open[key] = n + 1
		l.mu.Unlock()
		l.m.connOpened()
		return &countedConn{Conn: c, l: l, key: key}, nil
	}
}

func (l *clientLimitListener) release(key string) {
	l.mu.Lock()
	if l.open[key] <= 1 {
		delete(l.open, key)
	} else {
		l.open[key]--
	}
	l.mu.Unlock()
	l.m.connClosed()
}

// countedConn gives its slot back when closed (once, however often Close
// is called: net/http and the WebSocket code may both close it).
type countedConn struct {
	net.Conn
	l    *clientLimitListener
	key  string
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key) })
	return err
}
