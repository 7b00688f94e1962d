package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azcloud "github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	azpolicy "github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/policy"
)

const (
	testRG = "rg-web"
	testVM = "vm-web-1"
	// armAudience is the public cloud's Resource Manager audience, which
	// the test configuration keeps.
	armAudience = "https://management.core.windows.net/"
)

// fixture is a VM with two NICs: the first in nsg-web (accelerated
// networking, a custom DNS server and a tag of its own), the second with
// no NSG.
type fixture struct {
	f          *fakeARM
	p          *Plugin
	cred       *staticCred
	inst       cloud.Instance
	vmID       string
	nic0, nic1 string
	web        string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFakeARM(t)
	x := &fixture{f: f}
	x.web = f.addNSG(testRG, "nsg-web", testLocation)
	var nics []string
	x.vmID, nics = f.addVM(testRG, testVM, testLocation,
		nicSpec{ip: "10.0.1.4", ipv6: "ace:cab:deca::4", nsg: x.web, accelerated: true, dnsServers: []string{"10.0.0.53"}, tags: map[string]string{"owner": "web"}},
		nicSpec{ip: "10.0.2.4"})
	x.nic0, x.nic1 = nics[0], nics[1]
	x.cred = &staticCred{}
	x.p = newTestPlugin(t, f, x.cred, 2)
	x.inst = cloud.Instance{Provider: "azure", ID: x.vmID, Region: testLocation}
	return x
}

// staticCred is a credential with a fixed test token; it records the
// scopes asked for.
type staticCred struct {
	mu     sync.Mutex
	scopes []string
}

