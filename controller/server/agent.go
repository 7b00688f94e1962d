package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/controller/evidencestore"
	"github.com/cordon-ir/cordon/controller/store"
	"github.com/cordon-ir/cordon/pkg/evidence"
	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/cordon-ir/cordon/pkg/sshkey"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// agentConn is one live agent connection.
type agentConn struct {
	name   string
	fp     string
	key    ssh.PublicKey // the enrolled agent key
	conn   *ssh.ServerConn
	local  netip.AddrPort // the controller's end of the connection
	log    *slog.Logger
	kickCh chan struct{}
	done   chan struct{}
}

func (a *agentConn) kick() {
	select {
	case a.kickCh <- struct{}{}:
	default:
	}
}

// channelTimeout bounds a request/response exchange on one channel, so that
// a half-dead agent cannot hold a goroutine forever.
const channelTimeout = 30 * time.Second

func (s *Server) serveAgent(ctx context.Context, sconn *ssh.ServerConn, chans <-chan ssh.NewChannel, reqs <-chan *ssh.Request) {
	ext := sconn.Permissions.Extensions
	a := &agentConn{
		name:   ext[extName],
		fp:     ext[extFP],
		conn:   sconn,
		kickCh: make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	key, err := sshkey.ParseAuthorizedKey(ext[extKey])
	if err != nil {
		s.log.Error("agent connection without its key", "host", a.name, "err", err)
		return
	}
	a.key = key
	if ap, err := netip.ParseAddrPort(sconn.LocalAddr().String()); err == nil {
		a.local = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	a.log = s.log.With("host", a.name, "remote", sconn.RemoteAddr().String())
	go s.agentRequests(reqs)

	// The first channel must be the hello.
	var hello wire.Hello
	select {
	case nc, ok := <-chans:
		if !ok {
			return
		}
		if nc.ChannelType() != wire.ChanHello {
			nc.Reject(ssh.Prohibited, "send "+wire.ChanHello+" first")
			a.log.Warn("agent did not start with hello", "channel", nc.ChannelType())
			return
		}
		if err := s.acceptHello(ctx, a, nc, &hello); err != nil {
			a.log.Warn("hello refused", "err", err)
			return
		}
	case <-time.After(s.cfg.HandshakeTimeout):
		a.log.Warn("agent sent no hello in time")
		return
	case <-ctx.Done():
		return
	}

	s.mu.Lock()
	old := s.agents[a.name]
	s.agents[a.name] = a
	s.mu.Unlock()
	if old != nil {
		a.log.Info("agent reconnected; closing its previous connection")
		old.conn.Close()
	}
	a.log.Info("agent online", "agent_version", hello.AgentVersion, "plugin", hello.Firewall.Plugin,
		"isolated", hello.Firewall.Isolated)
	s.notify()

	go s.keepalive(a)
	go s.deliverLoop(ctx, a)
	a.kick()

	// Bound what one agent, which may be the compromised host itself, can
	// hold open at once.
	reports, uploads := newLimit(maxReportChannels), newLimit(maxEvidenceChannels)
	for nc := range chans {
		switch nc.ChannelType() {
		case wire.ChanReport:
			reports.run(nc, "report", func() { s.handleReport(ctx, a, nc) })
		case wire.ChanEvidence:
			uploads.run(nc, "evidence", func() { s.handleEvidence(ctx, a, nc) })
		default:
			nc.Reject(ssh.UnknownChannelType, "unknown channel type")
		}
	}
	close(a.done)
	s.mu.Lock()
	if s.agents[a.name] == a {
		delete(s.agents, a.name)
	}
	s.mu.Unlock()
	s.touch(a.name)
	s.notify()
	a.log.Info("agent offline")
}

// Channels one agent may have open at once. The agent sends one report and
// one bundle at a time; the rest is room for a retry racing a slow answer.
const (
	maxReportChannels   = 8
	maxEvidenceChannels = 2
)

// limit runs channel handlers, at most n at a time, and refuses channels
// beyond that.
type limit chan struct{}

func newLimit(n int) limit { return make(limit, n) }

func (l limit) run(nc ssh.NewChannel, what string, handle func()) {
	select {
	case l <- struct{}{}:
		go func() {
			defer func() { <-l }()
			handle()
		}()
	default:
		nc.Reject(ssh.ResourceShortage, fmt.Sprintf("too many %s channels open at once (at most %d)", what, cap(l)))
	}
}

// agentRequests answers an agent's global requests: keepalives and clock
// probes. Anything else is refused.
func (s *Server) agentRequests(reqs <-chan *ssh.Request) {
	for r := range reqs {
		switch r.Type {
		case wire.ReqKeepalive:
			r.Reply(true, nil)
		case wire.ReqTime:
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(time.Now().UnixNano()))
			r.Reply(true, b[:])
		default:
			r.Reply(false, nil)
		}
	}
}

// keepalive closes the connection when the agent stops answering.
func (s *Server) keepalive(a *agentConn) {
	t := time.NewTicker(s.cfg.KeepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-a.done:
			return
		case <-t.C:
		}
		if err := sendKeepalive(a.conn, s.cfg.KeepaliveInterval); err != nil {
			a.log.Warn("agent stopped answering; closing its connection", "err", err)
			a.conn.Close()
			return
		}
		s.touch(a.name)
	}
}

