package durable

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestHealthReportsAndCounts(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := NewHealth(reg, "history", "spool")
	if p := h.Problems(); len(p) != 0 {
		t.Fatalf("problems %v", p)
	}
	want := `# HELP voltage_storage_recovered_total x
# TYPE voltage_storage_recovered_total counter
voltage_storage_recovered_total{component="history"} 0
voltage_storage_recovered_total{component="spool"} 0
`
	help := "Damaged storage the node recovered from (a file moved aside and started empty, a meta page skipped, a torn audit line cut), by component."
	if err := testutil.GatherAndCompare(reg, strings.NewReader(strings.Replace(want, "x", help, 1))); err != nil {
		t.Fatal(err)
	}
	h.Report("history", "history.db: truncated")
	h.Report("dedupe", "dedupe.db: no valid meta page")
	p := h.Problems()
	if len(p) != 2 || p[0].Component != "history" || p[0].Reason != "history.db: truncated" || p[0].Time.IsZero() || p[1].Component != "dedupe" {
		t.Fatalf("problems %+v", p)
	}
	if v := testutil.ToFloat64(h.recovered.WithLabelValues("dedupe")); v != 1 {
		t.Fatalf("dedupe counted %v", v)
	}
	for i := 0; i < 2*maxProblems; i++ {
		h.Report("audit", fmt.Sprint(i))
	}
	if p := h.Problems(); len(p) != maxProblems || p[len(p)-1].Reason != fmt.Sprint(2*maxProblems-1) {
		t.Fatalf("%d problems kept, last %+v", len(p), p[len(p)-1])
	}
}
