package config

// Computations: derived points, checked and compiled at load.
//
// An expression is written in expr-lang/expr (https://expr-lang.org) and sees
// its inputs as float64 variables: input1..inputN when `inputs` is a list, the
// mapping keys when it is a mapping. Operators are expr's own: arithmetic
// (+ - * / % **), comparison, boolean logic (and or not && || !), the
// conditional `a > b ? x : y`, and `let`. expr's built-in functions (len,
// now, split, ...) are disabled; the functions are exactly:
//
//	abs(x)  min(x, y, ...)  max(x, y, ...)  round(x)  clamp(x, lo, hi)  sqrt(x)  pow(x, y)
//	integrate(x)   trapezoidal integral of x over time, per hour (kW -> kWh)
//	rate(x)        change of x per second since the previous evaluation
//	avg(x, "5m")   moving average of x over a window (a duration string literal)
//	delta(x)       change of x since the previous evaluation
//
// The last four are stateful: each call site keeps its own state, which the
// runtime holds (see StatefulCalls and NewEnv).
//
// The result must be a number or a bool. A bool becomes 1 (true) or 0
// (false), so `input1 > 100` can feed a signal point; any other result type
// (string, nil, a value whose type is only known at run time) is a config
// error. The check is on the static type: expr.AsFloat64 is not used, since
// it rejects bool results.

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"
	"gopkg.in/yaml.v3"

	"github.com/voltage-ems/voltage/messages"
)

// Names of the stateful expression functions.
const (
	FuncIntegrate = "integrate"
	FuncRate      = "rate"
	FuncAvg       = "avg"
	FuncDelta     = "delta"
)

// StatefulCall is one call site of a stateful function in a compiled
// expression. Sites are numbered from 0 in the order of StatefulCalls.
type StatefulCall struct {
	Func   string        // FuncIntegrate, FuncRate, FuncAvg or FuncDelta
	Window time.Duration // the averaging window of avg; 0 for the others
}

// Program returns the expression compiled at load, to run with expr.Run and
// an environment from NewEnv. It is nil for a Computation that did not come
// from Load (or Parse).
//
// The program calls each stateful function as fn(x, site): the user's
// `integrate(p)` is compiled as `integrate(p, 0)`, `avg(q, "5m")` as
// `avg(q, 1)`, where site indexes StatefulCalls.
func (c *Computation) Program() *vm.Program { return c.program }

// StatefulCalls returns the call sites of stateful functions in the
// expression, indexed by the site number the program passes.
func (c *Computation) StatefulCalls() []StatefulCall { return c.stateful }

// NewEnv returns a fresh environment for expr.Run(c.Program(), env): every
// input name set to 0 (the caller sets env[b.Name] to the value of each
// binding b before a run) and each stateful function calling stateful(site,
// x). Values must be stored as float64. One environment must not be used by
// two goroutines at once.
func (c *Computation) NewEnv(stateful func(site int, x float64) float64) map[string]any {
	env := make(map[string]any, len(c.Inputs.Bindings)+len(statefulFuncs))
	for _, b := range c.Inputs.Bindings {
		env[b.Name] = float64(0)
	}
	call := func(x float64, site int) float64 { return stateful(site, x) }
	for _, name := range statefulFuncs {
		env[name] = call
	}
	return env
}

// ComputationOrder returns the indexes of c.Computations in topological
// order: every computation comes after all the computations whose outputs
// it reads. Recomputing in this order once per wave of input updates (all
// the changes of one poll) makes each output see its inputs fully updated,
// so one recompute per computation per wave suffices and no half-updated
// value ("glitch") is ever published. Among independent computations the
// file order is kept.
//
// Load rejects cycles, so after Load every computation is listed. On a
// Config built by hand, computations on or downstream of a cycle are left out.
// The graph comes from each computation's Output and its Bindings' Text; the
// order is computed on each call, in time linear in the inputs.
func (c *Config) ComputationOrder() []int {
	deps := computationDeps(c.Computations)
	n := len(c.Computations)
	pending := make([]int, n)   // number of computations i still waits for
	readers := make([][]int, n) // j -> computations reading j's output
	for i, ds := range deps {
		pending[i] = len(ds)
		for _, j := range ds {
			readers[j] = append(readers[j], i)
		}
	}
	order := make([]int, 0, n)
	for i := range n {
		if pending[i] == 0 {
			order = append(order, i)
		}
	}
	for k := 0; k < len(order); k++ {
		for _, r := range readers[order[k]] {
			if pending[r]--; pending[r] == 0 {
				order = append(order, r)
			}
		}
	}
	return order
}