// sendKeepalive sends a keepalive request and waits up to timeout for the
// reply.
func sendKeepalive(c ssh.Conn, timeout time.Duration) error {
	errc := make(chan error, 1)
	go func() {
		_, _, err := c.SendRequest(wire.ReqKeepalive, true, nil)
		errc <- err
	}()
	select {
	case err := <-errc:
		return err
	case <-time.After(timeout):
		return fmt.Errorf("no keepalive reply in %v", timeout)
	}
}

// touch records that the agent was seen now.
func (s *Server) touch(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now := time.Now().UTC()
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		h, err := tx.Host(name)
		if err != nil {
			return err
		}
		h.LastSeen = now
		return tx.PutHost(h)
	})
	if err != nil {
		s.log.Warn("record last seen", "host", name, "err", err)
	}
}

// acceptHello reads the agent's hello, records what it says and reconciles
// the host's desired state with its firewall (DESIGN.md §3.7).
func (s *Server) acceptHello(ctx context.Context, a *agentConn, nc ssh.NewChannel, hello *wire.Hello) error {
	ch, reqs, err := nc.Accept()
	if err != nil {
		return err
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	stop := closeAfter(ch, s.cfg.HandshakeTimeout)
	defer stop()
	if err := wire.ReadFrame(ch, hello); err != nil {
		wire.WriteFrame(ch, &wire.HelloAck{V: wire.Version, Error: err.Error()})
		return err
	}
	if hello.Name != a.name {
		err := fmt.Errorf("agent key is enrolled as %q but the agent says it is %q", a.name, hello.Name)
		wire.WriteFrame(ch, &wire.HelloAck{V: wire.Version, Error: err.Error()})
		return err
	}
	if err := s.reconcile(ctx, a, hello); err != nil {
		wire.WriteFrame(ch, &wire.HelloAck{V: wire.Version, Error: "controller could not record the hello"})
		return err
	}
	return wire.WriteFrame(ch, &wire.HelloAck{V: wire.Version, OK: true})
}

func (s *Server) reconcile(ctx context.Context, a *agentConn, hello *wire.Hello) error {
	now := time.Now().UTC()
	fw := hello.Firewall
	var repush *store.Order
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		repush = nil
		h, err := tx.Host(a.name)
		if err != nil {
			return err
		}
		h.LastSeen, h.Addr = now, a.conn.RemoteAddr().String()
		h.Hostname, h.MachineID, h.BootID, h.AgentVersion = hello.Hostname, hello.MachineID, hello.BootID, hello.AgentVersion
		switch {
		case h.CloudBoundBy == "":
			// What the agent reports, checked with the provider at the
			// next order.
			h.CloudProvider, h.CloudInstanceID = hello.CloudProvider, hello.CloudInstanceID
		case hello.CloudProvider != h.CloudProvider || hello.CloudInstanceID != h.CloudInstanceID:
			// A binding confirmed by the provider, or set by an operator,
			// stands: an agent that now names another instance, or none,
			// could be switching the cloud layer off.
			if err := tx.AddAudit(store.Audit{At: now, Actor: h.Name, ActorKey: h.Fingerprint, Action: "cloud-binding-mismatch", Host: h.Name,
				Detail: fmt.Sprintf("the agent reports %s instance %q, but the host stays bound to %s instance %s (bound by %s); 'cordon host bind %s --clear' if it really moved",
					dashIfEmpty(hello.CloudProvider), hello.CloudInstanceID, h.CloudProvider, h.CloudInstanceID, h.CloudBoundBy, h.Name)}); err != nil {
				return err
			}
		}
		if a.local.IsValid() && !a.local.Addr().IsUnspecified() {
			h.ControllerEndpoint = a.local.String()
		}
		h.Plugin, h.PluginReason = fw.Plugin, fw.PluginReason
		if fw.Version != "" {
			h.Plugin += " " + fw.Version
		}
		if fw.Error != "" {
			h.Plugin += " (unusable: " + fw.Error + ")"
		}
		// Orders the agent had but no longer knows of (it restarted while
		// carrying them out) go back to pending, to be sent again.
		inFlight := false
		orders, err := tx.Orders(h.Name, 20)
		if err != nil {
			return err
		}
		for _, o := range orders {
			switch o.State {
			case store.OrderPending:
				inFlight = true
			case store.OrderDelivered:
				inFlight = true
				if !slices.Contains(hello.Orders, o.ID) {
					o.State = store.OrderPending
					if err := tx.PutOrder(o); err != nil {
						return err
					}
					if err := tx.AddAudit(store.Audit{At: now, Actor: "controller", Action: "redeliver", Host: h.Name, OrderID: o.ID,
						Detail: "agent reconnected without the order (it restarted); sending it again"}); err != nil {
						return err
					}
				}
			}
		}
		if !inFlight {
			// Rules in place that are not the ones this controller saw
			// verified (rewritten while the agent was down, or by another
			// plugin) are put right the same way as missing ones.
			foreign := fw.Isolated && h.State == store.StateIsolated && h.Digest != "" && fw.Digest != h.Digest
			switch {
			case h.Desired == store.StateIsolated && (!fw.Isolated || foreign) && h.IsolateOrder != "":
				// Rules are gone (reboot, or removed by hand) or not the
				// verified ones: isolate again with the same policy.
				prev, err := tx.Order(h.IsolateOrder)
				if err != nil {
					return err
				}
				why := "agent reconnected without Cordon's rules"
				if foreign {
					why = "agent reconnected with rules (digest " + fw.Digest + ") other than those verified (" + h.Digest + ")"
				}
				o := &store.Order{ID: newID("ord"), Host: h.Name, Kind: string(wire.KindIsolate),
					Reason: "re-apply isolation: " + why + " (" + prev.ID + ")", Incident: prev.Incident,
					Allow: prev.Allow, DNS: prev.DNS, DHCP: prev.DHCP, Operator: "controller", State: store.OrderPending, CreatedAt: now}
				if err := tx.AddOrder(o); err != nil {
					return err
				}
				h.State, h.StateReason, h.StateSince = store.StateIsolating, "re-applying after reconnect", now
				h.LastOrder, h.IsolateOrder = o.ID, o.ID
				repush = o
				if err := tx.AddAudit(store.Audit{At: now, Actor: "controller", Action: "isolate", Host: h.Name, OrderID: o.ID,
					Detail: o.Reason}); err != nil {
					return err
				}
			case fw.Isolated && h.State != store.StateIsolated:
				h.State, h.StateSince, h.Digest = store.StateIsolated, now, fw.Digest
				h.StateReason = ""
				if h.Desired != store.StateIsolated {
					h.StateReason = "agent reports Cordon's rules in place although release was the last order; release it with 'cordon release host'"
				}
			case !fw.Isolated && h.State == store.StateIsolated:
				h.State, h.StateSince, h.Digest, h.StateReason = store.StateReleased, now, "", "agent reports no Cordon rules"
			}
		}
		return tx.PutHost(h)
	})
	if err != nil {
		return err
	}
	if repush != nil {
		a.log.Warn("re-applying isolation after reconnect", "order_id", repush.ID, "incident", repush.Incident)
	}
	return nil
}

