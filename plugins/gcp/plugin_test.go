package main

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/api/option"

	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/policy"
)

const (
	project  = "pay-prod-1"
	host     = "net-host-1" // the Shared VPC host project of nic1's network
	zone     = "europe-west1-b"
	instName = "pay-db-01"
)

// fixture is an instance tagged web with two interfaces: nic0 in the
// project's own network "default" (IPv4 and IPv6), nic1 in the Shared VPC
// network "shared" of the host project; and a label of its own.
type fixture struct {
	f          *fakeCompute
	p          *Plugin
	inst       cloud.Instance
	def, share network
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFakeCompute(t)
	x := &fixture{f: f, def: network{project, "default"}, share: network{host, "shared"}}
	d := f.addNetwork(project, "default")
	s := f.addNetwork(host, "shared")
	f.addInstance(project, zone, instName, []string{"web"}, map[string]string{"env": "prod"},
		nicSpec{network: d, ip: "10.0.1.10", ipv6: "2001:db8:1::10"},
		nicSpec{network: s, ip: "10.1.0.10"})
	x.p = newTestPlugin(t, f, 3)
	x.inst = cloud.Instance{Provider: "gcp", ID: instName, Zone: zone, Project: project}
	return x
}

// newTestPlugin points the real SDK at the fake, without credentials, with
// maxAttempts attempts a call and a 1 ms backoff.
func newTestPlugin(t *testing.T, f *fakeCompute, maxAttempts int) *Plugin {
	t.Helper()
	return New(Options{
		Endpoint:      f.srv.URL,
		ClientOptions: []option.ClientOption{option.WithoutAuthentication()},
		Retry:         Retry{Attempts: maxAttempts, Initial: time.Millisecond, Max: time.Millisecond},
	})
}

var testPolicy = policy.Policy{
	Controllers: []policy.Endpoint{
		{Addr: netip.MustParseAddr("198.51.100.10"), Port: 7443},
		{Addr: netip.MustParseAddr("198.51.100.11"), Port: 7443},
		{Addr: netip.MustParseAddr("2001:db8:ff::10"), Port: 7443},
	},
	Allow: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/28")},
	DNS:   []netip.Addr{netip.MustParseAddr("198.51.100.53")},
}

var d12 = shortDigest(testPolicy.Canonical().Digest())

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

func (x *fixture) tags() []string            { return x.f.instance(project, zone, instName).tags }
func (x *fixture) labels() map[string]string { return x.f.instance(project, zone, instName).labels }

// assertOriginal checks that the instance has its own tag and label only.
func (x *fixture) assertOriginal(t *testing.T) {
	t.Helper()
	if got := x.tags(); !slices.Equal(got, []string{"web"}) {
		t.Errorf("tags = %q, want [web]", got)
	}
	for k := range x.labels() {
		if k != "env" && k != labelIncident {
			t.Errorf("label %s left on the instance", k)
		}
	}
}

// writes are the mutating calls made since the last resetCalls.
func (x *fixture) writes() []string {
	var out []string
	for _, c := range x.f.callList() {
		if !strings.HasSuffix(c, ".get") && !strings.HasSuffix(c, ".list") {
			out = append(out, c)
		}
	}
	return out
}

// ruleText is a rule as "EGRESS ALLOW p0 tcp:7443 to 198.51.100.10/32 tags cordon-quarantine-…".
func ruleText(fw fFirewall) string {
	verb, ps := "ALLOW", fw.Allowed
	if len(fw.Denied) > 0 {
		verb, ps = "DENY", fw.Denied
	}
	var protos []string
	for _, p := range ps {
		protos = append(protos, p.IPProtocol+":"+strings.Join(p.Ports, ","))
	}
	ranges, dir := fw.DestinationRanges, "to"
	if fw.Direction == "INGRESS" {
		ranges, dir = fw.SourceRanges, "from"
	}
	s := fw.Direction + " " + verb + " p" + strconv.Itoa(*fw.Priority) + " " + strings.Join(protos, " ") + " " + dir + " " +
		strings.Join(ranges, ",") + " tags " + strings.Join(fw.TargetTags, ",")
	if fw.Disabled {
		s += " disabled"
	}
	return s
}

func TestInfo(t *testing.T) {
	i, err := New(Options{}).Info(context.Background())
	if err != nil || i.Provider != "gcp" || i.Name != "cordon-plugin-gcp" {
		t.Fatalf("Info = %+v, %v", i, err)
	}
}

