package web

import (
	"net/http"
	"strings"
	"testing"

	"github.com/voltage-ems/voltage/config"
)

func TestAuth(t *testing.T) {
	e := newEnv(t, testYAML)
	e.watchBus() // so that accepted commands have a receiver
	f := func(method, path, token, body string, status int, code, fragment string) {
		t.Helper()
		r := e.do(method, path, token, body)
		if r.status != status {
			t.Fatalf("%s %s (token %q): %s, want %d", method, path, token, r, status)
		}
		if code != "" {
			if er := r.errorBody(t); er.Code != code || !strings.Contains(er.Message, fragment) {
				t.Fatalf("%s %s: error %+v, want %s containing %q", method, path, er, code, fragment)
			}
		}
		if status == http.StatusUnauthorized && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Fatalf("%s %s: 401 without WWW-Authenticate: Bearer (%q)", method, path, r.header.Get("WWW-Authenticate"))
		}
	}
	const post, get = http.MethodPost, http.MethodGet
	body := `{"value": 1}`

	// Open routes.
	f(get, "/health", "", "", 200, "", "")
	f(get, "/ready", "", "", 200, "", "")
	f(get, "/health", "wrong-token-000000", "", 200, "", "")

	// whoami names the caller and its role.
	if r := e.do(get, "/api/whoami", viewerToken, ""); r.status != 200 || r.object(t)["role"] != "viewer" {
		t.Fatalf("whoami as a viewer: %s", r)
	}
	if r := e.do(get, "/api/whoami", operatorToken, ""); r.status != 200 || r.object(t)["role"] != "operator" || r.object(t)["name"] == "" {
		t.Fatalf("whoami as an operator: %s", r)
	}
	f(get, "/api/whoami", "", "", 401, "unauthorized", "missing token")

	// No token, unknown token, other scheme.
	f(post, "/control/1001/3", "", body, 401, "unauthorized", "missing token")
	f(post, "/control/1001/3", "wrong-token-000000", body, 401, "unauthorized", "unknown token")
	f(post, "/control/1001/3", operatorToken+"x", body, 401, "unauthorized", "unknown token")
	f(get, "/api/points", "", "", 401, "unauthorized", "?token=")
	f(get, "/api/channels", "nope", "", 401, "unauthorized", "unknown token")
	f(get, "/api/points/1001/m/10001", "", "", 401, "unauthorized", "")
	f(get, "/metrics", "", "", 401, "unauthorized", "")
	// ?token= is for GET only.
	f(post, "/control/1001/3?token="+operatorToken, "", body, 401, "unauthorized", "missing token")

	// Too low a role.
	f(post, "/control/1001/3", viewerToken, body, 403, "forbidden", "this needs role operator or higher; token view1 has role viewer")

	// Viewer reads.
	f(get, "/api/points?pattern=1001:m:*", viewerToken, "", 200, "", "")
	f(get, "/api/points?pattern=1001:m:*&token="+viewerToken, "", "", 200, "", "")
	f(get, "/api/channels/1001", viewerToken, "", 200, "", "")
	f(get, "/metrics", viewerToken, "", 200, "", "")
	f(get, "/metrics?token="+adminToken, "", "", 200, "", "")

	// Operator and admin control.
	f(post, "/control/1001/3", operatorToken, body, 202, "", "")
	f(post, "/control/1001/3", adminToken, body, 202, "", "")

	// Other schemes are refused.
	req, _ := http.NewRequest(get, e.srv.URL+"/api/points", nil)
	req.Header.Set("Authorization", "Basic dXNlcjpwYXNz")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("Basic auth: %d", resp.StatusCode)
	}
	// The scheme is case-insensitive.
	req, _ = http.NewRequest(get, e.srv.URL+"/api/points", nil)
	req.Header.Set("Authorization", "bearer "+viewerToken)
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("lower-case bearer: %d", resp.StatusCode)
	}
}

// TestAuthWithoutTokens: reads stay open, control is refused with how to
// configure a token, and nothing is published.
func TestAuthWithoutTokens(t *testing.T) {
	e := newEnv(t, noTokensYAML)
	bus := e.watchBus()
	for _, path := range []string{"/api/points?pattern=1001:m:*", "/api/channels", "/metrics", "/health", "/ready"} {
		if r := e.do(http.MethodGet, path, "", ""); r.status != 200 {
			t.Fatalf("GET %s: %s", path, r)
		}
	}
	for _, token := range []string{"", operatorToken} {
		r := e.control("1001/3", token, `{"value": 1}`)
		if r.status != http.StatusForbidden {
			t.Fatalf("control without configured tokens: %s", r)
		}
		er := r.errorBody(t)
		if er.Code != "forbidden" || !strings.Contains(er.Message, "auth.tokens") || !strings.Contains(er.Message, "role: operator") {
			t.Fatalf("error %+v", er)
		}
	}
	if got := bus.flush(); len(got) > 0 {
		t.Fatalf("published %s", got[0].Payload)
	}
}

func TestAuthenticatorLookup(t *testing.T) {
	a := newAuthenticator([]config.Token{
		{Name: "v", Token: "viewer-token-00001", Role: "viewer"},
		{Name: "o", Token: "operator-token-0001", Role: "operator"},
		{Name: "a", Token: "admin-token-000001", Role: "admin"},
	})
	f := func(tok string, name string, r role, ok bool) {
		t.Helper()
		e, found := a.lookup(tok)
		if found != ok || e.name != name || e.role != r {
			t.Fatalf("lookup(%q) = %+v, %v; want %s %v %v", tok, e, found, name, r, ok)
		}
	}
	f("viewer-token-00001", "v", roleViewer, true)
	f("operator-token-0001", "o", roleOperator, true)
	f("admin-token-000001", "a", roleAdmin, true)
	f("admin-token-00000", "", roleNone, false)
	f("", "", roleNone, false)
	if !(roleViewer < roleOperator && roleOperator < roleAdmin) {
		t.Fatal("role order")
	}
}