// deliverLoop sends the host's pending orders, oldest first, whenever it is
// kicked, until the connection ends.
func (s *Server) deliverLoop(ctx context.Context, a *agentConn) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-a.done:
			return
		case <-ctx.Done():
			return
		case <-a.kickCh:
		case <-retry.C:
		}
		var pending []store.Order
		err := s.cfg.Store.View(ctx, func(tx store.Tx) (err error) {
			pending, err = tx.PendingOrders(a.name)
			return err
		})
		if err != nil {
			a.log.Error("read pending orders", "err", err)
			retry.Reset(5 * time.Second)
			continue
		}
		for _, o := range pending {
			if err := s.deliver(ctx, a, o); err != nil {
				a.log.Warn("order not delivered; will retry", "order_id", o.ID, "incident", o.Incident, "err", err)
				retry.Reset(5 * time.Second)
				break
			}
		}
	}
}

// endpoints returns the controller endpoints the agent must keep reaching:
// the address it is connected to, and any advertised ones.
func (s *Server) endpoints(a *agentConn) []policy.Endpoint {
	var eps []policy.Endpoint
	if a.local.IsValid() && !a.local.Addr().IsUnspecified() {
		eps = append(eps, policy.Endpoint{Addr: a.local.Addr(), Port: a.local.Port()})
	}
	return append(eps, s.cfg.Advertise...)
}

