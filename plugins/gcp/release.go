package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"cloud.google.com/go/compute/apiv1/computepb"

	"github.com/cordon-ir/cordon/pkg/cloud"
)

// Release removes the tags Isolate added (cordon-quarantine-<policy>, and
// cordon-quarantine unless the instance had it before) and then the record.
// Tags set by anyone else meanwhile stay; a Cordon tag already gone is said
// in the notes. An instance with Cordon's tags but no record is left as it
// is, and the error says so. It succeeds when nothing of Cordon's is in
// place, and returns ErrNotFound when the instance is gone. Cordon's
// firewall rules stay in the networks for other isolations: without the
// tags they do not apply to the instance.
func (p *Plugin) Release(ctx context.Context, inst cloud.Instance, orderID string) (cloud.Applied, error) {
	r, err := p.refOf(inst)
	if err != nil {
		return cloud.Applied{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	log := p.log.With("order_id", orderID, "instance", r.String())
	c, err := p.clients(ctx)
	if err != nil {
		return cloud.Applied{}, err
	}
	in, err := p.getInstance(ctx, c, r)
	if err != nil {
		return cloud.Applied{}, err
	}
	rec := readRecord(in.GetLabels())
	tags := in.GetTags().GetItems()
	var cordonTags []string
	for _, t := range tags {
		if isCordonTag(t) {
			cordonTags = append(cordonTags, t)
		}
	}

	var notes []string
	if rec.empty() {
		if len(cordonTags) > 0 {
			return cloud.Applied{State: stateLines(in, rec)}, fmt.Errorf("%w: %s has the tags %s but no record of Cordon's isolation (labels %s): "+
				"remove the tags by hand if Cordon put them there", cloud.ErrInvalid, r, strings.Join(cordonTags, ", "), labelIsolated)
		}
		notes = append(notes, "nothing of Cordon's was in place")
		return cloud.Applied{State: stateLines(in, rec), Notes: notes}, nil
	}

	// What changed since Isolate, said, not undone.
	if !slices.Contains(tags, tagQuarantine) && !rec.hadTag {
		notes = append(notes, fmt.Sprintf("the %s tag had already been removed from %s (by hand?): the instance was no longer isolated by the cloud layer", tagQuarantine, r.name))
	}
	if rec.policy != "" && !slices.Contains(tags, policyTag(rec.policy)) {
		notes = append(notes, fmt.Sprintf("the %s tag had already been removed from %s", policyTag(rec.policy), r.name))
	}
	if rec.hadTag {
		notes = append(notes, fmt.Sprintf("the %s tag is left on %s: it was there before Cordon isolated it", tagQuarantine, r.name))
	}

	var errs []error
	in, untagged, err := p.setTags(ctx, c, r, in, func(tags []string) []string {
		return slices.DeleteFunc(slices.Clone(tags), func(t string) bool {
			return isPolicyTag(t) || (t == tagQuarantine && !rec.hadTag)
		})
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("remove Cordon's tags from %s: %w", r, err))
	} else {
		if untagged {
			log.Info("instance released", "tags", strings.Join(in.GetTags().GetItems(), " "))
		}
		if in, _, err = p.setLabels(ctx, c, r, in, withoutRecord); err != nil {
			errs = append(errs, fmt.Errorf("remove the isolation record from %s: %w", r, err))
		}
	}
	notes = append(notes, "Cordon's firewall rules (cordon-quarantine-*) stay in the networks for other isolations; they apply only to tagged instances")
	if v, ok := in.GetLabels()[labelIncident]; ok {
		notes = append(notes, fmt.Sprintf("the %s=%s label is left in place", labelIncident, v))
	}
	state, rerr := p.readState(ctx, c, r)
	if rerr != nil {
		notes = append(notes, "read-back failed: "+rerr.Error())
	}
	return cloud.Applied{State: state, Notes: notes}, errors.Join(errs...)
}

// Status reads what is in place: isolated when the record is on the
// instance, it has both of Cordon's tags for the recorded policy, and in
// each of its networks the deny rules are as Isolate leaves them and the
// policy's allow rules exist.
func (p *Plugin) Status(ctx context.Context, inst cloud.Instance) (cloud.Status, error) {
	r, err := p.refOf(inst)
	if err != nil {
		return cloud.Status{}, err
	}
	c, err := p.clients(ctx)
	if err != nil {
		return cloud.Status{}, err
	}
	in, err := p.getInstance(ctx, c, r)
	if err != nil {
		return cloud.Status{}, err
	}
	rec := readRecord(in.GetLabels())
	st := cloud.Status{Since: rec.since, State: stateLines(in, rec)}
	tags := in.GetTags().GetItems()
	cordon := slices.ContainsFunc(tags, isCordonTag)
	if rec.empty() {
		if cordon {
			st.Partial = "Cordon's tags are on the instance but there is no record of an isolation"
		}
		return st, nil
	}
	var missing []string
	for _, t := range []string{tagQuarantine, policyTag(rec.policy)} {
		if !slices.Contains(tags, t) {
			missing = append(missing, "tag "+t+" is missing")
		}
	}
	nets, err := networks(in)
	if err != nil {
		return cloud.Status{}, err
	}
	listed := map[string]map[string]*computepb.Firewall{}
	for _, n := range nets {
		rules, ok := listed[n.project]
		if !ok {
			if rules, err = p.listRules(ctx, c, n.project); err != nil {
				return cloud.Status{}, err
			}
			listed[n.project] = rules
		}
		if bad := checkRules(rules, n, rec.policy); bad != "" {
			missing = append(missing, bad)
		}
	}
	st.Isolated = rec.policy != "" && len(nets) > 0 && len(missing) == 0
	if !st.Isolated {
		if len(missing) == 0 {
			missing = append(missing, "the record names no policy")
		}
		st.Partial = strings.Join(missing, "; ")
	}
	return st, nil
}

// readState describes the instance as Compute Engine now reports it.
func (p *Plugin) readState(ctx context.Context, c *clients, r ref) ([]string, error) {
	in, err := p.getInstance(ctx, c, r)
	if err != nil {
		return nil, err
	}
	return stateLines(in, readRecord(in.GetLabels())), nil
}

// stateLines are "tags: web, cordon-quarantine, cordon-quarantine-<policy>
// (Cordon's: …)" and one line per interface with its network, and the
// rules that apply through Cordon's tags when they are on.
func stateLines(in *computepb.Instance, rec record) []string {
	tags := in.GetTags().GetItems()
	line := "tags: none"
	if len(tags) > 0 {
		line = "tags: " + strings.Join(tags, ", ")
	}
	var ours []string
	for _, t := range tags {
		if isCordonTag(t) && !(t == tagQuarantine && rec.hadTag) {
			ours = append(ours, t)
		}
	}
	if len(ours) > 0 {
		line += " (Cordon's: " + strings.Join(ours, ", ") + ")"
	}
	lines := []string{line}
	quarantined := slices.Contains(tags, tagQuarantine)
	for _, ni := range in.GetNetworkInterfaces() {
		l := ni.GetName() + ": " + ni.GetNetwork()
		if n, err := parseNetwork(ni.GetNetwork()); err == nil {
			l = ni.GetName() + ": " + n.path()
			if quarantined {
				l += ", rules " + rulePrefix + "*-" + n.hash()
			}
		}
		lines = append(lines, l)
	}
	return lines
}