func (c *staticCred) GetToken(_ context.Context, o azpolicy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.scopes = append(c.scopes, o.Scopes...)
	return azcore.AccessToken{Token: testToken, ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// newTestPlugin points the real SDK at the fake through a custom cloud
// configuration and the fake's TLS client, with a static credential,
// maxRetries retries 1 ms apart (Retry-After honoured up to 2 s) and
// polling every 10 ms.
func newTestPlugin(t *testing.T, f *fakeARM, cred azcore.TokenCredential, maxRetries int32) *Plugin {
	t.Helper()
	return New(Options{
		Credential: cred,
		ClientOptions: &arm.ClientOptions{ClientOptions: azpolicy.ClientOptions{
			Cloud: azcloud.Configuration{
				ActiveDirectoryAuthorityHost: "https://login.invalid/",
				Services: map[azcloud.ServiceName]azcloud.ServiceConfiguration{
					azcloud.ResourceManager: {Endpoint: f.srv.URL, Audience: armAudience},
				},
			},
			Transport: f.srv.Client(),
			Retry:     azpolicy.RetryOptions{MaxRetries: maxRetries, RetryDelay: time.Millisecond, MaxRetryDelay: 2 * time.Second},
		}},
		PollFrequency: 10 * time.Millisecond,
	})
}

var testPolicy = policy.Policy{
	Controllers: []policy.Endpoint{
		{Addr: netip.MustParseAddr("198.51.100.10"), Port: 7443},
		{Addr: netip.MustParseAddr("2001:db8:ff::10"), Port: 7443},
	},
	Allow: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/28")},
	DNS:   []netip.Addr{netip.MustParseAddr("198.51.100.53")},
}

func (x *fixture) isolate(t *testing.T, o cloud.Options) cloud.Applied {
	t.Helper()
	a, err := x.p.Isolate(context.Background(), x.inst, testPolicy, o, "order-1")
	if err != nil {
		t.Fatalf("Isolate: %v", err)
	}
	return a
}

func (x *fixture) release(t *testing.T) cloud.Applied {
	t.Helper()
	a, err := x.p.Release(context.Background(), x.inst, "order-2")
	if err != nil {
		t.Fatalf("Release: %v", err)
	}
	return a
}

func (x *fixture) status(t *testing.T) cloud.Status {
	t.Helper()
	st, err := x.p.Status(context.Background(), x.inst)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	return st
}

func (x *fixture) quarantine() string {
	return x.f.resourceID(testRG, nsgType, quarantineName(testLocation, testPolicy.Digest()))
}

func (x *fixture) name(nic string) string { return lastName(nic) }

// cordonTags returns a NIC's cordon:* tags.
func (x *fixture) cordonTags(nic string) map[string]string {
	out := map[string]string{}
	for k, v := range x.f.nicTags(nic) {
		if strings.HasPrefix(k, "cordon:") {
			out[k] = v
		}
	}
	return out
}

// assertOriginal checks that both NICs have exactly their original NSG
// and tags, and no record.
func (x *fixture) assertOriginal(t *testing.T) {
	t.Helper()
	if g := x.f.nicNSG(x.nic0); !strings.EqualFold(g, x.web) {
		t.Errorf("%s has NSG %q, want its original %s", x.name(x.nic0), g, x.web)
	}
	if g := x.f.nicNSG(x.nic1); g != "" {
		t.Errorf("%s has NSG %q, want none, as it had", x.name(x.nic1), g)
	}
	if got, want := x.f.nicTags(x.nic0), map[string]string{"owner": "web"}; !maps.Equal(got, want) {
		t.Errorf("%s tags = %v, want %v", x.name(x.nic0), got, want)
	}
	if got := x.f.nicTags(x.nic1); len(got) != 0 {
		t.Errorf("%s tags = %v, want none", x.name(x.nic1), got)
	}
}

// writes are the calls that were not reads.
func writes(calls []string) []string {
	var out []string
	for _, c := range calls {
		if !strings.HasSuffix(c, "/read") {
			out = append(out, c)
		}
	}
	return out
}

func ruleLines(g *fNSG) []string {
	var out []string
	for _, r := range g.rules {
		p := r.Properties
		out = append(out, fmt.Sprintf("%d %s %s %s %s:%s -> %s:%s", p.Priority, p.Direction, p.Access, p.Protocol,
			p.SourceAddressPrefix, p.SourcePortRange, p.DestinationAddressPrefix, p.DestinationPortRange))
	}
	slices.Sort(out)
	return out
}

func TestInfo(t *testing.T) {
	i, err := New(Options{}).Info(context.Background())
	if err != nil || i.Provider != "azure" || i.Name != "cordon-plugin-azure" {
		t.Fatalf("Info = %+v, %v", i, err)
	}
}

func TestLookup(t *testing.T) {
	x := newFixture(t)
	got, err := x.p.Lookup(context.Background(), cloud.Instance{ID: x.vmID})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Interfaces, []string{x.nic0, x.nic1}) {
		t.Errorf("Interfaces = %v, want %v", got.Interfaces, []string{x.nic0, x.nic1})
	}
	want := []netip.Addr{netip.MustParseAddr("10.0.1.4"), netip.MustParseAddr("ace:cab:deca::4"), netip.MustParseAddr("10.0.2.4")}
	if !slices.Equal(got.PrivateIPs, want) {
		t.Errorf("PrivateIPs = %v, want %v", got.PrivateIPs, want)
	}
	if got.Provider != "azure" || got.Region != testLocation || got.ID != x.vmID {
		t.Errorf("Lookup = %+v", got)
	}
	// The token was asked for the Resource Manager audience.
	x.cred.mu.Lock()
	defer x.cred.mu.Unlock()
	if len(x.cred.scopes) == 0 || x.cred.scopes[0] != armAudience+"/.default" {
		t.Errorf("token scopes = %q", x.cred.scopes)
	}
}

func TestNotFound(t *testing.T) {
	x := newFixture(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, id string
		want     error
	}{
		{"no such VM", x.f.resourceID(testRG, vmType, "vm-gone"), cloud.ErrNotFound},
		{"no such resource group", x.f.resourceID("rg-gone", vmType, testVM), cloud.ErrNotFound},
		{"an EC2 id", "i-0123456789abcdef0", cloud.ErrInvalid},
		{"a NIC id", x.nic0, cloud.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x.f.resetCalls()
			inst := cloud.Instance{ID: tc.id}
			if _, err := x.p.Lookup(ctx, inst); !errors.Is(err, tc.want) {
				t.Errorf("Lookup: %v, want %v", err, tc.want)
			}
			if _, err := x.p.Isolate(ctx, inst, testPolicy, cloud.Options{}, "o"); !errors.Is(err, tc.want) {
				t.Errorf("Isolate: %v, want %v", err, tc.want)
			}
			if _, err := x.p.Release(ctx, inst, "o"); !errors.Is(err, tc.want) {
				t.Errorf("Release: %v, want %v", err, tc.want)
			}
			if _, err := x.p.Status(ctx, inst); !errors.Is(err, tc.want) {
				t.Errorf("Status: %v, want %v", err, tc.want)
			}
			if w := writes(x.f.callList()); len(w) != 0 {
				t.Errorf("writes for a missing VM: %q", w)
			}
			if tc.want == cloud.ErrInvalid && len(x.f.callList()) != 0 {
				t.Errorf("calls to Azure for a malformed id: %q", x.f.callList())
			}
		})
	}
}

