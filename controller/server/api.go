package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/controller/store"
	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/cordon-ir/cordon/pkg/releasetoken"
	"github.com/cordon-ir/cordon/pkg/sshkey"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// maxAPIChannels bounds the requests one operator connection has under way
// at once (long-polling waits included).
const maxAPIChannels = 32

// operator is an authenticated operator connection.
type operator struct {
	name, role, fp string
	log            *slog.Logger
}

func (o operator) actor() string { return o.name }

func (s *Server) serveOperator(ctx context.Context, sconn *ssh.ServerConn, chans <-chan ssh.NewChannel, reqs <-chan *ssh.Request) {
	ext := sconn.Permissions.Extensions
	op := operator{name: ext[extName], role: ext[extRole], fp: ext[extFP]}
	s.mu.Lock()
	s.operators[sconn] = op.fp
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.operators, sconn)
		s.mu.Unlock()
	}()
	op.log = s.log.With("operator", op.name, "operator_key", op.fp, "remote", sconn.RemoteAddr().String())
	go func() {
		for r := range reqs {
			r.Reply(r.Type == wire.ReqKeepalive, nil)
		}
	}()
	apis := newLimit(maxAPIChannels)
	for nc := range chans {
		if nc.ChannelType() != api.ChanName {
			nc.Reject(ssh.UnknownChannelType, "operators may only open "+api.ChanName)
			continue
		}
		apis.run(nc, "API", func() { s.handleAPI(ctx, op, nc) })
	}
}

func (s *Server) handleAPI(ctx context.Context, op operator, nc ssh.NewChannel) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	var req api.Request
	stop := closeAfter(ch, channelTimeout)
	err = wire.ReadFrame(ch, &req)
	stop()
	if err != nil {
		writeResponse(ch, nil, api.Errorf(api.CodeInvalid, "%v", err))
		return
	}
	spec, known := ops[req.Op]
	if !known {
		writeResponse(ch, nil, api.Errorf(api.CodeInvalid, "unknown operation %q", req.Op))
		return
	}
	if op.role != api.RoleAdmin && !slices.Contains(spec.roles, op.role) {
		need := strings.Join(append(slices.Clone(spec.roles), api.RoleAdmin), " or ")
		msg := fmt.Sprintf("operator %s has role %s; %s needs role %s", op.name, op.role, spec.name, need)
		op.log.Warn("operation refused by role", "op", req.Op, "role", op.role)
		s.auditRefusal(ctx, op, req.Op, msg)
		writeResponse(ch, nil, api.Errorf(api.CodeForbidden, "%s", msg))
		return
	}
	if spec.handle == nil {
		s.download(ctx, op, req, ch)
		return
	}
	result, err := spec.handle(s, ctx, op, req.Args)
	var then func()
	if ar, ok := result.(afterReply); ok {
		result, then = ar.result, ar.then
	}
	writeResponse(ch, result, err)
	if then != nil {
		ch.CloseWrite()
		then()
	}
}

// auditRefusal records an operation refused for lack of role.
func (s *Server) auditRefusal(ctx context.Context, op operator, what, msg string) {
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		return tx.AddAudit(store.Audit{At: time.Now().UTC(), Actor: op.name, ActorKey: op.fp, Action: "refused", Detail: what + ": " + msg})
	})
	if err != nil {
		op.log.Error("audit entry not recorded", "err", err)
	}
}

func writeResponse(w io.Writer, result any, err error) error {
	resp := api.Response{V: wire.Version}
	if err != nil {
		var ae *api.Error
		if !errors.As(err, &ae) {
			ae = &api.Error{Code: api.CodeInternal, Message: err.Error()}
		}
		resp.Error = ae
	} else {
		b, merr := json.Marshal(result)
		if merr != nil {
			resp.Error = &api.Error{Code: api.CodeInternal, Message: merr.Error()}
		} else {
			resp.Result = b
		}
	}
	if err := wire.WriteFrameMax(w, &resp, api.MaxResponse); err != nil {
		if !errors.Is(err, wire.ErrFrameTooLarge) {
			return err
		}
		// Say so rather than leave the operator with a closed channel.
		resp = api.Response{V: wire.Version, Error: api.Errorf(api.CodeUnavailable, "answer too large (%v); narrow it with --host or --limit", err)}
		return wire.WriteFrame(w, &resp)
	}
	return nil
}

