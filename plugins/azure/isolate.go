package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6"

	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// What an NSG cannot do, said with every Isolate.
const (
	noteFlows = "existing flows: the quarantine NSG has flushConnection on, so Azure re-evaluates the flows through it " +
		"against its rules instead of letting established connections run on; Azure does not say how soon after a NIC " +
		"changes NSG that takes effect, so the host layer must cut established connections too"
	notePlatform = "platform: Azure's DHCP, the VM agent's wire server (168.63.129.16) and load balancer health probes " +
		"are not filtered by NSGs; the quarantine NSG denies Azure DNS (AzurePlatformDNS) and the instance metadata " +
		"service (AzurePlatformIMDS) by their service tags, unless the policy's resolvers or allowlist name them, so the " +
		"VM's managed identity gets no new token, but tokens already issued stay valid for up to 24 hours"
	noteSubnet = "subnet: an NSG on a NIC's subnet applies too; it can block more, never allow more"
	noteVM     = "the VM itself was neither changed nor restarted: only its NICs' NSG and tags were"
)

// rollbackTimeout bounds putting NICs back after a failure, which runs
// even when the caller's context is done.
const rollbackTimeout = 2 * time.Minute

// tagsAPIVersion is the Microsoft.Resources Tags API version used.
const tagsAPIVersion = "2021-04-01"

// Isolate moves every network interface of the VM to the quarantine NSG
// of p in the VM's resource group and location, creating it if need be:
// TCP to the controller endpoints, UDP and TCP 53 to the policy's DNS
// resolvers, the allowlist both ways, then deny all, with flushConnection
// on.
//
// Each NIC is written once, as read with its NSG changed and the record
// of its original NSG added to its tags, so a NIC is never in the
// quarantine NSG without its record. On an error, the NICs this call
// changed are put back, last first, to exactly the NSG and tags they had;
// what could not be put back is said in the error. Options are carried
// out after the network is cut, and each one's result, failure included,
// is a note: the isolation stands whatever they do. The VM itself is
// never written, so never restarted.
func (p *Plugin) Isolate(ctx context.Context, inst cloud.Instance, pol policy.Policy, o cloud.Options, orderID string) (cloud.Applied, error) {
	if err := pol.Validate(); err != nil {
		return cloud.Applied{}, fmt.Errorf("%w: %w", cloud.ErrInvalid, err)
	}
	if len(o.Incident) > maxTagValue || len(orderID) > maxTagValue {
		return cloud.Applied{}, fmt.Errorf("%w: incident name or order id longer than %d characters (an Azure tag value)", cloud.ErrInvalid, maxTagValue)
	}
	pol = pol.Canonical()
	digest := pol.Digest()

	p.mu.Lock()
	defer p.mu.Unlock()
	log := p.log.With("order_id", orderID, "instance", inst.ID, "incident", o.Incident)
	vm, c, err := p.vm(ctx, inst.ID)
	if err != nil {
		return cloud.Applied{}, err
	}
	nics, err := p.nics(ctx, c, vm)
	if err != nil {
		return cloud.Applied{}, err
	}
	if len(nics) == 0 {
		return cloud.Applied{}, fmt.Errorf("%w: VM %s has no network interface", cloud.ErrInvalid, vm.name)
	}
	for _, n := range nics {
		if n.nic.Properties == nil {
			return cloud.Applied{}, fmt.Errorf("network interface %s: Azure returned no properties", n.name)
		}
		if cur := n.nsgID(); isCordonNSG(cur) && !readRecord(n.nic.Tags).recorded {
			return cloud.Applied{}, fmt.Errorf("%w: network interface %s is in Cordon's NSG %s but its original NSG is not recorded (tag %s): set its NSG by hand, then isolate again",
				cloud.ErrInvalid, n.name, lastName(cur), tagOriginal)
		}
	}
	qid, err := p.ensureNSG(ctx, c, log, vm, pol, digest)
	if err != nil {
		return cloud.Applied{}, err
	}

	now := time.Now().UTC().Truncate(time.Second)
	var changed []nicRef // as they were before this call changed them
	for _, n := range nics {
		rec, cur := readRecord(n.nic.Tags), n.nsgID()
		if rec.recorded && rec.policy == digest && strings.EqualFold(cur, qid) {
			continue
		}
		next := rec
		if !rec.recorded {
			next = record{recorded: true, original: cur, since: now, order: orderID}
		}
		if next.since.IsZero() {
			next.since = now
		}
		next.policy = digest
		nic := n.nic
		props := *n.nic.Properties
		props.NetworkSecurityGroup = &armnetwork.SecurityGroup{ID: ptr(qid)}
		nic.Properties = &props
		nic.Tags = withRecord(n.nic.Tags, next)
		if maybe, err := p.putNIC(ctx, c, n, nic); err != nil {
			if maybe {
				changed = append(changed, n)
			}
			err = fmt.Errorf("move network interface %s to %s: %w", n.name, lastName(qid), err)
			return cloud.Applied{}, p.rollback(ctx, c, log, changed, err)
		}
		changed = append(changed, n)
		log.Info("network interface isolated", "nic", n.id, "nsg", qid, "was", nsgName(next.original))
	}

	var notes []string
	if o.Tag {
		notes = append(notes, p.tagIncident(ctx, c, log, vm, o.Incident))
	}
	if o.Snapshot {
		notes = append(notes, "snapshot: not implemented yet in cordon-plugin-azure: snapshot each managed disk of the VM "+
			"by hand (Microsoft.Compute/snapshots, source the disk's id)")
	}
	if o.TerminationProtection {
		notes = append(notes, "termination protection: not implemented yet in cordon-plugin-azure: put a CanNotDelete "+
			"lock on the VM and its disks by hand (Microsoft.Authorization/locks)")
	}
	if o.Detach {
		notes = append(notes, "detach: not implemented yet in cordon-plugin-azure: take the NICs' IP configurations out of "+
			"load balancer and application gateway backend pools by hand")
	}
	if o.RevokeSessions {
		notes = append(notes, "revoke sessions: not implemented yet in cordon-plugin-azure: the quarantine NSG blocks the "+
			"metadata service, so the VM's managed identity gets no new token; remove the identity's role assignments "+
			"to stop the tokens already issued")
	}
	notes = append(notes, noteFlows, notePlatform, noteSubnet, noteVM)

	state, err := p.readState(ctx, c, vm.id)
	if err != nil {
		// The isolation is in place; only the read-back failed.
		notes = append(notes, "read-back failed: "+err.Error())
	}
	return cloud.Applied{State: state, Notes: notes}, nil
}

