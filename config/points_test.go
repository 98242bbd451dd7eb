package config

import (
	"strings"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/messages"
)

const modbusHeader = "point_id,type,name,unit,slave_id,function_code,register_address,data_type,byte_order,bit_position,scale,offset,deadband,reverse,min,max\n"

func parseCSV(t *testing.T, protocol, data string) ([]Point, Errors) {
	t.Helper()
	errs := &collector{}
	pts := parsePoints([]byte(data), "p.csv", protocol, errs)
	return pts, errs.sorted()
}

// hasError reports whether one of errs, printed, starts with want.
func hasError(errs Errors, want string) bool {
	for _, e := range errs {
		if strings.HasPrefix(e.Error(), want) {
			return true
		}
	}
	return false
}

func TestParsePointsModbusErrors(t *testing.T) {
	f := func(row, want string) {
		t.Helper()
		_, errs := parseCSV(t, ProtocolModbusTCP, modbusHeader+"1000,m,ok,,1,3,100,uint16,,,,,,,,\n"+row+"\n")
		if !hasError(errs, want) {
			t.Errorf("row %q:\n got: %v\nwant: %s", row, errs, want)
		}
	}
	// point_id, type
	f("x,m,,,1,3,0,uint16,,,,,,,,", `p.csv:3: point_id: want an integer 0..4294967295, got "x"`)
	f("4294967296,m,,,1,3,0,uint16,,,,,,,,", `p.csv:3: point_id: 4294967296 is out of range (0..4294967295)`)
	f(",m,,,1,3,0,uint16,,,,,,,,", `p.csv:3: point_id: required`)
	f("1000,m,,,1,3,0,uint16,,,,,,,,", `p.csv:3: point_id: duplicate point 1000 of type m (first at line 2)`)
	f("1,q,,,1,3,0,uint16,,,,,,,,", `p.csv:3: type: unknown point type "q"`)
	f("1,,,,1,3,0,uint16,,,,,,,,", `p.csv:3: type: required`)
	// data_type, function_code
	f("1,m,,,1,3,0,float16,,,,,,,,", `p.csv:3: data_type: unknown data type "float16"`)
	f("1,m,,,1,3,0,,,,,,,,,", `p.csv:3: data_type: required for registers`)
	f("1,m,,,1,7,0,uint16,,,,,,,,", `p.csv:3: function_code: unknown function code 7`)
	f("1,m,,,1,,0,uint16,,,,,,,,", `p.csv:3: function_code: required`)
	f("1,m,,,1,6,0,uint16,,,,,,,,", `p.csv:3: function_code: function code 6 (write single register) writes; m points are read with 1, 2, 3 or 4`)
	f("1,s,,,1,5,0,bool,,,,,,,,", `p.csv:3: function_code: function code 5 (write single coil) writes; s points`)
	f("1,c,,,1,1,0,bool,,,,,,,,", `p.csv:3: function_code: function code 1 (read coils) reads; c points are written with 5, 6, 15 or 16`)
	f("1,a,,,1,3,0,int16,,,,,,,,", `p.csv:3: function_code: function code 3 (read holding registers) reads; a points`)
	f("1,m,,,1,1,0,float32,,,,,,,,", `p.csv:3: data_type: function code 1 (read coils) works on single bits; want bool, not float32`)
	f("1,m,,,1,2,0,uint16,,,,,,,,", `p.csv:3: data_type: function code 2 (read discrete inputs) works on single bits`)
	f("1,c,,,1,5,0,int16,,,,,,,,", `p.csv:3: data_type: function code 5 (write single coil) works on single bits`)
	f("1,c,,,1,15,0,uint32,,,,,,,,", `p.csv:3: data_type: function code 15 (write multiple coils) works on single bits`)
	f("1,a,,,1,6,0,float32,,,,,,,,", `p.csv:3: function_code: function code 6 writes a single register; float32 needs 2 registers (use 16)`)
	f("1,c,,,1,6,0,bool,,,,,,,,", `p.csv:3: function_code: function code 6 with data_type bool needs bit_position`)
	// bit_position
	f("1,s,,,1,3,0,bool,,16,,,,,,", `p.csv:3: bit_position: 16 is out of range (0..15)`)
	f("1,m,,,1,3,0,uint16,,3,,,,,,", `p.csv:3: bit_position: applies only to data_type bool, not uint16`)
	f("1,s,,,1,1,0,bool,,3,,,,,,", `p.csv:3: bit_position: applies only to registers (function code 3, 4, 6 or 16), not function code 1`)
	// byte_order
	f("1,m,,,1,3,0,float32,XYZW,,,,,,,", `p.csv:3: byte_order: unknown byte order "XYZW"`)
	f("1,m,,,1,3,0,int16,DCBA,,,,,,,", `p.csv:3: byte_order: byte order DCBA applies only to 32- and 64-bit types, not int16`)
	f("1,s,,,1,1,0,bool,BADC,,,,,,,", `p.csv:3: byte_order: byte order BADC applies only to 32- and 64-bit types, not bool`)
	// register_address
	f("1,m,,,1,3,65536,uint16,,,,,,,,", `p.csv:3: register_address: 65536 is out of range (0..65535)`)
	f("1,m,,,1,3,-1,uint16,,,,,,,,", `p.csv:3: register_address: want an integer 0..65535, got "-1"`)
	f("1,m,,,1,3,65533,float64,,,,,,,,", `p.csv:3: register_address: register address out of range: float64 at 65533 needs 4 registers, past 65535`)
	f("1,m,,,1,3,,uint16,,,,,,,,", `p.csv:3: register_address: required`)
	// slave_id
	f("1,m,,,256,3,0,uint16,,,,,,,,", `p.csv:3: slave_id: 256 is out of range (0..255)`)
	// scale, offset, deadband
	f("1,m,,,1,3,0,uint16,,,0,,,,,", `p.csv:3: scale: must not be zero`)
	f("1,m,,,1,3,0,uint16,,,NaN,,,,,", `p.csv:3: scale: want a finite number, got "NaN"`)
	f("1,m,,,1,3,0,uint16,,,abc,,,,,", `p.csv:3: scale: want a finite number, got "abc"`)
	f("1,m,,,1,3,0,uint16,,,,Inf,,,,", `p.csv:3: offset: want a finite number, got "Inf"`)
	f("1,m,,,1,3,0,uint16,,,,,-1,,,", `p.csv:3: deadband: must not be negative, got -1`)
	// reverse
	f("1,s,,,1,1,0,bool,,,,,,maybe,,", `p.csv:3: reverse: want true or false, got "maybe"`)
	f("1,m,,,1,3,0,uint16,,,,,,true,,", `p.csv:3: reverse: applies only to data_type bool, not uint16`)
	// min, max
	f("1,a,,,1,16,0,int16,,,,,,,10,5", `p.csv:3: max: max 5 is less than min 10`)
	f("1,a,,,1,16,0,int16,,,,,,,x,", `p.csv:3: min: want a finite number, got "x"`)
	f("1,s,,,1,3,0,bool,,2,,,,,0,1", `p.csv:3: min: min and max apply to m points (expected range) and c and a points (write bounds), not s`)
	f("1,s,,,1,1,0,bool,,,,,,,,1", `p.csv:3: max: min and max apply to m points (expected range) and c and a points (write bounds), not s`)
	f("1,m,,,1,3,0,int16,,,0.1,,,,50.1,49.9", `p.csv:3: max: max 49.9 is less than min 50.1`)
	// row shape
	f("1,m,,,1,3", `p.csv:3: row has 6 fields, the header has 16`)
	f(`1,m,"unterminated,,1,3,0,uint16,,,,,,,,`, `p.csv:3: row has 3 fields, the header has 16`)
}

