package config

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Defaults applied by Load to settings that are absent from the file.
const (
	DefaultHTTP          = "127.0.0.1:8080"
	DefaultDataDir       = "data"
	DefaultBucket        = "ems/autogen"
	DefaultMeasurement   = "point"
	DefaultBatchSize     = 5000
	DefaultSpoolMaxMB    = 1024
	DefaultRetention     = 7 * 24 * time.Hour
	DefaultFlushInterval = time.Second
	DefaultPollInterval  = time.Second
	DefaultTimeout       = time.Second
	DefaultPort          = 502
	DefaultBaudRate      = 9600
	DefaultDataBits      = 8
	DefaultParity        = "N"
	DefaultStopBits      = 1
	DefaultMaxGap        = 16
	DefaultSlaveID       = 1
	DefaultAlarmLevel    = "major"

	DefaultHTTPReadHeaderTimeout = 5 * time.Second
	DefaultHTTPReadTimeout       = 10 * time.Second
	DefaultHTTPWriteTimeout      = 60 * time.Second
	DefaultHTTPIdleTimeout       = 60 * time.Second
	DefaultHTTPMaxHeaderBytes    = 16 << 10
	DefaultHTTPMaxConnsPerClient = 128
	DefaultHTTPAuthBurst         = 10
	DefaultHTTPAuthRefill        = 6 * time.Second
)

// Load reads the YAML configuration at path and the CSV point tables it names,
// applies defaults, expands ${ENV} references and validates everything.
//
// On failure the error is an Errors value listing every problem found, each
// as "file:line: field: problem"; the Config is then nil.
//
// After a successful Load:
//   - Config.File is path as given;
//   - Node.DataDir, every Channel.PointsFile and the files of Node.TLS are
//     absolute paths (relative ones are taken relative to the YAML file's
//     directory);
//   - the token values of auth.tokens, influxdb.token and redis.url have
//     their ${NAME} references replaced by environment variables;
//   - Parameters.MaxGap is non-nil on Modbus channels (default 16) and nil on
//     others;
//   - a compute channel's Points are the rows of its optional point table
//     followed by one point per computation output not listed there (Line 0,
//     Name from the computation).
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Errors{{File: path, Msg: fileError(err)}}
	}
	return Parse(data, path, os.ReadFile)
}

// Parse is Load with the YAML text given: file names it in errors and anchors
// relative paths, and readFile reads the point tables (os.ReadFile when nil).
// Tests use it with an in-memory readFile.
func Parse(data []byte, file string, readFile func(name string) ([]byte, error)) (*Config, error) {
	if readFile == nil {
		readFile = os.ReadFile
	}
	errs := &collector{}
	l := &loader{
		file:     file,
		dir:      filepath.Dir(file),
		readFile: readFile,
		errs:     errs,
		dec:      newDecoder(file, errs),
	}
	cfg := &Config{File: file}

	root, err := parseYAML(data)
	if err != nil {
		return nil, Errors{syntaxError(file, err)}
	}
	if !isNull(root) {
		l.dec.decode(root, reflect.ValueOf(cfg).Elem(), "")
	}
	l.applyDefaults(cfg)
	l.expandEnv(cfg)
	l.validateNode(cfg)
	l.validateChannels(cfg)
	l.addComputedPoints(cfg)
	cfg.index = buildIndex(cfg.Channels)
	l.validateComputations(cfg)
	l.validateAlarms(cfg)
	l.validateAuth(cfg)
	l.validateBus(cfg)

	if len(errs.errs) > 0 {
		return nil, errs.sorted()
	}
	return cfg, nil
}

// parseYAML parses exactly one YAML document.
func parseYAML(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // empty file
		}
		return nil, err
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, err
	default:
		return nil, &multiDocError{line: next.Line}
	}
	return &root, nil
}

type multiDocError struct{ line int }

func (e *multiDocError) Error() string {
	return "yaml: line " + strconv.Itoa(e.line) + ": a second YAML document (want exactly one)"
}

