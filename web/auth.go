package web

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/voltage-ems/voltage/config"
)

// role orders what a token may do: viewer < operator < admin.
type role int

const (
	roleNone role = iota
	roleViewer
	roleOperator
	roleAdmin
)

func (r role) String() string {
	switch r {
	case roleViewer:
		return "viewer"
	case roleOperator:
		return "operator"
	case roleAdmin:
		return "admin"
	}
	return "none"
}

func parseRole(s string) role {
	switch s {
	case "viewer":
		return roleViewer
	case "operator":
		return roleOperator
	case "admin":
		return roleAdmin
	}
	return roleNone
}

// anonymous is the user of requests to a node without configured tokens.
const anonymous = "anonymous"

// principal is who made a request.
type principal struct {
	name string
	role role
}

// principalKey is the gin context key of the request's principal.
const principalKey = "voltage.principal"

// noTokensMessage explains how to enable control on a node without tokens.
const noTokensMessage = `control is disabled: no API tokens are configured; add one with role operator under auth.tokens, ` +
	`e.g. {name: op1, token: "${VOLTAGE_OPERATOR_TOKEN}", role: operator}`

type tokenEntry struct {
	digest [sha256.Size]byte
	name   string
	role   role
}

// authenticator checks bearer tokens against the configured ones. It keeps
// only their SHA-256 digests, and compares a presented token's digest with
// every one of them in constant time, so neither the comparison nor the
// position of a match leaks through timing.
type authenticator struct {
	tokens []tokenEntry
	// throttle refuses the credentials of client addresses that failed
	// too often (throttle.go); nil: none.
	throttle *authThrottle
}

func newAuthenticator(ts []config.Token) *authenticator {
	a := &authenticator{}
	for _, t := range ts {
		a.tokens = append(a.tokens, tokenEntry{digest: sha256.Sum256([]byte(t.Token)), name: t.Name, role: parseRole(t.Role)})
	}
	return a
}

// open reports whether the node has no tokens: reads are anonymous and
// control is refused.
func (a *authenticator) open() bool { return len(a.tokens) == 0 }

// lookup returns the entry whose token is tok. It visits every entry.
func (a *authenticator) lookup(tok string) (tokenEntry, bool) {
	d := sha256.Sum256([]byte(tok))
	found, idx := 0, 0
	for i := range a.tokens {
		eq := subtle.ConstantTimeCompare(d[:], a.tokens[i].digest[:])
		idx = subtle.ConstantTimeSelect(eq, i, idx)
		found |= eq
	}
	if found == 0 {
		return tokenEntry{}, false
	}
	return a.tokens[idx], true
}

// presentedToken returns the request's token: the Authorization header
// ("Bearer TOKEN"), or on GET and HEAD requests the token query parameter
// (for browsers and WebSocket clients that cannot set headers). ok is false
// when an Authorization header of another scheme is present.
func presentedToken(r *http.Request) (tok string, ok bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Bearer") {
			return "", false
		}
		return strings.TrimSpace(rest), true
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return r.URL.Query().Get("token"), true
	}
	return "", true
}

// authenticate identifies the caller and stores the principal in the
// context, or answers 401 (429 while the client address is throttled for
// failing too often). Without configured tokens every caller is an
// anonymous viewer.
func (a *authenticator) authenticate(c *gin.Context) {
	if a.open() {
		c.Set(principalKey, principal{name: anonymous, role: roleViewer})
		return
	}
	tok, ok := presentedToken(c.Request)
	key, route := clientKey(c.Request.RemoteAddr), c.Request.Method+" "+c.FullPath()
	if !ok || tok != "" { // a credential: refused unseen while throttled
		if retry, throttled := a.throttle.check(key, route, time.Now()); throttled {
			tooManyFailures(c, retry)
			return
		}
	}
	if !ok {
		a.throttle.fail(key, route, time.Now())
		unauthorized(c, "the Authorization header must be \"Bearer TOKEN\"")
		return
	}
	if tok == "" {
		msg := "missing token: send the header \"Authorization: Bearer TOKEN\""
		if c.Request.Method == http.MethodGet || c.Request.Method == http.MethodHead {
			msg += " or the query parameter ?token=TOKEN"
		}
		unauthorized(c, msg)
		return
	}
	e, found := a.lookup(tok)
	if !found {
		a.throttle.fail(key, route, time.Now())
		unauthorized(c, "unknown token")
		return
	}
	c.Set(principalKey, principal{name: e.name, role: e.role})
}

// tooManyFailures answers 429: the client address failed authentication
// too often; Retry-After says in how many seconds it may try again.
func tooManyFailures(c *gin.Context, retry time.Duration) {
	secs := retrySeconds(retry)
	c.Header("Retry-After", strconv.Itoa(secs))
	abort(c, http.StatusTooManyRequests, "too_many_requests",
		fmt.Sprintf("too many failed authentications from this address: try again in %d s", secs))
}

func unauthorized(c *gin.Context, msg string) {
	c.Header("WWW-Authenticate", `Bearer realm="voltage"`)
	abort(c, http.StatusUnauthorized, "unauthorized", msg)
}

// require answers 403 unless the caller has at least role min. On a node
// without tokens, anything above viewer is refused with how to configure one.
func (a *authenticator) require(min role) gin.HandlerFunc {
	return func(c *gin.Context) {
		p := principalOf(c)
		if p.role >= min {
			return
		}
		if a.open() {
			abort(c, http.StatusForbidden, "forbidden", noTokensMessage)
			return
		}
		abort(c, http.StatusForbidden, "forbidden", "this needs role "+min.String()+" or higher; token "+p.name+" has role "+p.role.String())
	}
}

// principalOf returns the caller set by authenticate.
func principalOf(c *gin.Context) principal {
	if v, ok := c.Get(principalKey); ok {
		if p, ok := v.(principal); ok {
			return p
		}
	}
	return principal{name: anonymous, role: roleNone}
}
