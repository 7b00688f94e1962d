package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"cloud.google.com/go/compute/apiv1/computepb"
	"google.golang.org/protobuf/proto"

	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// What VPC firewall rules cannot do, said with every Isolate.
const (
	noteMetadata = "metadata: VPC firewall rules do not filter the instance's traffic to the metadata server (169.254.169.254), " +
		"which also answers its DHCP, DNS and NTP: the host can still resolve names (and tunnel data through DNS) and fetch " +
		"its service account's access tokens, which work from anywhere until they expire: the host layer must block DNS; " +
		"detach or disable the instance's service account"
	noteTracked = "tracking: VPC firewall rules are stateful: the return traffic of a connection they allowed is allowed " +
		"while the connection stays tracked (a packet at least every 10 minutes), and no rule can deny it; a new deny rule " +
		"or tag is not documented to end a tracked connection: take it that established connections survive the cloud " +
		"layer until they idle out; the host layer cuts them"
	notePolicies = "precedence: hierarchical firewall policies (organization, folders), and network firewall policies of a " +
		"network that evaluates them before VPC firewall rules, come before Cordon's rules: an allow there is not stopped here"
)

// rollbackTimeout bounds undoing a failed Isolate, which runs even when the
// caller's context is done.
const rollbackTimeout = 2 * time.Minute

// maxTries is how often a tags or labels update is tried when someone else
// changed them between the read and the write (412, fingerprint).
const maxTries = 3

// Isolate tags the instance cordon-quarantine and cordon-quarantine-<policy>
// after making sure that, in each network of its interfaces, Cordon's rules
// deny all traffic of the first tag (priority 1) and allow that of p to
// the second (priority 0). The record (labels) is written before the tags
// change, and holds whether the instance had the cordon-quarantine tag
// already, so that Release removes only what Isolate added.
//
// On an error after the record was written, a new record is removed again
// when the tags are known to be unchanged. Options are carried out after the
// network is cut, and each one's result, failure included, is a note.
func (p *Plugin) Isolate(ctx context.Context, inst cloud.Instance, pol policy.Policy, o cloud.Options, orderID string) (cloud.Applied, error) {
	if err := pol.Validate(); err != nil {
		return cloud.Applied{}, fmt.Errorf("%w: %w", cloud.ErrInvalid, err)
	}
	r, err := p.refOf(inst)
	if err != nil {
		return cloud.Applied{}, err
	}
	pol = pol.Canonical()
	d12 := shortDigest(pol.Digest())

	p.mu.Lock()
	defer p.mu.Unlock()
	log := p.log.With("order_id", orderID, "instance", r.String(), "incident", o.Incident)
	c, err := p.clients(ctx)
	if err != nil {
		return cloud.Applied{}, err
	}
	in, err := p.getInstance(ctx, c, r)
	if err != nil {
		return cloud.Applied{}, err
	}
	nets, err := networks(in)
	if err != nil {
		return cloud.Applied{}, err
	}
	if len(nets) == 0 {
		return cloud.Applied{}, fmt.Errorf("%w: %s has no network interface", cloud.ErrInvalid, r)
	}
	notes, err := p.ensureRules(ctx, c, log, nets, pol, d12, in)
	if err != nil {
		return cloud.Applied{}, err
	}

	// The record first.
	rec := readRecord(in.GetLabels())
	hadTag := slices.Contains(in.GetTags().GetItems(), tagQuarantine)
	now := time.Now()
	in, wrote, err := p.setLabels(ctx, c, r, in, func(l map[string]string) map[string]string {
		return withRecord(l, rec, d12, orderID, hadTag, now)
	})
	if err != nil {
		return cloud.Applied{}, fmt.Errorf("record the isolation on %s: %w", r, err)
	}
	if wrote {
		log.Info("isolation recorded", "policy", d12, "new", rec.empty())
	}

	// Then the tags.
	in, tagged, err := p.setTags(ctx, c, r, in, func(tags []string) []string {
		out := slices.DeleteFunc(slices.Clone(tags), func(t string) bool { return isPolicyTag(t) && t != policyTag(d12) })
		for _, t := range []string{tagQuarantine, policyTag(d12)} {
			if !slices.Contains(out, t) {
				out = append(out, t)
			}
		}
		return out
	})
	if err != nil {
		err = fmt.Errorf("tag %s %s: %w", r, tagQuarantine, err)
		if code, _ := errorCode(err); code != 0 && wrote {
			// The API refused: the tags are as they were; so is the record
			// put back, removed if this call wrote it, its policy restored
			// if it only changed that.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			defer cancel()
			undo := withoutRecord
			if !rec.empty() {
				undo = func(l map[string]string) map[string]string {
					out := maps.Clone(l)
					out[labelPolicy] = rec.policy
					return out
				}
			}
			cur, gerr := p.getInstance(rctx, c, r)
			if gerr == nil {
				_, _, gerr = p.setLabels(rctx, c, r, cur, undo)
			}
			if gerr != nil {
				return cloud.Applied{}, errors.Join(err, fmt.Errorf("the isolation record (labels %s) could not be put back: %w", strings.Join(recordLabels, ", "), gerr))
			}
		}
		return cloud.Applied{}, err
	}
	if tagged {
		log.Info("instance isolated", "tags", strings.Join(in.GetTags().GetItems(), " "), "policy", d12)
	}

	if o.Tag {
		notes = append(notes, p.labelIncident(ctx, c, log, r, in, o.Incident))
	}
	if o.Snapshot {
		notes = append(notes, "snapshot: not implemented yet in cordon-plugin-gcp: snapshot each disk by hand (compute.disks.createSnapshot)")
	}
	if o.TerminationProtection {
		notes = append(notes, "termination protection: not implemented yet in cordon-plugin-gcp: set deletion protection by hand (compute.instances.setDeletionProtection)")
	}
	if o.Detach {
		notes = append(notes, "detach: not implemented yet in cordon-plugin-gcp: abandon the instance from its managed instance group "+
			"(compute.instanceGroupManagers.abandonInstances) and take it out of load balancer backends by hand")
	}
	if o.RevokeSessions {
		notes = append(notes, "revoke sessions: not implemented yet in cordon-plugin-gcp: the instance's service account tokens cannot be "+
			"revoked one by one; disable the service account or detach it from the instance")
	}
	notes = append(notes, noteMetadata, noteTracked, notePolicies)

	state, err := p.readState(ctx, c, r)
	if err != nil {
		// The isolation is in place; only the read-back failed.
		notes = append(notes, "read-back failed: "+err.Error())
	}
	return cloud.Applied{State: state, Notes: notes}, nil
}