// decodeArgs decodes an operation's arguments strictly.
func decodeArgs(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		raw = []byte("{}")
	}
	if err := wire.Decode(raw, v); err != nil {
		return api.Errorf(api.CodeInvalid, "%v", err)
	}
	return nil
}

// storeErr turns store errors into API errors.
func storeErr(err error, what string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotFound):
		return api.Errorf(api.CodeNotFound, "%s", what)
	case isDiskFull(err):
		return api.Errorf(api.CodeUnavailable, "controller storage is full: %v", err)
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	return err
}

func isDiskFull(err error) bool {
	m := err.Error()
	return strings.Contains(m, "no space left") || strings.Contains(m, "database or disk is full") || strings.Contains(m, "SQLITE_FULL")
}

// opSpec is one operation of the API: who may run it, what operators call
// it, and its handler.
type opSpec struct {
	roles  []string // besides admin, which may run everything
	name   string   // as the CLI says it, for messages
	handle handler  // nil for snapshot.download, which streams
}

// handler decodes an operation's arguments and runs it.
type handler func(s *Server, ctx context.Context, op operator, raw json.RawMessage) (any, error)

// with adapts an operation taking typed arguments to a handler that decodes
// them strictly first.
func with[A any](f func(s *Server, ctx context.Context, op operator, a A) (any, error)) handler {
	return func(s *Server, ctx context.Context, op operator, raw json.RawMessage) (any, error) {
		var a A
		if err := decodeArgs(raw, &a); err != nil {
			return nil, err
		}
		return f(s, ctx, op, a)
	}
}

var (
	anyone    = []string{api.RoleResponder, api.RoleForensic, api.RoleViewer}
	adminOnly = []string{}
)

var ops = map[string]opSpec{
	api.OpIsolate:          {[]string{api.RoleResponder}, "isolate host", with((*Server).isolate)},
	api.OpRelease:          {[]string{api.RoleResponder}, "release host", with((*Server).release)},
	api.OpOrder:            {anyone, "order", with((*Server).order)},
	api.OpOrderWait:        {anyone, "order --wait", with((*Server).orderWait)},
	api.OpOrders:           {anyone, "orders", with((*Server).orders)},
	api.OpHosts:            {anyone, "hosts", with((*Server).hosts)},
	api.OpSnapshots:        {[]string{api.RoleForensic}, "snapshots", with((*Server).snapshots)},
	api.OpSnapshotDownload: {[]string{api.RoleForensic}, "snapshot download", nil},
	api.OpSnapshotTake:     {[]string{api.RoleResponder, api.RoleForensic}, "snapshot take", with((*Server).snapshotTake)},
	api.OpSnapshotCustody:  {[]string{api.RoleForensic}, "snapshot custody", with((*Server).custody)},
	api.OpEnrollCreate:     {adminOnly, "enroll create", with((*Server).enrollCreate)},
	api.OpOperatorAdd:      {adminOnly, "operator add", with((*Server).operatorAdd)},
	api.OpOperatorRemove:   {adminOnly, "operator remove", with((*Server).operatorRemove)},
	api.OpAudit:            {anyone, "audit", with((*Server).audit)},
	api.OpWhoami:           {anyone, "operator whoami", with((*Server).whoami)},
	api.OpReleaseToken:     {[]string{api.RoleResponder}, "release token", with((*Server).releaseToken)},
	api.OpHostBind:         {adminOnly, "host bind", with((*Server).hostBind)},
}

