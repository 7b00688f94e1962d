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
// when ctx ends.
func (a *Agent) watchDrift(ctx context.Context) {
	if a.cfg.DriftInterval < 0 {
		return
	}
	t := time.NewTicker(a.cfg.DriftInterval)
	defer t.Stop()
	var lastGood time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pol, known := a.applied()
		if pol == nil || !known {
			lastGood = time.Time{}
			continue
		}
		if !a.execMu.TryLock() {
			// An order owns the firewall; it reads the rules back itself.
			lastGood = time.Time{}
			continue
		}
		lastGood = a.checkDrift(ctx, *pol, lastGood)
		a.execMu.Unlock()
	}
}

// checkDrift reads the rules back once and repairs them if they drifted.
// lastGood is when they were last found intact (zero if unknown); it
// returns the new value.
func (a *Agent) checkDrift(ctx context.Context, pol policy.Policy, lastGood time.Time) time.Time {
	checked := time.Now()
	orderID, digest := a.inForceOrder()
	st, err := a.fw.status(ctx, a.cfg.PluginTimeout)
	if err != nil {
		a.log.Warn("drift check: cannot read the rules back", "err", err)
		return time.Time{}
	}
	var drift string
	switch {
	case st.Isolated && (digest == "" || st.Digest == digest):
		return checked
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
	l := a.log.With("order_id", orderID)
	if err != nil {
		r.Error = err.Error()
		l.Error("drift: Cordon's rules were changed and putting them back failed; retrying", "drift", drift, "err", err)
		a.report(r)
		return time.Time{}
	}
	r.Digest = applied.Digest
	a.setInForceOrder(orderID, applied.Digest)
	l.Warn("drift repaired: Cordon's rules were changed behind the agent's back and are back in place", "drift", drift,
		"repair", time.Duration(r.ApplyNS).Round(time.Microsecond), "wrong_for_at_most", time.Duration(r.DriftNS).Round(time.Microsecond),
		"digest", applied.Digest)
	a.report(r)
	return time.Now()
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