// computationDeps returns, for each computation, the indexes of the other
// computations whose outputs it reads (each once, in input order; an output
// claimed twice belongs to its first computation; self-references are left
// out).
func computationDeps(comps []Computation) [][]int {
	producer := make(map[messages.PointKey]int, len(comps))
	for i := range comps {
		if k, err := messages.ParsePointKey(comps[i].Output); err == nil {
			if _, dup := producer[k]; !dup {
				producer[k] = i
			}
		}
	}
	deps := make([][]int, len(comps))
	for i := range comps {
		for _, b := range comps[i].Inputs.Bindings {
			k, err := messages.ParsePointKey(b.Text)
			if err != nil {
				continue
			}
			if j, ok := producer[k]; ok && j != i && !slices.Contains(deps[i], j) {
				deps[i] = append(deps[i], j)
			}
		}
	}
	return deps
}

// nodeDecoder is a type that decodes itself from the YAML node tree; the
// decoder calls it instead of decoding by reflection.
type nodeDecoder interface {
	decodeNode(d *decoder, n *yaml.Node, path string)
}

// decodeNode reads a list of point keys or a mapping of name -> point key.
func (in *Inputs) decodeNode(d *decoder, n *yaml.Node, path string) {
	*in = Inputs{}
	switch n.Kind {
	case yaml.SequenceNode:
		for j, item := range n.Content {
			p := indexPath(path, j)
			d.lines[p] = item.Line
			if key, ok := d.scalar(resolve(item), p, "a point key"); ok {
				in.Bindings = append(in.Bindings, Binding{Name: "input" + strconv.Itoa(j+1), Text: key, Line: item.Line, path: p})
			}
		}
	case yaml.MappingNode:
		in.Named = true
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := resolve(n.Content[i]), n.Content[i+1]
			if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!merge" {
				d.fail(k.Line, path, "input names must be plain names, got %s", kindName(k))
				continue
			}
			p := joinPath(path, k.Value)
			if first, dup := seen[k.Value]; dup {
				d.fail(k.Line, p, "duplicate input name (first at line %d)", first)
				continue
			}
			seen[k.Value] = k.Line
			d.lines[p] = k.Line
			if key, ok := d.scalar(resolve(v), p, "a point key"); ok {
				in.Bindings = append(in.Bindings, Binding{Name: k.Value, Text: key, Line: k.Line, path: p})
			}
		}
	default:
		d.fail(n.Line, path, "want a list of point keys or a mapping of name -> point key, got %s", kindName(n))
	}
}

var (
	identifierRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// exprWords are words of the expression language that cannot name an input.
	exprWords = []string{"true", "false", "nil", "not", "in", "or", "and", "matches", "contains",
		"startsWith", "endsWith", "let", "if", "else"}
	statefulFuncs = []string{FuncIntegrate, FuncRate, FuncAvg, FuncDelta}
)

// pureFuncs are the stateless functions, implemented here.
var pureFuncs = []struct {
	name  string
	fn    func(args ...any) (any, error)
	types []any
}{
	{"abs", func(a ...any) (any, error) { return math.Abs(num(a[0])), nil }, []any{new(func(float64) float64)}},
	{"min", func(a ...any) (any, error) { return fold(math.Min, a), nil }, []any{new(func(float64, float64, ...float64) float64)}},
	{"max", func(a ...any) (any, error) { return fold(math.Max, a), nil }, []any{new(func(float64, float64, ...float64) float64)}},
	{"round", func(a ...any) (any, error) { return math.Round(num(a[0])), nil }, []any{new(func(float64) float64)}},
	{"clamp", func(a ...any) (any, error) {
		return math.Max(num(a[1]), math.Min(num(a[2]), num(a[0]))), nil
	}, []any{new(func(float64, float64, float64) float64)}},
	{"sqrt", func(a ...any) (any, error) { return math.Sqrt(num(a[0])), nil }, []any{new(func(float64) float64)}},
	{"pow", func(a ...any) (any, error) { return math.Pow(num(a[0]), num(a[1])), nil }, []any{new(func(float64, float64) float64)}},
}

// funcNames are the names of every expression function.
var funcNames = func() []string {
	names := slices.Clone(statefulFuncs)
	for _, f := range pureFuncs {
		names = append(names, f.name)
	}
	return names
}()

