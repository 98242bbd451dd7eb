package web

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

type strictInner struct {
	Level string `json:"level"`
}

type strictOuter struct {
	Value  json.RawMessage `json:"value"`
	Name   *string         `json:"name"`
	Inner  *strictInner    `json:"inner"`
	Any    any             `json:"any"`
	hidden int             // unexported: not a JSON field
	Plain  int             // no tag: named Plain
	Skip   int             `json:"-"`
}

func TestCheckStrictJSON(t *testing.T) {
	fields := fieldsOf(reflect.TypeFor[strictOuter]())
	f := func(body, want string) {
		t.Helper()
		err := checkStrictJSON([]byte(body), fields)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", body, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: error %v, want %q", body, err, want)
		}
	}
	f(`{"value": 1}`, "")
	f(`{"value": {"a": [1, {"b": 2}]}, "name": "x", "inner": {"level": "hi"}, "any": {"X": 1, "x": 2}, "Plain": 3}`, "")
	f(` {} `, "")
	// Duplicates, at any depth, escaped or not.
	f(`{"value":1,"value":450}`, `duplicate field "value"`)
	f(`{"value":1,"val\u0075e":450}`, `duplicate field "value"`)
	f(`{"inner": {"level": "a", "level": "b"}}`, `duplicate field "inner.level"`)
	f(`{"value": {"a": 1, "a": 2}}`, `duplicate field "value.a"`)
	f(`{"any": [{"k": 1, "k": 2}]}`, `duplicate field "any.0.k"`)
	// Case and unknown names.
	f(`{"Value": 1}`, `unknown field "Value" (fields are case sensitive: did you mean "value"?)`)
	f(`{"VALUE": 1}`, `did you mean "value"?`)
	f(`{"inner": {"Level": "a"}}`, `unknown field "inner.Level" (fields are case sensitive: did you mean "inner.level"?)`)
	f(`{"plain": 1}`, `did you mean "Plain"?`)
	f(`{"colour": "red"}`, `unknown field "colour" (want "value", "name", "inner", "any", "Plain")`)
	f(`{"Skip": 1}`, `unknown field "Skip"`)
	f(`{"hidden": 1}`, `unknown field "hidden"`)
	f(`{"inner": {"x": 1}}`, `unknown field "inner.x" (want "inner.level")`)
	// encoding/json folds these to "value" (Unicode simple folding): not here.
	f(`{"vaLue": 1}`, `did you mean "value"?`)
	f(`{"ſtrange": 1}`, `unknown field "ſtrange"`)
	// Syntax.
	f(``, "malformed JSON body: unexpected end of input")
	f(`{"value": 1`, "malformed JSON body: unexpected end of input")
	f(`{"value": 1,}`, "malformed JSON body: invalid character '}'")
	f(`[1]`, "malformed JSON body: want a JSON object, not an array")
	f(`null`, "want a JSON object, not null")
	f(`"s"`, "want a JSON object, not a string")
	f(`{"value": 1} {"value": 2}`, "unexpected data after the JSON object")
	f(`{"value": 1} x`, "unexpected data after the JSON object")
	f(`{"value" 1}`, "malformed JSON body: invalid character '1' after object key")
}

func TestDecodeStrict(t *testing.T) {
	var v struct {
		Value int    `json:"value"`
		Name  string `json:"name"`
	}
	if err := decodeStrict([]byte(`{"value": 7, "name": "n"}`), &v); err != nil || v.Value != 7 || v.Name != "n" {
		t.Fatalf("%+v %v", v, err)
	}
	if err := decodeStrict([]byte(`{"value": "7"}`), &v); err == nil || !strings.Contains(err.Error(), `field "value": cannot use a JSON string here`) {
		t.Fatalf("type error: %v", err)
	}
	if err := decodeStrict([]byte(`{"Name": "n"}`), &v); err == nil || !strings.Contains(err.Error(), `did you mean "name"`) {
		t.Fatalf("case: %v", err)
	}
}

// FuzzStrictJSON: the checker never panics, and what it accepts is one
// JSON object that encoding/json decodes into the same keys, none of them
// repeated.
func FuzzStrictJSON(f *testing.F) {
	for _, s := range []string{
		`{"value":1}`, `{"value":1,"value":2}`, `{"Value":1}`, `{"a":{"b":[{"c":1,"c":2}]}}`, `[]`, `{}`, `{"value":1} 2`,
		`{"val\u0075e":1}`, `{"value":[1,2,{"x":{}}]}`, `{"value":"\ud800"}`, `{"inner":{"level":"x"}}`, `{`, `}`, `{"any":null}`,
	} {
		f.Add([]byte(s))
	}
	fields := fieldsOf(reflect.TypeFor[strictOuter]())
	f.Fuzz(func(t *testing.T, data []byte) {
		err := checkStrictJSON(data, fields)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", data, err)
		}
		for k := range m {
			if ok, _ := fields.check(k); !ok {
				t.Fatalf("accepted unknown field %q in %q", k, data)
			}
		}
		var o strictOuter
		if err := json.Unmarshal(data, &o); err != nil && !strings.Contains(err.Error(), "cannot unmarshal") {
			t.Fatalf("accepted %q: %v", data, err)
		}
	})
}