// deliver sends one order and records the agent's answer.
func (s *Server) deliver(ctx context.Context, a *agentConn, o store.Order) error {
	wo := wire.Order{V: wire.Version, ID: o.ID, Kind: wire.OrderKind(o.Kind), Host: o.Host, Reason: o.Reason,
		Incident: o.Incident, Operator: o.Operator, IssuedAt: o.CreatedAt}
	if o.OperatorKey != "" {
		wo.Operator += " (" + o.OperatorKey + ")"
	}
	if wo.Kind == wire.KindIsolate {
		p := policy.Policy{Controllers: s.endpoints(a)}
		for _, c := range o.Allow {
			pfx, err := policy.ParsePrefix(c)
			if err != nil {
				return s.failOrder(ctx, o, fmt.Sprintf("stored allowlist entry: %v", err))
			}
			p.Allow = append(p.Allow, pfx)
		}
		for _, d := range o.DNS {
			ip, err := netip.ParseAddr(d)
			if err != nil {
				return s.failOrder(ctx, o, fmt.Sprintf("stored DNS resolver: %v", err))
			}
			p.DNS = append(p.DNS, ip)
		}
		p.DHCP = o.DHCP
		p = p.Canonical()
		wo.Policy = &p
	}
	if err := wo.Validate(); err != nil {
		return s.failOrder(ctx, o, fmt.Sprintf("order cannot be sent: %v", err))
	}
	ch, reqs, err := a.conn.OpenChannel(wire.ChanOrder, nil)
	if err != nil {
		return fmt.Errorf("open order channel: %w", err)
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	stop := closeAfter(ch, channelTimeout)
	defer stop()
	if err := wire.WriteFrame(ch, &wo); err != nil {
		return fmt.Errorf("send order: %w", err)
	}
	var ack wire.OrderAck
	if err := wire.ReadFrame(ch, &ack); err != nil {
		return fmt.Errorf("read order ack: %w", err)
	}
	if !ack.Accepted {
		return s.failOrder(ctx, o, "agent refused the order: "+ack.Error)
	}
	now := time.Now().UTC()
	err = s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.Order(o.ID)
		if err != nil {
			return err
		}
		if cur.State != store.OrderPending {
			return nil // a report overtook the ack
		}
		cur.State, cur.DeliveredAt = store.OrderDelivered, now
		return tx.PutOrder(cur)
	})
	if err != nil {
		return err
	}
	a.log.Info("order delivered", "order_id", o.ID, "kind", o.Kind, "incident", o.Incident)
	s.notify()
	return nil
}

// failOrder marks an order failed without the agent having run it. It
// returns nil so delivery goes on with the next order.
func (s *Server) failOrder(ctx context.Context, o store.Order, reason string) error {
	now := time.Now().UTC()
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.Order(o.ID)
		if err != nil {
			return err
		}
		cur.State, cur.Error, cur.DoneAt = store.OrderFailed, reason, now
		if err := tx.PutOrder(cur); err != nil {
			return err
		}
		h, err := tx.Host(o.Host)
		if err != nil {
			return err
		}
		if h.LastOrder == o.ID {
			h.State, h.StateReason, h.StateSince = store.StateFailed, reason, now
			if err := tx.PutHost(h); err != nil {
				return err
			}
		}
		return tx.AddAudit(store.Audit{At: now, Actor: "controller", Action: "order-failed", Host: o.Host, OrderID: o.ID, Detail: reason})
	})
	if err == nil {
		s.metrics.orderFailed(o.Kind)
	}
	s.notify()
	s.log.Error("order failed", "host", o.Host, "order_id", o.ID, "incident", o.Incident, "err", reason)
	return err
}

