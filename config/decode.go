package config

import (
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// maxNodes bounds the work of decoding one document (aliases included), so a
// file of nested aliases cannot make loading take forever.
const maxNodes = 1_000_000

var durationType = reflect.TypeFor[time.Duration]()

// decoder fills Go values from a yaml.Node tree, strictly, and remembers the
// line of every key it saw. Problems go to errs; decoding goes on after one.
type decoder struct {
	file  string
	errs  *collector
	lines map[string]int  // path of every key present (with a non-null value) -> line
	bad   map[string]bool // paths whose value could not be decoded
	nodes int
}

func newDecoder(file string, errs *collector) *decoder {
	return &decoder{file: file, errs: errs, lines: map[string]int{}, bad: map[string]bool{}}
}

func (d *decoder) fail(line int, path, format string, args ...any) {
	d.bad[path] = true
	d.errs.add(d.file, line, path, format, args...)
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	}
	return "nothing"
}

// resolve follows aliases and unwraps documents.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; i < 100 && n != nil; i++ {
		switch {
		case n.Kind == yaml.AliasNode && n.Alias != nil:
			n = n.Alias
		case n.Kind == yaml.DocumentNode && len(n.Content) == 1:
			n = n.Content[0]
		default:
			return n
		}
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null") ||
		(n.Kind == yaml.DocumentNode && len(n.Content) == 0)
}

// decode stores n into v; path names v in errors.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	d.nodes++
	if d.nodes > maxNodes {
		if d.nodes == maxNodes+1 {
			d.fail(n.Line, path, "document too large (more than %d values with aliases expanded)", maxNodes)
		}
		return
	}
	n = resolve(n)
	if isNull(n) {
		return
	}
	if v.CanAddr() {
		if nd, ok := v.Addr().Interface().(nodeDecoder); ok {
			nd.decodeNode(d, n, path)
			return
		}
	}
	if v.Type() == durationType {
		s, ok := d.scalar(n, path, "a duration")
		if !ok {
			return
		}
		dur, err := time.ParseDuration(s)
		if err != nil {
			d.fail(n.Line, path, "invalid duration %q (want a number with a unit, e.g. \"500ms\", \"1s\", \"2m\")", s)
			return
		}
		v.SetInt(int64(dur))
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n.Line, path, "want a list, got %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			d.lines[p] = item.Line
			d.decode(item, s.Index(i), p)
		}
		v.Set(s)
	case reflect.Pointer:
		e := reflect.New(v.Type().Elem())
		d.decode(n, e.Elem(), path)
		v.Set(e)
	case reflect.String:
		if s, ok := d.scalar(n, path, "a string"); ok {
			v.SetString(s)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if !d.number(n, path, "an integer", "!!int") {
			return
		}
		var i int64
		if err := n.Decode(&i); err != nil || v.OverflowInt(i) {
			lo := int64(-1) << (v.Type().Bits() - 1)
			d.fail(n.Line, path, "%s is out of range (%d..%d)", n.Value, lo, -(lo + 1))
			return
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if !d.number(n, path, "an integer", "!!int") {
			return
		}
		var u uint64
		if err := n.Decode(&u); err != nil || v.OverflowUint(u) {
			d.fail(n.Line, path, "%s is out of range (0..%d)", n.Value, uint64(1)<<v.Type().Bits()-1)
			return
		}
		v.SetUint(u)
	case reflect.Float32, reflect.Float64:
		if !d.number(n, path, "a number", "!!int", "!!float") {
			return
		}
		var f float64
		if err := n.Decode(&f); err != nil {
			d.fail(n.Line, path, "want a number, got %q", n.Value)
			return
		}
		v.SetFloat(f)
	case reflect.Bool:
		if !d.number(n, path, "true or false", "!!bool") {
			return
		}
		var b bool
		if err := n.Decode(&b); err != nil {
			d.fail(n.Line, path, "want true or false, got %q", n.Value)
			return
		}
		v.SetBool(b)
	default:
		d.fail(n.Line, path, "cannot decode into %s", v.Type())
	}
}

func (d *decoder) scalar(n *yaml.Node, path, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.fail(n.Line, path, "want %s, got %s", want, kindName(n))
		return "", false
	}
	return n.Value, true
}

// number checks that n is a scalar with one of the given tags.
func (d *decoder) number(n *yaml.Node, path, want string, tags ...string) bool {
	if n.Kind != yaml.ScalarNode {
		d.fail(n.Line, path, "want %s, got %s", want, kindName(n))
		return false
	}
	tag := n.ShortTag()
	for _, t := range tags {
		if tag == t {
			return true
		}
	}
	if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
		d.fail(n.Line, path, "want %s, got the quoted string %q", want, n.Value)
	} else {
		d.fail(n.Line, path, "want %s, got %q", want, n.Value)
	}
	return false
}

type structField struct {
	name  string
	index int
}

func yamlFields(t reflect.Type) []structField {
	var fs []structField
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || name == "" {
			continue
		}
		fs = append(fs, structField{name: name, index: i})
	}
	return fs
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n.Line, path, "want a mapping, got %s", kindName(n))
		return
	}
	fields := yamlFields(v.Type())
	find := func(key string) (structField, bool) {
		for _, f := range fields {
			if f.name == key {
				return f, true
			}
		}
		return structField{}, false
	}
	// Merge keys (<<: *base) first, so that explicit keys override them.
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			m := resolve(n.Content[i+1])
			if m.Kind == yaml.SequenceNode {
				for _, item := range m.Content {
					d.decodeStruct(resolve(item), v, path)
				}
			} else {
				d.decodeStruct(m, v, path)
			}
		}
	}
	if f, ok := v.Type().FieldByName("Line"); ok && f.Tag.Get("yaml") == "-" && f.Type.Kind() == reflect.Int {
		v.FieldByIndex(f.Index).SetInt(int64(n.Line))
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.fail(k.Line, path, "keys must be plain names, got %s", kindName(k))
			continue
		}
		p := joinPath(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			d.fail(k.Line, p, "duplicate key (first at line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		f, ok := find(k.Value)
		if !ok {
			names := make([]string, len(fields))
			for i, f := range fields {
				names[i] = f.name
			}
			d.fail(k.Line, p, "unknown field (want %s)", strings.Join(names, ", "))
			continue
		}
		if isNull(resolve(val)) {
			continue
		}
		if _, merged := d.lines[p]; merged {
			// An explicit value replaces a merged one as a whole.
			for q := range d.lines {
				if strings.HasPrefix(q, p+".") || strings.HasPrefix(q, p+"[") {
					delete(d.lines, q)
				}
			}
		}
		d.lines[p] = k.Line
		fv := v.Field(f.index)
		fv.SetZero()
		d.decode(val, fv, p)
	}
}

var yamlLineError = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns a yaml.v3 parse error into a FieldError with its line.
func syntaxError(file string, err error) *FieldError {
	msg := err.Error()
	if m := yamlLineError.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &FieldError{File: file, Line: line, Msg: "invalid YAML: " + m[2]}
	}
	return &FieldError{File: file, Msg: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}