func TestLookup(t *testing.T) {
	x := newFixture(t)
	got, err := x.p.Lookup(context.Background(), cloud.Instance{ID: instName, Zone: zone, Project: project})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Interfaces, []string{"nic0", "nic1"}) {
		t.Errorf("Interfaces = %v, want [nic0 nic1]", got.Interfaces)
	}
	want := []netip.Addr{netip.MustParseAddr("10.0.1.10"), netip.MustParseAddr("2001:db8:1::10"), netip.MustParseAddr("10.1.0.10")}
	if !slices.Equal(got.PrivateIPs, want) {
		t.Errorf("PrivateIPs = %v, want %v", got.PrivateIPs, want)
	}
	if got.Provider != "gcp" || got.Zone != zone || got.Project != project {
		t.Errorf("Lookup = %+v", got)
	}
	// The project can come from the plugin's default.
	p := New(Options{Endpoint: x.f.srv.URL, Project: project, ClientOptions: []option.ClientOption{option.WithoutAuthentication()}})
	if got, err := p.Lookup(context.Background(), cloud.Instance{ID: instName, Zone: zone}); err != nil || got.Project != project {
		t.Errorf("Lookup with the default project = %+v, %v", got, err)
	}
}

func TestNotFound(t *testing.T) {
	x := newFixture(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		inst cloud.Instance
		want error
	}{
		{"no such instance", cloud.Instance{ID: "pay-db-99", Zone: zone, Project: project}, cloud.ErrNotFound},
		{"other zone", cloud.Instance{ID: instName, Zone: "europe-west1-c", Project: project}, cloud.ErrNotFound},
		{"bad name", cloud.Instance{ID: "Pay_DB", Zone: zone, Project: project}, cloud.ErrInvalid},
		{"no zone", cloud.Instance{ID: instName, Project: project}, cloud.ErrInvalid},
		{"no project", cloud.Instance{ID: instName, Zone: zone}, cloud.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x.f.resetCalls()
			if _, err := x.p.Lookup(ctx, tc.inst); !errors.Is(err, tc.want) {
				t.Errorf("Lookup: %v, want %v", err, tc.want)
			}
			if _, err := x.p.Isolate(ctx, tc.inst, testPolicy, cloud.Options{}, "o"); !errors.Is(err, tc.want) {
				t.Errorf("Isolate: %v, want %v", err, tc.want)
			}
			if _, err := x.p.Release(ctx, tc.inst, "o"); !errors.Is(err, tc.want) {
				t.Errorf("Release: %v, want %v", err, tc.want)
			}
			if _, err := x.p.Status(ctx, tc.inst); !errors.Is(err, tc.want) {
				t.Errorf("Status: %v, want %v", err, tc.want)
			}
			if tc.want == cloud.ErrNotFound {
				// One instances.get each, not retried.
				if n := x.f.count("compute.instances.get"); n != 4 {
					t.Errorf("instances.get called %d times, want 4", n)
				}
			} else if n := len(x.f.callList()); n != 0 {
				t.Errorf("%d calls for an invalid instance", n)
			}
			if w := x.writes(); len(w) != 0 {
				t.Errorf("writes: %q", w)
			}
		})
	}
}