// hostBind binds a host to a cloud instance by hand, or clears that.
func (s *Server) hostBind(ctx context.Context, op operator, a api.HostBindArgs) (any, error) {
	if !wire.ValidHostName(a.Host) {
		return nil, api.Errorf(api.CodeInvalid, "host name %q is not valid", a.Host)
	}
	if !a.Clear {
		if a.Provider != "aws" && a.Provider != "azure" && a.Provider != "gcp" {
			return nil, api.Errorf(api.CodeInvalid, "--cloud %q: want aws, azure or gcp", a.Provider)
		}
		if err := checkText("instance", a.Instance, 256, true); err != nil {
			return nil, err
		}
		for _, f := range []struct{ name, v string }{{"region", a.Region}, {"zone", a.Zone}, {"project", a.Project}} {
			if err := checkText(f.name, f.v, 64, false); err != nil {
				return nil, err
			}
		}
	}
	var h store.Host
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) (err error) {
		if h, err = tx.Host(a.Host); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return api.Errorf(api.CodeNotFound, "unknown host %q ('cordon hosts' lists them)", a.Host)
			}
			return err
		}
		detail := "cloud binding cleared: the agent's report counts again"
		if a.Clear {
			h.CloudProvider, h.CloudInstanceID, h.CloudRegion, h.CloudZone, h.CloudProject, h.CloudBoundBy = "", "", "", "", "", ""
		} else {
			h.CloudProvider, h.CloudInstanceID, h.CloudRegion, h.CloudZone, h.CloudProject, h.CloudBoundBy =
				a.Provider, a.Instance, a.Region, a.Zone, a.Project, op.name
			detail = fmt.Sprintf("bound to %s instance %s (region %q, zone %q, project %q)", a.Provider, a.Instance, a.Region, a.Zone, a.Project)
		}
		if err := tx.PutHost(h); err != nil {
			return err
		}
		return tx.AddAudit(store.Audit{At: time.Now().UTC(), Actor: op.name, ActorKey: op.fp, Action: "cloud-bind", Host: a.Host, Detail: detail})
	})
	if err != nil {
		return nil, storeErr(err, "")
	}
	return api.Host{Name: h.Name, CloudProvider: h.CloudProvider, CloudInstanceID: h.CloudInstanceID, CloudBoundBy: h.CloudBoundBy}, nil
}

// releaseToken signs a break-glass release token for a host with the
// controller's key, bound to the host's name and last reported
// machine-id, valid for a.TTL (default 1 h, at most releasetoken.MaxTTL),
// and writes its issue to the audit trail.
func (s *Server) releaseToken(ctx context.Context, op operator, a api.ReleaseTokenArgs) (any, error) {
	if !wire.ValidHostName(a.Host) {
		return nil, api.Errorf(api.CodeInvalid, "host name %q is not valid", a.Host)
	}
	if err := checkText("reason", a.Reason, wire.MaxReason, true); err != nil {
		return nil, err
	}
	ttl := a.TTL
	if ttl == 0 {
		ttl = time.Hour
	}
	if ttl < time.Minute || ttl > releasetoken.MaxTTL {
		return nil, api.Errorf(api.CodeInvalid, "--ttl %v: want 1m to %v", ttl, releasetoken.MaxTTL)
	}
	now := time.Now().UTC()
	tok := releasetoken.Token{ID: releasetoken.NewID(), Host: a.Host, IssuedAt: now, NotAfter: now.Add(ttl),
		IssuedBy: op.name + " (" + op.fp + ")", Reason: a.Reason}
	var file []byte
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		h, err := tx.Host(a.Host)
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return api.Errorf(api.CodeNotFound, "unknown host %q ('cordon hosts' lists them)", a.Host)
			}
			return err
		}
		if h.MachineID == "" {
			return api.Errorf(api.CodeInvalid, "host %s has not told its machine-id yet (its agent has not connected since it enrolled): a token bound to a name alone could release another machine", a.Host)
		}
		tok.MachineID = h.MachineID
		if file, err = releasetoken.Sign(tok, s.cfg.HostKey); err != nil {
			return err
		}
		return tx.AddAudit(store.Audit{At: now, Actor: op.name, ActorKey: op.fp, Action: "release-token", Host: a.Host,
			Detail: fmt.Sprintf("token %s for a local release, valid until %s; reason: %s", tok.ID, tok.NotAfter.Format(time.RFC3339), a.Reason)})
	})
	if err != nil {
		return nil, storeErr(err, "")
	}
	return api.ReleaseToken{ID: tok.ID, Host: tok.Host, MachineID: tok.MachineID, NotAfter: tok.NotAfter, File: string(file)}, nil
}

func (s *Server) orders(ctx context.Context, _ operator, a api.OrdersArgs) (any, error) {
	var orders []store.Order
	err := s.cfg.Store.View(ctx, func(tx store.Tx) (err error) { orders, err = tx.Orders(a.Host, a.Limit); return })
	if err != nil {
		return nil, err
	}
	out := []api.Order{}
	for _, o := range orders {
		out = append(out, s.apiOrder(o))
	}
	return out, nil
}

