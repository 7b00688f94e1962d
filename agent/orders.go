package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/pkg/evidence"
	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/cordon-ir/cordon/pkg/snapshot"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// receiveOrder reads one order from the controller, acknowledges it and
// queues it for the worker. A malformed order is refused on its channel; the
// connection stays up.
func (a *Agent) receiveOrder(nc ssh.NewChannel) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	t := time.AfterFunc(a.cfg.DialTimeout, func() { ch.Close() })
	defer t.Stop()
	var o wire.Order
	if err := wire.ReadFrame(ch, &o); err != nil {
		a.log.Warn("order refused", "err", err)
		wire.WriteFrame(ch, &wire.OrderAck{V: wire.Version, Error: err.Error()})
		return
	}
	l := a.orderLog(o.ID, o.Incident)
	if o.Host != a.cfg.Name {
		err := fmt.Sprintf("order is for host %q, this agent is %q", o.Host, a.cfg.Name)
		l.Warn("order refused", "err", err)
		wire.WriteFrame(ch, &wire.OrderAck{V: wire.Version, OrderID: o.ID, Error: err})
		return
	}
	if !a.rememberOrder(o.ID, o.Incident) {
		l.Info("order received again; already carried out or under way")
		wire.WriteFrame(ch, &wire.OrderAck{V: wire.Version, OrderID: o.ID, Accepted: true})
		return
	}
	q := a.queue
	if o.Kind == wire.KindSnapshot {
		q = a.snapQueue
	}
	select {
	case q <- o:
	default:
		a.forgetOrder(o.ID)
		err := fmt.Sprintf("agent has %d orders waiting; try again when they are done", maxQueued)
		l.Warn("order refused", "err", err)
		wire.WriteFrame(ch, &wire.OrderAck{V: wire.Version, OrderID: o.ID, Error: err})
		return
	}
	if err := wire.WriteFrame(ch, &wire.OrderAck{V: wire.Version, OrderID: o.ID, Accepted: true}); err != nil {
		l.Warn("order ack not sent; carrying the order out anyway", "err", err)
	}
}

// snapshotBudget bounds the snapshot before an isolation: containment waits
// for the evidence at most this long (a snapshot of 10,000 processes takes
// about a second), then goes ahead with what was collected.
const snapshotBudget = 10 * time.Second

// fallbackBudget bounds a snapshot taken inside the sandbox after the
// collector failed.
const fallbackBudget = 5 * time.Second

// maxQueued bounds the orders waiting behind the one being carried out.
const maxQueued = 64

// work carries out queued orders one at a time until ctx ends; the order
// under way then is finished first. Isolate and release orders keep their
// order among themselves and go before snapshot orders (triage), so that
// containment never waits behind them. Orders run on a context of their
// own, not the connection's: a controller that goes away never stops an
// isolation half way.
func (a *Agent) work(ctx context.Context) {
	octx := context.WithoutCancel(ctx)
	for {
		o, ok := a.next(ctx)
		if !ok {
			return
		}
		a.execute(octx, o)
	}
}

// next returns the next order to carry out, containment first, waiting
// until there is one or ctx ends.
func (a *Agent) next(ctx context.Context) (wire.Order, bool) {
	select {
	case o := <-a.queue:
		return o, true
	default:
	}
	select {
	case <-ctx.Done():
		return wire.Order{}, false
	case o := <-a.queue:
		return o, true
	case o := <-a.snapQueue:
		return o, true
	}
}

// execute carries out one order and queues its reports.
func (a *Agent) execute(ctx context.Context, o wire.Order) {
	a.execMu.Lock()
	defer a.execMu.Unlock()
	l := a.orderLog(o.ID, o.Incident).With("kind", string(o.Kind))
	l.Info("order received", "reason", o.Reason, "operator", o.Operator)
	switch o.Kind {
	case wire.KindIsolate:
		a.isolate(ctx, l, o)
	case wire.KindRelease:
		a.release(ctx, l, o)
	case wire.KindSnapshot:
		if snapNS, err := a.capture(ctx, l, o, nil); err != nil && !errors.Is(err, errDegraded) {
			a.fail(ctx, l, o, snapNS, err, "")
		}
	}
}

// report queues a report. Free text is cleaned so that it always passes
// the controller's strict decoding: error messages may span lines.
func (a *Agent) report(r wire.Report) {
	r.V, r.At = wire.Version, time.Now().UTC()
	r.Error = wire.CleanText(r.Error, wire.MaxError)
	r.Digest = wire.CleanText(r.Digest, 128)
	a.outbox.addReport(r)
}