// fileError is the reason of a failed read, without repeating the path.
func fileError(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// loader holds the state of one Parse.
type loader struct {
	file     string
	dir      string
	readFile func(string) ([]byte, error)
	errs     *collector
	dec      *decoder
}

// isSet reports whether the YAML file gave path a (non-null) value.
func (l *loader) isSet(path string) bool {
	_, ok := l.dec.lines[path]
	return ok
}

// line returns the line of path, or of its nearest parent present in the file.
func (l *loader) line(path string) int {
	for path != "" {
		if n, ok := l.dec.lines[path]; ok {
			return n
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

// errorf records a problem with path, unless decoding path already failed.
func (l *loader) errorf(path, format string, args ...any) {
	if l.dec.bad[path] {
		return
	}
	l.errs.add(l.file, l.line(path), path, format, args...)
}

// resolvePath makes p absolute, relative to the YAML file's directory.
func (l *loader) resolvePath(p string) string {
	if !filepath.IsAbs(p) {
		p = filepath.Join(l.dir, p)
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

// displayPath is how a file named in the YAML appears in error messages: joined
// to the YAML file's directory, so it is valid from where the loader ran.
func (l *loader) displayPath(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(l.dir, p)
}

func (l *loader) applyDefaults(c *Config) {
	if c.Node.Name == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			c.Node.Name = h
		} else {
			c.Node.Name = "voltage"
		}
	}
	if !l.isSet("node.http") {
		c.Node.HTTP = DefaultHTTP
	}
	if !l.isSet("node.data_dir") {
		c.Node.DataDir = DefaultDataDir
	}
	l.applyHTTPDefaults(&c.Node)
	if c.Node.DataDir != "" {
		c.Node.DataDir = l.resolvePath(c.Node.DataDir)
	}
	if !l.isSet("influxdb.bucket") {
		c.InfluxDB.Bucket = DefaultBucket
	}
	if !l.isSet("influxdb.measurement") {
		c.InfluxDB.Measurement = DefaultMeasurement
	}
	if !l.isSet("influxdb.batch_size") {
		c.InfluxDB.BatchSize = DefaultBatchSize
	}
	if !l.isSet("influxdb.flush_interval") {
		c.InfluxDB.FlushInterval = DefaultFlushInterval
	}
	if !l.isSet("influxdb.spool_max_mb") {
		c.InfluxDB.SpoolMaxMB = DefaultSpoolMaxMB
	}
	if !l.isSet("influxdb.retention") {
		c.InfluxDB.Retention = DefaultRetention
	}
	for i := range c.Alarms {
		if !l.isSet(indexPath("alarms", i) + ".level") {
			c.Alarms[i].Level = DefaultAlarmLevel
		}
	}
	// Channel defaults depend on the protocol: see validateChannels.
}

func indexPath(list string, i int) string {
	return list + "[" + strconv.Itoa(i) + "]"
}

// expandEnv replaces ${NAME} in the secret-bearing fields.
func (l *loader) expandEnv(c *Config) {
	for i := range c.Auth.Tokens {
		l.expand(&c.Auth.Tokens[i].Token, indexPath("auth.tokens", i)+".token")
	}
	l.expand(&c.InfluxDB.Token, "influxdb.token")
	l.expand(&c.Redis.URL, "redis.url")
	l.expand(&c.Auth.CommandKey, "auth.command_key")
	l.expand(&c.Auth.CommandKeyPrevious, "auth.command_key_previous")
}

func (l *loader) expand(s *string, path string) {
	v, missing, err := expandEnv(*s, os.LookupEnv)
	switch {
	case err != nil:
		l.errorf(path, "%v", err)
		l.dec.bad[path] = true
	case len(missing) > 0:
		for _, name := range missing {
			l.errorf(path, "environment variable %s is not set", name)
		}
		l.dec.bad[path] = true
	default:
		*s = v
	}
}

// expandEnv replaces each ${NAME} in s by the variable's value. A "$" not
// followed by "{" is kept as is. It returns the names of unset variables.
func expandEnv(s string, lookup func(string) (string, bool)) (string, []string, error) {
	if !strings.Contains(s, "${") {
		return s, nil, nil
	}
	var (
		b       strings.Builder
		missing []string
	)
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			break
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", nil, errors.New("unterminated ${ in value")
		}
		name := s[i+2 : i+end]
		if !validEnvName(name) {
			return "", nil, errors.New("invalid environment variable name in ${...} (want letters, digits and _)")
		}
		v, ok := lookup(name)
		if !ok {
			missing = append(missing, name)
		}
		b.WriteString(v)
		s = s[i+end+1:]
	}
	return b.String(), missing, nil
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