func (s *Server) snapshots(ctx context.Context, _ operator, a api.SnapshotsArgs) (any, error) {
	var snaps []store.Snapshot
	err := s.cfg.Store.View(ctx, func(tx store.Tx) (err error) { snaps, err = tx.Snapshots(a.Host); return })
	if err != nil {
		return nil, err
	}
	out := []api.Snapshot{}
	for _, sn := range snaps {
		out = append(out, apiSnapshot(sn))
	}
	return out, nil
}

func (s *Server) snapshotTake(ctx context.Context, op operator, a api.SnapshotTakeArgs) (any, error) {
	if !wire.ValidHostName(a.Host) {
		return nil, api.Errorf(api.CodeInvalid, "host name %q is not valid", a.Host)
	}
	if err := checkText("reason", a.Reason, wire.MaxReason, true); err != nil {
		return nil, err
	}
	if err := checkText("incident", a.Incident, wire.MaxIncident, false); err != nil {
		return nil, err
	}
	return s.newOrder(ctx, op, a.Host, wire.KindSnapshot, a.Reason, a.Incident, orderPolicy{})
}

func (s *Server) custody(ctx context.Context, _ operator, a api.SnapshotArgs) (any, error) {
	var cs []store.Custody
	err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
		if _, err := tx.Snapshot(a.ID); err != nil {
			return err
		}
		var err error
		cs, err = tx.Custody(a.ID)
		return err
	})
	if err != nil {
		return nil, storeErr(err, fmt.Sprintf("unknown snapshot %q ('cordon snapshots' lists them)", a.ID))
	}
	out := []api.CustodyEntry{}
	for _, c := range cs {
		out = append(out, api.CustodyEntry{At: c.At, Event: c.Event, Actor: c.Actor, ActorKey: c.ActorKey, SHA256: c.SHA256, Detail: c.Detail})
	}
	return out, nil
}

func (s *Server) enrollCreate(ctx context.Context, op operator, a api.EnrollArgs) (any, error) {
	ttl := DefaultTokenTTL
	if a.TTLSeconds != 0 {
		ttl = time.Duration(a.TTLSeconds) * time.Second
	}
	if ttl < time.Minute || ttl > 30*24*time.Hour {
		return nil, api.Errorf(api.CodeInvalid, "token lifetime %v out of range (1m to 720h)", ttl)
	}
	var tok api.EnrollToken
	now := time.Now().UTC()
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) (err error) {
		tok.Token, tok.ExpiresAt, err = MintToken(tx, op.name, ttl, now)
		if err != nil {
			return err
		}
		return tx.AddAudit(store.Audit{At: now, Actor: op.name, ActorKey: op.fp, Action: "enroll-token",
			Detail: "one-time enrollment token created, expires " + tok.ExpiresAt.Format(time.RFC3339)})
	})
	if err != nil {
		return nil, storeErr(err, "")
	}
	op.log.Info("enrollment token created", "expires_at", tok.ExpiresAt)
	return tok, nil
}

func (s *Server) audit(ctx context.Context, _ operator, a api.AuditArgs) (any, error) {
	var entries []store.Audit
	err := s.cfg.Store.View(ctx, func(tx store.Tx) (err error) { entries, err = tx.Audit(a.Host, a.Limit); return })
	if err != nil {
		return nil, err
	}
	out := []api.AuditEntry{}
	for _, e := range entries {
		out = append(out, api.AuditEntry{At: e.At, Actor: e.Actor, ActorKey: e.ActorKey, Action: e.Action, Host: e.Host, OrderID: e.OrderID, Detail: e.Detail})
	}
	return out, nil
}

func (s *Server) whoami(_ context.Context, op operator, _ api.NoArgs) (any, error) {
	return api.Operator{Name: op.name, Role: op.role, Fingerprint: op.fp}, nil
}

func checkText(field, s string, max int, required bool) error {
	if required && strings.TrimSpace(s) == "" {
		return api.Errorf(api.CodeInvalid, "%s is required", field)
	}
	if len(s) > max {
		return api.Errorf(api.CodeInvalid, "%s is %d bytes, at most %d", field, len(s), max)
	}
	for _, r := range s {
		if wire.IsControl(r) {
			return api.Errorf(api.CodeInvalid, "%s holds a control character", field)
		}
	}
	return nil
}