// handleReport records an agent's report on an order.
func (s *Server) handleReport(ctx context.Context, a *agentConn, nc ssh.NewChannel) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	stop := closeAfter(ch, channelTimeout)
	defer stop()
	var r wire.Report
	if err := wire.ReadFrame(ch, &r); err != nil {
		a.log.Warn("bad report", "err", err)
		wire.WriteFrame(ch, &wire.Ack{V: wire.Version, Error: err.Error()})
		return
	}
	var o store.Order
	var fx reportEffect
	err = s.cfg.Store.Update(ctx, func(tx store.Tx) (err error) {
		o, fx, err = applyReportMeasured(tx, a.name, &r, time.Now().UTC())
		return err
	})
	if err != nil {
		a.log.Warn("report not recorded", "order_id", r.OrderID, "incident", s.orderIncident(ctx, r.OrderID), "err", err)
		ack := wire.Ack{V: wire.Version, Error: "controller could not record the report"}
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, errForeignOrder) || errors.Is(err, errBadReport) {
			ack.Error, ack.Drop = err.Error(), true
		}
		wire.WriteFrame(ch, &ack)
		return
	}
	s.metrics.report(fx)
	wire.WriteFrame(ch, &wire.Ack{V: wire.Version, OK: true})
	s.notify()
	l := a.log.With("order_id", o.ID, "incident", o.Incident, "stage", string(r.Stage))
	switch r.Stage {
	case wire.StageFailed:
		l.Error("order failed on the agent", "err", r.Error)
	case wire.StageIsolated:
		l.Info("host isolated", "digest", r.Digest, "issued_to_verified", time.Duration(o.DoneAt.Sub(o.CreatedAt)).String())
	case wire.StageRepaired:
		l.Warn("drift repaired: Cordon's rules were changed behind the agent's back and put back", "drift", r.Drift,
			"repair", time.Duration(r.ApplyNS).String(), "wrong_for_at_most", time.Duration(r.DriftNS).String(), "err", r.Error)
	default:
		l.Info("order progress")
	}
}

// orderIncident returns the incident of a stored order, for a log line
// that knows only the order's id: every line about an order carries its
// order_id, host and incident, the incident "" when the order has none or
// is not found (a key searched for is then there all the same).
func (s *Server) orderIncident(ctx context.Context, id string) string {
	if id == "" {
		return ""
	}
	var o store.Order
	if err := s.cfg.Store.View(ctx, func(tx store.Tx) (err error) { o, err = tx.Order(id); return err }); err != nil {
		return ""
	}
	return o.Incident
}

var (
	errForeignOrder = errors.New("order belongs to another host")
	errBadReport    = errors.New("report does not fit the order")
)

// stageFits says which stages an order of a kind can report.
func stageFits(kind string, st wire.Stage) bool {
	switch st {
	case wire.StageFailed:
		return true
	case wire.StageSnapshot:
		return kind == string(wire.KindIsolate) || kind == string(wire.KindSnapshot)
	case wire.StageIsolated, wire.StageRepaired:
		return kind == string(wire.KindIsolate)
	case wire.StageReleased:
		return kind == string(wire.KindRelease)
	}
	return false
}

