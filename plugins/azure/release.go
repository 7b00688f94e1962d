package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6"

	"github.com/cordon-ir/cordon/pkg/cloud"
)

// Release gives every NIC with a record its original NSG back (none when
// it had none) and removes the record, in one write per NIC.
//
// When a NIC's original NSG was deleted meanwhile, Release does not leave
// the NIC without an NSG: that would hand it to Azure's default rules,
// which allow all of the virtual network and outbound Internet, more than
// it had before. It leaves the NIC in the quarantine NSG with its record,
// restores the others, and says in the error what to do: recreate the NSG,
// or set the NIC's NSG by hand (none if that is meant), and release again;
// a NIC whose NSG was set by hand to anything but Cordon's keeps it. A
// NIC in Cordon's NSG with no record is left as it is, and the error says
// so. Release succeeds when nothing of Cordon's is in place, and returns
// ErrNotFound when the VM is gone. The quarantine NSG stays in the
// resource group, where other isolations may use it.
func (p *Plugin) Release(ctx context.Context, inst cloud.Instance, orderID string) (cloud.Applied, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	log := p.log.With("order_id", orderID, "instance", inst.ID)
	vm, c, err := p.vm(ctx, inst.ID)
	if err != nil {
		return cloud.Applied{}, err
	}
	nics, err := p.nics(ctx, c, vm)
	if err != nil {
		return cloud.Applied{}, err
	}
	var notes []string
	var errs []error
	cordon := false
	for _, n := range nics {
		rec, cur := readRecord(n.nic.Tags), n.nsgID()
		if !rec.recorded {
			if isCordonNSG(cur) {
				cordon = true
				errs = append(errs, fmt.Errorf("%w: network interface %s is in Cordon's NSG %s but its original NSG is not recorded (tag %s): set its NSG by hand",
					cloud.ErrInvalid, n.name, lastName(cur), tagOriginal))
			}
			continue
		}
		cordon = true
		if n.nic.Properties == nil {
			errs = append(errs, fmt.Errorf("network interface %s: Azure returned no properties", n.name))
			continue
		}
		target := rec.original
		if target != "" && !strings.EqualFold(cur, target) {
			exists, err := p.nsgExists(ctx, c, target)
			if err != nil {
				errs = append(errs, fmt.Errorf("restore network interface %s: %w", n.name, err))
				continue
			}
			if !exists {
				if isCordonNSG(cur) {
					errs = append(errs, fmt.Errorf("%w: network interface %s: its original NSG %s was deleted meanwhile; it stays in %s with its record, "+
						"because no NSG would leave it to Azure's default rules (all of the virtual network and outbound Internet allowed): "+
						"recreate %s, or set the NIC's NSG by hand (none if that is what you mean), then release again",
						cloud.ErrInvalid, n.name, target, lastName(cur), lastName(target)))
					continue
				}
				notes = append(notes, fmt.Sprintf("%s: its original NSG %s was deleted meanwhile; it keeps %s, which was set by hand",
					n.name, lastName(target), nsgName(cur)))
				target = cur
			}
		}
		nic := n.nic
		props := *n.nic.Properties
		props.NetworkSecurityGroup = nil
		if target != "" {
			props.NetworkSecurityGroup = &armnetwork.SecurityGroup{ID: ptr(target)}
		}
		nic.Properties = &props
		nic.Tags = withoutRecord(n.nic.Tags)
		if _, err := p.putNIC(ctx, c, n, nic); err != nil {
			errs = append(errs, fmt.Errorf("restore network interface %s to %s: %w", n.name, nsgName(target), err))
			continue
		}
		if target == "" {
			notes = append(notes, fmt.Sprintf("%s had no NSG before the isolation and has none again: only an NSG on its subnet "+
				"filters it (with none there either, Azure's default rules allow all of the virtual network and outbound Internet)", n.name))
		}
		log.Info("network interface released", "nic", n.id, "nsg", nsgName(target))
	}
	if !cordon && len(errs) == 0 {
		notes = append(notes, "nothing of Cordon's was in place")
	} else {
		notes = append(notes, "Cordon's quarantine NSGs ("+quarantinePrefix+"*) stay in the resource group for other isolations")
	}
	if v := tagValue(vm.tags, tagIncident); v != "" {
		notes = append(notes, fmt.Sprintf("the %s=%s tag on the VM is left in place", tagIncident, v))
	}
	state, rerr := p.readState(ctx, c, vm.id)
	if rerr != nil {
		notes = append(notes, "read-back failed: "+rerr.Error())
	}
	return cloud.Applied{State: state, Notes: notes}, errors.Join(errs...)
}

// nsgExists reports whether Azure has the NSG.
func (p *Plugin) nsgExists(ctx context.Context, c *clients, id string) (bool, error) {
	rid, err := arm.ParseResourceID(id)
	if err != nil {
		return false, fmt.Errorf("%w: network security group id %q: %v", cloud.ErrInvalid, id, err)
	}
	_, err = c.nsgs.Get(ctx, rid.ResourceGroupName, rid.Name, nil)
	switch {
	case err == nil:
		return true, nil
	case isStatus(err, 404):
		return false, nil
	}
	return false, apiError("Microsoft.Network/networkSecurityGroups/read", "get network security group "+rid.Name, err)
}

// Status reads what is in place: isolated when every NIC of the VM has a
// record and is in the quarantine NSG of the recorded policy.
func (p *Plugin) Status(ctx context.Context, inst cloud.Instance) (cloud.Status, error) {
	vm, c, err := p.vm(ctx, inst.ID)
	if err != nil {
		return cloud.Status{}, err
	}
	nics, err := p.nics(ctx, c, vm)
	if err != nil {
		return cloud.Status{}, err
	}
	st := cloud.Status{State: stateLines(nics)}
	var missing []string
	cordon, anyRecord := false, false
	for _, n := range nics {
		if readRecord(n.nic.Tags).recorded {
			anyRecord = true
		}
	}
	for _, n := range nics {
		rec, cur := readRecord(n.nic.Tags), n.nsgID()
		cordon = cordon || rec.recorded || isCordonNSG(cur)
		if rec.recorded && !rec.since.IsZero() && (st.Since.IsZero() || rec.since.Before(st.Since)) {
			st.Since = rec.since
		}
		want := ""
		if rec.policy != "" {
			want = nsgID(vm.sub, vm.rg, quarantineName(vm.location, rec.policy))
		}
		switch {
		case rec.recorded && want != "" && strings.EqualFold(cur, want):
		case isCordonNSG(cur) && !rec.recorded:
			missing = append(missing, n.name+" is in Cordon's NSG but its original NSG is not recorded")
		case rec.recorded && strings.EqualFold(cur, rec.original):
			missing = append(missing, n.name+" has its original NSG")
		case !rec.recorded && anyRecord:
			missing = append(missing, n.name+" is not isolated (released, or attached after the isolation)")
		default:
			missing = append(missing, fmt.Sprintf("%s has %s", n.name, nsgName(cur)))
		}
	}
	st.Isolated = len(nics) > 0 && len(missing) == 0
	if !st.Isolated && cordon {
		st.Partial = strings.Join(missing, "; ")
	}
	return st, nil
}
