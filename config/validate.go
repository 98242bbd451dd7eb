package config

import (
	"net"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/voltage-ems/voltage/messages"
)

// MinPollInterval is the shortest poll interval a channel may have.
const MinPollInterval = 10 * time.Millisecond

// MinTokenLength is the shortest API token accepted.
const MinTokenLength = 16

var (
	protocols = []string{ProtocolModbusTCP, ProtocolModbusRTU, ProtocolVirtual, ProtocolCompute}
	// parametersOf lists the parameters that apply to each protocol.
	parametersOf = map[string][]string{
		ProtocolModbusTCP: {"host", "port", "timeout", "max_gap"},
		ProtocolModbusRTU: {"device", "baud_rate", "data_bits", "parity", "stop_bits", "timeout", "max_gap"},
		ProtocolVirtual:   {},
		ProtocolCompute:   {},
	}
	roles = []string{"viewer", "operator", "admin"}
)

func (l *loader) validateNode(c *Config) {
	if _, port, err := net.SplitHostPort(c.Node.HTTP); err != nil {
		l.errorf("node.http", "want host:port, got %q", c.Node.HTTP)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		l.errorf("node.http", "invalid port %q (want 0..65535)", port)
	}
	if l.isSet("node.data_dir") && strings.TrimSpace(c.Node.DataDir) == "" {
		l.errorf("node.data_dir", "must not be empty")
	}
	l.validateHTTP(&c.Node)
	if c.Redis.URL != "" {
		u, err := url.Parse(c.Redis.URL)
		switch {
		case err != nil:
			l.errorf("redis.url", "invalid URL (%v)", redactURLError(err))
		case u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix":
			l.errorf("redis.url", "unsupported scheme %q (want redis://, rediss:// or unix://; empty for the embedded server)", u.Scheme)
		}
	}
	if c.InfluxDB.URL != "" {
		u, err := url.Parse(c.InfluxDB.URL)
		switch {
		case err != nil:
			l.errorf("influxdb.url", "invalid URL (%v)", redactURLError(err))
		case u.Scheme != "http" && u.Scheme != "https":
			l.errorf("influxdb.url", "unsupported scheme %q (want http:// or https://; empty for embedded history)", u.Scheme)
		case u.Host == "":
			l.errorf("influxdb.url", "missing host")
		}
	}
	if strings.TrimSpace(c.InfluxDB.Bucket) == "" {
		l.errorf("influxdb.bucket", "must not be empty")
	}
	if strings.TrimSpace(c.InfluxDB.Measurement) == "" {
		l.errorf("influxdb.measurement", "must not be empty")
	}
	if c.InfluxDB.BatchSize <= 0 {
		l.errorf("influxdb.batch_size", "must be positive, got %d", c.InfluxDB.BatchSize)
	}
	if c.InfluxDB.FlushInterval <= 0 {
		l.errorf("influxdb.flush_interval", "must be positive, got %s", c.InfluxDB.FlushInterval)
	}
	if c.InfluxDB.SpoolMaxMB <= 0 {
		l.errorf("influxdb.spool_max_mb", "must be positive, got %d", c.InfluxDB.SpoolMaxMB)
	}
	if c.InfluxDB.Retention < time.Hour {
		l.errorf("influxdb.retention", "must be at least 1h, got %s", c.InfluxDB.Retention)
	}
}

// redactURLError drops the URL (which may hold a password) from a parse error.
func redactURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

func (l *loader) validateChannels(c *Config) {
	firstID := map[uint32]int{} // channel id -> line
	for i := range c.Channels {
		ch := &c.Channels[i]
		p := indexPath("channels", i)

		switch {
		case !l.isSet(p + ".id"):
			l.errorf(p+".id", "required (a number > 0)")
		case ch.ID == 0:
			l.errorf(p+".id", "must be > 0")
		default:
			if first, dup := firstID[ch.ID]; dup {
				l.errorf(p+".id", "duplicate channel id %d (first at line %d)", ch.ID, first)
			} else {
				firstID[ch.ID] = l.line(p + ".id")
			}
		}

		known := contains(protocols, ch.Protocol)
		switch {
		case ch.Protocol == "":
			l.errorf(p+".protocol", "required (%s)", strings.Join(protocols, ", "))
		case !known:
			l.errorf(p+".protocol", "unknown protocol %q (want %s)", ch.Protocol, strings.Join(protocols, ", "))
		default:
			l.validateParameters(ch, p)
		}

		if !l.isSet(p + ".poll_interval") {
			ch.PollInterval = DefaultPollInterval
		} else if ch.PollInterval < MinPollInterval {
			l.errorf(p+".poll_interval", "must be at least %s, got %s", MinPollInterval, ch.PollInterval)
		}

		l.loadPoints(ch, p, known)
	}
}