func TestParsePointsRTUSlaveID(t *testing.T) {
	_, errs := parseCSV(t, ProtocolModbusRTU, modbusHeader+"1,m,,,248,3,0,uint16,,,,,,,,\n2,m,,,247,3,0,uint16,,,,,,,,\n")
	if len(errs) != 1 || errs[0].Error() != "p.csv:2: slave_id: 248 is out of range (0..247)" {
		t.Errorf("got %v", errs)
	}
}

func TestParsePointsValid(t *testing.T) {
	// Rows that must be accepted, each alone.
	for _, row := range []string{
		"1,m,,,1,3,0,float32,cdab,,,,,,,",     // byte order any case
		"1,m,,,1,3,0,int16,ABCD,,,,,,,",       // ABCD on 16 bits is harmless
		"1,s,,,1,3,0,uint16,,,,,,,,",          // s with a non-bool type: value != 0
		"1,s,,,1,3,0,bool,,,,,,,,",            // bool from a whole register
		"1,s,,,1,4,0,bool,,15,,,,,,",          // a bit of an input register
		"1,c,,,1,6,0,bool,,0,,,,,,",           // fc 6 with a bit
		"1,c,,,1,6,0,int16,,,,,,,,",           // fc 6 with 16 bits
		"1,a,,,1,16,0,float64,DCBA,,,,,,,",    // fc 16 with anything
		"1,c,,,1,16,0,bool,,2,,,,,,",          // fc 16 with a bit
		"1,c,,,1,15,0,,,,,,,,,",               // empty data_type on a coil: bool
		"1,s,,,0,2,65535,bool,,,,,,no,,",      // slave 0, last address
		"1,a,,,1,16,0x10,int16,,,0.1,,,,0,",   // hex address, only a min
		"1,m,,,1,3,0,int16,,,0.1,,,,-200,200", // expected range of a measurement
		"1,m,,,1,4,0,uint16,,,,,,,,100",       // only a max
		"1,T,,,1,3,0,int16,,,,,,,,",           // T = m
		"1,adjustment,,,1,16,0,int16,,,,,,,,",
		" 1 , m , v , V , 1 , 3 , 0 , int16 ,,,,,,,,", // spaces trimmed
	} {
		pts, errs := parseCSV(t, ProtocolModbusTCP, modbusHeader+row+"\n")
		if len(errs) != 0 || len(pts) != 1 {
			t.Errorf("row %q: %d points, errors:\n%v", row, len(pts), errs)
		}
	}
}