// rollback puts the changed NICs back, last first, to the NSG and tags
// they had before this call. It returns cause joined with what could not
// be put back; a NIC not put back keeps its record, for Release.
func (p *Plugin) rollback(ctx context.Context, c *clients, log *slog.Logger, changed []nicRef, cause error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	errs := []error{cause}
	for i := len(changed) - 1; i >= 0; i-- {
		before := changed[i]
		if err := p.putBack(ctx, c, before); err != nil {
			errs = append(errs, fmt.Errorf("network interface %s could not be put back to %s (its tag %s says what it had): %w",
				before.name, nsgName(before.nsgID()), tagOriginal, err))
			continue
		}
		log.Warn("network interface put back", "nic", before.id, "nsg", nsgName(before.nsgID()))
	}
	return errors.Join(errs...)
}

// putBack sets a NIC's NSG and tags back to those of before, on the NIC
// as it is now; a NIC that already has them is left alone.
func (p *Plugin) putBack(ctx context.Context, c *clients, before nicRef) error {
	cur, err := p.nic(ctx, c, before.id)
	if err != nil {
		return err
	}
	if cur.nic.Properties == nil {
		return fmt.Errorf("network interface %s: Azure returned no properties", cur.name)
	}
	if strings.EqualFold(cur.nsgID(), before.nsgID()) && sameTags(cur.nic.Tags, before.nic.Tags) {
		return nil
	}
	nic := cur.nic
	props := *cur.nic.Properties
	props.NetworkSecurityGroup = before.nic.Properties.NetworkSecurityGroup
	nic.Properties = &props
	nic.Tags = before.nic.Tags
	_, err = p.putNIC(ctx, c, cur, nic)
	return err
}

// tagIncident tags the VM with the incident through the Tags API, which
// merges one tag without writing the VM.
func (p *Plugin) tagIncident(ctx context.Context, c *clients, log *slog.Logger, vm vmRef, incident string) string {
	if incident == "" {
		return "tag: the order names no incident; nothing tagged"
	}
	done := fmt.Sprintf("tag: %s=%s on the VM (Release leaves it)", tagIncident, incident)
	if tagValue(vm.tags, tagIncident) == incident {
		return done
	}
	if err := mergeTags(ctx, c, vm.id, map[string]string{tagIncident: incident}); err != nil {
		log.Warn("incident tag failed", "err", err)
		return "tag: failed: " + err.Error()
	}
	log.Info("incident tag set", "tag", tagIncident)
	return done
}

// mergeTags merges tags into a resource's own (PATCH
// {scope}/providers/Microsoft.Resources/tags/default, operation Merge).
func mergeTags(ctx context.Context, c *clients, scope string, tags map[string]string) error {
	const action = "Microsoft.Resources/tags/write"
	call := "tag " + lastName(scope)
	req, err := runtime.NewRequest(ctx, http.MethodPatch, runtime.JoinPaths(c.arm.Endpoint(), scope, "providers/Microsoft.Resources/tags/default"))
	if err != nil {
		return fmt.Errorf("%s: %w", call, err)
	}
	q := req.Raw().URL.Query()
	q.Set("api-version", tagsAPIVersion)
	req.Raw().URL.RawQuery = q.Encode()
	req.Raw().Header.Set("Accept", "application/json")
	body := map[string]any{"operation": "Merge", "properties": map[string]any{"tags": tags}}
	if err := runtime.MarshalAsJSON(req, body); err != nil {
		return fmt.Errorf("%s: %w", call, err)
	}
	resp, err := c.arm.Pipeline().Do(req)
	if err != nil {
		return apiError(action, call, err)
	}
	if !runtime.HasStatusCode(resp, http.StatusOK) {
		return apiError(action, call, runtime.NewResponseError(resp))
	}
	runtime.Drain(resp)
	return nil
}

// readState describes the VM's NICs as Azure now reports them.
func (p *Plugin) readState(ctx context.Context, c *clients, vmID string) ([]string, error) {
	vm, _, err := p.vm(ctx, vmID)
	if err != nil {
		return nil, err
	}
	nics, err := p.nics(ctx, c, vm)
	if err != nil {
		return nil, err
	}
	return stateLines(nics), nil
}

// stateLines are "nic-1: cordon-quarantine-… (was nsg-web)" for a
// recorded NIC, "nic-1: nsg-web" for another, "none" for no NSG.
func stateLines(nics []nicRef) []string {
	var lines []string
	for _, n := range nics {
		line := n.name + ": " + nsgName(n.nsgID())
		if rec := readRecord(n.nic.Tags); rec.recorded {
			line += " (was " + nsgName(rec.original) + ")"
		}
		lines = append(lines, line)
	}
	return lines
}

// nsgName is the name of an NSG id, "none" for "".
func nsgName(id string) string {
	if id == "" {
		return noNSG
	}
	return lastName(id)
}