func TestIsolate(t *testing.T) {
	x := newFixture(t)
	a := x.isolate(t, cloud.Options{})

	gs := x.f.nsgsNamed(quarantinePrefix)
	if len(gs) != 1 {
		t.Fatalf("%d quarantine NSGs, want 1", len(gs))
	}
	q := gs[0]
	if q.name != quarantineName(testLocation, testPolicy.Digest()) || q.rg != testRG || q.location != testLocation {
		t.Errorf("quarantine NSG %s in %s/%s", q.name, q.rg, q.location)
	}
	if !q.flush {
		t.Errorf("flushConnection is off")
	}
	if q.tags[tagManaged] != kindQuarantine || q.tags[tagPolicy] != testPolicy.Digest() {
		t.Errorf("quarantine NSG tags = %v", q.tags)
	}
	wantRules := []string{
		"100 Outbound Allow Tcp *:* -> 198.51.100.10:7443",
		"101 Outbound Allow Tcp *:* -> 2001:db8:ff::10:7443",
		"102 Outbound Allow Udp *:* -> 198.51.100.53:53",
		"103 Outbound Allow Tcp *:* -> 198.51.100.53:53",
		"104 Inbound Allow * 203.0.113.0/28:* -> *:*",
		"105 Outbound Allow * *:* -> 203.0.113.0/28:*",
		"4094 Outbound Deny * *:* -> AzurePlatformIMDS:*",
		"4095 Outbound Deny * *:* -> AzurePlatformDNS:*",
		"4096 Inbound Deny * *:* -> *:*",
		"4096 Outbound Deny * *:* -> *:*",
	}
	if got := ruleLines(q); !slices.Equal(got, wantRules) {
		t.Errorf("quarantine rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantRules, "\n"))
	}

	// Each NIC went straight to the quarantine NSG, in one write that
	// also holds its record.
	for _, nic := range []string{x.nic0, x.nic1} {
		if got := x.f.putsOf(nic); !slices.Equal(got, []string{q.id}) {
			t.Errorf("%s writes = %q, want one to %s", x.name(nic), got, q.id)
		}
	}
	for nic, orig := range map[string]string{x.nic0: x.web, x.nic1: "none"} {
		tags := x.cordonTags(nic)
		if tags[tagOriginal] != orig || tags[tagPolicy] != testPolicy.Digest() || tags[tagOrder] != "order-1" {
			t.Errorf("%s record = %v, want original %s", x.name(nic), tags, orig)
		}
		if _, err := time.Parse(time.RFC3339, tags[tagSince]); err != nil {
			t.Errorf("%s: %s = %q: %v", x.name(nic), tagSince, tags[tagSince], err)
		}
	}
	if x.f.nicTags(x.nic0)["owner"] != "web" {
		t.Errorf("%s lost its own tag: %v", x.name(x.nic0), x.f.nicTags(x.nic0))
	}
	// The NIC's own settings went back as they were (the fake refuses
	// any other change), and the VM was never written.
	if n := x.f.nicState(x.nic0); !n.accelerated || !slices.Equal(n.dnsServers, []string{"10.0.0.53"}) {
		t.Errorf("%s settings changed: %+v", x.name(x.nic0), n)
	}
	for _, c := range x.f.callList() {
		if strings.HasPrefix(c, "Microsoft.Compute/") && c != "Microsoft.Compute/virtualMachines/read" {
			t.Errorf("Isolate called %s", c)
		}
	}

	wantState := []string{
		testVM + "-nic-0: " + q.name + " (was nsg-web)",
		testVM + "-nic-1: " + q.name + " (was none)",
	}
	if !slices.Equal(a.State, wantState) {
		t.Errorf("State = %q, want %q", a.State, wantState)
	}
	for _, want := range []string{"flushConnection", "host layer must cut", "AzurePlatformIMDS", "neither changed nor restarted"} {
		if !slices.ContainsFunc(a.Notes, func(n string) bool { return strings.Contains(n, want) }) {
			t.Errorf("Notes lack %q: %q", want, a.Notes)
		}
	}
}

// TestIsolateAsync has Azure answer every PUT 201 with an
// Azure-AsyncOperation to poll, as it does for a change that takes time.
func TestIsolateAsync(t *testing.T) {
	x := newFixture(t)
	x.f.setAsync(true)
	x.isolate(t, cloud.Options{})
	if st := x.status(t); !st.Isolated {
		t.Fatalf("not isolated: %+v", st)
	}
	// The NSG and two NICs: each polled InProgress, then Succeeded.
	if n := x.f.count("Microsoft.Network/locations/operations/read"); n != 6 {
		t.Errorf("operations polled %d times, want 6", n)
	}
	if s := x.f.nicState(x.nic1).state; s != "Succeeded" {
		t.Errorf("%s provisioning state %s", x.name(x.nic1), s)
	}
	x.release(t)
	x.assertOriginal(t)
}

func TestStatus(t *testing.T) {
	x := newFixture(t)
	if st := x.status(t); st.Isolated || st.Partial != "" || !st.Since.IsZero() {
		t.Fatalf("before isolation: %+v", st)
	}
	before := time.Now().Add(-time.Second)
	x.isolate(t, cloud.Options{})
	st := x.status(t)
	if !st.Isolated || st.Partial != "" || st.Since.Before(before.Truncate(time.Second)) || len(st.State) != 2 {
		t.Fatalf("after isolation: %+v", st)
	}
	// Someone takes the second NIC out of quarantine by hand.
	x.f.setNICNSG(x.nic1, "")
	st = x.status(t)
	if st.Isolated || !strings.Contains(st.Partial, testVM+"-nic-1 has its original NSG") {
		t.Errorf("one NIC put back: %+v", st)
	}
	// Isolate again mends it.
	x.isolate(t, cloud.Options{})
	if st := x.status(t); !st.Isolated {
		t.Errorf("after mending: %+v", st)
	}
	x.release(t)
	if st := x.status(t); st.Isolated || st.Partial != "" || !st.Since.IsZero() {
		t.Errorf("after release: %+v", st)
	}
}

func TestIsolateIdempotent(t *testing.T) {
	x := newFixture(t)
	first := x.isolate(t, cloud.Options{})
	tags := x.cordonTags(x.nic0)
	x.f.resetCalls()
	second := x.isolate(t, cloud.Options{})
	if w := writes(x.f.callList()); len(w) != 0 {
		t.Errorf("second Isolate wrote: %q", w)
	}
	if !slices.Equal(first.State, second.State) {
		t.Errorf("State changed: %q, then %q", first.State, second.State)
	}
	if got := x.cordonTags(x.nic0); !maps.Equal(got, tags) {
		t.Errorf("record changed: %v, then %v", tags, got)
	}
}

func TestIsolateNewPolicy(t *testing.T) {
	x := newFixture(t)
	x.isolate(t, cloud.Options{})
	since := x.cordonTags(x.nic0)[tagSince]
	p2 := testPolicy
	p2.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/29")}
	if _, err := x.p.Isolate(context.Background(), x.inst, p2, cloud.Options{}, "order-3"); err != nil {
		t.Fatal(err)
	}
	q2 := x.f.resourceID(testRG, nsgType, quarantineName(testLocation, p2.Digest()))
	if x.f.nsg(q2) == nil || strings.EqualFold(q2, x.quarantine()) {
		t.Fatalf("no new quarantine NSG for the new policy")
	}
	for _, nic := range []string{x.nic0, x.nic1} {
		if g := x.f.nicNSG(nic); !strings.EqualFold(g, q2) {
			t.Errorf("%s in %s, want %s", x.name(nic), g, q2)
		}
	}
	// The record still holds the NSG from before any isolation.
	tags := x.cordonTags(x.nic0)
	if tags[tagOriginal] != x.web || tags[tagPolicy] != p2.Digest() || tags[tagSince] != since || tags[tagOrder] != "order-1" {
		t.Errorf("record after the policy change: %v", tags)
	}
	x.release(t)
	x.assertOriginal(t)
}

func TestRelease(t *testing.T) {
	x := newFixture(t)
	x.isolate(t, cloud.Options{})
	x.f.resetCalls()
	a := x.release(t)
	x.assertOriginal(t)
	// One write per NIC, straight back.
	if got := x.f.putsOf(x.nic0); !slices.Equal(got, []string{x.web}) {
		t.Errorf("%s writes on release = %q", x.name(x.nic0), got)
	}
	if got := x.f.putsOf(x.nic1); !slices.Equal(got, []string{""}) {
		t.Errorf("%s writes on release = %q", x.name(x.nic1), got)
	}
	want := []string{testVM + "-nic-0: nsg-web", testVM + "-nic-1: none"}
	if !slices.Equal(a.State, want) {
		t.Errorf("State = %q, want %q", a.State, want)
	}
	if !slices.ContainsFunc(a.Notes, func(n string) bool {
		return strings.HasPrefix(n, testVM+"-nic-1 had no NSG") && strings.Contains(n, "default rules allow")
	}) {
		t.Errorf("Notes do not say that nic-1 has no NSG again: %q", a.Notes)
	}
	if x.f.nsg(x.quarantine()) == nil {
		t.Errorf("quarantine NSG deleted; other isolations may use it")
	}
	// A second release finds nothing and changes nothing.
	x.f.resetCalls()
	a = x.release(t)
	if w := writes(x.f.callList()); len(w) != 0 {
		t.Errorf("second Release wrote: %q", w)
	}
	if !slices.Contains(a.Notes, "nothing of Cordon's was in place") {
		t.Errorf("second Release notes = %q", a.Notes)
	}
}

func TestReleaseNeverIsolated(t *testing.T) {
	x := newFixture(t)
	x.release(t)
	x.assertOriginal(t)
	if w := writes(x.f.callList()); len(w) != 0 {
		t.Errorf("releasing a VM never isolated wrote: %q", w)
	}
}

// TestReleaseOriginalNSGDeleted: nsg-web goes while the VM is isolated.
// Release must not leave its NIC with no NSG (Azure's defaults allow the
// virtual network and outbound Internet): the NIC stays in quarantine
// with its record, the other is released, and the error says what to do.
func TestReleaseOriginalNSGDeleted(t *testing.T) {
	setup := func(t *testing.T) *fixture {
		x := newFixture(t)
		x.isolate(t, cloud.Options{})
		x.f.deleteNSG(x.web)
		_, err := x.p.Release(context.Background(), x.inst, "order-2")
		if !errors.Is(err, cloud.ErrInvalid) || !strings.Contains(err.Error(), testVM+"-nic-0") ||
			!strings.Contains(err.Error(), "was deleted meanwhile") || !strings.Contains(err.Error(), "release again") {
			t.Fatalf("Release: %v, want ErrInvalid saying nic-0's NSG was deleted and what to do", err)
		}
		if g := x.f.nicNSG(x.nic0); !strings.EqualFold(g, x.quarantine()) {
			t.Errorf("%s left in %q, want the quarantine NSG", x.name(x.nic0), g)
		}
		if x.cordonTags(x.nic0)[tagOriginal] != x.web {
			t.Errorf("%s lost its record: %v", x.name(x.nic0), x.f.nicTags(x.nic0))
		}
		if g := x.f.nicNSG(x.nic1); g != "" || len(x.f.nicTags(x.nic1)) != 0 {
			t.Errorf("%s not released: NSG %q, tags %v", x.name(x.nic1), g, x.f.nicTags(x.nic1))
		}
		if st := x.status(t); st.Isolated || !strings.Contains(st.Partial, testVM+"-nic-1 is not isolated") {
			t.Errorf("Status = %+v", st)
		}
		return x
	}
	t.Run("recreated", func(t *testing.T) {
		x := setup(t)
		x.web = x.f.addNSG(testRG, "nsg-web", testLocation)
		x.release(t)
		x.assertOriginal(t)
	})
	t.Run("set by hand", func(t *testing.T) {
		x := setup(t)
		x.f.setNICNSG(x.nic0, "")
		a := x.release(t)
		if g := x.f.nicNSG(x.nic0); g != "" {
			t.Errorf("%s has %q, want none as set by hand", x.name(x.nic0), g)
		}
		if tags := x.cordonTags(x.nic0); len(tags) != 0 {
			t.Errorf("record left: %v", tags)
		}
		if !slices.ContainsFunc(a.Notes, func(n string) bool {
			return strings.Contains(n, "nsg-web was deleted meanwhile; it keeps none, which was set by hand")
		}) {
			t.Errorf("Notes = %q", a.Notes)
		}
	})
}

func TestThrottling(t *testing.T) {
	t.Run("retried after Retry-After", func(t *testing.T) {
		x := newFixture(t)
		x.f.throttle("Microsoft.Compute/virtualMachines/read", 1, "1")
		x.f.throttle("Microsoft.Network/networkInterfaces/write", 2, "0")
		start := time.Now()
		x.isolate(t, cloud.Options{})
		if d := time.Since(start); d < time.Second {
			t.Errorf("Isolate took %v: Retry-After: 1 not honoured", d)
		}
		if st := x.status(t); !st.Isolated {
			t.Errorf("not isolated after retries: %+v", st)
		}
		// 2 attempts of the first read, one for the read-back, one for Status.
		if n := x.f.count("Microsoft.Compute/virtualMachines/read"); n != 4 {
			t.Errorf("VM read %d times, want 4", n)
		}
		if n := x.f.count("Microsoft.Network/networkInterfaces/write"); n != 4 {
			t.Errorf("NIC written %d times, want 2 throttled and 2 done", n)
		}
	})
	t.Run("persistent", func(t *testing.T) {
		x := newFixture(t)
		x.f.throttle("Microsoft.Compute/virtualMachines/read", 1000, "0")
		_, err := x.p.Lookup(context.Background(), x.inst)
		if !errors.Is(err, cloud.ErrThrottled) {
			t.Fatalf("Lookup: %v, want ErrThrottled", err)
		}
		if n := x.f.count("Microsoft.Compute/virtualMachines/read"); n != 3 {
			t.Errorf("VM read %d times, want the 1 + 2 retries", n)
		}
		if !strings.Contains(err.Error(), "Microsoft.Compute/virtualMachines/read") || !strings.Contains(err.Error(), "SubscriptionRequestsThrottled") {
			t.Errorf("error does not name the action and Azure's code: %v", err)
		}
	})
	t.Run("Retry-After beyond the cap", func(t *testing.T) {
		x := newFixture(t)
		x.f.throttle("Microsoft.Compute/virtualMachines/read", 1000, "30")
		start := time.Now()
		_, err := x.p.Lookup(context.Background(), x.inst)
		if !errors.Is(err, cloud.ErrThrottled) || time.Since(start) > 5*time.Second {
			t.Fatalf("Lookup: %v after %v, want ErrThrottled at once", err, time.Since(start))
		}
	})
	t.Run("persistent on the second NIC", func(t *testing.T) {
		x := newFixture(t)
		x.f.setNICFault(func(name, nsg string) *fFault {
			if name == testVM+"-nic-1" {
				return &fFault{status: 429, code: "TooManyRequests", message: "Too many requests."}
			}
			return nil
		})
		_, err := x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "order-1")
		if !errors.Is(err, cloud.ErrThrottled) {
			t.Fatalf("Isolate: %v, want ErrThrottled", err)
		}
		x.assertOriginal(t)
	})
}

