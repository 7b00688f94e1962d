package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/controller/store"
	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// Cloud layer states of an order (store.Order.CloudState).
const (
	CloudApplying = "applying"
	CloudIsolated = "isolated"
	CloudReleased = "released"
	CloudFailed   = "failed"
)

// cloudTimeout bounds one cloud layer call: the SDKs retry throttled
// calls, and a security group change is done in seconds.
const cloudTimeout = 2 * time.Minute

// cloudInstance returns the cloud instance a host is bound to, and the
// layer that contains it at its provider; false when the host reports no
// instance or the controller has no layer for its provider.
func (s *Server) cloudInstance(h store.Host) (cloud.Instance, cloud.Layer, bool) {
	if h.CloudProvider == "" || h.CloudInstanceID == "" {
		return cloud.Instance{}, nil, false
	}
	layer := s.cfg.Clouds[h.CloudProvider]
	if layer == nil {
		return cloud.Instance{}, nil, false
	}
	return cloud.Instance{Provider: h.CloudProvider, ID: h.CloudInstanceID, Region: h.CloudRegion, Zone: h.CloudZone, Project: h.CloudProject}, layer, true
}

// confirmBinding checks with the provider that the instance a host reports
// is one of the provider's, and that the address its agent connects from is
// one of the instance's private addresses: an agent cannot name another
// machine's instance for its cloud layer. It returns the instance as the
// provider sees it.
func confirmBinding(ctx context.Context, layer cloud.Layer, inst cloud.Instance, agentAddr netip.Addr) (cloud.Instance, error) {
	found, err := layer.Lookup(ctx, inst)
	if err != nil {
		return inst, fmt.Errorf("look up %s instance %s: %w", inst.Provider, inst.ID, err)
	}
	if !slices.Contains(found.PrivateIPs, agentAddr.Unmap()) {
		return found, fmt.Errorf("%s instance %s has private addresses %v, and the agent connects from %s: not the same machine, or the agent is behind NAT: no cloud layer for it",
			inst.Provider, inst.ID, found.PrivateIPs, agentAddr)
	}
	return found, nil
}

// applyCloud carries out the cloud layer of an isolate or release order,
// beside the host layer, and records its outcome on the order and in the
// audit trail; a host without a cloud layer leaves the order's cloud state
// empty. It runs on its own goroutine, so that neither layer waits for the
// other, and each one's failure shows without hiding the other's result.
func (s *Server) applyCloud(o store.Order, h store.Host, pol policy.Policy, opts cloud.Options) {
	inst, layer, ok := s.cloudInstance(h)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cloudTimeout)
	defer cancel()
	l := s.log.With("order_id", o.ID, "host", h.Name, "incident", o.Incident, "cloud", inst.Provider, "instance", inst.ID)
	s.setCloud(l, o.ID, CloudApplying, "", "")
	var found cloud.Instance
	var err error
	if h.CloudBoundBy != "" {
		// Bound by an operator: the instance must exist, whatever
		// address the agent connects from (NAT).
		found, err = layer.Lookup(ctx, inst)
		if err != nil {
			err = fmt.Errorf("look up %s instance %s (bound by %s): %w", inst.Provider, inst.ID, h.CloudBoundBy, err)
		}
	} else {
		found, err = confirmBinding(ctx, layer, inst, agentIP(h.Addr))
		if err == nil {
			s.confirmBound(h.Name, inst)
		}
	}
	var a cloud.Applied
	if err == nil {
		if o.Kind == string(wire.KindIsolate) {
			a, err = layer.Isolate(ctx, found, pol, opts, o.ID)
		} else {
			a, err = layer.Release(ctx, found, o.ID)
		}
	}
	detail := strings.Join(append(a.State, a.Notes...), "; ")
	state, action := CloudIsolated, "cloud-isolated"
	if o.Kind != string(wire.KindIsolate) {
		state, action = CloudReleased, "cloud-released"
	}
	errText := ""
	if err != nil {
		state, action, errText = CloudFailed, "cloud-failed", err.Error()
		s.metrics.cloudFailed(inst.Provider)
		l.Error("cloud layer failed; the host layer goes on", "err", err)
	} else {
		l.Info("cloud layer done", "state", state, "detail", detail)
	}
	s.setCloud(l, o.ID, state, detail, errText)
	auditDetail := fmt.Sprintf("%s instance %s: %s", inst.Provider, inst.ID, detail)
	if errText != "" {
		auditDetail = fmt.Sprintf("%s instance %s: %s", inst.Provider, inst.ID, errText)
	}
	err = s.cfg.Store.Update(context.Background(), func(tx store.Tx) error {
		return tx.AddAudit(store.Audit{At: time.Now().UTC(), Actor: "controller", Action: action, Host: h.Name, OrderID: o.ID, Detail: auditDetail})
	})
	if err != nil {
		l.Error("cloud layer outcome not written to the audit trail", "err", err)
	}
}

