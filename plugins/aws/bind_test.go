package main

import (
	"encoding/json"
	"io"
	"slices"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/controller/server"
	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// TestControllerOperatorBinding: an agent behind NAT (its address is none
// of the instance's) gets no cloud layer from its own report; once an
// admin binds the host to the instance by hand, the next order isolates it
// there.
func TestControllerOperatorBinding(t *testing.T) {
	f := newFakeEC2(t)
	f.addVPC(vpcID)
	web := f.addGroup(vpcID, "web")
	eni := f.addInstance(instID, vpcID, nil, eniSpec{ip: "10.0.1.10", groups: []string{web}})[0]
	ctl := startController(t, map[string]cloud.Layer{"aws": launchAgainst(t, f, io.Discard)})
	ctl.enrollAgent(t, "pay-db-01", "", "")
	op := ctl.dial(t, "op", ssh.PublicKeys(ctl.admin))

	args, _ := json.Marshal(api.HostBindArgs{Host: "pay-db-01", Provider: "aws", Instance: instID, Region: "eu-west-1"})
	resp := apiCall(t, op, api.Request{V: wire.Version, Op: api.OpHostBind, Args: args})
	if resp.Error != nil {
		t.Fatalf("bind: %v", resp.Error)
	}
	var h api.Host
	json.Unmarshal(resp.Result, &h)
	if h.CloudProvider != "aws" || h.CloudInstanceID != instID || h.CloudBoundBy != "admin" {
		t.Errorf("bound host = %+v", h)
	}
	args, _ = json.Marshal(api.IsolateArgs{Host: "pay-db-01", Reason: "behind NAT"})
	var ord api.Order
	json.Unmarshal(apiCall(t, op, api.Request{V: wire.Version, Op: api.OpIsolate, Args: args}).Result, &ord)
	got := waitOrder(t, op, ord.ID, func(o api.Order) bool { return o.CloudState != "" && o.CloudState != server.CloudApplying })
	if got.CloudState != server.CloudIsolated {
		t.Fatalf("cloud layer of a host bound by hand: %q %q", got.CloudState, got.CloudError)
	}
	if g := f.eniGroups(eni); slices.Equal(g, []string{web}) {
		t.Errorf("%s still in its original groups", eni)
	}
	// A bad binding is refused with a clear error.
	args, _ = json.Marshal(api.HostBindArgs{Host: "pay-db-01", Provider: "openstack", Instance: "x"})
	if resp := apiCall(t, op, api.Request{V: wire.Version, Op: api.OpHostBind, Args: args}); resp.Error == nil || resp.Error.Code != api.CodeInvalid {
		t.Errorf("bind to an unknown provider: %+v", resp.Error)
	}
}

// TestControllerCloudOptions: the optional steps an isolate order asks
// for reach the provider: EBS snapshots of every volume and termination
// protection.
func TestControllerCloudOptions(t *testing.T) {
	f := newFakeEC2(t)
	f.addVPC(vpcID)
	web := f.addGroup(vpcID, "web")
	f.addInstance(instID, vpcID, []string{"vol-0aaaaaaaaaaaaaaa1"}, eniSpec{ip: "127.0.0.1", groups: []string{web}})
	ctl := startController(t, map[string]cloud.Layer{"aws": launchAgainst(t, f, io.Discard)})
	ctl.enrollAgent(t, "pay-db-01", "aws", instID)
	op := ctl.dial(t, "op", ssh.PublicKeys(ctl.admin))
	args, _ := json.Marshal(api.IsolateArgs{Host: "pay-db-01", Reason: "r", Incident: "INC-9",
		Cloud: api.CloudOptions{Snapshot: true, TerminationProtection: true}})
	var ord api.Order
	json.Unmarshal(apiCall(t, op, api.Request{V: wire.Version, Op: api.OpIsolate, Args: args}).Result, &ord)
	got := waitOrder(t, op, ord.ID, func(o api.Order) bool { return o.CloudState != "" && o.CloudState != server.CloudApplying })
	if got.CloudState != server.CloudIsolated {
		t.Fatalf("cloud layer: %q %q", got.CloudState, got.CloudError)
	}
	if snaps := f.snapshotList(); len(snaps) != 1 || snaps[0].volume != "vol-0aaaaaaaaaaaaaaa1" {
		t.Errorf("snapshots = %+v, want one of the instance's volume", snaps)
	}
	if !f.terminationProtected(instID) {
		t.Error("termination protection not turned on")
	}
}

// TestControllerCloudStepsInOrder: an isolate and a release issued back to
// back reach the provider in that order, so the release is what stands.
func TestControllerCloudStepsInOrder(t *testing.T) {
	f := newFakeEC2(t)
	f.addVPC(vpcID)
	web := f.addGroup(vpcID, "web")
	eni := f.addInstance(instID, vpcID, nil, eniSpec{ip: "127.0.0.1", groups: []string{web}})[0]
	ctl := startController(t, map[string]cloud.Layer{"aws": launchAgainst(t, f, io.Discard)})
	ctl.enrollAgent(t, "pay-db-01", "aws", instID)
	op := ctl.dial(t, "op", ssh.PublicKeys(ctl.admin))
	for range 3 {
		iso, _ := json.Marshal(api.IsolateArgs{Host: "pay-db-01", Reason: "r"})
		rel, _ := json.Marshal(api.ReleaseArgs{Host: "pay-db-01", Reason: "r"})
		apiCall(t, op, api.Request{V: wire.Version, Op: api.OpIsolate, Args: iso})
		var ord api.Order
		json.Unmarshal(apiCall(t, op, api.Request{V: wire.Version, Op: api.OpRelease, Args: rel}).Result, &ord)
		got := waitOrder(t, op, ord.ID, func(o api.Order) bool { return o.CloudState != "" && o.CloudState != server.CloudApplying })
		if got.CloudState != server.CloudReleased {
			t.Fatalf("release right after isolate: %q %q", got.CloudState, got.CloudError)
		}
		if g := f.eniGroups(eni); !slices.Equal(g, []string{web}) {
			t.Fatalf("%s groups after isolate then release = %v, want the original", eni, g)
		}
	}
}

// TestControllerKeepsConfirmedBinding: once the provider confirmed the
// instance an agent reported, the agent cannot switch the cloud layer off
// by naming no instance later: the binding stays, the next isolation still
// reaches the provider, and the mismatch is in the audit trail.
func TestControllerKeepsConfirmedBinding(t *testing.T) {
	f := newFakeEC2(t)
	f.addVPC(vpcID)
	web := f.addGroup(vpcID, "web")
	eni := f.addInstance(instID, vpcID, nil, eniSpec{ip: "127.0.0.1", groups: []string{web}})[0]
	ctl := startController(t, map[string]cloud.Layer{"aws": launchAgainst(t, f, io.Discard)})
	agent, key := ctl.enrollAgentKey(t, "pay-db-01", "aws", instID)
	op := ctl.dial(t, "op", ssh.PublicKeys(ctl.admin))
	order := func(opName string, a any) api.Order {
		args, _ := json.Marshal(a)
		var o api.Order
		json.Unmarshal(apiCall(t, op, api.Request{V: wire.Version, Op: opName, Args: args}).Result, &o)
		return waitOrder(t, op, o.ID, func(o api.Order) bool { return o.CloudState != "" && o.CloudState != server.CloudApplying })
	}
	if o := order(api.OpIsolate, api.IsolateArgs{Host: "pay-db-01", Reason: "r"}); o.CloudState != server.CloudIsolated {
		t.Fatalf("first isolation: %q %q", o.CloudState, o.CloudError)
	}
	if o := order(api.OpRelease, api.ReleaseArgs{Host: "pay-db-01", Reason: "r"}); o.CloudState != server.CloudReleased {
		t.Fatalf("release: %q %q", o.CloudState, o.CloudError)
	}
	// The agent comes back naming no instance.
	agent.Close()
	again := ctl.dial(t, "pay-db-01", ssh.PublicKeys(key))
	ctl.hello(t, again, "pay-db-01", "", "")
	if o := order(api.OpIsolate, api.IsolateArgs{Host: "pay-db-01", Reason: "r"}); o.CloudState != server.CloudIsolated {
		t.Fatalf("isolation after the agent stopped naming its instance: %q %q", o.CloudState, o.CloudError)
	}
	if g := f.eniGroups(eni); slices.Equal(g, []string{web}) {
		t.Errorf("%s left in its original groups", eni)
	}
	var audit []api.AuditEntry
	json.Unmarshal(apiCall(t, op, api.Request{V: wire.Version, Op: api.OpAudit}).Result, &audit)
	if !slices.ContainsFunc(audit, func(e api.AuditEntry) bool { return e.Action == "cloud-binding-mismatch" }) {
		t.Error("no cloud-binding-mismatch in the audit trail")
	}
}

// TestControllerOfflineHost: a host whose agent is offline (killed, say)
// still gets the cloud layer, allowing the controller endpoint the agent
// last connected to.
func TestControllerOfflineHost(t *testing.T) {
	f := newFakeEC2(t)
	f.addVPC(vpcID)
	web := f.addGroup(vpcID, "web")
	eni := f.addInstance(instID, vpcID, nil, eniSpec{ip: "127.0.0.1", groups: []string{web}})[0]
	ctl := startController(t, map[string]cloud.Layer{"aws": launchAgainst(t, f, io.Discard)})
	agent := ctl.enrollAgent(t, "pay-db-01", "aws", instID)
	op := ctl.dial(t, "op", ssh.PublicKeys(ctl.admin))
	agent.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var hosts []api.Host
		json.Unmarshal(apiCall(t, op, api.Request{V: wire.Version, Op: api.OpHosts}).Result, &hosts)
		if len(hosts) == 1 && !hosts[0].Online {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("agent still online")
		}
		time.Sleep(50 * time.Millisecond)
	}
	args, _ := json.Marshal(api.IsolateArgs{Host: "pay-db-01", Reason: "agent killed"})
	var ord api.Order
	json.Unmarshal(apiCall(t, op, api.Request{V: wire.Version, Op: api.OpIsolate, Args: args}).Result, &ord)
	got := waitOrder(t, op, ord.ID, func(o api.Order) bool { return o.CloudState != "" && o.CloudState != server.CloudApplying })
	if got.CloudState != server.CloudIsolated {
		t.Fatalf("cloud layer of an offline host: %q %q", got.CloudState, got.CloudError)
	}
	if g := f.eniGroups(eni); slices.Equal(g, []string{web}) {
		t.Errorf("%s left in its original groups", eni)
	}
}