func TestDenied(t *testing.T) {
	for _, tc := range []struct {
		action string
		// call is the ARM call that fails.
		call string
	}{
		{"Microsoft.Compute/virtualMachines/read", "Microsoft.Compute/virtualMachines/read"},
		{"Microsoft.Network/networkSecurityGroups/write", "Microsoft.Network/networkSecurityGroups/write"},
		{"Microsoft.Network/networkInterfaces/write", "Microsoft.Network/networkInterfaces/write"},
		{"Microsoft.Network/networkSecurityGroups/join/action", "Microsoft.Network/networkInterfaces/write"},
		{"Microsoft.Network/virtualNetworks/subnets/join/action", "Microsoft.Network/networkInterfaces/write"},
	} {
		t.Run(tc.action, func(t *testing.T) {
			x := newFixture(t)
			x.f.deny(tc.action)
			_, err := x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "order-1")
			if !errors.Is(err, cloud.ErrDenied) {
				t.Fatalf("Isolate: %v, want ErrDenied", err)
			}
			if !strings.Contains(err.Error(), "permission denied: ") || !strings.Contains(err.Error(), "("+tc.action+")") {
				t.Errorf("error does not name %s: %v", tc.action, err)
			}
			if n := x.f.count(tc.call); n != 1 {
				t.Errorf("%s called %d times: a denial must not be retried", tc.call, n)
			}
			x.assertOriginal(t)
		})
	}
}