func (s *Server) isolate(ctx context.Context, op operator, a api.IsolateArgs) (any, error) {
	if !wire.ValidHostName(a.Host) {
		return nil, api.Errorf(api.CodeInvalid, "host name %q is not valid", a.Host)
	}
	if err := checkText("reason", a.Reason, wire.MaxReason, true); err != nil {
		return nil, err
	}
	if err := checkText("incident", a.Incident, wire.MaxIncident, false); err != nil {
		return nil, err
	}
	var allow []string
	var prefixes []netip.Prefix
	for _, c := range a.Allow {
		p, err := policy.ParsePrefix(c)
		if err != nil {
			return nil, api.Errorf(api.CodeInvalid, "%v", err)
		}
		allow = append(allow, p.String())
		prefixes = append(prefixes, p)
	}
	if err := policy.CheckAllow(prefixes); err != nil {
		return nil, api.Errorf(api.CodeInvalid, "%v", err)
	}
	if len(a.DNS) > policy.MaxDNS {
		return nil, api.Errorf(api.CodeInvalid, "%d DNS resolvers, at most %d", len(a.DNS), policy.MaxDNS)
	}
	var dns []string
	for _, d := range a.DNS {
		ip, err := netip.ParseAddr(d)
		if err != nil || ip.IsUnspecified() || ip.Zone() != "" {
			return nil, api.Errorf(api.CodeInvalid, "DNS resolver %q: want an IP address, not a name (nothing is resolved on an isolated host)", d)
		}
		dns = append(dns, ip.Unmap().String())
	}
	return s.newOrder(ctx, op, a.Host, wire.KindIsolate, a.Reason, a.Incident, orderPolicy{allow: allow, dns: dns, dhcp: a.DHCP, cloud: a.Cloud})
}

func (s *Server) release(ctx context.Context, op operator, a api.ReleaseArgs) (any, error) {
	if !wire.ValidHostName(a.Host) {
		return nil, api.Errorf(api.CodeInvalid, "host name %q is not valid", a.Host)
	}
	if err := checkText("reason", a.Reason, wire.MaxReason, true); err != nil {
		return nil, err
	}
	if err := checkText("incident", a.Incident, wire.MaxIncident, false); err != nil {
		return nil, err
	}
	return s.newOrder(ctx, op, a.Host, wire.KindRelease, a.Reason, a.Incident, orderPolicy{})
}

// newOrder stores an order, the host's new state and the audit entry in one
// transaction, then asks the host's delivery loop to send it.
// orderPolicy is what an isolate order adds to the controller endpoints:
// the allowlist, DNS resolvers and DHCP, checked.
type orderPolicy struct {
	allow, dns []string
	dhcp       bool
	cloud      api.CloudOptions
}

