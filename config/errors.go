package config

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// FieldError is one configuration problem: where it is and what is wrong.
type FieldError struct {
	File  string // file as named in the configuration (point tables joined to the YAML file's directory)
	Line  int    // 1-based line, or 0 when the problem concerns the whole file
	Field string // YAML path ("channels[1].protocol") or CSV column ("data_type"); may be empty
	Msg   string
}

// Error returns "file:line: field: problem", leaving out the parts that are
// empty or zero.
func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
	}
	if e.Field != "" {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(e.Field)
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found while loading a configuration. Load and Parse
// return it as their error; Error lists one problem per line.
type Errors []*FieldError

// Error lists every problem, one per line.
func (es Errors) Error() string {
	var b strings.Builder
	for i, e := range es {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap returns the individual problems, so that errors.As finds a *FieldError.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// collector gathers problems from every stage of loading.
type collector struct {
	errs Errors
}

func (c *collector) add(file string, line int, field, format string, args ...any) {
	c.errs = append(c.errs, &FieldError{File: file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// sorted returns the problems grouped by file (files in order of first
// appearance, so the YAML file comes first) and ordered by line within a file.
func (c *collector) sorted() Errors {
	order := map[string]int{}
	for _, e := range c.errs {
		if _, ok := order[e.File]; !ok {
			order[e.File] = len(order)
		}
	}
	out := slices.Clone(c.errs)
	slices.SortStableFunc(out, func(a, b *FieldError) int {
		if c := cmp.Compare(order[a.File], order[b.File]); c != 0 {
			return c
		}
		return cmp.Compare(a.Line, b.Line)
	})
	return out
}