func TestPartialFailure(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault *fFault
		want  string // in the error
		// puts1 are the NSGs the second NIC's writes set.
		puts1 func(x *fixture) []string
	}{
		{"second NIC refused", &fFault{status: 409, code: "AnotherOperationInProgress",
			message: "Another operation on this or dependent resource is in progress."},
			"409 AnotherOperationInProgress: Another operation",
			func(*fixture) []string { return nil }},
		{"second NIC's operation fails after the change", &fFault{status: 200, code: "InternalServerError",
			message: "An error occurred.", async: true},
			"operation failed: InternalServerError: An error occurred.",
			func(x *fixture) []string { return []string{x.quarantine(), ""} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newFixture(t)
			x.f.setNICFault(func(name, nsg string) *fFault {
				if name == testVM+"-nic-1" && isCordonNSG(nsg) {
					return tc.fault
				}
				return nil
			})
			_, err := x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "order-1")
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), testVM+"-nic-1") {
				t.Fatalf("Isolate: %v, want the failure of nic-1", err)
			}
			// Nothing half: both NICs back, with exactly their tags.
			x.assertOriginal(t)
			if got, want := x.f.putsOf(x.nic0), []string{x.quarantine(), x.web}; !slices.Equal(got, want) {
				t.Errorf("nic-0 writes = %q, want %q", got, want)
			}
			if got, want := x.f.putsOf(x.nic1), tc.puts1(x); !slices.Equal(got, want) {
				t.Errorf("nic-1 writes = %q, want %q", got, want)
			}
			if st := x.status(t); st.Isolated || st.Partial != "" {
				t.Errorf("Status after the failure: %+v", st)
			}
		})
	}
	t.Run("rollback fails too", func(t *testing.T) {
		x := newFixture(t)
		x.f.setNICFault(func(name, nsg string) *fFault {
			if (name == testVM+"-nic-1" && isCordonNSG(nsg)) || (name == testVM+"-nic-0" && !isCordonNSG(nsg)) {
				return &fFault{status: 409, code: "AnotherOperationInProgress", message: "Another operation is in progress."}
			}
			return nil
		})
		_, err := x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "order-1")
		if err == nil || !strings.Contains(err.Error(), "network interface "+testVM+"-nic-0 could not be put back to nsg-web") {
			t.Fatalf("Isolate: %v, want it to say nic-0 could not be put back", err)
		}
		// nic-0 keeps its record, for Release.
		if x.cordonTags(x.nic0)[tagOriginal] != x.web {
			t.Errorf("record of nic-0 lost: %v", x.f.nicTags(x.nic0))
		}
		x.f.setNICFault(nil)
		x.release(t)
		x.assertOriginal(t)
	})
}