func (s *Server) newOrder(ctx context.Context, op operator, host string, kind wire.OrderKind, reason, incident string, pol orderPolicy) (any, error) {
	now := time.Now().UTC()
	o := &store.Order{ID: newID("ord"), Host: host, Kind: string(kind), Reason: reason, Incident: incident, Allow: pol.allow,
		DNS: pol.dns, DHCP: pol.dhcp, CloudOptions: cloudOptionsJSON(pol.cloud),
		Operator: op.name, OperatorKey: op.fp, State: store.OrderPending, CreatedAt: now}
	var hostRec store.Host
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		h, err := tx.Host(host)
		hostRec = h
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return api.Errorf(api.CodeNotFound, "unknown host %q: no agent has enrolled under that name ('cordon hosts' lists them)", host)
			}
			return err
		}
		if err := tx.AddOrder(o); err != nil {
			return err
		}
		detail := "reason: " + reason
		if incident != "" {
			detail += "; incident: " + incident
		}
		if len(pol.allow) > 0 {
			detail += "; allow: " + strings.Join(pol.allow, ", ")
		}
		if len(pol.dns) > 0 {
			detail += "; dns: " + strings.Join(pol.dns, ", ")
		}
		if pol.dhcp {
			detail += "; dhcp kept"
		}
		if o.CloudOptions != "" {
			detail += "; cloud options " + o.CloudOptions
		}
		// An isolate or release order sets the host's desired state; a
		// snapshot order (triage) leaves the host's state alone.
		if kind != wire.KindSnapshot {
			h.LastOrder, h.StateSince, h.StateReason = o.ID, now, ""
			if kind == wire.KindIsolate {
				h.State, h.Desired, h.IsolateOrder = store.StateIsolating, store.StateIsolated, o.ID
			} else {
				h.State, h.Desired, h.IsolateOrder = store.StateReleasing, store.StateReleased, ""
			}
			if err := tx.PutHost(h); err != nil {
				return err
			}
		}
		return tx.AddAudit(store.Audit{At: now, Actor: op.name, ActorKey: op.fp, Action: string(kind), Host: host, OrderID: o.ID, Detail: detail})
	})
	if err != nil {
		return nil, storeErr(err, "")
	}
	online := s.online(host)
	op.log.Info("order issued", "order_id", o.ID, "host", host, "incident", incident, "kind", kind, "host_online", online)
	s.notify()
	s.kick(host)
	if kind != wire.KindSnapshot {
		if _, _, ok := s.cloudInstance(hostRec); ok {
			o.CloudState = CloudApplying
			ord, p := *o, s.cloudPolicy(host, pol)
			opts := cloud.Options{Tag: true, Incident: incident,
				Snapshot: pol.cloud.Snapshot, TerminationProtection: pol.cloud.TerminationProtection,
				Detach: pol.cloud.Detach, RevokeSessions: pol.cloud.RevokeSessions}
			s.cloudJob(host, func() { s.applyCloud(ord, hostRec, p, opts) })
		}
	}
	out := s.apiOrder(*o)
	return out, nil
}

func (s *Server) order(ctx context.Context, _ operator, a api.OrderArgs) (any, error) {
	return s.loadOrder(ctx, a.ID)
}

func (s *Server) loadOrder(ctx context.Context, id string) (api.Order, error) {
	var o store.Order
	err := s.cfg.Store.View(ctx, func(tx store.Tx) (err error) { o, err = tx.Order(id); return })
	if err != nil {
		return api.Order{}, storeErr(err, fmt.Sprintf("unknown order %q", id))
	}
	return s.apiOrder(o), nil
}

// orderWait returns the order once its version exceeds a.After, or when the
// timeout passes.
func (s *Server) orderWait(ctx context.Context, _ operator, a api.OrderWaitArgs) (any, error) {
	timeout := time.Duration(a.TimeoutMS) * time.Millisecond
	if timeout <= 0 || timeout > time.Minute {
		timeout = time.Minute
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		changed := s.changedCh()
		o, err := s.loadOrder(ctx, a.ID)
		if err != nil || o.Version > a.After || o.Terminal() && o.SnapshotStored {
			return o, err
		}
		select {
		case <-changed:
		case <-deadline.C:
			return o, nil
		case <-ctx.Done():
			return o, ctx.Err()
		}
	}
}

func (s *Server) apiOrder(o store.Order) api.Order {
	return api.Order{ID: o.ID, Host: o.Host, Kind: o.Kind, Reason: o.Reason, Incident: o.Incident, Allow: o.Allow, DNS: o.DNS, DHCP: o.DHCP,
		CloudState: o.CloudState, CloudDetail: o.CloudDetail, CloudError: o.CloudError,
		Operator: o.Operator, State: o.State, Error: o.Error, CreatedAt: o.CreatedAt, DeliveredAt: o.DeliveredAt,
		DoneAt: o.DoneAt, Digest: o.Digest, HostOnline: s.online(o.Host), SnapshotID: o.SnapshotID,
		SnapshotSHA256: o.SnapshotSHA256, SnapshotStored: o.SnapshotStored, SnapshotVerified: o.SnapshotVerified, SnapshotNS: o.SnapshotNS, ApplyNS: o.ApplyNS,
		VerifyNS: o.VerifyNS, FlowsCut: o.FlowsCut, Version: o.Version}
}

func apiSnapshot(s store.Snapshot) api.Snapshot {
	return api.Snapshot{ID: s.ID, Host: s.Host, OrderID: s.OrderID, SHA256: s.SHA256, Size: s.Size, TakenAt: s.TakenAt,
		ReceivedAt: s.ReceivedAt, AgentKey: s.AgentKey, FileName: s.FileName, Verified: s.Verified, VerifyError: s.VerifyError}
}