// isolate: snapshot first (RFC 3227 order of volatility), then isolate,
// then verify by reading the rules back (DESIGN.md §3).
func (a *Agent) isolate(ctx context.Context, l *slog.Logger, o wire.Order) {
	// 1. Evidence, in memory. Containment comes first: isolate even
	// without evidence.
	t0 := time.Now()
	// The policy comes first, so that the evidence records what is
	// applied next: the controller endpoints from the order, plus the
	// address this agent is connected to, IPs only, nothing resolved.
	pol := *o.Policy
	pol.Allow = append(pol.Allow, a.cfg.Allow...)
	if _, remote, _ := a.current(); remote.IsValid() {
		pol.Controllers = append(pol.Controllers, policy.Endpoint{Addr: remote.Addr(), Port: remote.Port()})
	}
	pol.Controllers = append(pol.Controllers, a.controllerAddrs(ctx, l)...)
	pol = pol.Canonical()
	polErr := pol.Validate()
	var recorded *policy.Policy
	if polErr == nil {
		recorded = &pol
	}
	snapNS, err := a.capture(ctx, l, o, recorded)
	evidenceErr := ""
	if err != nil {
		evidenceErr = err.Error()
		if !errors.Is(err, errDegraded) {
			l.Error("snapshot failed; isolating anyway", "err", err)
		}
	}

	// 2. Isolate.
	if polErr != nil {
		a.fail(ctx, l, o, snapNS, fmt.Errorf("policy: %w", polErr), evidenceErr)
		return
	}
	prior, priorKnown := a.applied()
	t1 := time.Now()
	applied, err := a.fw.isolate(ctx, a.cfg.PluginTimeout, pol, o.ID)
	applyNS := time.Since(t1).Nanoseconds()
	if err != nil {
		err = a.recover(ctx, l, o.ID, err, prior, priorKnown)
		if errors.Is(err, firewall.ErrRulesChanged) {
			// The rules are in place, and something keeps changing
			// them: drift repair keeps putting them back (after fail,
			// which reads the state back as not isolated).
			a.fail(ctx, l, o, snapNS, fmt.Errorf("%w; drift repair keeps putting them back", err), evidenceErr)
			a.setApplied(&pol, true)
			a.setInForceOrder(o.ID, "")
			return
		}
		a.fail(ctx, l, o, snapNS, err, evidenceErr)
		return
	}

	// 3. Verify: read the live rules back.
	t2 := time.Now()
	st, err := a.fw.status(ctx, a.cfg.PluginTimeout)
	verifyNS := time.Since(t2).Nanoseconds()
	switch {
	case err != nil:
		err = fmt.Errorf("verify: %w (rules were applied and are left in place)", err)
	case !st.Isolated:
		err = fmt.Errorf("verify: rules read back are incomplete: %s (left in place)", st.Partial)
	case st.Digest != applied.Digest:
		err = fmt.Errorf("verify: rules read back (digest %s) differ from those applied (%s); left in place", st.Digest, applied.Digest)
	}
	if err != nil {
		a.setApplied(&pol, true)
		a.fail(ctx, l, o, snapNS, err, evidenceErr)
		return
	}
	a.setApplied(&pol, true)
	a.setInForceOrder(o.ID, applied.Digest)

	// 4. Try it from the host: the controller answers, a forbidden
	// connection does not get through. A leak fails the order loudly; the
	// rules stay (fail closed).
	selfTest, err := a.selfTest(ctx, pol)
	if err != nil {
		l.Error("isolation self-test failed: the rules are in place but traffic they forbid gets through", "err", err, "self_test", selfTest)
		a.fail(ctx, l, o, snapNS, fmt.Errorf("%w; the rules are left in place", err), evidenceErr)
		return
	}
	a.report(wire.Report{OrderID: o.ID, Stage: wire.StageIsolated, Digest: applied.Digest, Error: evidenceErr,
		SnapshotNS: snapNS, ApplyNS: applyNS, VerifyNS: verifyNS, FlowsCut: applied.FlowsCut,
		SelfTest: wire.CleanText(selfTest, wire.MaxError)})
	l.Info("host isolated and verified", "digest", applied.Digest, "rules", len(applied.Rules), "flows_cut", applied.FlowsCut, "self_test", selfTest,
		"apply", time.Duration(applyNS).Round(time.Microsecond), "verify", time.Duration(verifyNS).Round(time.Microsecond),
		"since_received", time.Since(t0).Round(time.Microsecond))
}