func (l *loader) validateParameters(ch *Channel, p string) {
	pp := p + ".parameters"
	allowed := parametersOf[ch.Protocol]
	for _, f := range yamlFields(reflect.TypeFor[Parameters]()) {
		if l.isSet(pp+"."+f.name) && !contains(allowed, f.name) {
			l.errorf(pp+"."+f.name, "not used by %s", ch.Protocol)
		}
	}
	par := &ch.Parameters
	switch ch.Protocol {
	case ProtocolModbusTCP:
		if strings.TrimSpace(par.Host) == "" {
			l.errorf(pp+".host", "required for modbus_tcp")
		}
		if !l.isSet(pp + ".port") {
			par.Port = DefaultPort
		} else if par.Port < 1 || par.Port > 65535 {
			l.errorf(pp+".port", "%d is out of range (1..65535)", par.Port)
		}
	case ProtocolModbusRTU:
		if strings.TrimSpace(par.Device) == "" {
			l.errorf(pp+".device", "required for modbus_rtu (e.g. /dev/ttyUSB0)")
		}
		if !l.isSet(pp + ".baud_rate") {
			par.BaudRate = DefaultBaudRate
		} else if par.BaudRate <= 0 {
			l.errorf(pp+".baud_rate", "must be positive, got %d", par.BaudRate)
		}
		if !l.isSet(pp + ".data_bits") {
			par.DataBits = DefaultDataBits
		} else if par.DataBits < 5 || par.DataBits > 8 {
			l.errorf(pp+".data_bits", "%d is out of range (5..8)", par.DataBits)
		}
		if !l.isSet(pp + ".stop_bits") {
			par.StopBits = DefaultStopBits
		} else if par.StopBits < 1 || par.StopBits > 2 {
			l.errorf(pp+".stop_bits", "%d is out of range (1..2)", par.StopBits)
		}
		if !l.isSet(pp + ".parity") {
			par.Parity = DefaultParity
		} else if s := strings.ToUpper(par.Parity); s == "N" || s == "E" || s == "O" {
			par.Parity = s
		} else {
			l.errorf(pp+".parity", "unknown parity %q (want N, E or O)", par.Parity)
		}
	}
	if ch.Protocol == ProtocolModbusTCP || ch.Protocol == ProtocolModbusRTU {
		if !l.isSet(pp + ".timeout") {
			par.Timeout = DefaultTimeout
		} else if par.Timeout <= 0 {
			l.errorf(pp+".timeout", "must be positive, got %s", par.Timeout)
		}
		if par.MaxGap == nil {
			g := DefaultMaxGap
			par.MaxGap = &g
		} else if *par.MaxGap < 0 || *par.MaxGap > 125 {
			l.errorf(pp+".max_gap", "%d is out of range (0..125)", *par.MaxGap)
		}
	}
}

// loadPoints reads and parses the channel's point table.
func (l *loader) loadPoints(ch *Channel, p string, protocolKnown bool) {
	if strings.TrimSpace(ch.PointsFile) == "" {
		if ch.Protocol != ProtocolCompute && protocolKnown {
			l.errorf(p+".points", "required for %s channels (the CSV point table, relative to this file)", ch.Protocol)
		}
		ch.PointsFile = ""
		return
	}
	display := l.displayPath(ch.PointsFile)
	ch.PointsFile = l.resolvePath(ch.PointsFile)
	data, err := l.readFile(display)
	if err != nil {
		l.errorf(p+".points", "cannot read point table %s: %s", display, fileError(err))
		return
	}
	if protocolKnown {
		ch.Points = parsePoints(data, display, ch.Protocol, l.errs)
	}
}

// addComputedPoints gives each compute channel a point for every computation
// output that its point table does not list.
func (l *loader) addComputedPoints(c *Config) {
	for _, comp := range c.Computations {
		k, err := messages.ParsePointKey(comp.Output)
		if err != nil {
			continue
		}
		for i := range c.Channels {
			ch := &c.Channels[i]
			if ch.ID != k.Channel || ch.Protocol != ProtocolCompute {
				continue
			}
			if !hasPoint(ch.Points, k) {
				ch.Points = append(ch.Points, Point{ID: k.Point, Type: k.Type, Name: comp.Name, Scale: 1, BitPosition: -1})
			}
			break
		}
	}
}

func hasPoint(ps []Point, k messages.PointKey) bool {
	for i := range ps {
		if ps[i].ID == k.Point && ps[i].Type == k.Type {
			return true
		}
	}
	return false
}

// validateComputations checks the computations, compiles their expressions
// and checks that they form a DAG: see checkComputations in computations.go.
func (l *loader) validateComputations(c *Config) {
	l.checkComputations(c)
}

// validateAuth checks the API tokens. Messages never include a token value.
func (l *loader) validateAuth(c *Config) {
	firstName := map[string]int{}
	firstToken := map[string]int{} // token -> index
	for i, t := range c.Auth.Tokens {
		p := indexPath("auth.tokens", i)
		if strings.TrimSpace(t.Name) == "" {
			l.errorf(p+".name", "required")
		} else if first, dup := firstName[t.Name]; dup {
			l.errorf(p+".name", "duplicate token name %q (first at line %d)", t.Name, first)
		} else {
			firstName[t.Name] = l.line(p + ".name")
		}
		if t.Role == "" {
			l.errorf(p+".role", "required (%s)", strings.Join(roles, ", "))
		} else if !contains(roles, t.Role) {
			l.errorf(p+".role", "unknown role %q (want %s)", t.Role, strings.Join(roles, ", "))
		}
		switch n := len(t.Token); {
		case l.dec.bad[p+".token"]:
		case strings.TrimSpace(t.Token) == "" && l.isSet(p+".token"):
			l.errorf(p+".token", "empty after expanding environment variables")
		case strings.TrimSpace(t.Token) == "":
			l.errorf(p+".token", "required")
		case n < MinTokenLength:
			l.errorf(p+".token", "too short: %d characters, want at least %d", n, MinTokenLength)
		default:
			if first, dup := firstToken[t.Token]; dup {
				fp := indexPath("auth.tokens", first)
				l.errorf(p+".token", "same token as %s (line %d)", fp, l.line(fp))
			} else {
				firstToken[t.Token] = i
			}
		}
	}
}