func TestIsolate(t *testing.T) {
	x := newFixture(t)
	a := x.isolate(t, cloud.Options{})

	// Deny rules in both networks, each in its network's project.
	for _, n := range []network{x.def, x.share} {
		h := n.hash()
		wantDeny := []string{
			"EGRESS DENY p1 all: to 0.0.0.0/0 tags cordon-quarantine",    // deny-egress
			"EGRESS DENY p1 all: to ::/0 tags cordon-quarantine",         // deny-egress6
			"INGRESS DENY p1 all: from 0.0.0.0/0 tags cordon-quarantine", // deny-ingress
			"INGRESS DENY p1 all: from ::/0 tags cordon-quarantine",      // deny-ingress6
		}
		var got []string
		for _, fw := range x.f.rules(n.project, rulePrefix+"deny-") {
			if !strings.HasSuffix(fw.Name, "-"+h) {
				t.Errorf("rule %s in %s does not name the network", fw.Name, n.project)
			}
			if fw.Network != apiBase+n.path() || !strings.HasPrefix(fw.Description, descMarker+":") {
				t.Errorf("rule %s: network %s, description %q", fw.Name, fw.Network, fw.Description)
			}
			got = append(got, ruleText(fw))
		}
		if !slices.Equal(got, wantDeny) {
			t.Errorf("deny rules in %s:\n got %q\nwant %q", n.path(), got, wantDeny)
		}
		if fw := x.f.rule(n.project, rulePrefix+"deny-ingress-"+h); fw == nil {
			t.Errorf("no rule %sdeny-ingress-%s", rulePrefix, h)
		}

		// The allow rules: a higher priority (0) than the deny rules, and
		// the policy's own tag.
		pt := policyTag(d12)
		wantAllow := []string{
			"EGRESS ALLOW p0 all: to 203.0.113.0/28 tags " + pt,
			"EGRESS ALLOW p0 tcp:7443 to 198.51.100.10/32,198.51.100.11/32 tags " + pt,
			"EGRESS ALLOW p0 tcp:7443 to 2001:db8:ff::10/128 tags " + pt,
			"EGRESS ALLOW p0 udp:53 tcp:53 to 198.51.100.53/32 tags " + pt,
			"INGRESS ALLOW p0 all: from 203.0.113.0/28 tags " + pt,
		}
		got = nil
		for _, fw := range x.f.rules(n.project, rulePrefix+"allow-"+d12+"-") {
			got = append(got, ruleText(fw))
		}
		slices.Sort(got)
		if !slices.Equal(got, wantAllow) {
			t.Errorf("allow rules in %s:\n got %q\nwant %q", n.path(), got, wantAllow)
		}
	}

	// The tags, and the record.
	if got, want := x.tags(), []string{"web", tagQuarantine, policyTag(d12)}; !slices.Equal(got, want) {
		t.Errorf("tags = %q, want %q", got, want)
	}
	l := x.labels()
	if l[labelIsolated] != "order-1" || l[labelPolicy] != d12 || l["env"] != "prod" {
		t.Errorf("labels = %v", l)
	}
	if _, ok := l[labelHadTag]; ok {
		t.Errorf("%s set though the instance did not have the tag", labelHadTag)
	}
	if s, err := strconv.ParseInt(l[labelSince], 10, 64); err != nil || time.Since(time.Unix(s, 0)) > time.Minute {
		t.Errorf("%s = %q", labelSince, l[labelSince])
	}

	wantState := []string{
		"tags: web, " + tagQuarantine + ", " + policyTag(d12) + " (Cordon's: " + tagQuarantine + ", " + policyTag(d12) + ")",
		"nic0: " + x.def.path() + ", rules cordon-quarantine-*-" + x.def.hash(),
		"nic1: " + x.share.path() + ", rules cordon-quarantine-*-" + x.share.hash(),
	}
	if !slices.Equal(a.State, wantState) {
		t.Errorf("State =\n%q\nwant\n%q", a.State, wantState)
	}
	for _, want := range []string{"169.254.169.254", "established connections survive", "hierarchical firewall policies"} {
		if !slices.ContainsFunc(a.Notes, func(n string) bool { return strings.Contains(n, want) }) {
			t.Errorf("Notes lack %q: %q", want, a.Notes)
		}
	}
}

func TestStatus(t *testing.T) {
	x := newFixture(t)
	if st := x.status(t); st.Isolated || st.Partial != "" || !st.Since.IsZero() {
		t.Fatalf("before isolation: %+v", st)
	}
	before := time.Now().Add(-time.Second)
	x.isolate(t, cloud.Options{})
	st := x.status(t)
	if !st.Isolated || st.Partial != "" || st.Since.Before(before.Truncate(time.Second)) || len(st.State) != 3 {
		t.Fatalf("after isolation: %+v", st)
	}

	// Someone takes the tag off by hand.
	x.f.setTagsByHand(project, zone, instName, "web", policyTag(d12))
	if st := x.status(t); st.Isolated || !strings.Contains(st.Partial, "tag "+tagQuarantine+" is missing") {
		t.Errorf("tag removed: %+v", st)
	}
	// And deletes a deny rule of the Shared VPC network.
	deny6 := rulePrefix + "deny-egress6-" + x.share.hash()
	x.f.deleteRule(host, deny6)
	if st := x.status(t); !strings.Contains(st.Partial, deny6+" is missing") {
		t.Errorf("rule deleted: %+v", st)
	}
	// Isolate again mends both.
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
	labels := x.labels()
	x.f.resetCalls()
	second := x.isolate(t, cloud.Options{})
	if w := x.writes(); len(w) != 0 {
		t.Errorf("second Isolate wrote: %q", w)
	}
	if !slices.Equal(first.State, second.State) {
		t.Errorf("State changed: %q, then %q", first.State, second.State)
	}
	if got := x.labels(); got[labelSince] != labels[labelSince] || len(got) != len(labels) {
		t.Errorf("labels changed: %v, then %v", labels, got)
	}
}