// setLabels sets the instance's labels to what change makes of them,
// with their fingerprint; when someone changed them since in was read
// (412), it reads the instance again and tries again. It returns the
// instance as last read, updated, and whether it changed anything.
func (p *Plugin) setLabels(ctx context.Context, c *clients, r ref, in *computepb.Instance, change func(map[string]string) map[string]string) (*computepb.Instance, bool, error) {
	const method = "compute.instances.setLabels"
	for try := 1; ; try++ {
		want := change(in.GetLabels())
		if maps.Equal(want, in.GetLabels()) {
			return in, false, nil
		}
		op, err := c.instances.SetLabels(ctx, &computepb.SetLabelsInstanceRequest{
			Project: r.project, Zone: r.zone, Instance: r.name,
			InstancesSetLabelsRequestResource: &computepb.InstancesSetLabelsRequest{Labels: want, LabelFingerprint: proto.String(in.GetLabelFingerprint())},
		}, p.callOpts(false)...)
		if err != nil {
			err = apiError(err, method, r.String())
		} else {
			err = p.wait(ctx, op, method, r.String())
		}
		if code, _ := errorCode(err); code == 412 && try < maxTries {
			if in, err = p.getInstance(ctx, c, r); err != nil {
				return nil, false, err
			}
			continue
		}
		if err != nil {
			return in, false, err
		}
		return p.reread(ctx, c, r, in, func(in *computepb.Instance) { in.Labels = want }), true, nil
	}
}

// setTags is setLabels for the instance's network tags.
func (p *Plugin) setTags(ctx context.Context, c *clients, r ref, in *computepb.Instance, change func([]string) []string) (*computepb.Instance, bool, error) {
	const method = "compute.instances.setTags"
	for try := 1; ; try++ {
		cur := in.GetTags().GetItems()
		want := change(cur)
		if slices.Equal(want, cur) {
			return in, false, nil
		}
		op, err := c.instances.SetTags(ctx, &computepb.SetTagsInstanceRequest{
			Project: r.project, Zone: r.zone, Instance: r.name,
			TagsResource: &computepb.Tags{Items: want, Fingerprint: proto.String(in.GetTags().GetFingerprint())},
		}, p.callOpts(false)...)
		if err != nil {
			err = apiError(err, method, r.String())
		} else {
			err = p.wait(ctx, op, method, r.String())
		}
		if code, _ := errorCode(err); code == 412 && try < maxTries {
			if in, err = p.getInstance(ctx, c, r); err != nil {
				return nil, false, err
			}
			continue
		}
		if err != nil {
			return in, false, err
		}
		return p.reread(ctx, c, r, in, func(in *computepb.Instance) { in.Tags = &computepb.Tags{Items: want} }), true, nil
	}
}

// reread reads the instance after a change, for its new fingerprints; when
// that fails, it returns old with the change applied (and stale
// fingerprints, which a later change meets as a 412 and reads again).
func (p *Plugin) reread(ctx context.Context, c *clients, r ref, old *computepb.Instance, applied func(*computepb.Instance)) *computepb.Instance {
	if in, err := p.getInstance(ctx, c, r); err == nil {
		return in
	}
	applied(old)
	return old
}

// labelIncident labels the instance with the incident, for the
// investigation; Release leaves the label.
func (p *Plugin) labelIncident(ctx context.Context, c *clients, log *slog.Logger, r ref, in *computepb.Instance, incident string) string {
	v := labelValue(incident)
	_, changed, err := p.setLabels(ctx, c, r, in, func(l map[string]string) map[string]string {
		out := maps.Clone(l)
		if out == nil {
			out = map[string]string{}
		}
		out[labelIncident] = v
		return out
	})
	if err != nil {
		return fmt.Sprintf("tag: label %s=%s failed: %v", labelIncident, v, err)
	}
	if changed {
		log.Info("instance labelled", "label", labelIncident, "value", v)
	}
	return fmt.Sprintf("tag: label %s=%s", labelIncident, v)
}
