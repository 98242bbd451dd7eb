package browser

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// setpointAlarm is the demo's rule on the PCS active power setpoint
// (1001:a:1 > 400, level minor).
const setpointAlarm = "pcs1-setpoint-high"

// alarmJSON is the part of the alarm object (docs/alarms.md) the test reads.
type alarmJSON struct {
	ID           string `json:"id"`
	State        string `json:"state"`
	Level        string `json:"level"`
	AckedBy      string `json:"acked_by"`
	Shelved      bool   `json:"shelved"`
	ShelvedUntil int64  `json:"shelved_until"`
	ShelveReason string `json:"shelve_reason"`
}

// apiCall sends a request to the node with a bearer token and returns the
// status and body.
func apiCall(t *testing.T, n *node, method, path, token string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, n.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read the answer: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// getAlarm is GET /api/alarms/{id}.
func getAlarm(t *testing.T, n *node, id string) alarmJSON {
	t.Helper()
	status, body := apiCall(t, n, http.MethodGet, "/api/alarms/"+id, operatorToken, nil)
	if status != http.StatusOK {
		t.Fatalf("GET /api/alarms/%s: %d %s", id, status, body)
	}
	var a alarmJSON
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatalf("GET /api/alarms/%s: %v in %s", id, err, body)
	}
	return a
}

// writeSetpoint writes 1001:a:1 through the API, as a SCADA would, and
// waits for the device's answer.
func writeSetpoint(t *testing.T, n *node, v float64) {
	t.Helper()
	status, body := apiCall(t, n, http.MethodPost, "/control/1001/1", operatorToken,
		map[string]any{"value": v, "type": "a", "wait": "3s"})
	if status != http.StatusOK || !strings.Contains(string(body), `"success"`) {
		t.Fatalf("POST /control/1001/1 value %v: %d %s", v, status, body)
	}
}

