// Package config loads and validates a node's YAML configuration and the CSV
// point tables it names. Loading is strict: unknown keys are errors, and every
// error carries file:line and the field, all of them reported at once.
package config

import (
	"time"

	"github.com/expr-lang/expr/vm"

	"github.com/voltage-ems/voltage/messages"
)

// Config is one node's configuration (the file given to `voltage run -c`).
type Config struct {
	File         string        `yaml:"-"` // path the config was loaded from
	Node         Node          `yaml:"node"`
	Redis        Redis         `yaml:"redis"`
	InfluxDB     InfluxDB      `yaml:"influxdb"`
	Auth         Auth          `yaml:"auth"`
	Channels     []Channel     `yaml:"channels"`
	Computations []Computation `yaml:"computations"`
	Alarms       []Alarm       `yaml:"alarms"`

	index *index // built by Load for Channel and Point
}

// Node names the node and where it serves HTTP and keeps data.
type Node struct {
	Name    string `yaml:"name"`     // default: the host name
	HTTP    string `yaml:"http"`     // listen address, default 127.0.0.1:8080
	DataDir string `yaml:"data_dir"` // default "data", relative to the YAML file

	// Limits of the HTTP server (docs/http.md). A request's headers must
	// arrive within HTTPReadHeaderTimeout (default 5s) and the whole
	// request within HTTPReadTimeout (10s); an answer must be written
	// within HTTPWriteTimeout (60s, at least 20s; POST /control with wait
	// gets the wait on top); an idle keep-alive connection is closed after
	// HTTPIdleTimeout (60s). WebSocket connections are not bound by these.
	HTTPReadHeaderTimeout time.Duration `yaml:"http_read_header_timeout"`
	HTTPReadTimeout       time.Duration `yaml:"http_read_timeout"`
	HTTPWriteTimeout      time.Duration `yaml:"http_write_timeout"`
	HTTPIdleTimeout       time.Duration `yaml:"http_idle_timeout"`
	// HTTPMaxHeaderBytes bounds a request's headers (default 16384).
	HTTPMaxHeaderBytes int `yaml:"http_max_header_bytes"`
	// HTTPMaxConnsPerClient is how many connections one client address
	// (an IPv6 /64) may hold open at once (default 128; 0: no limit);
	// more are closed as soon as they are accepted.
	HTTPMaxConnsPerClient int `yaml:"http_max_conns_per_client"`
	// HTTPAuthBurst is how many failed authentications a client address
	// may make before it is answered 429 (default 10); HTTPAuthRefill is
	// how often one more is allowed again (default 6s: 10 a minute).
	HTTPAuthBurst  int           `yaml:"http_auth_burst"`
	HTTPAuthRefill time.Duration `yaml:"http_auth_refill"`
	// TLS, when set, serves the API and the WebSocket over HTTPS only.
	TLS *TLS `yaml:"tls"`
}

// TLS is the node's certificate for HTTPS (PEM files, relative to the YAML
// file; Load makes them absolute and checks that they load).
type TLS struct {
	Cert string `yaml:"cert"` // certificate chain, leaf first
	Key  string `yaml:"key"`  // its private key
	// ClientCA, when set, requires every client to present a certificate
	// signed by one of these CAs (mutual TLS).
	ClientCA string `yaml:"client_ca"`
}

// Redis says which Redis to use; an empty URL starts an embedded server.
type Redis struct {
	URL string `yaml:"url"`
	// Prefix namespaces every key and Pub/Sub channel of the node
	// ("site-a" -> "site-a:comsrv:1001:m"), so that the nodes of several
	// sites can share one redis-server; empty keeps the contract's names.
	Prefix string `yaml:"prefix"`
	// TLS of a rediss:// URL: the CA that signed the server's certificate
	// (default: the system's), a client certificate for servers that ask
	// for one, and the name to verify (default: the URL's host).
	TLS *RedisTLS `yaml:"tls"`
}

// RedisTLS are the PEM files of a TLS connection to Redis, relative to the
// YAML file.
type RedisTLS struct {
	CA         string `yaml:"ca"`
	Cert       string `yaml:"cert"`
	Key        string `yaml:"key"`
	ServerName string `yaml:"server_name"`
}

