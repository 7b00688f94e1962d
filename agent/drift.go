package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// DefaultDriftInterval is how often, while the host is isolated, the agent
// reads Cordon's rules back to find them changed behind its back (a
// `firewall-cmd --reload`, `ufw reload`, `iptables -F`, `nft flush
// ruleset`, a Docker restart), when Config.DriftInterval is zero.
const DefaultDriftInterval = 250 * time.Millisecond

// watchDrift keeps Cordon's rules in place while the host is isolated:
// every DriftInterval it asks the plugin for their status and, when they
// are not exactly those last applied, applies the policy in force again
// and reports the repair (wire.StageRepaired), with what was found and how
// long it took. It never runs while an order is carried out, and stops
// when ctx ends. Each round is a heartbeat for Healthy, also with drift
// repair off (once a second then).
func (a *Agent) watchDrift(ctx context.Context) {
	every := a.cfg.DriftInterval
	if every < 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var lastGood, lastSent time.Time
	var pending *wire.Report
	for {
		a.beat.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if a.cfg.DriftInterval < 0 {
			continue
		}
		// One report at once, then at most one per driftReportEvery for
		// a host whose rules something keeps removing: each counts the
		// repairs it stands for.
		if pending != nil && time.Since(lastSent) >= driftReportEvery {
			a.report(*pending)
			pending, lastSent = nil, time.Now()
		}
		if !a.execMu.TryLock() {
			// An order owns the firewall; it reads the rules back itself.
			lastGood = time.Time{}
			continue
		}
		// Read under the lock: a release that has just finished must not
		// be undone with the policy it removed.
		if pol, known := a.applied(); pol != nil && known {
			var r *wire.Report
			lastGood, r = a.checkDrift(ctx, *pol, lastGood)
			pending = mergeRepair(pending, r)
		} else {
			lastGood = time.Time{}
		}
		a.execMu.Unlock()
		if pending != nil && time.Since(lastSent) >= driftReportEvery {
			a.report(*pending)
			pending, lastSent = nil, time.Now()
		}
	}
}

// driftReportEvery is the least time between two repair reports of one
// agent; repairs in between go into the next report, counted.
const driftReportEvery = 3 * time.Second

// mergeRepair adds the repair r (nil if none) to the report pending (nil
// if none) and returns the report to send: the first drift found, the
// latest outcome, the longest time the rules were wrong, and the count.
func mergeRepair(pending, r *wire.Report) *wire.Report {
	switch {
	case r == nil:
		return pending
	case pending == nil:
		r.Repairs = max(1, r.Repairs)
		return r
	}
	m := *r
	m.Repairs = max(1, pending.Repairs) + max(1, r.Repairs)
	m.Drift = pending.Drift
	m.DriftNS = max(pending.DriftNS, r.DriftNS)
	return &m
}

// checkDrift reads the rules back once and repairs them if they drifted.
// lastGood is when they were last found intact (zero if unknown); it
// returns the new value and the repair's report, nil when nothing was
// wrong.
func (a *Agent) checkDrift(ctx context.Context, pol policy.Policy, lastGood time.Time) (time.Time, *wire.Report) {
	checked := time.Now()
	orderID, digest := a.inForceOrder()
	// The isolate order in force: "" when the host was found isolated at
	// start, and its lines then carry order_id="" incident="".
	l := a.orderLog(orderID, a.incidentOf(orderID))
	st, err := a.fw.status(ctx, a.cfg.PluginTimeout)
	if err != nil {
		l.Warn("drift check: cannot read the rules back", "err", err)
		return time.Time{}, nil
	}
	var drift string
	switch {
	case st.Isolated && (digest == "" || st.Digest == digest):
		return checked, nil
	case st.Isolated:
		drift = fmt.Sprintf("the rules in place (digest %s) are not those applied (%s)", st.Digest, digest)
	case st.Partial != "":
		drift = st.Partial
	default:
		drift = "none of Cordon's rules in place"
	}
	t0 := time.Now()
	applied, err := a.fw.isolate(ctx, a.cfg.PluginTimeout, pol, orderID)
	r := wire.Report{OrderID: orderID, Stage: wire.StageRepaired, Drift: wire.CleanText(drift, wire.MaxError),
		ApplyNS: time.Since(t0).Nanoseconds()}
	if !lastGood.IsZero() {
		r.DriftNS = time.Since(lastGood).Nanoseconds()
	}
	if err != nil {
		r.Error = err.Error()
		l.Error("drift: Cordon's rules were changed and putting them back failed; retrying", "drift", drift, "err", err)
		return time.Time{}, &r
	}
	r.Digest = applied.Digest
	a.setInForceOrder(orderID, applied.Digest)
	l.Warn("drift repaired: Cordon's rules were changed behind the agent's back and are back in place", "drift", drift,
		"repair", time.Duration(r.ApplyNS).Round(time.Microsecond), "wrong_for_at_most", time.Duration(r.DriftNS).Round(time.Microsecond),
		"digest", applied.Digest)
	return time.Now(), &r
}

// inForceOrder returns the isolate order whose policy is in force ("" when
// the host was found isolated at start) and the digest of its rules as
// last verified ("" when unknown).
func (a *Agent) inForceOrder() (id, digest string) {
	a.ordMu.Lock()
	defer a.ordMu.Unlock()
	return a.isolateOrder, a.isolateDigest
}

func (a *Agent) setInForceOrder(id, digest string) {
	a.ordMu.Lock()
	defer a.ordMu.Unlock()
	a.isolateOrder, a.isolateDigest = id, digest
}
