package config

import (
	"bytes"
	"encoding/csv"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/voltage-ems/voltage/messages"
)

// Columns of the point tables, in the order the contract lists them.
var (
	modbusColumns  = []string{"point_id", "type", "name", "unit", "slave_id", "function_code", "register_address", "data_type", "byte_order", "bit_position", "scale", "offset", "deadband", "reverse", "min", "max"}
	modbusRequired = []string{"point_id", "type", "function_code", "register_address", "data_type"}

	virtualColumns  = []string{"point_id", "type", "name", "unit", "signal", "min", "max", "period"}
	virtualRequired = []string{"point_id", "type", "signal"}

	computeColumns  = []string{"point_id", "type", "name", "unit", "deadband"}
	computeRequired = []string{"point_id", "type"}
)

// Signals of virtual points.
var signals = []string{"sine", "ramp", "random_walk", "square", "constant"}

var dataTypes = []DataType{Bool, Uint16, Int16, Uint32, Int32, Float32, Uint64, Int64, Float64}

// Defaults of virtual points.
const (
	defaultVirtualMin    = 0
	defaultVirtualMax    = 100
	defaultVirtualPeriod = 60 * time.Second
)

func columnsFor(protocol string) (all, required []string) {
	switch protocol {
	case ProtocolModbusTCP, ProtocolModbusRTU:
		return modbusColumns, modbusRequired
	case ProtocolVirtual:
		return virtualColumns, virtualRequired
	}
	return computeColumns, computeRequired
}

// pointKey identifies a point within its channel.
type pointKey struct {
	typ messages.PointType
	id  uint32
}

// row is one CSV record with its line, addressed by column name.
type row struct {
	file   string
	line   int
	cols   map[string]int
	rec    []string
	errs   *collector
	failed []string // columns with a problem ("" for the whole row)
}

func (r *row) cell(col string) string {
	i, ok := r.cols[col]
	if !ok || i >= len(r.rec) {
		return ""
	}
	return r.rec[i]
}

func (r *row) errorf(col, format string, args ...any) {
	r.failed = append(r.failed, col)
	r.errs.add(r.file, r.line, col, format, args...)
}

// uint parses an unsigned integer cell 0..max; def is used when the cell is
// empty. Register addresses may also be written in hex (0x..).
func (r *row) uint(col string, max, def uint64, hex bool) (uint64, bool) {
	s := r.cell(col)
	if s == "" {
		return def, true
	}
	base, digits := 10, s
	if hex && len(s) > 2 && (s[:2] == "0x" || s[:2] == "0X") {
		base, digits = 16, s[2:]
	}
	u, err := strconv.ParseUint(digits, base, 64)
	if err == nil && u > max {
		err = strconv.ErrRange
	}
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			r.errorf(col, "%s is out of range (0..%d)", s, max)
		} else {
			r.errorf(col, "want an integer 0..%d, got %q", max, s)
		}
		return 0, false
	}
	return u, true
}

// float parses a finite number; def is used when the cell is empty.
func (r *row) float(col string, def float64) (float64, bool) {
	s := r.cell(col)
	if s == "" {
		return def, true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		r.errorf(col, "want a finite number, got %q", s)
		return 0, false
	}
	return f, true
}

// optFloat parses an optional finite number: nil when the cell is empty.
func (r *row) optFloat(col string) (*float64, bool) {
	if r.cell(col) == "" {
		return nil, true
	}
	f, ok := r.float(col, 0)
	if !ok {
		return nil, false
	}
	return &f, true
}