// applyReport updates an order and its host from a report. Reports are
// idempotent: one that arrives twice changes nothing the second time.
func applyReport(tx store.Tx, host string, r *wire.Report, now time.Time) (store.Order, error) {
	if r.Stage == wire.StageRepaired && r.OrderID == "" {
		h, err := tx.Host(host)
		if err != nil {
			return store.Order{}, err
		}
		if h.IsolateOrder == "" {
			return store.Order{}, fmt.Errorf("%w: a repair on a host with no isolation in force", errBadReport)
		}
		r.OrderID = h.IsolateOrder
	}
	o, err := tx.Order(r.OrderID)
	if err != nil {
		return o, err
	}
	if o.Host != host {
		return o, fmt.Errorf("%w: %s is for %s", errForeignOrder, o.ID, o.Host)
	}
	h, err := tx.Host(host)
	if err != nil {
		return o, err
	}
	if o.State == store.OrderPending {
		o.State, o.DeliveredAt = store.OrderDelivered, now
	}
	if !stageFits(o.Kind, r.Stage) {
		return o, fmt.Errorf("%w: stage %s does not belong to an order of kind %s", errBadReport, r.Stage, o.Kind)
	}
	latest := h.LastOrder == o.ID
	audit := store.Audit{At: now, Actor: host, ActorKey: h.Fingerprint, Host: host, OrderID: o.ID}
	switch r.Stage {
	case wire.StageRepaired:
		// Not a step of the order: the host's record and the audit trail
		// say what was found and how fast it was put right. The agent's
		// time of the repair tells a report received twice.
		if h.LastRepair.Equal(r.At) {
			return o, nil
		}
		n := max(1, r.Repairs)
		detail := fmt.Sprintf("rules found changed (%s); ", r.Drift)
		if n > 1 {
			detail = fmt.Sprintf("rules found changed %d times since the last report (first: %s); ", n, r.Drift)
		}
		if r.Error != "" {
			detail += "putting them back failed: " + r.Error
			audit.Action = "drift-repair-failed"
			h.StateReason = "drift repair failed: " + r.Error
		} else {
			detail += fmt.Sprintf("put back in %v", time.Duration(r.ApplyNS).Round(time.Millisecond))
			if r.DriftNS > 0 {
				detail += fmt.Sprintf(", wrong for at most %v", time.Duration(r.DriftNS).Round(time.Millisecond))
			}
			detail += ", digest " + r.Digest
			audit.Action = "drift-repaired"
			h.Repairs += n
			h.Digest = r.Digest
			if h.State == store.StateIsolated {
				h.StateReason = ""
			}
		}
		h.LastRepair, h.LastRepairDetail, audit.Detail = r.At, detail, detail
		if err := tx.PutHost(h); err != nil {
			return o, err
		}
		return o, tx.AddAudit(audit)
	case wire.StageSnapshot:
		if o.SnapshotID == "" || !o.SnapshotStored && o.SnapshotID != r.Snapshot.ID {
			// A redelivered order reports the snapshot of its new attempt.
			o.SnapshotID, o.SnapshotSHA256, o.SnapshotSize, o.SnapshotNS = r.Snapshot.ID, r.Snapshot.SHA256, r.Snapshot.Size, r.SnapshotNS
			audit.Action = "snapshot"
			audit.Detail = fmt.Sprintf("snapshot %s taken in %v, sha256 %s, %d bytes", r.Snapshot.ID, time.Duration(r.SnapshotNS), r.Snapshot.SHA256, r.Snapshot.Size)
			if r.Error != "" {
				// The evidence was taken, but with less than it should hold.
				o.Error = r.Error
				audit.Detail += "; " + r.Error
			}
			if sn, err := tx.Snapshot(r.Snapshot.ID); err == nil && sn.Host == host && sn.SHA256 == r.Snapshot.SHA256 {
				o.SnapshotStored, o.SnapshotVerified = true, sn.Verified
			}
		}
		// A snapshot order is done once its snapshot is taken; the upload
		// follows.
		if o.Kind == string(wire.KindSnapshot) && o.State != store.OrderDone {
			o.State, o.DoneAt = store.OrderDone, now
		}
	case wire.StageIsolated, wire.StageReleased, wire.StageFailed:
		if o.State == store.OrderDone || o.State == store.OrderFailed {
			return o, nil
		}
		o.DoneAt, o.ApplyNS, o.VerifyNS, o.FlowsCut = now, r.ApplyNS, r.VerifyNS, r.FlowsCut
		if r.SnapshotNS != 0 {
			o.SnapshotNS = r.SnapshotNS
		}
		switch r.Stage {
		case wire.StageIsolated:
			// Error on a done isolation says the evidence is missing.
			o.State, o.Digest, o.Error = store.OrderDone, r.Digest, r.Error
			audit.Action, audit.Detail = "isolated", "isolation verified, rules digest "+r.Digest
			if r.SelfTest != "" {
				audit.Detail += "; self-test: " + r.SelfTest
			}
			if r.Error != "" {
				audit.Detail += "; " + r.Error
			}
			if latest {
				h.State, h.StateReason, h.Digest = store.StateIsolated, "", r.Digest
			}
		case wire.StageReleased:
			o.State = store.OrderDone
			audit.Action, audit.Detail = "released", "Cordon's rules removed"
			if latest {
				h.State, h.StateReason, h.Digest = store.StateReleased, "", ""
			}
		case wire.StageFailed:
			o.State, o.Error = store.OrderFailed, r.Error
			audit.Action, audit.Detail = "order-failed", r.Error
			if fw := r.Firewall; fw != nil {
				audit.Detail += fmt.Sprintf(" (firewall: isolated=%v %s)", fw.Isolated, fw.Partial)
			}
			if latest {
				h.State, h.StateReason = store.StateFailed, r.Error
				if fw := r.Firewall; fw != nil && fw.Isolated {
					h.Digest = fw.Digest
				}
			}
		}
		if latest {
			h.StateSince = now
		}
	}
	if err := tx.PutOrder(o); err != nil {
		return o, err
	}
	if err := tx.PutHost(h); err != nil {
		return o, err
	}
	if audit.Action != "" {
		if err := tx.AddAudit(audit); err != nil {
			return o, err
		}
	}
	return tx.Order(o.ID)
}

// Limits on an evidence upload: it must keep moving (idle), and finish in
// a time that allows a slow link (minRate) but not a trickle that holds a
// goroutine and a temporary file for ever.
const (
	uploadIdle    = time.Minute
	uploadMinRate = 32 << 10 // bytes per second
)

