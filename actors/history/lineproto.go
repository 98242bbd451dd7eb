package history

import (
	"math"
	"strconv"

	"github.com/voltage-ems/voltage/messages"
)

// AppendLine appends the InfluxDB line protocol of u to b, followed by a
// newline, and returns the extended buffer:
//
//	{measurement},channel={ch},type={type},point={pt} value={v},quality="{q}" {ts_ns}
//
// for example
//
//	point,channel=1001,type=m,point=10001 value=230.5,quality="good" 1764090000000000000
//
// The quality is a string field, not a tag, so a bad sample stays visible
// without starting a new series. The value is always a float field (line
// protocol reads "1" without an "i" suffix as a float), written as the
// shortest round-trip decimal, as in Redis ("230.5", "1"), or with an
// exponent ("1e+21", "5e-324") outside [1e-6, 1e21) where the decimal
// would run to hundreds of digits. The timestamp is u.Timestamp (Unix ms) in
// nanoseconds. Commas and spaces in the measurement are escaped.
//
// An update that has no storable value is skipped and b is returned
// unchanged: a NaN value (a point never read, or comm_lost before its first
// read) or an infinite one, which line protocol cannot express, and a point
// type outside m/s/c/a. AppendLine does not allocate beyond growing b.
func AppendLine(b []byte, measurement string, u *messages.PointUpdate) []byte {
	if math.IsNaN(u.Value) || math.IsInf(u.Value, 0) || !u.Key.Type.Valid() {
		return b
	}
	b = appendMeasurement(b, measurement)
	b = append(b, ",channel="...)
	b = strconv.AppendUint(b, uint64(u.Key.Channel), 10)
	b = append(b, ",type="...)
	b = append(b, byte(u.Key.Type))
	b = append(b, ",point="...)
	b = strconv.AppendUint(b, uint64(u.Key.Point), 10)
	b = append(b, " value="...)
	b = appendFloat(b, u.Value)
	b = append(b, `,quality="`...)
	b = append(b, u.Quality.String()...) // fixed names: nothing to escape
	b = append(b, `" `...)
	b = strconv.AppendInt(b, u.Timestamp*1e6, 10)
	return append(b, '\n')
}

// appendFloat appends v (finite) the way JavaScript prints numbers: plain
// decimals in the usual range, an exponent for the very large and small.
func appendFloat(b []byte, v float64) []byte {
	if a := math.Abs(v); a == 0 || (a >= 1e-6 && a < 1e21) {
		return messages.AppendValue(b, v)
	}
	return strconv.AppendFloat(b, v, 'e', -1, 64)
}

// appendMeasurement appends a measurement name with its commas and spaces
// escaped, the only characters line protocol requires escaping there.
func appendMeasurement(b []byte, m string) []byte {
	for i := 0; i < len(m); i++ {
		if c := m[i]; c == ',' || c == ' ' {
			b = append(b, '\\')
		}
		b = append(b, m[i])
	}
	return b
}