// parsePoints parses the point table of a channel of the given protocol.
// Problems are added to errs with file and line; parsing goes on after one,
// and the rows with problems are left out of the result.
func parsePoints(data []byte, file, protocol string, errs *collector) []Point {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	all, required := columnsFor(protocol)

	cr := csv.NewReader(bytes.NewReader(data))
	cr.FieldsPerRecord = -1
	cr.LazyQuotes = true
	cr.Comment = '#'

	var (
		cols   map[string]int // column name -> index in the record
		ncols  int
		points []Point
		seen   = map[pointKey]int{} // -> line of first row
	)
	lastOffset := int64(-1)
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			var pe *csv.ParseError
			if !errors.As(err, &pe) || cr.InputOffset() == lastOffset {
				errs.add(file, 0, "", "%v", err)
				break
			}
			lastOffset = cr.InputOffset()
			errs.add(file, pe.Line, "", "%v", pe.Err)
			continue
		}
		lastOffset = cr.InputOffset()
		line, _ := cr.FieldPos(0)
		for i := range rec {
			rec[i] = strings.TrimSpace(rec[i])
		}
		if cols == nil {
			cols, ncols = parseHeader(rec, file, line, protocol, all, required, errs)
			if cols == nil {
				return nil // without the required columns no row can be checked
			}
			continue
		}
		if len(rec) == 1 && rec[0] == "" {
			continue // a line of spaces
		}
		r := &row{file: file, line: line, cols: cols, rec: rec, errs: errs}
		if len(rec) != ncols {
			r.errorf("", "row has %d field%s, the header has %d", len(rec), plural(len(rec)), ncols)
			continue
		}
		p := Point{Line: line, Scale: 1, BitPosition: -1}
		parseCommon(r, &p)
		switch protocol {
		case ProtocolModbusTCP, ProtocolModbusRTU:
			parseModbus(r, &p, protocol)
		case ProtocolVirtual:
			parseVirtual(r, &p)
		default:
			p.Deadband, _ = r.float("deadband", 0)
			if p.Deadband < 0 {
				r.errorf("deadband", "must not be negative, got %s", r.cell("deadband"))
			}
		}
		if p.Type != 0 && r.cell("point_id") != "" && !r.failedOn("point_id") {
			k := pointKey{p.Type, p.ID}
			if first, dup := seen[k]; dup {
				r.errorf("point_id", "duplicate point %d of type %s (first at line %d)", p.ID, p.Type, first)
			} else {
				seen[k] = line
			}
		}
		if len(r.failed) == 0 {
			points = append(points, p)
		}
	}
	if cols == nil {
		errs.add(file, 0, "", "no header row (want columns %s)", strings.Join(all, ","))
	}
	return points
}

// failedOn reports whether an error was recorded for col in this row.
func (r *row) failedOn(col string) bool {
	return contains(r.failed, col)
}

func parseHeader(rec []string, file string, line int, protocol string, all, required []string, errs *collector) (map[string]int, int) {
	cols := map[string]int{}
	ok := true
	for i, name := range rec {
		name = strings.ToLower(name)
		switch {
		case name == "":
			errs.add(file, line, "header", "column %d has no name", i+1)
		case !contains(all, name):
			errs.add(file, line, "header", "unknown column %q for a %s channel (want %s)", name, protocol, strings.Join(all, ","))
		default:
			if _, dup := cols[name]; dup {
				errs.add(file, line, "header", "duplicate column %q", name)
				continue
			}
			cols[name] = i
		}
	}
	for _, name := range required {
		if _, found := cols[name]; !found {
			errs.add(file, line, "header", "missing required column %q", name)
			ok = false
		}
	}
	if !ok {
		return nil, 0
	}
	return cols, len(rec)
}

func contains[T comparable](list []T, v T) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func parseCommon(r *row, p *Point) {
	if r.cell("point_id") == "" {
		r.errorf("point_id", "required")
	} else if id, ok := r.uint("point_id", math.MaxUint32, 0, false); ok {
		p.ID = uint32(id)
	}
	if r.cell("type") == "" {
		r.errorf("type", "required (m, s, c or a)")
	} else if t, err := messages.ParsePointType(r.cell("type")); err != nil {
		r.errorf("type", "%v", err)
	} else {
		p.Type = t
	}
	p.Name = r.cell("name")
	p.Unit = r.cell("unit")
}

// Modbus function codes.
const (
	fcReadCoils              = 1
	fcReadDiscreteInputs     = 2
	fcReadHoldingRegisters   = 3
	fcReadInputRegisters     = 4
	fcWriteSingleCoil        = 5
	fcWriteSingleRegister    = 6
	fcWriteMultipleCoils     = 15
	fcWriteMultipleRegisters = 16
)

func isBitFunction(fc uint8) bool {
	return fc == fcReadCoils || fc == fcReadDiscreteInputs || fc == fcWriteSingleCoil || fc == fcWriteMultipleCoils
}

func isReadFunction(fc uint8) bool {
	return fc >= fcReadCoils && fc <= fcReadInputRegisters
}