func TestIsolateNewPolicy(t *testing.T) {
	x := newFixture(t)
	x.isolate(t, cloud.Options{})
	since := x.labels()[labelSince]
	p2 := testPolicy
	p2.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/29")}
	d2 := shortDigest(p2.Canonical().Digest())
	if _, err := x.p.Isolate(context.Background(), x.inst, p2, cloud.Options{}, "order-3"); err != nil {
		t.Fatal(err)
	}
	// The old policy's tag is swapped for the new one's, in one change.
	if got, want := x.tags(), []string{"web", tagQuarantine, policyTag(d2)}; !slices.Equal(got, want) {
		t.Errorf("tags = %q, want %q", got, want)
	}
	if l := x.labels(); l[labelPolicy] != d2 || l[labelSince] != since || l[labelIsolated] != "order-1" {
		t.Errorf("record after the policy change: %v", l)
	}
	if len(x.f.rules(project, rulePrefix+"allow-"+d2+"-")) == 0 || len(x.f.rules(project, rulePrefix+"allow-"+d12+"-")) == 0 {
		t.Errorf("allow rules of both policies should exist")
	}
	// A third policy whose tagging is refused leaves the second in place,
	// record included.
	p3 := testPolicy
	p3.Allow = nil
	x.f.deny("compute.instances.setTags")
	if _, err := x.p.Isolate(context.Background(), x.inst, p3, cloud.Options{}, "order-4"); !errors.Is(err, cloud.ErrDenied) {
		t.Fatalf("Isolate with setTags denied: %v", err)
	}
	x.f.allow("compute.instances.setTags")
	if l := x.labels(); l[labelPolicy] != d2 {
		t.Errorf("%s = %q after the failed change, want %q", labelPolicy, l[labelPolicy], d2)
	}
	if st := x.status(t); !st.Isolated {
		t.Errorf("Status: %+v", st)
	}
	x.release(t)
	x.assertOriginal(t)
}

func TestRelease(t *testing.T) {
	x := newFixture(t)
	x.isolate(t, cloud.Options{})
	rules := len(x.f.rules(project, rulePrefix)) + len(x.f.rules(host, rulePrefix))
	a := x.release(t)
	x.assertOriginal(t)
	if got := len(x.f.rules(project, rulePrefix)) + len(x.f.rules(host, rulePrefix)); got != rules {
		t.Errorf("%d of Cordon's rules after release, want all %d kept", got, rules)
	}
	want := []string{"tags: web", "nic0: " + x.def.path(), "nic1: " + x.share.path()}
	if !slices.Equal(a.State, want) {
		t.Errorf("State = %q, want %q", a.State, want)
	}
	// A second release finds nothing and changes nothing.
	x.f.resetCalls()
	a = x.release(t)
	if w := x.writes(); len(w) != 0 {
		t.Errorf("second Release wrote: %q", w)
	}
	if !slices.Contains(a.Notes, "nothing of Cordon's was in place") {
		t.Errorf("second Release notes = %q", a.Notes)
	}
}

func TestReleaseKeepsTagItHadBefore(t *testing.T) {
	x := newFixture(t)
	x.f.setTagsByHand(project, zone, instName, "web", tagQuarantine)
	x.isolate(t, cloud.Options{})
	if x.labels()[labelHadTag] != "true" {
		t.Fatalf("labels = %v, want %s=true", x.labels(), labelHadTag)
	}
	a := x.release(t)
	if got, want := x.tags(), []string{"web", tagQuarantine}; !slices.Equal(got, want) {
		t.Errorf("tags after release = %q, want %q", got, want)
	}
	if !slices.ContainsFunc(a.Notes, func(n string) bool { return strings.Contains(n, "it was there before Cordon") }) {
		t.Errorf("Notes do not say the tag was kept: %q", a.Notes)
	}
	if _, ok := x.labels()[labelIsolated]; ok {
		t.Errorf("record left: %v", x.labels())
	}
}