func TestOptions(t *testing.T) {
	x := newFixture(t)
	o := cloud.Options{Tag: true, Snapshot: true, TerminationProtection: true, Detach: true, RevokeSessions: true, Incident: "INC-42"}
	a := x.isolate(t, o)
	if got := x.f.vmTags(x.vmID); got[tagIncident] != "INC-42" || got["env"] != "prod" {
		t.Errorf("VM tags = %v, want %s=INC-42 merged into its own", got, tagIncident)
	}
	for _, want := range []string{"tag: " + tagIncident + "=INC-42", "snapshot: not implemented yet", "termination protection: not implemented yet",
		"detach: not implemented yet", "revoke sessions: not implemented yet"} {
		if !slices.ContainsFunc(a.Notes, func(n string) bool { return strings.HasPrefix(n, want) }) {
			t.Errorf("Notes lack %q: %q", want, a.Notes)
		}
	}
	// The same order again tags nothing anew.
	x.f.resetCalls()
	x.isolate(t, o)
	if w := writes(x.f.callList()); len(w) != 0 {
		t.Errorf("the same order again wrote %q", w)
	}
	// Release keeps the evidence.
	a = x.release(t)
	x.assertOriginal(t)
	if x.f.vmTags(x.vmID)[tagIncident] != "INC-42" {
		t.Errorf("Release removed the incident tag")
	}
	if !slices.ContainsFunc(a.Notes, func(n string) bool { return strings.Contains(n, tagIncident+"=INC-42 tag on the VM is left") }) {
		t.Errorf("Release notes = %q", a.Notes)
	}
}