func (s *Server) hosts(ctx context.Context, _ operator, _ api.HostsArgs) (any, error) {
	var hosts []store.Host
	// The cloud layer's state is that of the host's last order.
	cloudState := map[string]string{}
	err := s.cfg.Store.View(ctx, func(tx store.Tx) (err error) {
		if hosts, err = tx.Hosts(); err != nil {
			return err
		}
		for _, h := range hosts {
			if h.LastOrder == "" {
				continue
			}
			if o, err := tx.Order(h.LastOrder); err == nil {
				cloudState[h.Name] = o.CloudState
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := []api.Host{}
	for _, h := range hosts {
		out = append(out, api.Host{Name: h.Name, Online: s.online(h.Name), State: h.State, StateReason: h.StateReason,
			StateSince: h.StateSince, LastSeen: h.LastSeen, Addr: h.Addr, Digest: h.Digest, Fingerprint: h.Fingerprint, PublicKey: h.PublicKey,
			Hostname: h.Hostname, MachineID: h.MachineID, Agent: h.AgentVersion, Plugin: h.Plugin, PluginReason: h.PluginReason, EnrolledAt: h.EnrolledAt,
			Repairs: h.Repairs, LastRepair: h.LastRepair, LastRepairDetail: h.LastRepairDetail,
			CloudProvider: h.CloudProvider, CloudInstanceID: h.CloudInstanceID, CloudBoundBy: h.CloudBoundBy,
			CloudState: cloudState[h.Name], LastOrder: h.LastOrder})
	}
	return out, nil
}

func (s *Server) operatorAdd(ctx context.Context, op operator, a api.OperatorAddArgs) (any, error) {
	if !wire.ValidHostName(a.Name) {
		return nil, api.Errorf(api.CodeInvalid, "operator name %q: use letters, digits, '.', '_' or '-'", a.Name)
	}
	if !api.ValidRole(a.Role) {
		return nil, api.Errorf(api.CodeInvalid, "role %q: want admin, responder, forensic or viewer", a.Role)
	}
	key, err := sshkey.ParseAuthorizedKey(a.PublicKey)
	if err != nil {
		return nil, api.Errorf(api.CodeInvalid, "%v", err)
	}
	now := time.Now().UTC()
	o := store.Operator{Fingerprint: sshkey.Fingerprint(key), Name: a.Name, Role: a.Role, PublicKey: sshkey.AuthorizedKey(key), CreatedAt: now}
	err = s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.HostByFingerprint(o.Fingerprint); err == nil {
			return api.Errorf(api.CodeConflict, "key %s belongs to an agent", o.Fingerprint)
		}
		if err := tx.AddOperator(o); err != nil {
			if errors.Is(err, store.ErrExists) {
				return api.Errorf(api.CodeConflict, "an operator named %s or with key %s exists", o.Name, o.Fingerprint)
			}
			return err
		}
		return tx.AddAudit(store.Audit{At: now, Actor: op.name, ActorKey: op.fp, Action: "operator-add",
			Detail: fmt.Sprintf("operator %s (%s) with role %s", o.Name, o.Fingerprint, o.Role)})
	})
	if err != nil {
		return nil, storeErr(err, "")
	}
	return api.Operator{Name: o.Name, Role: o.Role, Fingerprint: o.Fingerprint}, nil
}

// operatorRemove revokes an operator key; its open connections end too.
// The last admin cannot be removed.
func (s *Server) operatorRemove(ctx context.Context, op operator, a api.OperatorRemoveArgs) (any, error) {
	name := a.Name
	var gone store.Operator
	now := time.Now().UTC()
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		ops, err := tx.Operators()
		if err != nil {
			return err
		}
		admins := 0
		found := false
		for _, o := range ops {
			if o.Role == api.RoleAdmin {
				admins++
			}
			if o.Name == name {
				gone, found = o, true
			}
		}
		if !found {
			return api.Errorf(api.CodeNotFound, "no operator named %q", name)
		}
		if gone.Role == api.RoleAdmin && admins == 1 {
			return api.Errorf(api.CodeConflict, "%s is the last admin; add another admin first", name)
		}
		if err := tx.RemoveOperator(name); err != nil {
			return err
		}
		return tx.AddAudit(store.Audit{At: now, Actor: op.name, ActorKey: op.fp, Action: "operator-remove",
			Detail: fmt.Sprintf("operator %s (%s, role %s) removed", gone.Name, gone.Fingerprint, gone.Role)})
	})
	if err != nil {
		return nil, storeErr(err, "")
	}
	op.log.Info("operator removed", "removed", gone.Name, "removed_key", gone.Fingerprint)
	// Close the removed key's connections once the answer is out: the
	// operator may have removed their own key.
	return afterReply{api.Operator{Name: gone.Name, Role: gone.Role, Fingerprint: gone.Fingerprint},
		func() { s.dropOperator(gone.Fingerprint) }}, nil
}

