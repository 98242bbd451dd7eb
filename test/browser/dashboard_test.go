package browser

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/voltage-ems/voltage/test/testenv"
)

// chromiumPath is Debian's Chromium (apt-get install chromium; .ci/run
// installs it).
const chromiumPath = "/usr/bin/chromium"

// Tokens of config/examples/demo.yaml.
const (
	operatorToken = "demo-operator-token-0001"
	viewerToken   = "demo-viewer-token-0001"
)

// newBrowser starts headless Chromium with a fresh profile and a 1280x800
// window, and collects the page's console messages.
func newBrowser(t *testing.T) (context.Context, *pageLog) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("no Chromium at %s (apt-get install chromium; CI installs it): %v", chromiumPath, err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox, // the tests run as root
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })

	// The first action starts the browser, which lives as long as the
	// context of that action: so ctx itself, not one with a timeout.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx, chromedp.EmulateViewport(1280, 800)) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("start chromium: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("chromium did not start within 60s")
	}
	log := &pageLog{}
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			log.add(m)
		}
	}()
	// Every page reports what its Content-Security-Policy blocked to the
	// console (the browser's own message may be a log entry of source
	// "security" or only this event, depending on the version).
	do(t, ctx, 10*time.Second, "report CSP violations", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: cspReporter})
		return err
	}))
	return ctx, log
}

// cspReporter runs before the page's scripts in every document.
const cspReporter = `document.addEventListener("securitypolicyviolation", (e) => {
  console.error("CSP violation: " + e.violatedDirective + " blocked " + (e.blockedURI || "inline") +
    " at " + e.sourceFile + ":" + e.lineNumber + " (" + (e.sample || "") + ")");
});`

// pageLog keeps the page's console messages, uncaught exceptions and
// Content-Security-Policy violations.
type pageLog struct {
	mu         sync.Mutex
	lines      []string
	exceptions []string
	csp        []string
}

func (l *pageLog) add(m chromedp.ConsoleMessage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line+1)
	l.lines = append(l.lines, s)
	if m.IsException() {
		l.exceptions = append(l.exceptions, s)
	}
	if strings.HasPrefix(m.Text, "CSP violation") || strings.Contains(m.Text, "Content Security Policy") || m.Source == "security" {
		l.csp = append(l.csp, s)
	}
}

// takeCSP returns the CSP violations seen so far and forgets them.
func (l *pageLog) takeCSP() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.csp
	l.csp = nil
	return v
}

func (l *pageLog) report(t *testing.T) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) > 0 {
		t.Logf("browser console:\n  %s", strings.Join(l.lines, "\n  "))
	}
	for _, e := range l.exceptions {
		t.Errorf("uncaught exception in the page: %s", e)
	}
	for _, e := range l.csp {
		t.Errorf("Content-Security-Policy violation: %s", e)
	}
}

// checkCSPDetector injects an inline script, which the policy must block,
// and waits until the log has reported it: the check of report is alive.
func checkCSPDetector(t *testing.T, ctx context.Context, log *pageLog) {
	t.Helper()
	do(t, ctx, 5*time.Second, "inject an inline script", chromedp.Evaluate[chromedp.Void](
		`(() => { const s = document.createElement("script"); s.textContent = "window.inlineRan = true"; document.head.appendChild(s); })()`))
	// The browser's own message (when it writes one) comes before the
	// event that cspReporter turns into a console line: wait for that line,
	// so that both are taken here.
	var got []string
	testenv.Eventually(t, 5*time.Second, func() bool {
		got = append(got, log.takeCSP()...)
		return slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, "CSP violation: ") })
	}, "the injected inline script reported as a CSP violation")
	if ran, _ := eval[bool](ctx, `window.inlineRan === true`); ran {
		t.Fatalf("an inline script ran despite the policy (%v)", got)
	}
	t.Logf("CSP detector: %s", got[0])
}

