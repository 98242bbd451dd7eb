package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
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
	base := fs.String("url", "", "the node's HTTP `URL` (default: http://{node.http of -c FILE}, https:// when it has node.tls)")
	caFile := fs.String("ca", "", "CA certificate `file` (PEM) to trust for https (default: the node's own certificate, node.tls.cert of -c FILE; else the system's roots)")
	certFile := fs.String("cert", "", "client certificate `file` (PEM) for a node with node.tls.client_ca (mutual TLS)")
	keyFile := fs.String("key", "", "the client certificate's private key `file` (PEM)")
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
	if (*certFile == "") != (*keyFile == "") {
		return usageError{"--cert FILE and --key FILE go together"}
	}
	var node nodeAddr
	if *cfgFile != "" {
		if node, err = readNodeAddr(*cfgFile); err != nil {
			return err
		}
	}
	if *base == "" {
		if *cfgFile == "" {
			return usageError{"-c FILE or --url URL is required"}
		}
		*base = node.url
	}
	client := &http.Client{Timeout: *wait + 10*time.Second}
	if strings.HasPrefix(strings.ToLower(*base), "https://") {
		tc, err := clientTLS(*caFile, *certFile, *keyFile, node.cert)
		if err != nil {
			return err
		}
		client.Transport = &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment}
	} else if *caFile != "" || *certFile != "" {
		return usageError{fmt.Sprintf("--ca, --cert and --key are for https, and %s is not https", *base)}
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
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w%s", req.Method, url, err, tlsHint(err, node, *certFile != ""))
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

// nodeAddr is what the CLI reads of a node's configuration.
type nodeAddr struct {
	url      string // http://host:port or https://host:port
	cert     string // node.tls.cert, relative to the config file's directory; "" without TLS
	clientCA bool   // node.tls.client_ca is set: the node wants a client certificate
}

// readNodeAddr reads node.http and node.tls from the configuration file.
// Only those fields are read, so the tokens' environment variables need not
// be set here.
func readNodeAddr(file string) (nodeAddr, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nodeAddr{}, err
	}
	var c struct {
		Node struct {
			HTTP string `yaml:"http"`
			TLS  *struct {
				Cert     string `yaml:"cert"`
				ClientCA string `yaml:"client_ca"`
			} `yaml:"tls"`
		} `yaml:"node"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		return nodeAddr{}, fmt.Errorf("%s: %w", file, err)
	}
	addr := c.Node.HTTP
	if addr == "" {
		addr = config.DefaultHTTP
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nodeAddr{}, fmt.Errorf("%s: node.http %q: %w", file, addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	n := nodeAddr{url: "http://" + net.JoinHostPort(host, port)}
	if t := c.Node.TLS; t != nil {
		n.url = "https://" + net.JoinHostPort(host, port)
		n.clientCA = t.ClientCA != ""
		if n.cert = t.Cert; n.cert != "" && !filepath.IsAbs(n.cert) {
			n.cert = filepath.Join(filepath.Dir(file), n.cert)
		}
	}
	return n, nil
}

// clientTLS is the CLI's TLS configuration: trust caFile, else the node's
// own certificate (nodeCert: the CLI on the node's host trusts exactly that
// certificate, whoever signed it), else the system's roots; present
// certFile when given.
func clientTLS(caFile, certFile, keyFile, nodeCert string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	trust, flag := caFile, "--ca"
	if trust == "" {
		trust, flag = nodeCert, "node.tls.cert"
	}
	if trust != "" {
		pem, err := os.ReadFile(trust)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flag, err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: %s holds no PEM certificate", flag, trust)
		}
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert %s --key %s: %w", certFile, keyFile, err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

// tlsHint says what to do about a failed TLS handshake.
func tlsHint(err error, node nodeAddr, haveCert bool) string {
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	switch {
	case errors.As(err, &ua):
		return " (the node's certificate is not signed by a CA this command trusts: give --ca FILE)"
	case errors.As(err, &he):
		return " (the node's certificate is not valid for this address: use --url with a name it has)"
	case !haveCert && (node.clientCA || strings.Contains(err.Error(), "certificate required")):
		return " (the node requires a client certificate: give --cert FILE --key FILE)"
	}
	return ""
}