// TestReleaseAfterChangesByHand: while isolated, someone took the
// cordon-quarantine tag off and added a tag of their own; release removes
// only what is still Cordon's, keeps theirs, and says what it found.
func TestReleaseAfterChangesByHand(t *testing.T) {
	x := newFixture(t)
	x.isolate(t, cloud.Options{})
	x.f.setTagsByHand(project, zone, instName, "web", policyTag(d12), "added-later")
	a := x.release(t)
	if got, want := x.tags(), []string{"web", "added-later"}; !slices.Equal(got, want) {
		t.Errorf("tags after release = %q, want %q", got, want)
	}
	if !slices.ContainsFunc(a.Notes, func(n string) bool {
		return strings.Contains(n, "the "+tagQuarantine+" tag had already been removed")
	}) {
		t.Errorf("Notes do not say the tag was already gone: %q", a.Notes)
	}
	if l := x.labels(); len(l) != 1 || l["env"] != "prod" {
		t.Errorf("labels after release = %v", l)
	}
	// Everything Cordon's already gone: release still succeeds.
	x2 := newFixture(t)
	x2.isolate(t, cloud.Options{})
	x2.f.setTagsByHand(project, zone, instName, "web")
	a = x2.release(t)
	x2.assertOriginal(t)
	if !slices.ContainsFunc(a.Notes, func(n string) bool { return strings.Contains(n, "no longer isolated") }) {
		t.Errorf("Notes = %q", a.Notes)
	}
}

func TestReleaseUnrecordedTags(t *testing.T) {
	x := newFixture(t)
	x.f.setTagsByHand(project, zone, instName, "web", policyTag(d12))
	_, err := x.p.Release(context.Background(), x.inst, "o")
	if !errors.Is(err, cloud.ErrInvalid) || !strings.Contains(err.Error(), "no record") {
		t.Fatalf("Release: %v, want ErrInvalid saying there is no record", err)
	}
	if got := x.tags(); !slices.Equal(got, []string{"web", policyTag(d12)}) {
		t.Errorf("tags changed: %q", got)
	}
	if st := x.status(t); st.Isolated || !strings.Contains(st.Partial, "no record") {
		t.Errorf("Status = %+v", st)
	}
}

func TestThrottling(t *testing.T) {
	t.Run("retried", func(t *testing.T) {
		x := newFixture(t)
		x.f.throttle("compute.instances.get", 2)
		x.f.throttle("compute.instances.setTags", 2)
		x.f.throttle("compute.firewalls.insert", 1)
		x.f.throttle("compute.zoneOperations.get", 1)
		x.isolate(t, cloud.Options{})
		if st := x.status(t); !st.Isolated {
			t.Errorf("not isolated after retries: %+v", st)
		}
		if n := x.f.count("compute.instances.setTags"); n != 3 {
			t.Errorf("setTags called %d times, want 3", n)
		}
		if n := x.f.count("compute.zoneOperations.get"); n < 3 {
			t.Errorf("zoneOperations.get called %d times: the operations were not waited for", n)
		}
	})
	t.Run("403 rateLimitExceeded retried", func(t *testing.T) {
		x := newFixture(t)
		x.f.throttle3 = true
		x.f.throttle("compute.instances.setLabels", 2)
		x.isolate(t, cloud.Options{})
		if n := x.f.count("compute.instances.setLabels"); n != 3 {
			t.Errorf("setLabels called %d times, want 3", n)
		}
	})
	t.Run("persistent", func(t *testing.T) {
		x := newFixture(t)
		x.f.throttle("compute.instances.get", 1000)
		_, err := x.p.Lookup(context.Background(), x.inst)
		if !errors.Is(err, cloud.ErrThrottled) {
			t.Fatalf("Lookup: %v, want ErrThrottled", err)
		}
		if n := x.f.count("compute.instances.get"); n != 3 {
			t.Errorf("instances.get called %d times, want the 3 attempts", n)
		}
		if !strings.Contains(err.Error(), "compute.instances.get") {
			t.Errorf("error does not name the method: %v", err)
		}
	})
	t.Run("persistent on setTags", func(t *testing.T) {
		x := newFixture(t)
		x.f.throttle("compute.instances.setTags", 1000)
		_, err := x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "order-1")
		if !errors.Is(err, cloud.ErrThrottled) {
			t.Fatalf("Isolate: %v, want ErrThrottled", err)
		}
		x.assertOriginal(t) // the record is taken back
	})
}