// InfluxDB configures history; an empty URL keeps history in data_dir.
type InfluxDB struct {
	URL           string        `yaml:"url"`
	Token         string        `yaml:"token"`
	Org           string        `yaml:"org"`
	Bucket        string        `yaml:"bucket"`         // default "ems/autogen"
	Measurement   string        `yaml:"measurement"`    // default "point"
	BatchSize     int           `yaml:"batch_size"`     // default 5000
	FlushInterval time.Duration `yaml:"flush_interval"` // default 1s
	// SpoolMaxMB bounds the durable spool in data_dir that holds batches
	// the store could not take (default 1024); beyond it the oldest are
	// dropped, counted and logged.
	SpoolMaxMB int `yaml:"spool_max_mb"`
	// Retention of the embedded history (url empty); default 7 days.
	Retention time.Duration `yaml:"retention"`
}

// Auth lists the API tokens and the key that signs commands on the bus.
type Auth struct {
	Tokens []Token `yaml:"tokens"`
	// CommandKey, when set, signs every command the gateway publishes
	// (HMAC-SHA256) and makes channels refuse commands without a valid
	// signature. At least 32 characters; write it as ${ENV_VAR}.
	CommandKey string `yaml:"command_key"`
	// CommandKeyPrevious is also accepted (not used to sign) while a new
	// command key is rolled out to every node and client.
	CommandKeyPrevious string `yaml:"command_key_previous"`
}

// Token is one bearer token with its role. Token values may be written as
// ${ENV_VAR} and are expanded at load time.
type Token struct {
	Name  string `yaml:"name"`
	Token string `yaml:"token"`
	Role  string `yaml:"role"` // viewer | operator | admin
}

// Protocols of a channel.
const (
	ProtocolModbusTCP = "modbus_tcp"
	ProtocolModbusRTU = "modbus_rtu"
	ProtocolVirtual   = "virtual"
	ProtocolCompute   = "compute"
)

// Channel is one connection to field devices (or a virtual or compute channel).
type Channel struct {
	ID           uint32        `yaml:"id"`
	Name         string        `yaml:"name"`
	Protocol     string        `yaml:"protocol"`
	Parameters   Parameters    `yaml:"parameters"`
	PollInterval time.Duration `yaml:"poll_interval"` // default 1s
	PointsFile   string        `yaml:"points"`        // CSV, relative to the YAML file
	Points       []Point       `yaml:"-"`             // loaded from PointsFile, in file order
	Line         int           `yaml:"-"`             // line of the channel in the YAML file
}

// Parameters are the protocol parameters of a channel. Which ones apply
// depends on the protocol; the loader rejects ones that do not.
type Parameters struct {
	// modbus_tcp
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	// modbus_rtu
	Device   string `yaml:"device"`
	BaudRate int    `yaml:"baud_rate"` // default 9600
	DataBits int    `yaml:"data_bits"` // default 8
	Parity   string `yaml:"parity"`    // N | E | O, default N
	StopBits int    `yaml:"stop_bits"` // default 1
	// modbus
	Timeout time.Duration `yaml:"timeout"` // per request, default 1s
	// MaxGap is the largest run of unused registers (or bits) that a grouped
	// read may span to save a request; default 16 registers.
	MaxGap *int `yaml:"max_gap"`
}

// DataType is the register encoding of a Modbus point.
type DataType string

// Data types of the contract.
const (
	Bool    DataType = "bool"
	Uint16  DataType = "uint16"
	Int16   DataType = "int16"
	Uint32  DataType = "uint32"
	Int32   DataType = "int32"
	Float32 DataType = "float32"
	Uint64  DataType = "uint64"
	Int64   DataType = "int64"
	Float64 DataType = "float64"
)

// Registers returns how many 16-bit registers the type occupies (bool: 1).
func (d DataType) Registers() int {
	switch d {
	case Uint32, Int32, Float32:
		return 2
	case Uint64, Int64, Float64:
		return 4
	}
	return 1
}

// ByteOrder is the order of bytes of a 32- or 64-bit value, written as the
// letters of the big-endian bytes in the order they appear on the wire.
type ByteOrder string

// Byte orders of the contract.
const (
	ABCD ByteOrder = "ABCD" // big-endian
	DCBA ByteOrder = "DCBA" // little-endian
	BADC ByteOrder = "BADC" // bytes swapped within each word
	CDAB ByteOrder = "CDAB" // words swapped
)