// capture takes a snapshot for an order, queues the bundle for upload and
// reports it. It returns how long the snapshot took.
func (a *Agent) capture(ctx context.Context, l *slog.Logger, o wire.Order, pol *policy.Policy) (int64, error) {
	t0 := time.Now()
	snapID := newID("snp")
	// The snapshot has a time budget: a /proc read stuck on a hung file
	// system must not hold containment back.
	sctx, cancel := context.WithTimeout(ctx, snapshotBudget)
	bundle, err := a.takeSnapshot(sctx, l, snapshot.Request{
		SnapshotID: snapID, OrderID: o.ID, Incident: o.Incident, Reason: o.Reason,
		HostName: a.cfg.Name, AgentVersion: Version, Signer: a.cfg.Signer, ClockProbe: a.clockProbe, Policy: pol,
	})
	cancel()
	snapNS := time.Since(t0).Nanoseconds()
	var degraded error
	if errors.Is(err, errDegraded) {
		degraded, err = err, nil
	}
	if err != nil {
		return snapNS, fmt.Errorf("evidence capture failed: %w", err)
	}
	ref := &wire.SnapshotRef{ID: snapID, SHA256: bundle.SHA256, Size: int64(len(bundle.Data))}
	for _, art := range bundle.Manifest.Artifacts {
		if len(art.Errors) > 0 {
			ref.Errors++
		}
	}
	a.outbox.addEvidence(o.ID, bundle)
	r := wire.Report{OrderID: o.ID, Stage: wire.StageSnapshot, Snapshot: ref, SnapshotNS: snapNS}
	if degraded != nil {
		r.Error = degraded.Error()
	}
	a.report(r)
	l.Info("snapshot taken", "snapshot_id", snapID, "sha256", bundle.SHA256, "size", len(bundle.Data),
		"took", time.Duration(snapNS).Round(time.Microsecond), "artifacts_with_errors", ref.Errors)
	return snapNS, degraded
}

// takeSnapshot has the collector process take the snapshot, or takes it in
// this process when there is no collector (or it has died, in which case
// what the sandbox hides from this process is missing, and the artifacts'
// errors say so).
func (a *Agent) takeSnapshot(ctx context.Context, l *slog.Logger, req snapshot.Request) (*evidence.Bundle, error) {
	inside := a.cfg.Sandbox
	if strings.HasPrefix(inside, "landlock") {
		inside += "; evidence collected by the agent inside the sandbox, where other processes' /proc/PID/fd, exe and ns cannot be read"
	}
	if a.cfg.Collector == nil {
		req.Sandbox = inside
		return snapshot.Take(ctx, req)
	}
	cr := CollectRequest{SnapshotID: req.SnapshotID, OrderID: req.OrderID, Incident: req.Incident, Reason: req.Reason,
		HostName: req.HostName, AgentVersion: req.AgentVersion, Policy: req.Policy,
		Sandbox: a.cfg.Sandbox + "; evidence collected by the agent's collector process, started before the sandbox to keep read access to other processes' /proc/PID/fd, exe and ns; it has no network and writes nothing"}
	if dl, ok := ctx.Deadline(); ok {
		// Leave the collector time to sign and send what it has before the
		// agent gives up on it.
		cr.BudgetMS = max(time.Until(dl)-time.Second, time.Second).Milliseconds()
	}
	// The collector has no network: measure the controller's clock here.
	pctx, cancel := context.WithTimeout(ctx, snapshot.ClockProbeBudget)
	off, err := a.clockProbe(pctx)
	cancel()
	if err != nil {
		cr.ClockOffsetError = err.Error()
	} else {
		ns := off.Nanoseconds()
		cr.ClockOffsetNS = &ns
	}
	b, err := a.cfg.Collector.Take(ctx, cr)
	if errors.Is(err, ErrCollectorGone) {
		l.Error("snapshot collector lost; taking the snapshot inside the sandbox, where other processes' fd, exe and namespaces cannot be read; restart the agent to get the collector back", "err", err)
		req.Sandbox = inside
		// A budget of its own: the collector may have used up the order's.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fallbackBudget)
		defer cancel()
		b, ferr := snapshot.Take(fctx, req)
		if ferr != nil {
			return nil, ferr
		}
		return b, fmt.Errorf("%w: evidence degraded: %v; this snapshot was taken inside the sandbox and lacks other processes' socket owners, executable hashes and namespaces; restart the agent (systemctl restart cordon-agent) to get the collector back", errDegraded, err)
	}
	return b, err
}