func functionName(fc uint8) string {
	switch fc {
	case fcReadCoils:
		return "read coils"
	case fcReadDiscreteInputs:
		return "read discrete inputs"
	case fcReadHoldingRegisters:
		return "read holding registers"
	case fcReadInputRegisters:
		return "read input registers"
	case fcWriteSingleCoil:
		return "write single coil"
	case fcWriteSingleRegister:
		return "write single register"
	case fcWriteMultipleCoils:
		return "write multiple coils"
	case fcWriteMultipleRegisters:
		return "write multiple registers"
	}
	return "unknown"
}

func parseModbus(r *row, p *Point, protocol string) {
	maxSlave := uint64(255)
	if protocol == ProtocolModbusRTU {
		maxSlave = 247
	}
	if id, ok := r.uint("slave_id", maxSlave, 1, false); ok {
		p.SlaveID = uint8(id)
	}

	fcOK := false
	if r.cell("function_code") == "" {
		r.errorf("function_code", "required (1, 2, 3, 4 to read; 5, 6, 15, 16 to write)")
	} else if fc, ok := r.uint("function_code", math.MaxUint8, 0, false); ok {
		switch fc {
		case 1, 2, 3, 4, 5, 6, 15, 16:
			p.FunctionCode, fcOK = uint8(fc), true
		default:
			r.errorf("function_code", "unknown function code %d (want 1, 2, 3, 4 to read; 5, 6, 15, 16 to write)", fc)
		}
	}

	addrOK := false
	if r.cell("register_address") == "" {
		r.errorf("register_address", "required (0..65535)")
	} else if a, ok := r.uint("register_address", math.MaxUint16, 0, true); ok {
		p.Address, addrOK = uint16(a), true
	}

	dtOK := false
	switch s := strings.ToLower(r.cell("data_type")); {
	case s == "" && fcOK && isBitFunction(p.FunctionCode):
		p.DataType, dtOK = Bool, true // coils and discrete inputs are bits
	case s == "":
		r.errorf("data_type", "required for registers (bool, uint16, int16, uint32, int32, float32, uint64, int64, float64)")
	case !contains(dataTypes, DataType(s)):
		r.errorf("data_type", "unknown data type %q (want bool, uint16, int16, uint32, int32, float32, uint64, int64, float64)", r.cell("data_type"))
	default:
		p.DataType, dtOK = DataType(s), true
	}

	boOK := true
	switch s := strings.ToUpper(r.cell("byte_order")); s {
	case "":
		p.ByteOrder = ABCD
	case string(ABCD), string(DCBA), string(BADC), string(CDAB):
		p.ByteOrder = ByteOrder(s)
	default:
		boOK = false
		r.errorf("byte_order", "unknown byte order %q (want ABCD, DCBA, BADC or CDAB)", r.cell("byte_order"))
	}

	bitSet := r.cell("bit_position") != ""
	if b, ok := r.uint("bit_position", 15, 0, false); ok && bitSet {
		p.BitPosition = int(b)
	}

	if s, ok := r.float("scale", 1); ok {
		if s == 0 {
			r.errorf("scale", "must not be zero")
		}
		p.Scale = s
	}
	p.Offset, _ = r.float("offset", 0)
	if d, ok := r.float("deadband", 0); ok {
		if d < 0 {
			r.errorf("deadband", "must not be negative, got %s", r.cell("deadband"))
		}
		p.Deadband = d
	}
	switch strings.ToLower(r.cell("reverse")) {
	case "", "false", "0", "no":
	case "true", "1", "yes":
		p.Reverse = true
	default:
		r.errorf("reverse", "want true or false, got %q", r.cell("reverse"))
	}
	var minOK, maxOK bool
	p.Min, minOK = r.optFloat("min")
	p.Max, maxOK = r.optFloat("max")

	// Combinations.
	typeOK := p.Type != 0
	if typeOK && fcOK {
		read := isReadFunction(p.FunctionCode)
		switch {
		case (p.Type == messages.Measurement || p.Type == messages.Signal) && !read:
			r.errorf("function_code", "function code %d (%s) writes; %s points are read with 1, 2, 3 or 4", p.FunctionCode, functionName(p.FunctionCode), p.Type)
		case (p.Type == messages.Control || p.Type == messages.Adjustment) && read:
			r.errorf("function_code", "function code %d (%s) reads; %s points are written with 5, 6, 15 or 16", p.FunctionCode, functionName(p.FunctionCode), p.Type)
		}
	}
	if fcOK && dtOK {
		switch {
		case isBitFunction(p.FunctionCode) && p.DataType != Bool:
			r.errorf("data_type", "function code %d (%s) works on single bits; want bool, not %s", p.FunctionCode, functionName(p.FunctionCode), p.DataType)
		case p.FunctionCode == fcWriteSingleRegister && p.DataType.Registers() > 1:
			r.errorf("function_code", "function code 6 writes a single register; %s needs %d registers (use 16)", p.DataType, p.DataType.Registers())
		case p.FunctionCode == fcWriteSingleRegister && p.DataType == Bool && !bitSet:
			r.errorf("function_code", "function code 6 with data_type bool needs bit_position (or write a coil with 5)")
		}
	}
	if bitSet && dtOK && p.DataType != Bool {
		r.errorf("bit_position", "applies only to data_type bool, not %s", p.DataType)
	} else if bitSet && fcOK && isBitFunction(p.FunctionCode) {
		r.errorf("bit_position", "applies only to registers (function code 3, 4, 6 or 16), not function code %d (%s)", p.FunctionCode, functionName(p.FunctionCode))
	}
	if boOK && dtOK && p.ByteOrder != ABCD && p.DataType.Registers() == 1 {
		r.errorf("byte_order", "byte order %s applies only to 32- and 64-bit types, not %s", p.ByteOrder, p.DataType)
	}
	if addrOK && dtOK {
		if n := p.DataType.Registers(); int(p.Address)+n-1 > math.MaxUint16 {
			r.errorf("register_address", "register address out of range: %s at %d needs %d registers, past 65535", p.DataType, p.Address, n)
		}
	}
	if p.Reverse && dtOK && p.DataType != Bool {
		r.errorf("reverse", "applies only to data_type bool, not %s", p.DataType)
	}
	// min and max bound the values written to c and a points; on m points
	// they are the expected range of a measurement: the simulator's waveform
	// range (and later the dashboard's scale); values outside are still
	// published. Signals have no range.
	if typeOK && (p.Min != nil || p.Max != nil) && p.Type == messages.Signal {
		col := "min"
		if p.Min == nil {
			col = "max"
		}
		r.errorf(col, "min and max apply to m points (expected range) and c and a points (write bounds), not %s", p.Type)
	}
	if minOK && maxOK && p.Min != nil && p.Max != nil && *p.Min > *p.Max {
		r.errorf("max", "max %s is less than min %s", r.cell("max"), r.cell("min"))
	}
}