// setCloud records the cloud layer's state on an order; l logs about the
// order.
func (s *Server) setCloud(l *slog.Logger, orderID, state, detail, errText string) {
	err := s.cfg.Store.Update(context.Background(), func(tx store.Tx) error {
		o, err := tx.Order(orderID)
		if err != nil {
			return err
		}
		o.CloudState, o.CloudDetail, o.CloudError = state, clip(detail, wire.MaxError), clip(errText, wire.MaxError)
		return tx.PutOrder(o)
	})
	if err != nil {
		l.Error("cloud layer state not stored", "err", err)
		return
	}
	s.notify()
}

// agentIP is the address of an agent's connection as the store keeps it
// ("198.18.0.10:40000"); invalid when unknown.
func agentIP(addr string) netip.Addr {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr()
}

// clip shortens s to at most n bytes, on a character boundary, marking
// the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = " …(cut)"
	s = s[:max(n-len(mark), 0)]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + mark
}

// cloudPolicy is the policy of a host's cloud layer: the controller
// endpoints the host reaches (the address its agent is connected to, and
// those advertised), and the order's allowlist, resolvers and DHCP.
func (s *Server) cloudPolicy(host string, op orderPolicy) policy.Policy {
	var p policy.Policy
	s.mu.Lock()
	a := s.agents[host]
	s.mu.Unlock()
	if a != nil {
		p.Controllers = s.endpoints(a)
	} else {
		// The agent is offline (perhaps killed by the attacker): the
		// endpoint it last connected to, and those advertised.
		p.Controllers = append(p.Controllers, s.cfg.Advertise...)
		var h store.Host
		if err := s.cfg.Store.View(context.Background(), func(tx store.Tx) (err error) { h, err = tx.Host(host); return }); err == nil {
			if ap, err := netip.ParseAddrPort(h.ControllerEndpoint); err == nil {
				p.Controllers = append(p.Controllers, policy.Endpoint{Addr: ap.Addr().Unmap(), Port: ap.Port()})
			}
		}
	}
	for _, c := range op.allow {
		if pfx, err := policy.ParsePrefix(c); err == nil {
			p.Allow = append(p.Allow, pfx)
		}
	}
	for _, d := range op.dns {
		if ip, err := netip.ParseAddr(d); err == nil {
			p.DNS = append(p.DNS, ip)
		}
	}
	p.DHCP = op.dhcp
	return p.Canonical()
}

// cloudOptionsJSON is how an order stores its cloud options: "" for none.
func cloudOptionsJSON(o api.CloudOptions) string {
	if o == (api.CloudOptions{}) {
		return ""
	}
	b, _ := json.Marshal(o)
	return string(b)
}

// cloudJob queues a cloud layer step of a host: the steps of one host run
// one at a time, in the order queued (an isolate issued just before a
// release finishes first, so the release is what stands), on a goroutine
// of their own, so that no order waits for another host's provider.
func (s *Server) cloudJob(host string, job func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cloudQueues == nil {
		s.cloudQueues = map[string][]func(){}
	}
	q, running := s.cloudQueues[host]
	s.cloudQueues[host] = append(q, job)
	if running {
		return
	}
	go func() {
		for {
			s.mu.Lock()
			q := s.cloudQueues[host]
			if len(q) == 0 {
				delete(s.cloudQueues, host)
				s.mu.Unlock()
				return
			}
			next := q[0]
			s.cloudQueues[host] = q[1:]
			s.mu.Unlock()
			next()
		}
	}()
}

// confirmBound keeps a binding the provider confirmed: the agent's later
// reports no longer change it (hello reports a mismatch instead).
func (s *Server) confirmBound(host string, inst cloud.Instance) {
	err := s.cfg.Store.Update(context.Background(), func(tx store.Tx) error {
		h, err := tx.Host(host)
		if err != nil || h.CloudBoundBy != "" || h.CloudProvider != inst.Provider || h.CloudInstanceID != inst.ID {
			return err
		}
		h.CloudBoundBy = "provider"
		return tx.PutHost(h)
	})
	if err != nil {
		s.log.Error("cloud binding not kept", "host", host, "err", err)
	}
}

// resumeCloud marks the cloud steps a previous run of the controller left
// unfinished as failed, saying so, so that no order shows "applying"
// forever; the operator issues the order again (isolating is idempotent at
// the provider, and so is releasing).
func (s *Server) resumeCloud(ctx context.Context) error {
	return s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		hosts, err := tx.Hosts()
		if err != nil {
			return err
		}
		for _, h := range hosts {
			orders, err := tx.Orders(h.Name, 20)
			if err != nil {
				return err
			}
			for _, o := range orders {
				if o.CloudState != CloudApplying {
					continue
				}
				o.CloudState = CloudFailed
				o.CloudError = "interrupted: the controller stopped while the cloud layer was being applied; its state at the provider is unknown: issue the order again"
				if err := tx.PutOrder(o); err != nil {
					return err
				}
				if err := tx.AddAudit(store.Audit{At: time.Now().UTC(), Actor: "controller", Action: "cloud-failed", Host: h.Name, OrderID: o.ID, Detail: o.CloudError}); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "no"
	}
	return s
}
