package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

// tokenEnv names the environment variable holding the CLI's API token.
const tokenEnv = "VOLTAGE_TOKEN"

// cmdControl sends one control command through the node's HTTP API, waits
// for its result and prints it. The command fails (exit 1) unless the
// result's status is success.
func cmdControl(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("control", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFile := fs.String("c", "", "configuration `file` (YAML): the node's http address is the default --url")
	point := fs.String("point", "", "the point, `CH:TYPE:PT` (for example 1001:c:1)")
	value := fs.String("value", "", "the `value`: a number, or true/false")
	id := fs.String("id", "", "idempotency `key` (default: a random UUID)")
	wait := fs.Duration("wait", 5*time.Second, "how long to wait for the result (at most 30s)")
	timeout := fs.Duration("timeout", 0, "how old the command may be when the channel executes it (default 5s)")
	base := fs.String("url", "", "the node's HTTP `URL` (default: http://{node.http of -c FILE})")
	viaRedis := fs.Bool("via-redis", false, "publish the command on the node's Redis (signed with auth.command_key of -c FILE) instead of the HTTP API")
	user := fs.String("user", cliUser(), "with --via-redis: the `name` recorded as the command's user")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	key, err := messages.ParsePointKey(*point)
	switch {
	case *point == "":
		return usageError{"--point CH:TYPE:PT is required"}
	case err != nil:
		return usageError{"--point: " + err.Error()}
	case *value == "":
		return usageError{"--value is required"}
	case *wait <= 0 || *wait > 30*time.Second:
		return usageError{fmt.Sprintf("--wait %s: want more than 0 and at most 30s", *wait)}
	case *timeout < 0 || *timeout > messages.MaxCmdTimeout:
		return usageError{fmt.Sprintf("--timeout %s: want at most %s", *timeout, messages.MaxCmdTimeout)}
	}
	if *id != "" {
		if err := messages.ValidCommandID(*id); err != nil {
			return usageError{"--id: " + err.Error()}
		}
	}
	v, err := controlValue(*value)
	if err != nil {
		return usageError{"--value: " + err.Error()}
	}
	if *timeout > 0 && *timeout < messages.MinCmdTimeout {
		return usageError{fmt.Sprintf("--timeout %s: want at least %s", *timeout, messages.MinCmdTimeout)}
	}
	if *viaRedis {
		if *cfgFile == "" {
			return usageError{"--via-redis needs -c FILE (redis.url, redis.prefix, auth.command_key)"}
		}
		fv, _ := v.(float64)
		if b, ok := v.(bool); ok && b {
			fv = 1
		}
		return controlViaRedis(*cfgFile, controlRequest{key: key, value: fv, id: *id, wait: *wait, timeout: *timeout, user: *user}, stdout, stderr)
	}
	if *base == "" {
		if *cfgFile == "" {
			return usageError{"-c FILE or --url URL is required"}
		}
		if *base, err = nodeURL(*cfgFile); err != nil {
			return err
		}
	}

	body := map[string]any{"value": v, "type": key.Type.String(), "wait": wait.String()}
	if *id != "" {
		body["id"] = *id
	}
	if *timeout > 0 {
		body["timeout"] = timeout.String()
	}
	payload, _ := json.Marshal(body)
	url := fmt.Sprintf("%s/control/%d/%d", strings.TrimRight(*base, "/"), key.Channel, key.Point)
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(payload))
	if err != nil {
		return usageError{"--url: " + err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	if tok := os.Getenv(tokenEnv); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	client := &http.Client{Timeout: *wait + 10*time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, url, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", req.Method, url, err)
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
		return httpFailure(resp, answer)
	}
	var res struct {
		ID     string `json:"id"`
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	if err := json.Unmarshal(answer, &res); err != nil {
		return fmt.Errorf("answer %d is not JSON: %.200s", resp.StatusCode, answer)
	}
	printJSON(stdout, answer)
	if res.Status == string(messages.StatusUnknown) {
		// The write went out unanswered: the channel reconciles it by
		// reading the point back; follow the command until it has.
		if res.Status, res.Error, err = followUnknown(client, req.Header.Get("Authorization"), strings.TrimRight(*base, "/"), res.ID, time.Now().Add(*wait), stdout); err != nil {
			return err
		}
	}
	if res.Status != string(messages.StatusSuccess) {
		msg := fmt.Sprintf("command %s: %s", res.ID, res.Status)
		if res.Error != "" {
			msg += ": " + res.Error
		}
		return errors.New(msg)
	}
	return nil
}

// controlValue parses --value: true/false or a finite number.
func controlValue(s string) (any, error) {
	switch strings.ToLower(s) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return nil, fmt.Errorf("%q is not a number or true/false", s)
	}
	return v, nil
}

// httpFailure turns an error answer ({"error":{"code","message"}}) into
// the command's error.
func httpFailure(resp *http.Response, body []byte) error {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
		return fmt.Errorf("%s (%d %s)", e.Error.Message, resp.StatusCode, e.Error.Code)
	}
	return fmt.Errorf("%s: %.200s", resp.Status, bytes.TrimSpace(body))
}

// nodeURL reads node.http from the configuration file. Only that field is
// read, so the tokens' environment variables need not be set here.
func nodeURL(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	var c struct {
		Node struct {
			HTTP string `yaml:"http"`
		} `yaml:"node"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		return "", fmt.Errorf("%s: %w", file, err)
	}
	addr := c.Node.HTTP
	if addr == "" {
		addr = config.DefaultHTTP
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%s: node.http %q: %w", file, addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}