// afterReply is a result with something to do once the reply is written.
type afterReply struct {
	result any
	then   func()
}

// download streams a stored bundle after its metadata and records the
// download in the chain of custody.
func (s *Server) download(ctx context.Context, op operator, req api.Request, ch ssh.Channel) {
	var a api.SnapshotArgs
	if err := decodeArgs(req.Args, &a); err != nil {
		writeResponse(ch, nil, err)
		return
	}
	var snap store.Snapshot
	err := s.cfg.Store.View(ctx, func(tx store.Tx) (err error) { snap, err = tx.Snapshot(a.ID); return })
	if err != nil {
		writeResponse(ch, nil, storeErr(err, fmt.Sprintf("unknown snapshot %q ('cordon snapshots' lists them)", a.ID)))
		return
	}
	// A snapshot belongs to an order: its lines carry the order's fields.
	l := op.log.With("snapshot_id", snap.ID, "order_id", snap.OrderID, "host", snap.Host, "incident", s.orderIncident(ctx, snap.OrderID))
	f, err := s.cfg.Evidence.Open(snap.SHA256)
	if err != nil {
		l.Error("stored evidence missing", "err", err)
		writeResponse(ch, nil, api.Errorf(api.CodeInternal, "evidence file for snapshot %s cannot be read: %v", snap.ID, err))
		return
	}
	defer f.Close()
	// Custody first: whoever starts receiving the bundle is on record, even
	// if the transfer breaks off. Without the record, no bytes.
	custody := func(event, detail string) error {
		now := time.Now().UTC()
		return s.cfg.Store.Update(ctx, func(tx store.Tx) error {
			if err := tx.AddCustody(store.Custody{SnapshotID: snap.ID, At: now, Event: event, Actor: op.name, ActorKey: op.fp,
				SHA256: snap.SHA256, Detail: detail}); err != nil {
				return err
			}
			return tx.AddAudit(store.Audit{At: now, Actor: op.name, ActorKey: op.fp, Action: "snapshot-" + event, Host: snap.Host,
				OrderID: snap.OrderID, Detail: "snapshot " + snap.ID + ", sha256 " + snap.SHA256 + "; " + detail})
		})
	}
	if err := custody("download-started", fmt.Sprintf("%d bytes to send", snap.Size)); err != nil {
		l.Error("custody entry not recorded; download refused", "err", err)
		writeResponse(ch, nil, storeErr(err, ""))
		return
	}
	out := apiSnapshot(snap)
	out.Receipt = snap.Receipt
	if err := writeResponse(ch, out, nil); err != nil {
		custody("download-interrupted", "the answer could not be sent: "+err.Error())
		return
	}
	n, err := io.Copy(ch, f)
	if err != nil || n != snap.Size {
		l.Warn("download interrupted", "sent", n, "err", err)
		if cerr := custody("download-interrupted", fmt.Sprintf("%d of %d bytes sent: %v", n, snap.Size, err)); cerr != nil {
			l.Error("custody entry not recorded", "err", cerr)
		}
		return
	}
	ch.CloseWrite()
	if err := custody("downloaded", fmt.Sprintf("%d bytes sent", n)); err != nil {
		l.Error("custody entry not recorded", "err", err)
	}
	l.Info("snapshot downloaded")
}

// dropOperator closes the connections of a removed operator key.
func (s *Server) dropOperator(fp string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c, f := range s.operators {
		if f == fp {
			c.Close()
		}
	}
}