func TestOptionFailureIsANote(t *testing.T) {
	x := newFixture(t)
	x.f.deny("Microsoft.Resources/tags/write")
	a := x.isolate(t, cloud.Options{Tag: true, Incident: "INC-42"})
	if st := x.status(t); !st.Isolated {
		t.Fatalf("a failed tag undid the isolation: %+v", st)
	}
	if !slices.ContainsFunc(a.Notes, func(n string) bool {
		return strings.HasPrefix(n, "tag: failed") && strings.Contains(n, "Microsoft.Resources/tags/write")
	}) {
		t.Errorf("Notes do not say the tag was denied: %q", a.Notes)
	}
}

func TestInvalidPolicy(t *testing.T) {
	x := newFixture(t)
	_, err := x.p.Isolate(context.Background(), x.inst, policy.Policy{}, cloud.Options{}, "o")
	if !errors.Is(err, cloud.ErrInvalid) {
		t.Fatalf("Isolate with no controller: %v, want ErrInvalid", err)
	}
	if n := len(x.f.callList()); n != 0 {
		t.Errorf("%d calls to Azure for an invalid policy", n)
	}
}

func TestForeignNSGRefused(t *testing.T) {
	x := newFixture(t)
	// An NSG named like Cordon's but not tagged as Cordon's (made by
	// someone else, perhaps with the host's stolen identity).
	x.f.addNSG(testRG, quarantineName(testLocation, testPolicy.Digest()), testLocation)
	_, err := x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "o")
	if !errors.Is(err, cloud.ErrInvalid) || !strings.Contains(err.Error(), "not Cordon's") {
		t.Fatalf("Isolate: %v, want ErrInvalid for an NSG that is not Cordon's", err)
	}
	if w := writes(x.f.callList()); len(w) != 0 {
		t.Errorf("wrote %q", w)
	}
	x.assertOriginal(t)
}