func TestDenied(t *testing.T) {
	for _, tc := range []struct{ method, permission string }{
		{"compute.firewalls.list", "compute.firewalls.list"},
		{"compute.firewalls.insert", "compute.firewalls.create"},
		{"compute.instances.setLabels", "compute.instances.setLabels"},
		{"compute.instances.setTags", "compute.instances.setTags"},
	} {
		t.Run(tc.method, func(t *testing.T) {
			x := newFixture(t)
			x.f.deny(tc.method)
			_, err := x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "order-1")
			if !errors.Is(err, cloud.ErrDenied) {
				t.Fatalf("Isolate: %v, want ErrDenied", err)
			}
			for _, want := range []string{tc.method, tc.permission, "Required '" + tc.permission + "' permission"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not name %q: %v", want, err)
				}
			}
			if n := x.f.count(tc.method); n != 1 {
				t.Errorf("%s called %d times: a denial must not be retried", tc.method, n)
			}
			x.assertOriginal(t)
		})
	}
	t.Run("release", func(t *testing.T) {
		x := newFixture(t)
		x.isolate(t, cloud.Options{})
		x.f.deny("compute.instances.setTags")
		if _, err := x.p.Release(context.Background(), x.inst, "o"); !errors.Is(err, cloud.ErrDenied) {
			t.Fatalf("Release: %v, want ErrDenied", err)
		}
		if l := x.labels(); l[labelIsolated] == "" {
			t.Errorf("record removed though the tags are still on: %v", l)
		}
		x.f.allow("compute.instances.setTags")
		x.release(t)
		x.assertOriginal(t)
	})
}

// TestOperationFailure: an operation that fails after the call was
// accepted (a quota, here) fails the Isolate, and is not taken for a
// denial though its status is 403.
func TestOperationFailure(t *testing.T) {
	x := newFixture(t)
	x.f.failOp("insert", apiErr{403, "QUOTA_EXCEEDED", "Quota 'FIREWALLS' exceeded.  Limit: 200.0 globally."})
	_, err := x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "order-1")
	if err == nil || errors.Is(err, cloud.ErrDenied) || !strings.Contains(err.Error(), "Quota 'FIREWALLS' exceeded") {
		t.Fatalf("Isolate: %v, want the quota error, not ErrDenied", err)
	}
	x.assertOriginal(t)

	x = newFixture(t)
	x.f.failOp("setTags", apiErr{403, "FORBIDDEN", "Required 'compute.instances.setTags' permission"})
	_, err = x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "order-1")
	if !errors.Is(err, cloud.ErrDenied) || !strings.Contains(err.Error(), "compute.instances.setTags") {
		t.Fatalf("Isolate: %v, want ErrDenied naming setTags", err)
	}
	x.assertOriginal(t)
}

func TestFingerprintConflict(t *testing.T) {
	x := newFixture(t)
	// Someone adds a tag between the plugin's read and its setTags.
	x.f.beforeOnce("compute.instances.setTags", func(f *fakeCompute) {
		f.setTagsLocked(project, zone, instName, "web", "db")
	})
	x.isolate(t, cloud.Options{})
	if got, want := x.tags(), []string{"web", "db", tagQuarantine, policyTag(d12)}; !slices.Equal(got, want) {
		t.Errorf("tags = %q, want %q (theirs kept, ours added)", got, want)
	}
	if n := x.f.count("compute.instances.setTags"); n != 2 {
		t.Errorf("setTags called %d times, want 2 (412, then again)", n)
	}
}

func TestForeignRuleRefused(t *testing.T) {
	x := newFixture(t)
	name := rulePrefix + "deny-ingress-" + x.def.hash()
	x.f.putRule(project, fFirewall{Name: name, Network: apiBase + x.def.path(), Direction: "INGRESS",
		Allowed: []fProto{{IPProtocol: "all"}}, SourceRanges: []string{"0.0.0.0/0"}, TargetTags: []string{tagQuarantine}})
	_, err := x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "o")
	if !errors.Is(err, cloud.ErrInvalid) || !strings.Contains(err.Error(), "not Cordon's") {
		t.Fatalf("Isolate: %v, want ErrInvalid for a rule that is not Cordon's", err)
	}
	x.assertOriginal(t)
	if fw := x.f.rule(project, name); len(fw.Allowed) != 1 {
		t.Errorf("the foreign rule was changed: %+v", fw)
	}
}

