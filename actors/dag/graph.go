package dag

import (
	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

// graph is the computation DAG: each computation's level (0 when it reads
// only field points, else one more than the deepest computation it reads)
// and, per point, the computations that read it. Evaluating level by level
// recomputes every computation at most once per wave, after all of its
// inputs (no glitches from half-updated inputs).
type graph struct {
	comps    []*config.Computation
	level    []int
	maxLevel int
	readers  map[messages.PointKey][]int
}

func newGraph(cfg *config.Config) *graph {
	g := &graph{readers: map[messages.PointKey][]int{}}
	out := map[messages.PointKey]int{}
	for i := range cfg.Computations {
		c := &cfg.Computations[i]
		g.comps = append(g.comps, c)
		out[c.OutputKey] = i
	}
	g.level = make([]int, len(g.comps))
	for _, i := range cfg.ComputationOrder() {
		for _, b := range g.comps[i].Inputs.Bindings {
			g.readers[b.Key] = appendOnce(g.readers[b.Key], i)
			if j, ok := out[b.Key]; ok && g.level[j]+1 > g.level[i] {
				g.level[i] = g.level[j] + 1
			}
		}
		g.maxLevel = max(g.maxLevel, g.level[i])
	}
	return g
}

func appendOnce(s []int, i int) []int {
	for _, x := range s {
		if x == i {
			return s
		}
	}
	return append(s, i)
}