// handleEvidence receives an evidence bundle, stores it content-addressed,
// verifies it against the agent's enrolled key, and records it with its
// first custody entry. A bundle that does not verify is kept (it is still
// what the host sent) but marked as such. A transfer or storage failure is
// answered with an error, so the agent keeps the bundle and sends it again.
func (s *Server) handleEvidence(ctx context.Context, a *agentConn, nc ssh.NewChannel) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	var hdr wire.EvidenceHeader
	reply := func(err error) {
		ack := wire.Ack{V: wire.Version, OK: err == nil}
		if err != nil {
			ack.Error = err.Error()
			ack.Drop = errors.Is(err, errUnexpectedEvidence)
		}
		wire.WriteFrame(ch, &ack)
	}
	stopHdr := closeAfter(ch, channelTimeout)
	if err := wire.ReadFrame(ch, &hdr); err != nil {
		stopHdr()
		a.log.Warn("bad evidence header", "err", err)
		reply(err)
		return
	}
	stopHdr()
	// Evidence comes only for an order that asked for it, one bundle per
	// order: a host cannot fill the controller's disk on its own.
	incident, err := s.expectEvidence(ctx, a, &hdr)
	l := a.log.With("snapshot_id", hdr.SnapshotID, "order_id", hdr.OrderID, "incident", incident)
	if err != nil {
		l.Warn("evidence refused", "err", err)
		reply(err)
		return
	}
	if err := s.cfg.Evidence.CheckSpace(hdr.Size); err != nil {
		l.Error("evidence not stored", "err", err)
		reply(err)
		return
	}
	stopTotal := closeAfter(ch, uploadIdle+time.Duration(hdr.Size/uploadMinRate)*time.Second)
	defer stopTotal()
	body := newIdleReader(ch, uploadIdle, func() { ch.Close() })
	defer body.stop()
	if err := s.cfg.Evidence.Put(body, hdr.SHA256, hdr.Size); err != nil {
		l.Error("evidence not stored", "err", err)
		if errors.Is(err, evidencestore.ErrMismatch) {
			reply(err)
		} else {
			reply(fmt.Errorf("controller could not store the evidence: %v", err))
		}
		return
	}
	verifyErr := ""
	detail := ""
	if rep, err := s.verifyStored(a, &hdr); err != nil {
		l.Error("stored evidence does not verify", "err", err)
		verifyErr = err.Error()
		detail = "verification at receipt FAILED: " + verifyErr
	} else {
		detail = fmt.Sprintf("verified at receipt: signature by the enrolled agent key %s, %d files", rep.SignerFingerprint, rep.Files)
	}
	now := time.Now().UTC()
	receipt, err := evidence.SignReceipt(evidence.Receipt{SnapshotID: hdr.SnapshotID, OrderID: hdr.OrderID, Host: a.name,
		BundleSHA256: hdr.SHA256, BundleSize: hdr.Size, ReceivedAt: now, AgentKey: sshkey.AuthorizedKey(a.key),
		AgentKeyFingerprint: a.fp, Verified: verifyErr == "", VerifyError: verifyErr}, s.cfg.HostKey)
	if err != nil {
		l.Error("receipt not signed", "err", err)
		reply(fmt.Errorf("controller could not sign a receipt: %v", err))
		return
	}
	fresh := false // a bundle not received before
	err = s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		snap := store.Snapshot{ID: hdr.SnapshotID, SHA256: hdr.SHA256, Size: hdr.Size, Host: a.name, OrderID: hdr.OrderID,
			TakenAt: hdr.TakenAt.UTC(), ReceivedAt: now, AgentKey: a.fp, FileName: evidence.FileName(a.name, hdr.TakenAt, hdr.SnapshotID),
			Verified: verifyErr == "", VerifyError: verifyErr, Receipt: string(receipt)}
		if err := tx.AddSnapshot(snap); err != nil {
			if !errors.Is(err, store.ErrExists) {
				return err
			}
			prev, err := tx.Snapshot(hdr.SnapshotID)
			if err != nil {
				return err
			}
			if prev.SHA256 != hdr.SHA256 || prev.Host != a.name {
				return fmt.Errorf("snapshot %s was already received with another sha256", hdr.SnapshotID)
			}
			return nil // sent again after a lost ack
		}
		fresh = true
		if err := tx.AddCustody(store.Custody{SnapshotID: snap.ID, At: now, Event: "received", Actor: a.name, ActorKey: a.fp,
			SHA256: snap.SHA256, Detail: detail}); err != nil {
			return err
		}
		if hdr.OrderID != "" {
			o, err := tx.Order(hdr.OrderID)
			if err != nil {
				return err
			}
			// The order's evidence is the snapshot its report named; a
			// bundle from an earlier attempt does not count as it.
			if o.SnapshotID == "" {
				o.SnapshotID, o.SnapshotSHA256, o.SnapshotSize = snap.ID, snap.SHA256, snap.Size
			}
			if o.SnapshotID == snap.ID && o.SnapshotSHA256 == snap.SHA256 {
				o.SnapshotStored, o.SnapshotVerified = true, snap.Verified
				if err := tx.PutOrder(o); err != nil {
					return err
				}
			}
		}
		return tx.AddAudit(store.Audit{At: now, Actor: a.name, ActorKey: a.fp, Action: "evidence-received", Host: a.name,
			OrderID: hdr.OrderID, Detail: fmt.Sprintf("snapshot %s, sha256 %s, %d bytes; %s", snap.ID, snap.SHA256, snap.Size, detail)})
	})
	if err != nil {
		l.Error("evidence not recorded", "err", err)
		reply(fmt.Errorf("controller could not record the evidence: %v", err))
		return
	}
	if fresh {
		s.metrics.evidenceStored(hdr.Size, verifyErr == "")
	}
	reply(nil)
	s.notify()
	l.Info("evidence stored", "sha256", hdr.SHA256, "size", hdr.Size, "verified", verifyErr == "")
}