func num(v any) float64 {
	switch v := v.(type) {
	case float64:
		return v
	case int:
		return float64(v)
	case bool:
		if v {
			return 1
		}
		return 0
	}
	return math.NaN()
}

func fold(f func(a, b float64) float64, args []any) float64 {
	r := num(args[0])
	for _, a := range args[1:] {
		if s, ok := a.([]float64); ok { // variadic tail, if passed as a slice
			for _, x := range s {
				r = f(r, x)
			}
			continue
		}
		r = f(r, num(a))
	}
	return r
}

// exprOptions are the compile options for an expression whose inputs are
// names. Stateful functions have the signatures the user writes, or, with
// forRuntime, the ones of the compiled program: fn(x, site).
func exprOptions(names []string, forRuntime bool) []expr.Option {
	env := make(map[string]any, len(names)+len(statefulFuncs))
	for _, n := range names {
		env[n] = float64(0)
	}
	for _, f := range statefulFuncs {
		switch {
		case forRuntime:
			env[f] = (func(x float64, site int) float64)(nil)
		case f == FuncAvg:
			env[f] = (func(x float64, window string) float64)(nil)
		default:
			env[f] = (func(x float64) float64)(nil)
		}
	}
	opts := []expr.Option{expr.DisableAllBuiltins(), expr.Env(env)}
	for _, f := range pureFuncs {
		opts = append(opts, expr.Function(f.name, f.fn, f.types...))
	}
	return opts
}

// compileExpression checks src with the inputs names and compiles it for the
// runtime. The error, if any, is one line: expr's message and where in the
// expression (line:column).
func compileExpression(src string, names []string) (*vm.Program, []StatefulCall, error) {
	// Not optimized, so that every node keeps the type the checker gave it.
	checked, err := expr.Compile(src, append(exprOptions(names, false), expr.Optimize(false))...)
	if err != nil {
		return nil, nil, exprError(err)
	}
	if err := checkResult(checked.Node()); err != nil {
		return nil, nil, err
	}
	sites := &siteNumberer{src: src}
	program, err := expr.Compile(src, append(exprOptions(names, true), expr.Patch(sites))...)
	if sites.err != nil {
		return nil, nil, sites.err
	}
	if err != nil { // not expected once the first compile passed
		return nil, nil, exprError(err)
	}
	return program, sites.calls, nil
}

// ResultValue converts the result of running a computation's program to the
// point value: numbers as float64, bool as 1 (true) or 0 (false). ok is false
// for anything else (which Load's type check rules out).
func ResultValue(v any) (f float64, ok bool) {
	switch v := v.(type) {
	case float64:
		return v, true
	case bool:
		if v {
			return 1, true
		}
		return 0, true
	case int:
		return float64(v), true
	case float32:
		return float64(v), true
	case int64:
		return float64(v), true
	case int32:
		return float64(v), true
	case int16:
		return float64(v), true
	case int8:
		return float64(v), true
	case uint:
		return float64(v), true
	case uint64:
		return float64(v), true
	case uint32:
		return float64(v), true
	case uint16:
		return float64(v), true
	case uint8:
		return float64(v), true
	}
	return 0, false
}

// checkResult checks that the value of n is a number or a bool. Where the
// checker gives up on a static type because branches differ (`c ? x : 0` is
// float64 or int), each branch is checked.
func checkResult(n ast.Node) error {
	t := n.Type()
	if t != nil && isNumberOrBool(t.Kind()) {
		return nil
	}
	switch n := n.(type) {
	case *ast.ConditionalNode:
		if err := checkResult(n.Exp1); err != nil {
			return err
		}
		return checkResult(n.Exp2)
	case *ast.VariableDeclaratorNode:
		return checkResult(n.Expr)
	case *ast.SequenceNode:
		if len(n.Nodes) > 0 {
			return checkResult(n.Nodes[len(n.Nodes)-1])
		}
	}
	if t == nil || t.Kind() == reflect.Interface {
		return errors.New("result may not be a number (its type is known only when it runs), want a number or a bool")
	}
	return fmt.Errorf("result is %s, want a number or a bool", t)
}