// parseVirtual reads a virtual point. Measurements and signals need a signal
// and get the range min..max (default 0..100); control and adjustment points
// store what is written, so their signal is optional and min/max are optional
// bounds, as on Modbus.
func parseVirtual(r *row, p *Point) {
	writable := p.Type == messages.Control || p.Type == messages.Adjustment
	switch s := strings.ToLower(r.cell("signal")); {
	case s == "" && writable:
	case s == "":
		r.errorf("signal", "required (%s)", strings.Join(signals, ", "))
	case !contains(signals, s):
		r.errorf("signal", "unknown signal %q (want %s)", r.cell("signal"), strings.Join(signals, ", "))
	default:
		p.Signal = s
	}
	var minOK, maxOK bool
	if writable {
		p.Min, minOK = r.optFloat("min")
		p.Max, maxOK = r.optFloat("max")
	} else {
		lo, okLo := r.float("min", defaultVirtualMin)
		hi, okHi := r.float("max", defaultVirtualMax)
		p.Min, p.Max, minOK, maxOK = &lo, &hi, okLo, okHi
	}
	if minOK && maxOK && p.Min != nil && p.Max != nil && *p.Min > *p.Max {
		r.errorf("max", "max %g is less than min %g", *p.Max, *p.Min)
	}
	p.Period = defaultVirtualPeriod
	if s := r.cell("period"); s != "" {
		d, err := time.ParseDuration(s)
		switch {
		case err != nil:
			r.errorf("period", "invalid duration %q (want a number with a unit, e.g. \"10s\", \"1m\")", s)
		case d <= 0:
			r.errorf("period", "must be positive, got %s", s)
		default:
			p.Period = d
		}
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