// do runs actions with a timeout.
func do(t *testing.T, ctx context.Context, d time.Duration, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := chromedp.Do(c, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression into T.
func eval[T any](ctx context.Context, expr string) (T, error) {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return chromedp.Run(c, chromedp.Evaluate[T](expr))
}

// waitFor evaluates expr (a JavaScript expression giving a string) every
// 100 ms until cond accepts its result or d passes, and returns the result.
func waitFor(t *testing.T, ctx context.Context, d time.Duration, expr string, cond func(string) bool, what string) string {
	t.Helper()
	deadline := time.Now().Add(d)
	var last string
	var lastErr error
	for {
		v, err := eval[string](ctx, expr)
		if err == nil && cond(v) {
			return v
		}
		last, lastErr = v, err
		if ctx.Err() != nil || time.Now().After(deadline) {
			t.Fatalf("%s: not seen within %v (last: %q, err: %v)", what, d, last, lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cell is the expression for an attribute or the text of one element.
func cell(selector, prop string) string {
	return fmt.Sprintf(`(() => { const e = document.querySelector(%q); return e ? String(%s) : ""; })()`, selector, prop)
}

func isNumber(s string) bool {
	f, err := strconv.ParseFloat(s, 64)
	return err == nil && !math.IsNaN(f) && !math.IsInf(f, 0)
}

// screenshot saves the page, full size, as artifacts/NAME (PNG).
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(c, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	dir, err := filepath.Abs("artifacts")
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, name), png, 0o644)
	}
	if err != nil {
		t.Fatalf("save screenshot %s: %v", name, err)
	}
	t.Logf("screenshot: %s", filepath.Join(dir, name))
}

// TestDashboard opens the demo node's dashboard in Chromium with an operator
// token in the URL, watches a value move, checks the channels panel, sends a
// setpoint through the control form and sees its read-back in the table.
func TestDashboard(t *testing.T) {
	ctx, log := newBrowser(t) // skips without Chromium, before the build
	defer log.report(t)
	n := startDemo(t, buildVoltage(t))

	resp, err := http.Get(n.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET / answers %s (%s), not the dashboard page: is registerDashboard(r) called in web.NewHandler?", resp.Status, resp.Header.Get("Content-Type"))
	}
	for k, want := range map[string]string{"Content-Security-Policy": "script-src 'self'", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"} {
		if !strings.Contains(resp.Header.Get(k), want) {
			t.Errorf("GET /: %s %q, want %q", k, resp.Header.Get(k), want)
		}
	}
	do(t, ctx, 30*time.Second, "open the dashboard", chromedp.Navigate(n.base+"/?token="+operatorToken))

	// The token moved to session storage and left the address bar.
	loc := waitFor(t, ctx, 5*time.Second, `location.href`, func(s string) bool { return !strings.Contains(s, "token") }, "token removed from the URL")
	if got, _ := eval[string](ctx, `sessionStorage.getItem("voltage.token") || ""`); got != operatorToken {
		t.Errorf("token in session storage = %q, want the operator token (page at %s)", got, loc)
	}

	// A live value, and the same value moving (the simulator's waveforms).
	valueOf := func(key string) string {
		return cell(fmt.Sprintf(`tr[data-key=%q] td.value`, key), "e.dataset.value")
	}
	v1 := waitFor(t, ctx, 20*time.Second, valueOf("1001:m:10001"), isNumber, "a numeric value for 1001:m:10001")
	text := waitFor(t, ctx, 2*time.Second, cell(`tr[data-key="1001:m:10001"] td.value`, "e.textContent"), isNumber, "1001:m:10001 shown as a number")
	t.Logf("1001:m:10001 = %s (shown %q)", v1, text)
	waitFor(t, ctx, 3*time.Second, cell(`#conn`, "e.dataset.state"), func(s string) bool { return s == "live" }, "header shows the live connection")
	v2 := waitFor(t, ctx, 10*time.Second, valueOf("1001:m:10001"), func(s string) bool { return isNumber(s) && s != v1 }, "1001:m:10001 changing on screen")
	t.Logf("1001:m:10001 moved to %s", v2)
	if unit, _ := eval[string](ctx, cell(`tr[data-key="1001:m:10001"] td.unit`, "e.textContent")); unit != "V" {
		t.Errorf("unit of 1001:m:10001 = %q, want V", unit)
	}
	if q, _ := eval[string](ctx, cell(`tr[data-key="1001:m:10001"]`, "e.dataset.q")); q != "good" {
		t.Errorf("quality of 1001:m:10001 = %q, want good", q)
	}

	// The channels panel: PCS-1 connected.
	waitFor(t, ctx, 10*time.Second, cell(`[data-channel-id="1001"]`, `e.dataset.state + " " + e.querySelector(".ch-name").textContent`),
		func(s string) bool { return s == "connected PCS-1" }, "channel PCS-1 shown connected")
	if name, _ := eval[string](ctx, cell(`#node-name`, "e.textContent")); name != "demo" {
		t.Errorf("node name in the header = %q, want demo", name)
	}

	// The breaker: ON through the form's button.
	do(t, ctx, 10*time.Second, "select 1001:c:1 and switch it on",
		chromedp.SetValue(chromedp.ID("control-point"), "1001:c:1"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("control-point").dispatchEvent(new Event("change"))`),
		chromedp.WaitVisible(chromedp.ID("control-on")),
		chromedp.Click(chromedp.ID("control-on")))
	res := waitFor(t, ctx, 10*time.Second, cell(`#control-result`, `e.dataset.status + " | " + e.textContent`),
		func(s string) bool { return s != "" && !strings.HasPrefix(s, "pending") && !strings.HasPrefix(s, " |") }, "the breaker's control result")
	if !strings.HasPrefix(res, "success") {
		t.Fatalf("breaker control result: %s", res)
	}
	waitFor(t, ctx, 10*time.Second, valueOf("1001:c:1"), func(s string) bool { return s == "1" }, "the table showing 1001:c:1 = 1")

	// A setpoint through the control form, with the read-back in the table.
	sp := 100 + float64(time.Now().UnixNano()%200) + 0.25 // exact in float32, and new each run
	want := strconv.FormatFloat(sp, 'f', -1, 64)
	do(t, ctx, 10*time.Second, "select 1001:a:1 in the table",
		chromedp.ScrollIntoView(chromedp.CSS(`tr[data-key="1001:a:1"]`)),
		chromedp.Click(chromedp.CSS(`tr[data-key="1001:a:1"]`)))
	waitFor(t, ctx, 5*time.Second, cell(`#control-point`, "e.value"), func(s string) bool { return s == "1001:a:1" }, "control form on 1001:a:1")
	do(t, ctx, 10*time.Second, "send "+want,
		chromedp.SendKeys(chromedp.ID("control-value"), want),
		chromedp.Click(chromedp.ID("control-send")))
	res = waitFor(t, ctx, 10*time.Second, cell(`#control-result`, `e.dataset.status + " | " + e.textContent`),
		func(s string) bool { return s != "" && !strings.HasPrefix(s, "pending") && !strings.HasPrefix(s, " |") }, "a control result")
	if !strings.HasPrefix(res, "success") {
		t.Fatalf("control result: %s", res)
	}
	if rb, _ := eval[string](ctx, cell(`#control-result`, "e.dataset.readback")); rb != want {
		t.Errorf("read-back in the result = %q, want %s (%s)", rb, want, res)
	}
	t.Logf("control result: %s", res)
	waitFor(t, ctx, 10*time.Second, valueOf("1001:a:1"), func(s string) bool { return s == want }, "the table showing 1001:a:1 = "+want)

	// The trend of the voltage, for the screenshot: let it gather a few
	// points, then take the page as an operator sees it.
	do(t, ctx, 10*time.Second, "select 1001:m:10001 for the trend",
		chromedp.ScrollIntoView(chromedp.CSS(`tr[data-key="1001:m:10001"]`)),
		chromedp.Click(chromedp.CSS(`tr[data-key="1001:m:10001"]`)))
	waitFor(t, ctx, 10*time.Second, `String(window.voltage.state.series.get("1001:m:10001")?.t.length ?? 0)`,
		func(s string) bool { n, _ := strconv.Atoi(s); return n >= 10 }, "10 samples in the trend of 1001:m:10001")
	waitFor(t, ctx, 5*time.Second, cell(`#trend canvas`, "e.width"), func(s string) bool { n, _ := strconv.Atoi(s); return n > 100 }, "the trend chart drawn")

	screenshot(t, ctx, "dashboard.png")
	// Values, trend and control all worked under the policy; had anything
	// been blocked, report fails the test. Make sure it would notice.
	if v := log.takeCSP(); len(v) > 0 {
		t.Fatalf("Content-Security-Policy violations while the dashboard ran:\n  %s", strings.Join(v, "\n  "))
	}
	checkCSPDetector(t, ctx, log)

	// A wrong token: the login form, saying why.
	do(t, ctx, 30*time.Second, "open the dashboard with a wrong token", chromedp.Navigate(n.base+"/?token=not-a-token"))
	waitFor(t, ctx, 10*time.Second, cell(`#login`, `e.hidden ? "hidden" : document.getElementById("login-message").textContent`),
		func(s string) bool { return strings.Contains(s, "not accepted") }, "the login form saying the token was refused")
	screenshot(t, ctx, "login.png")

	// A viewer signs in there: live values, and control refused.
	do(t, ctx, 10*time.Second, "sign in as a viewer",
		chromedp.SendKeys(chromedp.ID("login-token"), viewerToken),
		chromedp.Click(chromedp.ID("login-submit")))
	waitFor(t, ctx, 10*time.Second, cell(`#conn`, "e.dataset.state"), func(s string) bool { return s == "live" }, "the viewer's live connection")
	v1 = waitFor(t, ctx, 10*time.Second, valueOf("1001:m:10001"), isNumber, "a value for the viewer")
	waitFor(t, ctx, 10*time.Second, valueOf("1001:m:10001"), func(s string) bool { return isNumber(s) && s != v1 }, "a moving value for the viewer")
	do(t, ctx, 10*time.Second, "send a setpoint as a viewer",
		chromedp.SetValue(chromedp.ID("control-point"), "1001:a:1"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("control-point").dispatchEvent(new Event("change"))`),
		chromedp.SendKeys(chromedp.ID("control-value"), "10"),
		chromedp.Click(chromedp.ID("control-send")))
	waitFor(t, ctx, 10*time.Second, cell(`#control-result`, `e.dataset.status + " | " + e.textContent`),
		func(s string) bool {
			return strings.HasPrefix(s, "forbidden") && strings.Contains(s, "operator token needed")
		}, "control refused to a viewer")

	// Another pattern: the table and the subscription follow.
	do(t, ctx, 10*time.Second, "apply the pattern 1002:*",
		chromedp.SetValue(chromedp.ID("pattern"), "1002:*"),
		chromedp.Click(chromedp.CSS(`#pattern-form button[type="submit"]`)))
	waitFor(t, ctx, 10*time.Second, `[...document.querySelectorAll("#points-body tr")].map((r) => r.dataset.key).join(" ")`,
		func(s string) bool { return s == "1002:m:1 1002:m:2 1002:m:3 1002:m:5 1002:s:4 1002:a:10" }, "the table of channel 1002")
	v1 = waitFor(t, ctx, 10*time.Second, valueOf("1002:m:1"), isNumber, "a value for 1002:m:1")
	waitFor(t, ctx, 10*time.Second, valueOf("1002:m:1"),
		func(s string) bool { return isNumber(s) && s != v1 }, "1002:m:1 changing after the new subscription")

	// The node restarts: the page shows the drop, reconnects by itself and
	// subscribes again.
	n.stop()
	waitFor(t, ctx, 10*time.Second, cell(`#conn`, "e.dataset.state"), func(s string) bool { return s == "offline" }, "the header showing the connection lost")
	n.start(t)
	waitFor(t, ctx, 20*time.Second, cell(`#conn`, "e.dataset.state"), func(s string) bool { return s == "live" }, "the page reconnected")
	v1 = waitFor(t, ctx, 10*time.Second, valueOf("1002:m:1"), isNumber, "a value for 1002:m:1 after the restart")
	waitFor(t, ctx, 10*time.Second, valueOf("1002:m:1"),
		func(s string) bool { return isNumber(s) && s != v1 }, "1002:m:1 changing after the reconnect")
}