func TestParsePointsDefaults(t *testing.T) {
	pts, errs := parseCSV(t, ProtocolModbusTCP, "point_id,type,function_code,register_address,data_type\n10001,m,3,0,float32\n")
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	want := Point{ID: 10001, Type: messages.Measurement, SlaveID: 1, FunctionCode: 3, Address: 0, DataType: Float32,
		ByteOrder: ABCD, BitPosition: -1, Scale: 1, Line: 2}
	if got := pts[0]; got != want {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestParsePointsFields(t *testing.T) {
	pts, errs := parseCSV(t, ProtocolModbusTCP, modbusHeader+
		"10001,m,voltage_a,V,2,4,0x20,INT32,badc,,0.1,-5,0.5,,,\n"+
		"20001,s,breaker,,1,3,7,bool,,12,,,,yes,,\n"+
		"1,a,p_set,kW,1,16,100,float32,,,1,0,0,,-500,500\n"+
		"10006,m,frequency,Hz,1,4,1,uint16,,,0.01,0,0.01,,49.9,50.1\n")
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	p := pts[0]
	if p.Name != "voltage_a" || p.Unit != "V" || p.SlaveID != 2 || p.FunctionCode != 4 || p.Address != 32 ||
		p.DataType != Int32 || p.ByteOrder != BADC || p.Scale != 0.1 || p.Offset != -5 || p.Deadband != 0.5 {
		t.Errorf("point 0 = %+v", p)
	}
	if p := pts[1]; p.BitPosition != 12 || !p.Reverse || p.Type != messages.Signal || p.Line != 3 {
		t.Errorf("point 1 = %+v", p)
	}
	if p := pts[2]; p.Min == nil || *p.Min != -500 || p.Max == nil || *p.Max != 500 || p.Type != messages.Adjustment {
		t.Errorf("point 2 = %+v", p)
	}
	// On a measurement, min and max are its expected range.
	if p := pts[3]; p.Min == nil || *p.Min != 49.9 || p.Max == nil || *p.Max != 50.1 || p.Type != messages.Measurement || p.Line != 5 {
		t.Errorf("point 3 = %+v", p)
	}
}

func TestParsePointsBOMAndCRLF(t *testing.T) {
	data := "\xef\xbb\xbfpoint_id,type,function_code,register_address,data_type\r\n1,m,3,0,uint16\r\n\r\n2,m,3,1,uint16\r\n3,m,3,2,float16\r\n"
	pts, errs := parseCSV(t, ProtocolModbusTCP, data)
	if len(pts) != 2 || pts[1].Line != 4 {
		t.Errorf("points %+v", pts)
	}
	if len(errs) != 1 || errs[0].Error() != `p.csv:5: data_type: unknown data type "float16" (want bool, uint16, int16, uint32, int32, float32, uint64, int64, float64)` {
		t.Errorf("errors %v", errs)
	}
}

func TestParsePointsComments(t *testing.T) {
	pts, errs := parseCSV(t, ProtocolModbusTCP, "# a comment\npoint_id,type,function_code,register_address,data_type\n# slave 1\n1,m,3,0,uint16\n")
	if len(errs) != 0 || len(pts) != 1 || pts[0].Line != 4 {
		t.Errorf("points %+v errors %v", pts, errs)
	}
}

func TestParsePointsHeader(t *testing.T) {
	f := func(protocol, data string, want ...string) {
		t.Helper()
		_, errs := parseCSV(t, protocol, data)
		if len(errs) != len(want) {
			t.Errorf("%q: got %d errors, want %d:\n%v", data, len(errs), len(want), errs)
			return
		}
		for i := range want {
			if got := errs[i].Error(); !strings.HasPrefix(got, want[i]) {
				t.Errorf("%q:\n got: %s\nwant: %s", data, got, want[i])
			}
		}
	}
	f(ProtocolModbusTCP, "point_id,type,function_code,register_address,data_type,colour\n1,m,3,0,uint16,red\n",
		`p.csv:1: header: unknown column "colour" for a modbus_tcp channel`)
	f(ProtocolModbusTCP, "point_id,type,register_address\n1,m,0\n",
		`p.csv:1: header: missing required column "function_code"`,
		`p.csv:1: header: missing required column "data_type"`)
	f(ProtocolModbusTCP, "point_id,type,type,function_code,register_address,data_type\n1,m,m,3,0,uint16\n",
		`p.csv:1: header: duplicate column "type"`)
	f(ProtocolModbusTCP, "POINT_ID,Type,function_code,register_address,data_type\n1,m,3,0,uint16\n") // any case
	f(ProtocolVirtual, "point_id,type,signal,slave_id\n1,m,sine,1\n",
		`p.csv:1: header: unknown column "slave_id" for a virtual channel (want point_id,type,name,unit,signal,min,max,period)`)
	f(ProtocolModbusTCP, "", `p.csv: no header row`)
	f(ProtocolModbusTCP, "\n\n# only a comment\n", `p.csv: no header row`)
	f(ProtocolCompute, "point_id,type,name,unit,deadband\n1,m,total,kW,0.5\n")
}

func TestParsePointsVirtual(t *testing.T) {
	pts, errs := parseCSV(t, ProtocolVirtual, "point_id,type,name,unit,signal,min,max,period\n"+
		"1,m,pv,kW,sine,0,500,10s\n"+
		"2,s,on,,SQUARE,,,\n"+
		"3,m,x,,sawtooth,,,\n"+
		"4,m,x,,ramp,10,5,\n"+
		"5,m,x,,ramp,,,10\n"+
		"6,m,x,,ramp,,,-1s\n"+
		"7,m,x,,,,,\n"+
		"8,a,setpoint,kW,,,,\n"+
		"9,c,cmd,,,0,1,\n")
	if len(pts) != 4 {
		t.Fatalf("points %+v", pts)
	}
	if p := pts[0]; p.Signal != "sine" || *p.Min != 0 || *p.Max != 500 || p.Period != 10*time.Second {
		t.Errorf("point 0 = %+v", p)
	}
	if p := pts[1]; p.Signal != "square" || *p.Min != 0 || *p.Max != 100 || p.Period != 60*time.Second || p.Scale != 1 || p.BitPosition != -1 {
		t.Errorf("point 1 = %+v", p)
	}
	if p := pts[2]; p.Signal != "" || p.Min != nil || p.Max != nil {
		t.Errorf("point 2 = %+v", p)
	}
	if p := pts[3]; p.Min == nil || *p.Min != 0 || *p.Max != 1 {
		t.Errorf("point 3 = %+v", p)
	}
	want := []string{
		`p.csv:4: signal: unknown signal "sawtooth" (want sine, ramp, random_walk, square, constant)`,
		`p.csv:5: max: max 5 is less than min 10`,
		`p.csv:6: period: invalid duration "10"`,
		`p.csv:7: period: must be positive, got -1s`,
		`p.csv:8: signal: required`,
	}
	if len(errs) != len(want) {
		t.Fatalf("errors:\n%v", errs)
	}
	for i := range want {
		if !strings.HasPrefix(errs[i].Error(), want[i]) {
			t.Errorf("got  %s\nwant %s", errs[i], want[i])
		}
	}
}

func TestParsePointsSameIDDifferentTypes(t *testing.T) {
	pts, errs := parseCSV(t, ProtocolModbusTCP, modbusHeader+
		"1,m,,,1,3,0,uint16,,,,,,,,\n1,s,,,1,1,0,bool,,,,,,,,\n1,c,,,1,5,0,bool,,,,,,,,\n1,a,,,1,6,1,int16,,,,,,,,\n")
	if len(errs) != 0 || len(pts) != 4 {
		t.Errorf("points %d errors %v", len(pts), errs)
	}
}

func FuzzParsePointsCSV(f *testing.F) {
	f.Add(modbusHeader + "1,m,v,V,1,3,0,float32,CDAB,,0.1,0,0.5,,,\n2,s,b,,1,3,1,bool,,3,,,,yes,,\n")
	f.Add("\xef\xbb\xbfpoint_id,type,function_code,register_address,data_type\r\n1,m,3,0x10,uint16\r\n")
	f.Add("point_id,type,name,unit,signal,min,max,period\n1,m,pv,kW,sine,0,500,10s\n")
	f.Add("point_id,type\n\"1\n")
	f.Add("# c\n\n,,,\n\"\"\"\n")
	f.Add("point_id,type,function_code,register_address,data_type\n1,m,3,65535,float64\n1,m,3,,\n")
	f.Fuzz(func(t *testing.T, data string) {
		for _, protocol := range protocols {
			errs := &collector{}
			pts := parsePoints([]byte(data), "f.csv", protocol, errs)
			for _, p := range pts {
				if !p.Type.Valid() || p.Scale == 0 || p.Line <= 0 {
					t.Fatalf("%s: accepted bad point %+v", protocol, p)
				}
				if protocol == ProtocolModbusTCP && int(p.Address)+p.DataType.Registers()-1 > 65535 {
					t.Fatalf("accepted address out of range: %+v", p)
				}
			}
			for _, e := range errs.errs {
				if e.File != "f.csv" || e.Msg == "" {
					t.Fatalf("bad error %+v", e)
				}
			}
		}
	})
}