// errDegraded marks a snapshot that was taken, but with less than it should
// hold.
var errDegraded = errors.New("degraded")

// recover puts the host back as it was before a failed isolation. A plugin
// that returned an error has rolled its attempt back itself; one that
// crashed or hung may have left part of it, which is removed here, or, if
// the host was isolated before, replaced by the earlier policy again. When
// the earlier policy is not known, nothing is removed: the host stays as
// contained as it is (fail closed).
func (a *Agent) recover(ctx context.Context, l *slog.Logger, orderID string, cause error, prior *policy.Policy, priorKnown bool) error {
	switch {
	case errors.Is(cause, errPluginStart):
		return fmt.Errorf("%w; no rule was changed, the host is as it was", cause)
	case !errors.Is(cause, firewall.ErrPluginCrashed):
		// The plugin undid what it could not finish, or kept what it
		// could apply (fail closed); the report says what stands.
		return cause
	}
	l.Error("firewall plugin crashed during isolate; restoring the earlier state", "err", cause)
	switch {
	case priorKnown && prior == nil:
		n, err := a.fw.release(ctx, a.cfg.PluginTimeout, orderID)
		if err != nil {
			return fmt.Errorf("%w; removing its partial rules also failed: %v", cause, err)
		}
		l.Warn("partial rules of the crashed attempt removed", "removed", n)
		return fmt.Errorf("%w; its partial rules were removed, the host is as it was (not isolated)", cause)
	case prior != nil:
		if _, err := a.fw.isolate(ctx, a.cfg.PluginTimeout, *prior, orderID); err != nil {
			return fmt.Errorf("%w; restoring the earlier isolation also failed: %v", cause, err)
		}
		return fmt.Errorf("%w; the earlier isolation is in force again", cause)
	}
	return fmt.Errorf("%w; the host was isolated before this agent started, so whatever rules stand were left in place", cause)
}

// fail reports a failed order with the firewall's state after it, in the
// report and, for people, in the message.
func (a *Agent) fail(ctx context.Context, l *slog.Logger, o wire.Order, snapNS int64, err error, extra string) {
	msg := err.Error()
	if extra != "" {
		msg += "; " + extra
	}
	fs := a.firewallState(ctx)
	a.refreshApplied(ctx)
	switch {
	case fs.Error != "":
		msg += "; the firewall state could not be read: " + fs.Error
	case fs.Isolated:
		msg += "; the host's firewall now: Cordon's rules in place (isolated)"
	case fs.Partial != "":
		msg += "; the host's firewall now: Cordon's rules partly in place: " + fs.Partial
	default:
		msg += "; the host's firewall now: no Cordon rules"
	}
	a.report(wire.Report{OrderID: o.ID, Stage: wire.StageFailed, Error: msg, Firewall: &fs, SnapshotNS: snapNS})
	l.Error("order failed", "err", msg, "firewall_isolated", fs.Isolated, "firewall_partial", fs.Partial)
}

func (a *Agent) release(ctx context.Context, l *slog.Logger, o wire.Order) {
	t1 := time.Now()
	n, err := a.fw.release(ctx, a.cfg.PluginTimeout, o.ID)
	if errors.Is(err, firewall.ErrPluginCrashed) {
		l.Error("firewall plugin crashed during release; trying once more", "err", err)
		n, err = a.fw.release(ctx, a.cfg.PluginTimeout, o.ID)
	}
	applyNS := time.Since(t1).Nanoseconds()
	if err != nil {
		a.fail(ctx, l, o, 0, err, "")
		return
	}
	t2 := time.Now()
	st, err := a.fw.status(ctx, a.cfg.PluginTimeout)
	verifyNS := time.Since(t2).Nanoseconds()
	switch {
	case err != nil:
		err = fmt.Errorf("verify release: %w", err)
	case st.Isolated || st.Partial != "":
		err = fmt.Errorf("verify release: Cordon's rules are still there (%s)", st.Partial)
	}
	if err != nil {
		a.fail(ctx, l, o, 0, err, "")
		return
	}
	a.setApplied(nil, true)
	a.report(wire.Report{OrderID: o.ID, Stage: wire.StageReleased, ApplyNS: applyNS, VerifyNS: verifyNS})
	l.Info("host released and verified", "removed", n, "took", time.Since(t1).Round(time.Microsecond))
}