func TestRuleDriftRestored(t *testing.T) {
	x := newFixture(t)
	x.isolate(t, cloud.Options{})
	name := rulePrefix + "deny-egress-" + x.def.hash()
	fw := *x.f.rule(project, name)
	fw.Priority, fw.Disabled = ptr(65534), true
	x.f.putRule(project, fw)
	x.f.resetCalls()
	x.isolate(t, cloud.Options{})
	if got := x.f.callList(); !slices.Contains(got, "compute.firewalls.update") {
		t.Errorf("calls = %q, want a firewalls.update", got)
	}
	if got := ruleText(*x.f.rule(project, name)); got != "EGRESS DENY p1 all: to 0.0.0.0/0 tags cordon-quarantine" {
		t.Errorf("rule after Isolate: %s", got)
	}
}

func TestOverridingRuleNoted(t *testing.T) {
	x := newFixture(t)
	x.f.putRule(project, fFirewall{Name: "allow-everything", Network: apiBase + x.def.path(), Direction: "INGRESS", Priority: ptr(0),
		Allowed: []fProto{{IPProtocol: "tcp", Ports: []string{"22"}}}, SourceRanges: []string{"0.0.0.0/0"}})
	x.f.putRule(project, fFirewall{Name: "allow-other-tag", Network: apiBase + x.def.path(), Direction: "INGRESS", Priority: ptr(0),
		Allowed: []fProto{{IPProtocol: "all"}}, SourceRanges: []string{"0.0.0.0/0"}, TargetTags: []string{"bastion"}})
	a := x.isolate(t, cloud.Options{})
	if !slices.ContainsFunc(a.Notes, func(n string) bool {
		return strings.HasPrefix(n, "firewall rule allow-everything (INGRESS ALLOW, priority 0")
	}) {
		t.Errorf("Notes do not name the overriding rule: %q", a.Notes)
	}
	if slices.ContainsFunc(a.Notes, func(n string) bool { return strings.Contains(n, "allow-other-tag") }) {
		t.Errorf("Notes name a rule that does not apply to the instance: %q", a.Notes)
	}
}

func TestOptions(t *testing.T) {
	x := newFixture(t)
	o := cloud.Options{Tag: true, Snapshot: true, TerminationProtection: true, Detach: true, RevokeSessions: true, Incident: "INC-42"}
	a := x.isolate(t, o)
	if got := x.labels()[labelIncident]; got != "inc-42" {
		t.Errorf("%s = %q, want inc-42", labelIncident, got)
	}
	for _, want := range []string{"tag: label cordon-incident=inc-42", "snapshot: not implemented yet", "termination protection: not implemented yet",
		"detach: not implemented yet", "revoke sessions: not implemented yet"} {
		if !slices.ContainsFunc(a.Notes, func(n string) bool { return strings.HasPrefix(n, want) }) {
			t.Errorf("Notes lack %q: %q", want, a.Notes)
		}
	}
	a = x.release(t)
	x.assertOriginal(t)
	if x.labels()[labelIncident] != "inc-42" {
		t.Errorf("Release removed the incident label")
	}
}

func TestInvalidPolicy(t *testing.T) {
	x := newFixture(t)
	_, err := x.p.Isolate(context.Background(), x.inst, policy.Policy{}, cloud.Options{}, "o")
	if !errors.Is(err, cloud.ErrInvalid) {
		t.Fatalf("Isolate with no controller: %v, want ErrInvalid", err)
	}
	if n := len(x.f.callList()); n != 0 {
		t.Errorf("%d calls to Compute Engine for an invalid policy", n)
	}
}

func TestLabelValue(t *testing.T) {
	for in, want := range map[string]string{
		"order-1":                "order-1",
		"01J9Z:Q/x":              "01j9z-q-x",
		"":                       "none",
		strings.Repeat("a", 100): strings.Repeat("a", 63),
	} {
		if got := labelValue(in); got != want {
			t.Errorf("labelValue(%q) = %q, want %q", in, got, want)
		}
	}
}