func TestUnrecordedQuarantineRefused(t *testing.T) {
	x := newFixture(t)
	x.isolate(t, cloud.Options{})
	// The record of nic-0 is lost (tags edited by hand).
	x.f.mu.Lock()
	for k := range x.f.nics[strings.ToLower(x.nic0)].tags {
		if strings.HasPrefix(k, "cordon:") {
			delete(x.f.nics[strings.ToLower(x.nic0)].tags, k)
		}
	}
	x.f.mu.Unlock()
	_, err := x.p.Release(context.Background(), x.inst, "o")
	if !errors.Is(err, cloud.ErrInvalid) || !strings.Contains(err.Error(), "not recorded") {
		t.Fatalf("Release: %v, want ErrInvalid for a NIC in quarantine with no record", err)
	}
	if g := x.f.nicNSG(x.nic0); !strings.EqualFold(g, x.quarantine()) {
		t.Errorf("nic-0 moved to %q", g)
	}
}

func TestRecordChunked(t *testing.T) {
	long := "/subscriptions/" + testSub + "/resourceGroups/" + strings.Repeat("r", 90) +
		"/providers/Microsoft.Network/networkSecurityGroups/" + strings.Repeat("n", 80)
	since := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	tags := withRecord(map[string]*string{"owner": ptr("web")}, record{recorded: true, original: long, policy: "sha256:ab", since: since, order: "o-1"})
	if len(tags) != 6 {
		t.Errorf("tags = %d, want owner, the original in 2 parts, policy, since, order", len(tags))
	}
	for k, v := range tags {
		if len(*v) > maxTagValue {
			t.Errorf("tag %s is %d characters", k, len(*v))
		}
	}
	r := readRecord(tags)
	if !r.recorded || r.original != long || r.policy != "sha256:ab" || !r.since.Equal(since) || r.order != "o-1" {
		t.Errorf("read back %+v", r)
	}
	if got := withoutRecord(tags); len(got) != 1 || *got["owner"] != "web" {
		t.Errorf("withoutRecord = %v", got)
	}
	if r := readRecord(withRecord(nil, record{recorded: true, policy: "p", since: since})); !r.recorded || r.original != "" {
		t.Errorf("no NSG read back as %+v", r)
	}
}

func TestQuarantineName(t *testing.T) {
	d := testPolicy.Digest()
	n := quarantineName("West Europe", d)
	if n != quarantineName("westeurope", d) || !strings.HasPrefix(n, "cordon-quarantine-westeurope-") || len(n) > 80 {
		t.Errorf("quarantineName = %q", n)
	}
	if quarantineName("westeurope", d) == quarantineName("northeurope", d) {
		t.Errorf("two locations share an NSG name")
	}
}