func isNumberOrBool(k reflect.Kind) bool {
	switch k {
	case reflect.Bool, reflect.Float64, reflect.Float32, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// oneLine escapes line breaks, which a message may quote from the expression.
var oneLine = strings.NewReplacer("\r", `\r`, "\n", `\n`)

// exprError makes expr's error one line: "message (line:column)".
func exprError(err error) error {
	var fe *file.Error
	if errors.As(err, &fe) {
		return fmt.Errorf("%s (%d:%d)", oneLine.Replace(strings.TrimSpace(fe.Message)), fe.Line, fe.Column+1)
	}
	msg, _, _ := strings.Cut(err.Error(), "\n")
	return errors.New(msg)
}

// siteNumberer rewrites each stateful call f(x) (avg(x, "window")) as
// f(x, site), numbering the sites in visiting order.
type siteNumberer struct {
	src   string
	calls []StatefulCall
	err   error
}

func (s *siteNumberer) Visit(node *ast.Node) {
	call, ok := (*node).(*ast.CallNode)
	if !ok {
		return
	}
	id, ok := call.Callee.(*ast.IdentifierNode)
	if !ok || !slices.Contains(statefulFuncs, id.Value) {
		return
	}
	want := 1
	if id.Value == FuncAvg {
		want = 2
	}
	if len(call.Arguments) != want {
		return // the first compile reported it
	}
	sc := StatefulCall{Func: id.Value}
	if id.Value == FuncAvg {
		str, ok := call.Arguments[1].(*ast.StringNode)
		if !ok {
			s.fail(call.Arguments[1], `avg window must be a duration string literal, e.g. avg(x, "5m")`)
			return
		}
		d, err := time.ParseDuration(str.Value)
		if err != nil || d <= 0 {
			s.fail(call.Arguments[1], fmt.Sprintf(`avg window %q is not a positive duration (e.g. "30s", "5m", "1h")`, str.Value))
			return
		}
		sc.Window = d
	}
	site := &ast.IntegerNode{Value: len(s.calls)}
	site.SetLocation(call.Location())
	// x * 1.0 makes x a float64 even where the checker lets an integer
	// through (`integrate(c ? 1 : 2)`), which a func(float64, int) rejects.
	one := &ast.FloatNode{Value: 1}
	one.SetLocation(call.Location())
	x := &ast.BinaryNode{Operator: "*", Left: call.Arguments[0], Right: one}
	x.SetLocation(call.Arguments[0].Location())
	call.Arguments = []ast.Node{x, site}
	s.calls = append(s.calls, sc)
}

func (s *siteNumberer) fail(n ast.Node, msg string) {
	if s.err == nil {
		fe := &file.Error{Location: n.Location(), Message: msg}
		s.err = exprError(fe.Bind(file.NewSource(s.src)))
	}
}

// checkComputations validates the computations, compiles their expressions
// and checks that they form a DAG. See ComputationOrder.
func (l *loader) checkComputations(c *Config) {
	producer := map[messages.PointKey]int{} // output -> first computation
	valid := make([]bool, len(c.Computations))
	for i := range c.Computations {
		comp := &c.Computations[i]
		p := indexPath("computations", i)
		if strings.TrimSpace(comp.Output) == "" {
			l.errorf(p+".output", "required (a point key of a compute channel, e.g. \"9001:m:1\")")
		} else if k, err := messages.ParsePointKey(comp.Output); err != nil {
			l.errorf(p+".output", "%v", err)
		} else {
			comp.OutputKey = k
			valid[i] = true
			switch ch := c.Channel(k.Channel); {
			case ch == nil:
				l.errorf(p+".output", "channel %d is not declared (add a channel with protocol: compute)", k.Channel)
			case ch.Protocol != ProtocolCompute:
				l.errorf(p+".output", "channel %d is a %s channel, not a compute channel", k.Channel, ch.Protocol)
			default:
				l.applyPointSettings(comp, c, p)
			}
			if first, dup := producer[k]; dup {
				l.errorf(p+".output", "duplicate output %s (first at line %d)", k, l.line(indexPath("computations", first)+".output"))
			} else {
				producer[k] = i
			}
		}
		if math.IsNaN(comp.Deadband) || math.IsInf(comp.Deadband, 0) || comp.Deadband < 0 {
			l.errorf(p+".deadband", "must be a finite number >= 0")
		}

		names := make([]string, 0, len(comp.Inputs.Bindings))
		for _, b := range comp.Inputs.Bindings {
			names = append(names, b.Name)
		}
		if strings.TrimSpace(comp.Expression) == "" {
			l.errorf(p+".expression", "required")
		} else if prog, sites, err := compileExpression(comp.Expression, names); err != nil {
			l.errorf(p+".expression", "%v", err)
		} else {
			comp.program, comp.stateful = prog, sites
		}

		for j := range comp.Inputs.Bindings {
			b := &comp.Inputs.Bindings[j]
			if comp.Inputs.Named {
				switch {
				case !identifierRE.MatchString(b.Name):
					l.errorf(b.path, "input name %q is not an identifier (want letters, digits and _, not starting with a digit)", b.Name)
				case slices.Contains(funcNames, b.Name):
					l.errorf(b.path, "input name %q is the name of a function", b.Name)
				case slices.Contains(exprWords, b.Name):
					l.errorf(b.path, "input name %q is a word of the expression language", b.Name)
				}
			}
			k, err := messages.ParsePointKey(b.Text)
			if err != nil {
				l.errorf(b.path, "%v", err)
				continue
			}
			b.Key = k
			switch {
			case valid[i] && k == comp.OutputKey:
				l.errorf(p+".inputs", "%s uses itself", k)
			case !l.knownInput(c, k):
				l.errorf(b.path, "unknown point %s (not in a point table nor a computation output)", k)
			}
		}

	}
	l.checkCycles(c)
}

// knownInput reports whether k is a configured point (computation outputs on
// compute channels are points too: see addComputedPoints).
func (l *loader) knownInput(c *Config, k messages.PointKey) bool {
	_, pt := c.Point(k)
	return pt != nil
}

// applyPointSettings gives the output point the computation's unit and
// deadband. A point the point table lists keeps its own, unless they agree.
func (l *loader) applyPointSettings(comp *Computation, c *Config, p string) {
	_, pt := c.Point(comp.OutputKey)
	if pt == nil {
		return
	}
	if pt.Line == 0 { // added by addComputedPoints
		pt.Unit, pt.Deadband = comp.Unit, comp.Deadband
		return
	}
	if comp.Unit != "" && pt.Unit != "" && comp.Unit != pt.Unit {
		l.errorf(p+".unit", "%q differs from the point table's unit %q for %s", comp.Unit, pt.Unit, comp.OutputKey)
	} else if comp.Unit != "" {
		pt.Unit = comp.Unit
	}
	if l.isSet(p+".deadband") && pt.Deadband != 0 && comp.Deadband != pt.Deadband {
		l.errorf(p+".deadband", "%g differs from the point table's deadband %g for %s", comp.Deadband, pt.Deadband, comp.OutputKey)
	} else if l.isSet(p + ".deadband") {
		pt.Deadband = comp.Deadband
	}
}

// checkCycles reports every cycle among the computations, once, at its
// member that comes last in the file, as the path of outputs in data-flow
// order (each feeds the next) starting and ending with that member's output.
func (l *loader) checkCycles(c *Config) {
	deps := computationDeps(c.Computations)
	const (
		white = iota
		grey
		black
	)
	color := make([]int, len(deps))
	var stack []int
	reported := map[string]bool{}
	var visit func(i int)
	visit = func(i int) {
		color[i] = grey
		stack = append(stack, i)
		for _, j := range deps[i] {
			switch color[j] {
			case white:
				visit(j)
			case grey:
				// stack[at:] reads each next one, and the last reads j.
				at := slices.Index(stack, j)
				l.reportCycle(c, stack[at:], reported)
			}
		}
		stack = stack[:len(stack)-1]
		color[i] = black
	}
	for i := range deps {
		if color[i] == white {
			visit(i)
		}
	}
}

// reportCycle reports the cycle in which each of reads[k] reads the output of
// reads[k+1], and the last reads the first.
func (l *loader) reportCycle(c *Config, reads []int, reported map[string]bool) {
	flow := slices.Clone(reads)
	slices.Reverse(flow) // each feeds the next, the last feeds the first
	h := slices.Index(flow, slices.Max(flow))
	flow = append(flow[h:], flow[:h]...)

	members := slices.Sorted(slices.Values(flow))
	id := fmt.Sprint(members)
	if reported[id] {
		return
	}
	reported[id] = true
	keys := make([]string, 0, len(flow)+1)
	for _, i := range append(flow, flow[0]) {
		keys = append(keys, c.Computations[i].OutputKey.String())
	}
	l.errorf(indexPath("computations", flow[0])+".inputs", "cycle %s", strings.Join(keys, " -> "))
}