// errUnexpectedEvidence marks an upload the controller will never take.
var errUnexpectedEvidence = errors.New("evidence not expected")

// expectEvidence checks that an upload belongs to an isolate order of this
// host that has no other bundle stored yet (a bundle sent again after a
// lost acknowledgement is fine), and returns the order's incident for the
// log, read in the same look-up.
func (s *Server) expectEvidence(ctx context.Context, a *agentConn, hdr *wire.EvidenceHeader) (incident string, err error) {
	if hdr.OrderID == "" {
		return "", fmt.Errorf("%w: it names no order", errUnexpectedEvidence)
	}
	var o store.Order
	err = s.cfg.Store.View(ctx, func(tx store.Tx) (err error) { o, err = tx.Order(hdr.OrderID); return })
	switch {
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return "", err
	case err != nil || o.Host != a.name:
		return "", fmt.Errorf("%w: order %s is not an order for %s", errUnexpectedEvidence, hdr.OrderID, a.name)
	case o.Kind == string(wire.KindRelease):
		return o.Incident, fmt.Errorf("%w: order %s is a %s order, which takes no snapshot", errUnexpectedEvidence, o.ID, o.Kind)
	case o.SnapshotStored && o.SnapshotID != hdr.SnapshotID:
		return o.Incident, fmt.Errorf("%w: order %s already has its evidence (%s)", errUnexpectedEvidence, o.ID, o.SnapshotID)
	}
	return o.Incident, nil
}

// verifyStored checks a stored bundle offline (hashes, signature) with the
// agent's enrolled key as the only trusted signer, within limits scaled to
// the bundle's size so a hostile bundle cannot make the controller inflate
// much more than it sent, and checks that the manifest names the snapshot
// and order its header did.
func (s *Server) verifyStored(a *agentConn, hdr *wire.EvidenceHeader) (*evidence.Report, error) {
	f, err := s.cfg.Evidence.Open(hdr.SHA256)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	limit := max(16<<20, 64*hdr.Size)
	rep, err := evidence.Verify(f, evidence.VerifyOptions{TrustedKeys: []ssh.PublicKey{a.key},
		MaxFileSize: limit, MaxTotalSize: limit})
	if err != nil {
		return nil, err
	}
	m := rep.Manifest
	switch {
	case m.SnapshotID != hdr.SnapshotID:
		return rep, fmt.Errorf("manifest names snapshot %q, the upload said %q", m.SnapshotID, hdr.SnapshotID)
	case m.OrderID != hdr.OrderID:
		return rep, fmt.Errorf("manifest names order %q, the upload said %q", m.OrderID, hdr.OrderID)
	case m.Host.Name != a.name:
		return rep, fmt.Errorf("manifest names host %q, the uploader is %q", m.Host.Name, a.name)
	}
	return rep, nil
}

// idleReader reads from r and calls onIdle if no byte arrives for d.
type idleReader struct {
	r io.Reader
	d time.Duration
	t *time.Timer
}

func newIdleReader(r io.Reader, d time.Duration, onIdle func()) *idleReader {
	return &idleReader{r: r, d: d, t: time.AfterFunc(d, onIdle)}
}

func (ir *idleReader) Read(p []byte) (int, error) {
	n, err := ir.r.Read(p)
	if n > 0 {
		ir.t.Reset(ir.d)
	}
	return n, err
}

func (ir *idleReader) stop() { ir.t.Stop() }

// closeAfter closes c after d unless the returned stop function is called
// first: a bound on an exchange over an SSH channel, which has no deadlines.
func closeAfter(c io.Closer, d time.Duration) (stop func()) {
	t := time.AfterFunc(d, func() { c.Close() })
	return func() { t.Stop() }
}