// refreshApplied reads back what Cordon's rules enforce after a failure,
// which may have left some in place (IPv4 without IPv6, say): the agent must
// then dial only what they allow.
func (a *Agent) refreshApplied(ctx context.Context) {
	st, err := a.fw.status(ctx, a.cfg.PluginTimeout)
	if err != nil {
		return
	}
	switch {
	case st.Isolated:
		a.setApplied(st.Policy, st.Policy != nil)
		if id, _ := a.inForceOrder(); id == "" {
			a.setInForceOrder("", st.Digest)
		}
	case st.Policy != nil || st.Partial != "":
		a.setApplied(st.Policy, false)
	default:
		a.setApplied(nil, true)
	}
}

// applied returns the policy this agent has in force (nil when the host is
// not isolated) and whether that is known; it is not known when the host
// was found isolated at start.
func (a *Agent) applied() (*policy.Policy, bool) {
	a.ordMu.Lock()
	defer a.ordMu.Unlock()
	return a.inForce, a.inForceKnown
}

func (a *Agent) setApplied(p *policy.Policy, known bool) {
	a.ordMu.Lock()
	defer a.ordMu.Unlock()
	a.inForce, a.inForceKnown = p, known
}

// clockProbe measures the controller's clock minus this host's, NTP style:
// the controller's time against the midpoint of the round trip.
func (a *Agent) clockProbe(ctx context.Context) (time.Duration, error) {
	conn, _, _ := a.current()
	if conn == nil {
		return 0, errors.New("not connected to the controller")
	}
	type result struct {
		payload []byte
		err     error
	}
	t0 := time.Now()
	rc := make(chan result, 1)
	go func() {
		ok, p, err := conn.SendRequest(wire.ReqTime, true, nil)
		if err == nil && !ok {
			err = errors.New("controller refused the time request")
		}
		rc <- result{p, err}
	}()
	select {
	case <-ctx.Done():
		return 0, fmt.Errorf("controller clock: %w", ctx.Err())
	case r := <-rc:
		t1 := time.Now()
		if r.err != nil {
			return 0, r.err
		}
		if len(r.payload) != 8 {
			return 0, fmt.Errorf("controller clock: %d-byte answer", len(r.payload))
		}
		ctrl := time.Unix(0, int64(beUint64(r.payload)))
		mid := t0.Add(t1.Sub(t0) / 2)
		return ctrl.Sub(mid), nil
	}
}

func beUint64(b []byte) uint64 {
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}

// newID returns a sortable, readable id such as
// "snp-20261129t101530-9f2ab1c3".
func newID(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s-%s-%x", prefix, time.Now().UTC().Format("20060102t150405"), b)
}

// hostIdentity is the host's identity for the hello.
func hostIdentity() snapshot.Identity { return snapshot.HostIdentity() }

// controllerLookupTimeout bounds the lookup of the controller's name
// before an isolation.
const controllerLookupTimeout = 2 * time.Second

// controllerAddrs pins the controller's endpoints for an isolation when the
// agent is configured with a name: before the host is isolated, every
// A and AAAA address the name has, so that the agent can reach whichever
// it dials later without a lookup (nothing is resolved on an isolated
// host); while it is isolated already, the controller endpoints of the
// policy in force. An address (not a name) adds nothing: the connected
// endpoint is in the policy anyway. A lookup that fails is logged, and the
// isolation goes on with the endpoints known. The answer is as trustworthy
// as the resolver the agent used to connect: a forged one cannot pass for
// the controller (its host key is pinned), but its address stays
// reachable on the controller's port while the host is isolated.
func (a *Agent) controllerAddrs(ctx context.Context, l *slog.Logger) []policy.Endpoint {
	host, portText, err := net.SplitHostPort(a.cfg.Controller)
	if err != nil {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return nil
	}
	if inForce, _ := a.applied(); inForce != nil {
		return inForce.Controllers
	}
	lctx, cancel := context.WithTimeout(ctx, controllerLookupTimeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(lctx, "ip", host)
	if err != nil {
		l.Warn("cannot resolve the controller's name before isolating; pinning only the endpoint connected to", "controller", a.cfg.Controller, "err", err)
		return nil
	}
	var out []policy.Endpoint
	for _, ad := range addrs {
		if ad.IsValid() && !ad.IsUnspecified() && ad.Zone() == "" {
			out = append(out, policy.Endpoint{Addr: ad.Unmap(), Port: uint16(port)})
		}
	}
	l.Info("controller endpoints pinned for the isolation", "controller", a.cfg.Controller, "addresses", len(out))
	return out
}
