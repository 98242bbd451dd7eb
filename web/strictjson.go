package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// encoding/json accepts what a strict API must refuse: it matches field
// names case-insensitively ("Value" fills Value) and keeps the last of
// duplicate keys ({"value":1,"value":450} is 450). checkStrictJSON walks the
// tokens of a body first and refuses both, so that what the decoder then
// reads is what the client meant.

// strictError is a body refused by checkStrictJSON.
type strictError struct{ msg string }

func (e *strictError) Error() string { return e.msg }

// jsonFields is what the checker knows of a JSON object: its field names
// and, for fields that hold objects themselves, their fields. A nil
// *jsonFields accepts any names (only duplicates are refused).
type jsonFields struct {
	names []string
	sub   map[string]*jsonFields
}

// fieldsOf returns the JSON fields of struct type t (pointers followed);
// nil when t is not a struct (a map, json.RawMessage, any).
func fieldsOf(t reflect.Type) *jsonFields {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	f := &jsonFields{sub: map[string]*jsonFields{}}
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		f.names = append(f.names, name)
		if sub := fieldsOf(sf.Type); sub != nil {
			f.sub[name] = sub
		}
	}
	return f
}

// check reports whether name is a field, and when it is not but differs
// only in case, the field it was probably meant to be.
func (f *jsonFields) check(name string) (ok bool, meant string) {
	if f == nil {
		return true, ""
	}
	for _, n := range f.names {
		if n == name {
			return true, ""
		}
	}
	for _, n := range f.names {
		if strings.EqualFold(n, name) {
			return false, n
		}
	}
	return false, ""
}

// checkStrictJSON checks that data is exactly one JSON object whose keys
// are unique at every depth and, where fields describes the object, are
// among its fields with the exact case. The error names the field.
func checkStrictJSON(data []byte, fields *jsonFields) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return syntaxErr(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return &strictError{"malformed JSON body: want a JSON object, not " + jsonKind(tok)}
	}
	if err := walkObject(dec, fields, ""); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return &strictError{"malformed JSON body: unexpected data after the JSON object"}
	}
	return nil
}

// walkObject reads the rest of an object whose '{' has been read.
func walkObject(dec *json.Decoder, fields *jsonFields, path string) error {
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return syntaxErr(err)
		}
		key, ok := tok.(string)
		if !ok { // the decoder only gives strings here, but be sure
			return &strictError{"malformed JSON body: object key is not a string"}
		}
		name := path + key
		if seen[key] {
			return &strictError{fmt.Sprintf("duplicate field %q", name)}
		}
		seen[key] = true
		if ok, meant := fields.check(key); !ok {
			if meant != "" {
				return &strictError{fmt.Sprintf("unknown field %q (fields are case sensitive: did you mean %q?)", name, path+meant)}
			}
			return &strictError{fmt.Sprintf("unknown field %q (want %s)", name, fieldList(fields, path))}
		}
		var sub *jsonFields
		if fields != nil {
			sub = fields.sub[key]
		}
		if err := walkValue(dec, sub, name+"."); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return syntaxErr(err)
	}
	return nil
}

// walkValue reads one value; objects in it are checked against fields
// (those in arrays against none: no body has arrays of objects).
func walkValue(dec *json.Decoder, fields *jsonFields, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return syntaxErr(err)
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		return walkObject(dec, fields, path)
	case '[':
		for i := 0; dec.More(); i++ {
			if err := walkValue(dec, nil, fmt.Sprintf("%s%d.", path, i)); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil { // ']'
			return syntaxErr(err)
		}
	}
	return nil
}

func fieldList(f *jsonFields, path string) string {
	q := make([]string, len(f.names))
	for i, n := range f.names {
		q[i] = fmt.Sprintf("%q", path+n)
	}
	if len(q) == 0 {
		return "none"
	}
	return strings.Join(q, ", ")
}

func syntaxErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &strictError{"malformed JSON body: unexpected end of input"}
	}
	return &strictError{"malformed JSON body: " + err.Error()}
}

func jsonKind(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '[' {
			return "an array"
		}
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return "this"
}

// decodeStrict decodes the JSON object in data into dst (a pointer to a
// struct) after checkStrictJSON: keys unique, known and exactly cased.
func decodeStrict(data []byte, dst any) error {
	if err := checkStrictJSON(data, fieldsOf(reflect.TypeOf(dst))); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return fmt.Errorf("malformed JSON body: %s", jsonErrorText(err))
	}
	return nil
}
