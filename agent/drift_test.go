package agent

import (
	"testing"

	"github.com/cordon-ir/cordon/pkg/wire"
)

func TestMergeRepair(t *testing.T) {
	if got := mergeRepair(nil, nil); got != nil {
		t.Errorf("nothing merged = %+v", got)
	}
	first := &wire.Report{Drift: "table gone", DriftNS: 300, ApplyNS: 40, Digest: "sha256:a"}
	p := mergeRepair(nil, first)
	if p.Repairs != 1 || p.Drift != "table gone" {
		t.Errorf("first = %+v", p)
	}
	p = mergeRepair(p, nil)
	p = mergeRepair(p, &wire.Report{Drift: "chain missing", DriftNS: 100, ApplyNS: 30, Digest: "sha256:b", Error: ""})
	p = mergeRepair(p, &wire.Report{Drift: "jump not first", DriftNS: 500, ApplyNS: 20, Digest: "sha256:c"})
	if p.Repairs != 3 || p.Drift != "table gone" || p.DriftNS != 500 || p.ApplyNS != 20 || p.Digest != "sha256:c" {
		t.Errorf("three merged = %+v", p)
	}
}

// TestOutboxMergesRepairs: repair reports queued behind one another (the
// controller out of reach) become one, counting them all; the first in
// the queue, which may be on its way, is left alone.
func TestOutboxMergesRepairs(t *testing.T) {
	o := newOutbox(&Agent{})
	rep := func(drift string) wire.Report {
		return wire.Report{OrderID: "ord-1", Stage: wire.StageRepaired, Drift: drift, Repairs: 1}
	}
	o.addReport(rep("first"))
	for range 100 {
		o.addReport(rep("again"))
	}
	o.addReport(wire.Report{OrderID: "ord-2", Stage: wire.StageReleased})
	o.addReport(rep("after the release"))
	if n := o.pending(laneReports); n != 4 {
		t.Fatalf("%d reports queued, want 4", n)
	}
	if r := o.reports[1]; r.Repairs != 100 || r.Drift != "again" {
		t.Errorf("merged report = %+v", r)
	}
}