// TestAlarmPanel raises the demo's setpoint alarm and handles it the way an
// operator would in the dashboard: the row appears, Ack acknowledges it,
// the clear removes it; raised again, it is shelved for an hour with a
// reason and moves to the shelved group, and a viewer gets disabled buttons
// (and the API refuses its ack). It saves a screenshot to artifacts/alarms.png.
func TestAlarmPanel(t *testing.T) {
	ctx, log := newBrowser(t) // skips without Chromium, before the build
	defer log.report(t)
	n := startDemo(t, buildVoltage(t))

	if status, body := apiCall(t, n, http.MethodGet, "/api/alarms/"+setpointAlarm, operatorToken, nil); status != http.StatusOK {
		t.Fatalf("GET /api/alarms/%s: %d %s (does config/examples/demo.yaml have the rule?)", setpointAlarm, status, body)
	}
	if a := getAlarm(t, n, setpointAlarm); a.State != "normal" {
		t.Fatalf("%s is %s before the test wrote the setpoint, want normal", setpointAlarm, a.State)
	}

	do(t, ctx, 30*time.Second, "open the dashboard", chromedp.Navigate(n.base+"/?token="+operatorToken))
	waitFor(t, ctx, 20*time.Second, cell(`#conn`, "e.dataset.state"), func(s string) bool { return s == "live" }, "the live connection")
	// The alarms list loaded (the demo's other rules, such as the PV power
	// that rises above its limit every minute, may be in it).
	waitFor(t, ctx, 10*time.Second, `String(window.voltage.alarms.byId.size)`, func(s string) bool { return s != "0" }, "the alarm rules loaded")

	row := fmt.Sprintf(`#alarms li[data-alarm-id=%q]`, setpointAlarm)
	shelvedRow := fmt.Sprintf(`#alarms-shelved-list li[data-alarm-id=%q]`, setpointAlarm)
	rowState := cell(row, `e.dataset.state + " " + e.dataset.level`)
	present := func(sel string) string {
		return fmt.Sprintf(`document.querySelector(%q) ? "present" : "gone"`, sel)
	}
	// badgeConsistent is "ok" when the header counts the unacknowledged
	// rows of the active list, and red exactly when one is critical or major.
	const badgeConsistent = `(() => {
		const rows = [...document.querySelectorAll("#alarms li.alarm")].filter((r) => r.dataset.state.endsWith("-unacked"));
		const b = document.getElementById("alarms-count");
		const severe = rows.some((r) => r.dataset.level === "critical" || r.dataset.level === "major");
		return b.textContent === String(rows.length) && b.classList.contains("active") === severe ? "ok" : b.textContent + " for " + rows.length + " rows";
	})()`
	counted := func(s string) bool { return s == "ok" }

	// Raise: 450 kW is above 400.
	writeSetpoint(t, n, 450)
	waitFor(t, ctx, 15*time.Second, rowState, func(s string) bool { return s == "active-unacked minor" }, "the alarm row, active and unacknowledged, level minor")
	msg, _ := eval[string](ctx, cell(row+" .alarm-msg", "e.textContent"))
	if !strings.Contains(msg, "450") || !strings.Contains(msg, "400") {
		t.Errorf("alarm message = %q, want the value 450 and the threshold 400 in it", msg)
	}
	waitFor(t, ctx, 5*time.Second, badgeConsistent, counted, "the header counting the unacknowledged alarms")
	if vis, _ := eval[string](ctx, cell(row+" button.ack", `e.hidden || e.disabled ? "not usable" : "usable"`)); vis != "usable" {
		t.Fatalf("the Ack button of an unacknowledged alarm is %s", vis)
	}
	screenshot(t, ctx, "alarms.png")

	// Ack in the browser.
	do(t, ctx, 10*time.Second, "click Ack", chromedp.Click(chromedp.CSS(row+" button.ack")))
	waitFor(t, ctx, 10*time.Second, rowState, func(s string) bool { return s == "active-acked minor" }, "the row acknowledged")
	if a := getAlarm(t, n, setpointAlarm); a.State != "active-acked" || a.AckedBy != "demo-operator" {
		t.Errorf("after Ack the API says state %q acked_by %q, want active-acked by demo-operator", a.State, a.AckedBy)
	}
	waitFor(t, ctx, 5*time.Second, badgeConsistent, counted, "the header counting the unacknowledged alarms after the Ack")
	if vis, _ := eval[string](ctx, cell(row+" button.ack", `e.hidden ? "hidden" : "shown"`)); vis != "hidden" {
		t.Errorf("the Ack button of an acknowledged alarm is %s", vis)
	}

	// Clear: acknowledged and back to normal, the row goes.
	writeSetpoint(t, n, 0)
	waitFor(t, ctx, 15*time.Second, present(`[data-alarm-id="`+setpointAlarm+`"]`), func(s string) bool { return s == "gone" }, "the row gone after the clear")
	if a := getAlarm(t, n, setpointAlarm); a.State != "normal" {
		t.Errorf("after the clear the API says state %q, want normal", a.State)
	}

	// Raise again and shelve it for an hour.
	writeSetpoint(t, n, 450)
	waitFor(t, ctx, 15*time.Second, rowState, func(s string) bool { return s == "active-unacked minor" }, "the alarm raised again")
	reason := "PCS-1 commissioning " + strconv.FormatInt(time.Now().Unix(), 10)
	do(t, ctx, 10*time.Second, "shelve for 1h with a reason",
		chromedp.Click(chromedp.CSS(row+" button.shelve")),
		chromedp.WaitVisible(chromedp.CSS(row+" form.shelve-form")),
		chromedp.SetValue(chromedp.CSS(row+` form.shelve-form select[name="for"]`), "1h"),
		chromedp.SendKeys(chromedp.CSS(row+` form.shelve-form input[name="reason"]`), reason),
		chromedp.Click(chromedp.CSS(row+` form.shelve-form button[type="submit"]`)))
	shelvedAt := time.Now()
	waitFor(t, ctx, 10*time.Second, present(shelvedRow), func(s string) bool { return s == "present" }, "the row in the shelved group")
	if s, _ := eval[string](ctx, present(row)); s != "gone" {
		t.Errorf("the shelved alarm is still in the active list")
	}
	if s, _ := eval[string](ctx, cell(`#alarms-shelved`, `(e.hidden ? "hidden " : "") + e.querySelector("summary").textContent`)); s != "Shelved (1)" {
		t.Errorf("shelved group = %q, want \"Shelved (1)\"", s)
	}
	if s, _ := eval[string](ctx, cell(shelvedRow, `e.dataset.shelved + " | " + e.querySelector(".alarm-shelf").textContent`)); !strings.HasPrefix(s, "true | ") || !strings.Contains(s, reason) {
		t.Errorf("shelved row = %q, want shelved with the reason %q", s, reason)
	}
	a := getAlarm(t, n, setpointAlarm)
	until := time.UnixMilli(a.ShelvedUntil)
	if !a.Shelved || a.ShelveReason != reason || until.Before(shelvedAt.Add(55*time.Minute)) || until.After(shelvedAt.Add(65*time.Minute)) {
		t.Errorf("after Shelve the API says shelved %v until %v reason %q, want shelved about an hour from %v with the reason %q",
			a.Shelved, until, a.ShelveReason, shelvedAt.Format(time.TimeOnly), reason)
	}
	waitFor(t, ctx, 5*time.Second, badgeConsistent, counted, "a shelved alarm not counted in the header")

	// Unshelve from the (collapsed) group: the row comes back, still unacknowledged.
	do(t, ctx, 10*time.Second, "open the shelved group and click Unshelve",
		chromedp.Click(chromedp.CSS(`#alarms-shelved > summary`)),
		chromedp.WaitVisible(chromedp.CSS(shelvedRow+" button.unshelve")),
		chromedp.Click(chromedp.CSS(shelvedRow+" button.unshelve")))
	waitFor(t, ctx, 10*time.Second, cell(row, `e.dataset.state + " " + e.dataset.shelved`),
		func(s string) bool { return s == "active-unacked false" }, "the row back in the active list")
	if a := getAlarm(t, n, setpointAlarm); a.Shelved {
		t.Errorf("after Unshelve the API still says shelved")
	}

	// A viewer sees the alarm with its buttons disabled from the start (the
	// page asked /api/whoami), and the server refuses a viewer's ack anyway.
	do(t, ctx, 30*time.Second, "open the dashboard as a viewer", chromedp.Navigate(n.base+"/?token="+viewerToken))
	waitFor(t, ctx, 15*time.Second, rowState, func(s string) bool { return s == "active-unacked minor" }, "the alarm row for the viewer")
	waitFor(t, ctx, 10*time.Second, cell(row+" button.ack", `String(e.disabled) + " " + e.title`),
		func(s string) bool { return s == "true needs an operator token" }, "the Ack button disabled for a viewer")
	if d, _ := eval[string](ctx, cell(row+" button.shelve", `String(e.disabled)`)); d != "true" {
		t.Errorf("Shelve button for a viewer: disabled = %s, want true", d)
	}
	if code, body := apiCall(t, n, http.MethodPost, "/api/alarms/"+setpointAlarm+"/ack", viewerToken, nil); code != http.StatusForbidden {
		t.Errorf("a viewer's ack through the API: %d %s, want 403", code, body)
	}
	if a := getAlarm(t, n, setpointAlarm); a.State != "active-unacked" {
		t.Errorf("after a viewer's Ack the API says state %q, want active-unacked", a.State)
	}
}