// Point is one row of a channel's point table.
type Point struct {
	ID   uint32
	Type messages.PointType
	Name string
	Unit string

	// Modbus columns.
	SlaveID      uint8
	FunctionCode uint8 // 1, 2, 3, 4 for reads; 5, 6, 15, 16 for writes
	Address      uint16
	DataType     DataType
	ByteOrder    ByteOrder
	BitPosition  int // 0..15, or -1 when unset
	Scale        float64
	Offset       float64
	Deadband     float64
	Reverse      bool
	// Min and Max (optional columns) bound the values written to c and a
	// points; on m points they are the expected range of the measurement
	// (the simulator's waveform range; values outside are still published);
	// for virtual points they are the signal range.
	Min, Max *float64

	// Virtual columns.
	Signal string        // sine | ramp | random_walk | square | constant
	Period time.Duration // default 60s

	Line int // line of the row in the CSV file
}

// Key returns the point's address within channel ch.
func (p *Point) Key(ch uint32) messages.PointKey {
	return messages.PointKey{Channel: ch, Type: p.Type, Point: p.ID}
}

// Computation derives a point of a compute channel from other points. See
// computations.go for the expression language and the checks made at load.
type Computation struct {
	Output     string  `yaml:"output"` // point key on a compute channel, e.g. "9001:m:1"
	Name       string  `yaml:"name"`
	Expression string  `yaml:"expression"`
	Inputs     Inputs  `yaml:"inputs"`
	Unit       string  `yaml:"unit"`
	Deadband   float64 `yaml:"deadband"` // publish only moves larger than this; >= 0
	Line       int     `yaml:"-"`

	// OutputKey is Output parsed (set by Load).
	OutputKey messages.PointKey `yaml:"-"`

	program  *vm.Program    // compiled by Load, see Program
	stateful []StatefulCall // call sites of stateful functions, see StatefulCalls
}

// Inputs are the points a computation reads. In YAML they are either a list
// of point keys, bound in the expression as input1..inputN, or a mapping of
// name -> point key (`inputs: {p: "1001:m:10001", q: "1001:m:10002"}`),
// bound by name. Both forms may be empty or absent.
type Inputs struct {
	// Bindings are the inputs in file order.
	Bindings []Binding
	// Named is true when the inputs were written as a mapping.
	Named bool
}

// Binding is one input of a computation: the name the expression uses for
// it and the point it reads.
type Binding struct {
	Name string            // "input1".. for a list, the mapping key otherwise
	Text string            // the point key as written in the file
	Key  messages.PointKey // Text parsed (set by Load)
	Line int               // line of the input in the YAML file

	path string // YAML path for errors: "computations[0].inputs[1]" or "computations[0].inputs.p"
}

// Alarm is one alarm rule (docs/alarms.md).
type Alarm struct {
	ID        string  `yaml:"id"`
	Point     string  `yaml:"point"`
	Condition string  `yaml:"condition"` // > >= < <= == != or "bands"
	Threshold float64 `yaml:"threshold"`
	// Bands are the ISA limits of condition "bands".
	Bands    Bands         `yaml:"bands"`
	Deadband float64       `yaml:"deadband"`
	OnDelay  time.Duration `yaml:"on_delay"`
	OffDelay time.Duration `yaml:"off_delay"`
	Level    string        `yaml:"level"`
	// Message is a template with {value} {threshold} {point} {unit} {name}.
	Message string `yaml:"message"`
	// EscalateAfter, when set, raises the level one step each time the
	// alarm stays unacknowledged that long.
	EscalateAfter time.Duration `yaml:"escalate_after"`
	// Notify lists webhook URLs that receive every event of the rule.
	Notify []string `yaml:"notify"`
	Line   int      `yaml:"-"`
}

// Bands are the hihi/hi/lo/lolo limits of an alarm; nil ones are unused.
type Bands struct {
	HiHi *Band `yaml:"hihi"`
	Hi   *Band `yaml:"hi"`
	Lo   *Band `yaml:"lo"`
	LoLo *Band `yaml:"lolo"`
}

// Band is one limit: a threshold and the level of the alarm beyond it. In
// YAML it is either a number (the threshold) or {threshold, level}.
type Band struct {
	Threshold float64 `yaml:"threshold"`
	Level     string  `yaml:"level"`
}
