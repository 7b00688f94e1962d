package main

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/policy"
)

const (
	instID = "i-0123456789abcdef0"
	vpcID  = "vpc-0a1b2c3d4e5f60718"
)

// fixture is an instance with two interfaces: the first in sg-web and
// sg-db, the second in sg-app; two EBS volumes.
type fixture struct {
	f                 *fakeEC2
	p                 *Plugin
	inst              cloud.Instance
	eni0, eni1        string
	web, db, app, def string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFakeEC2(t)
	x := &fixture{f: f}
	x.def = f.addVPC(vpcID)
	x.web = f.addGroup(vpcID, "web")
	x.db = f.addGroup(vpcID, "db")
	x.app = f.addGroup(vpcID, "app")
	enis := f.addInstance(instID, vpcID, []string{"vol-0aaaaaaaaaaaaaaa1", "vol-0aaaaaaaaaaaaaaa2"},
		eniSpec{ip: "10.0.1.10", ipv6: "2001:db8:1::10", groups: []string{x.web, x.db}},
		eniSpec{ip: "10.0.2.10", groups: []string{x.app}})
	x.eni0, x.eni1 = enis[0], enis[1]
	x.p = newTestPlugin(t, f, 3)
	x.inst = cloud.Instance{Provider: "aws", ID: instID, Region: "eu-west-1"}
	return x
}

// newTestPlugin points the real SDK at the fake, with static test
// credentials (no shared files, no environment, no metadata service) and a
// retryer of maxAttempts with a 1 ms backoff.
func newTestPlugin(t *testing.T, f *fakeEC2, maxAttempts int) *Plugin {
	t.Helper()
	nowhere := filepath.Join(t.TempDir(), "none")
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2",
		"AWS_ENDPOINT_URL_AUTO_SCALING", "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", "AWS_ENDPOINT_URL_IAM"} {
		t.Setenv(k, "")
	}
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", nowhere)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", nowhere)
	return New(Options{
		Endpoint:            f.srv.URL,
		AutoScalingEndpoint: f.srv.URL,
		ELBEndpoint:         f.srv.URL,
		IAMEndpoint:         f.srv.URL,
		Config: func(ctx context.Context, region string) (aws.Config, error) {
			return config.LoadDefaultConfig(ctx,
				config.WithRegion(region),
				config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(testKeyID, "test-secret-not-real", "")),
				config.WithRetryer(func() aws.Retryer {
					return retry.NewStandard(func(o *retry.StandardOptions) {
						o.MaxAttempts = maxAttempts
						o.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return time.Millisecond, nil })
						o.RateLimiter = ratelimit.None
					})
				}),
			)
		},
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

// cordonTags returns the instance's cordon:* tags.
func (x *fixture) cordonTags() map[string]string {
	out := map[string]string{}
	for k, v := range x.f.resourceTags(instID) {
		if strings.HasPrefix(k, "cordon:") {
			out[k] = v
		}
	}
	return out
}

// assertOriginal checks that both interfaces have exactly their original
// groups and that no isolation record is left.
func (x *fixture) assertOriginal(t *testing.T) {
	t.Helper()
	if g := x.f.eniGroups(x.eni0); !sameSet(g, []string{x.web, x.db}) {
		t.Errorf("%s has %v, want its original %v", x.eni0, g, []string{x.web, x.db})
	}
	if g := x.f.eniGroups(x.eni1); !slices.Equal(g, []string{x.app}) {
		t.Errorf("%s has %v, want its original %v", x.eni1, g, []string{x.app})
	}
	for k := range x.cordonTags() {
		if k != tagIncident {
			t.Errorf("tag %s left on the instance", k)
		}
	}
}

func ruleSet(rs []fRule) []string {
	var out []string
	for _, r := range rs {
		s := r.proto
		if r.proto != "-1" {
			s += " " + strconv.Itoa(r.from) + "-" + strconv.Itoa(r.to)
		}
		out = append(out, s+" "+r.cidr+r.cidr6+r.group+r.prefixList)
	}
	slices.Sort(out)
	return out
}

func TestInfo(t *testing.T) {
	i, err := New(Options{}).Info(context.Background())
	if err != nil || i.Provider != "aws" || i.Name != "cordon-plugin-aws" {
		t.Fatalf("Info = %+v, %v", i, err)
	}
}

func TestLookup(t *testing.T) {
	x := newFixture(t)
	got, err := x.p.Lookup(context.Background(), cloud.Instance{ID: instID, Region: "eu-west-1"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Interfaces, []string{x.eni0, x.eni1}) {
		t.Errorf("Interfaces = %v, want %v", got.Interfaces, []string{x.eni0, x.eni1})
	}
	want := []netip.Addr{netip.MustParseAddr("10.0.1.10"), netip.MustParseAddr("2001:db8:1::10"), netip.MustParseAddr("10.0.2.10")}
	if !slices.Equal(got.PrivateIPs, want) {
		t.Errorf("PrivateIPs = %v, want %v", got.PrivateIPs, want)
	}
	if got.Provider != "aws" || got.Region != "eu-west-1" {
		t.Errorf("Lookup = %+v", got)
	}
}

func TestNotFound(t *testing.T) {
	x := newFixture(t)
	ctx := context.Background()
	for _, tc := range []struct {
		id   string
		want error
	}{
		{"i-0fffffffffffffff0", cloud.ErrNotFound},
		{"not-an-instance", cloud.ErrInvalid},
	} {
		t.Run(tc.id, func(t *testing.T) {
			inst := cloud.Instance{ID: tc.id, Region: "eu-west-1"}
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
		})
	}
}

func TestIsolate(t *testing.T) {
	x := newFixture(t)
	a := x.isolate(t, cloud.Options{})

	untrack := x.f.groupByName(vpcID, untrackName)
	iso := x.f.groupByName(vpcID, isolationName(testPolicy.Digest()))
	if untrack == nil || iso == nil {
		t.Fatalf("groups not created: untrack %v, isolation %v", untrack, iso)
	}
	// Each interface went to cordon-untrack, then to the isolation group.
	for _, eni := range []string{x.eni0, x.eni1} {
		want := [][]string{{untrack.id}, {iso.id}}
		if got := x.f.eniMoves(eni); !slices.EqualFunc(got, want, slices.Equal) {
			t.Errorf("%s moves = %v, want %v", eni, got, want)
		}
		if got := x.f.eniGroups(eni); !slices.Equal(got, []string{iso.id}) {
			t.Errorf("%s groups = %v, want only %s", eni, got, iso.id)
		}
	}
	// The isolation group: out to the controllers (TCP 7443) and the DNS
	// resolver (53), the allowlist both ways, nothing else; in particular
	// not the allow-all egress rule a new group comes with.
	wantOut := []string{
		"-1 203.0.113.0/28",
		"tcp 53-53 198.51.100.53/32",
		"tcp 7443-7443 198.51.100.10/32",
		"tcp 7443-7443 2001:db8:ff::10/128",
		"udp 53-53 198.51.100.53/32",
	}
	if got := ruleSet(iso.out); !slices.Equal(got, wantOut) {
		t.Errorf("isolation egress = %q, want %q", got, wantOut)
	}
	if got, want := ruleSet(iso.in), []string{"-1 203.0.113.0/28"}; !slices.Equal(got, want) {
		t.Errorf("isolation ingress = %q, want %q", got, want)
	}
	allAll := []string{"-1 0.0.0.0/0", "-1 ::/0"}
	if got := ruleSet(untrack.in); !slices.Equal(got, allAll) {
		t.Errorf("untrack ingress = %q, want %q", got, allAll)
	}
	if got := ruleSet(untrack.out); !slices.Equal(got, allAll) {
		t.Errorf("untrack egress = %q, want %q", got, allAll)
	}
	for id, kind := range map[string]string{untrack.id: kindUntrack, iso.id: kindIsolation} {
		if got := x.f.resourceTags(id)[tagManaged]; got != kind {
			t.Errorf("group %s: %s = %q, want %q", id, tagManaged, got, kind)
		}
	}

	// The record on the instance.
	tags := x.cordonTags()
	if got := strings.Fields(tags[tagOriginal+x.eni0]); !slices.Equal(got, []string{x.web, x.db}) {
		t.Errorf("original groups of %s recorded as %q", x.eni0, got)
	}
	if got := tags[tagOriginal+x.eni1]; got != x.app {
		t.Errorf("original groups of %s recorded as %q", x.eni1, got)
	}
	if tags[tagPolicy] != testPolicy.Digest() || tags[tagOrder] != "order-1" {
		t.Errorf("record tags = %v", tags)
	}
	if _, err := time.Parse(time.RFC3339, tags[tagSince]); err != nil {
		t.Errorf("%s = %q: %v", tagSince, tags[tagSince], err)
	}

	// What Isolate returned.
	wantState := []string{
		x.eni0 + ": " + iso.id + " (was " + x.web + ", " + x.db + ")",
		x.eni1 + ": " + iso.id + " (was " + x.app + ")",
	}
	if !slices.Equal(a.State, wantState) {
		t.Errorf("State = %q, want %q", a.State, wantState)
	}
	if !slices.ContainsFunc(a.Notes, func(n string) bool { return strings.Contains(n, "host layer must block DNS") }) {
		t.Errorf("Notes lack the DNS resolver note: %q", a.Notes)
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
	if !st.Isolated || st.Partial != "" || st.Since.Before(before.Truncate(time.Second)) || len(st.State) != 2 {
		t.Fatalf("after isolation: %+v", st)
	}
	// Someone puts an interface back by hand.
	x.f.setENIGroups(x.eni1, x.app)
	st = x.status(t)
	if st.Isolated || !strings.Contains(st.Partial, x.eni1+" has its original groups") {
		t.Errorf("one interface put back: %+v", st)
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
	tags := x.cordonTags()
	x.f.resetCalls()
	second := x.isolate(t, cloud.Options{})
	for _, c := range x.f.callList() {
		if !strings.HasPrefix(c, "Describe") {
			t.Errorf("second Isolate called %s", c)
		}
	}
	if !slices.Equal(first.State, second.State) {
		t.Errorf("State changed: %q, then %q", first.State, second.State)
	}
	if got := x.cordonTags(); len(got) != len(tags) || got[tagSince] != tags[tagSince] {
		t.Errorf("tags changed: %v, then %v", tags, got)
	}
}

func TestIsolateNewPolicy(t *testing.T) {
	x := newFixture(t)
	x.isolate(t, cloud.Options{})
	old := x.f.groupByName(vpcID, isolationName(testPolicy.Digest()))
	p2 := testPolicy
	p2.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/29")}
	x.f.resetCalls()
	if _, err := x.p.Isolate(context.Background(), x.inst, p2, cloud.Options{}, "order-3"); err != nil {
		t.Fatal(err)
	}
	iso := x.f.groupByName(vpcID, isolationName(p2.Digest()))
	untrack := x.f.groupByName(vpcID, untrackName)
	if iso == nil || iso.id == old.id {
		t.Fatalf("no new isolation group for the new policy")
	}
	// The flows the old policy allowed are cut too: through untrack again.
	want := [][]string{{untrack.id}, {iso.id}}
	if got := x.f.eniMoves(x.eni0); !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("moves = %v, want %v", got, want)
	}
	tags := x.cordonTags()
	if tags[tagPolicy] != p2.Digest() || !slices.Equal(strings.Fields(tags[tagOriginal+x.eni0]), []string{x.web, x.db}) {
		t.Errorf("record after policy change: %v", tags)
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
	// Straight back: no detour through cordon-untrack.
	if got := x.f.eniMoves(x.eni0); len(got) != 1 {
		t.Errorf("%s moves on release = %v, want one", x.eni0, got)
	}
	want := []string{x.eni0 + ": " + x.web + ", " + x.db, x.eni1 + ": " + x.app}
	if !slices.Equal(a.State, want) {
		t.Errorf("State = %q, want %q", a.State, want)
	}
	// A second release finds nothing and changes nothing.
	x.f.resetCalls()
	a = x.release(t)
	for _, c := range x.f.callList() {
		if !strings.HasPrefix(c, "Describe") {
			t.Errorf("second Release called %s", c)
		}
	}
	if !slices.Contains(a.Notes, "nothing of Cordon's was in place") {
		t.Errorf("second Release notes = %q", a.Notes)
	}
}

func TestReleaseNeverIsolated(t *testing.T) {
	x := newFixture(t)
	x.release(t)
	x.assertOriginal(t)
	if n := len(x.f.eniMoves(x.eni0)) + len(x.f.eniMoves(x.eni1)); n != 0 {
		t.Errorf("%d interface changes releasing an instance never isolated", n)
	}
}

func TestReleaseOriginalGroupDeleted(t *testing.T) {
	x := newFixture(t)
	x.isolate(t, cloud.Options{})
	// sg-db, one of eni0's two groups, and sg-app, eni1's only group, go.
	x.f.deleteGroup(x.db)
	x.f.deleteGroup(x.app)
	a := x.release(t)
	if g := x.f.eniGroups(x.eni0); !slices.Equal(g, []string{x.web}) {
		t.Errorf("%s has %v, want the surviving original %s", x.eni0, g, x.web)
	}
	if g := x.f.eniGroups(x.eni1); !slices.Equal(g, []string{x.def}) {
		t.Errorf("%s has %v, want the VPC's default group %s", x.eni1, g, x.def)
	}
	for _, want := range []string{x.eni0 + ": original group " + x.db + " was deleted", x.eni1 + ": its original groups " + x.app + " were deleted"} {
		if !slices.ContainsFunc(a.Notes, func(n string) bool { return strings.Contains(n, want) }) {
			t.Errorf("Notes lack %q: %q", want, a.Notes)
		}
	}
	if tags := x.cordonTags(); len(tags) != 0 {
		t.Errorf("record left: %v", tags)
	}
}

func TestThrottling(t *testing.T) {
	t.Run("retried", func(t *testing.T) {
		x := newFixture(t)
		x.f.throttle("DescribeInstances", 2)
		x.f.throttle("ModifyNetworkInterfaceAttribute", 2)
		x.isolate(t, cloud.Options{})
		if st := x.status(t); !st.Isolated {
			t.Errorf("not isolated after retries: %+v", st)
		}
		// 3 attempts of the first DescribeInstances, one for the read-back,
		// one for Status.
		if n := x.f.count("DescribeInstances"); n != 5 {
			t.Errorf("DescribeInstances called %d times, want 5", n)
		}
	})
	t.Run("persistent", func(t *testing.T) {
		x := newFixture(t)
		x.f.throttle("DescribeInstances", 1000)
		_, err := x.p.Lookup(context.Background(), x.inst)
		if !errors.Is(err, cloud.ErrThrottled) {
			t.Fatalf("Lookup: %v, want ErrThrottled", err)
		}
		if n := x.f.count("DescribeInstances"); n != 3 {
			t.Errorf("DescribeInstances called %d times, want the retryer's 3", n)
		}
		if !strings.Contains(err.Error(), "DescribeInstances") {
			t.Errorf("error does not name the action: %v", err)
		}
	})
	t.Run("persistent on an interface", func(t *testing.T) {
		x := newFixture(t)
		x.f.setModifyFault(func(eni string, groups []string) *ec2Error {
			if eni == x.eni1 {
				return &ec2Error{503, "RequestLimitExceeded", "Request limit exceeded."}
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
	for _, action := range []string{"CreateSecurityGroup", "CreateTags", "ModifyNetworkInterfaceAttribute"} {
		t.Run(action, func(t *testing.T) {
			x := newFixture(t)
			x.f.deny(action)
			_, err := x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "order-1")
			if !errors.Is(err, cloud.ErrDenied) {
				t.Fatalf("Isolate: %v, want ErrDenied", err)
			}
			if !strings.Contains(err.Error(), "ec2:"+action) {
				t.Errorf("error does not name ec2:%s: %v", action, err)
			}
			if n := x.f.count(action); n != 1 {
				t.Errorf("%s called %d times: a denial must not be retried", action, n)
			}
			x.assertOriginal(t)
		})
	}
}

func TestPartialFailure(t *testing.T) {
	for _, tc := range []struct {
		name string
		// failAt is the step of eni1's move that fails: 0 cordon-untrack,
		// 1 the isolation group.
		failAt int
	}{
		{"second interface fails to untrack", 0},
		{"second interface fails to isolate", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newFixture(t)
			step := 0
			x.f.setModifyFault(func(eni string, groups []string) *ec2Error {
				if eni != x.eni1 {
					return nil
				}
				defer func() { step++ }()
				if step == tc.failAt {
					return &ec2Error{400, "InvalidParameterValue", "simulated failure"}
				}
				return nil
			})
			_, err := x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "order-1")
			if err == nil || !strings.Contains(err.Error(), "simulated failure") || !strings.Contains(err.Error(), x.eni1) {
				t.Fatalf("Isolate: %v, want the failure of %s", err, x.eni1)
			}
			// Nothing half: both interfaces back, the record gone.
			x.assertOriginal(t)
			untrack := x.f.groupByName(vpcID, untrackName).id
			iso := x.f.groupByName(vpcID, isolationName(testPolicy.Digest())).id
			want0 := [][]string{{untrack}, {iso}, {x.web, x.db}}
			if got := x.f.eniMoves(x.eni0); !slices.EqualFunc(got, want0, slices.Equal) {
				t.Errorf("%s moves = %v, want %v", x.eni0, got, want0)
			}
			if st := x.status(t); st.Isolated || st.Partial != "" {
				t.Errorf("Status after the failure: %+v", st)
			}
		})
	}
	t.Run("rollback fails too", func(t *testing.T) {
		x := newFixture(t)
		iso := ""
		x.f.setModifyFault(func(eni string, groups []string) *ec2Error {
			if eni != x.eni1 {
				return nil
			}
			if iso == "" && len(groups) == 1 {
				if g := x.f.groups[groups[0]]; g != nil && g.name == untrackName {
					return nil // the first step goes through
				}
			}
			iso = "failed"
			return &ec2Error{400, "InvalidParameterValue", "simulated failure"}
		})
		_, err := x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "order-1")
		if err == nil || !strings.Contains(err.Error(), "interface "+x.eni1+" could not be put back") {
			t.Fatalf("Isolate: %v, want it to say %s could not be put back", err, x.eni1)
		}
		// eni0 is back; eni1's record stays for Release.
		if g := x.f.eniGroups(x.eni0); !sameSet(g, []string{x.web, x.db}) {
			t.Errorf("%s has %v", x.eni0, g)
		}
		if _, ok := x.cordonTags()[tagOriginal+x.eni1]; !ok {
			t.Errorf("record of %s removed though it is not back", x.eni1)
		}
		x.f.setModifyFault(nil)
		x.release(t)
		x.assertOriginal(t)
	})
}

func TestOptions(t *testing.T) {
	x := newFixture(t)
	o := cloud.Options{Tag: true, Snapshot: true, TerminationProtection: true, Detach: true, RevokeSessions: true, Incident: "INC-42"}
	a := x.isolate(t, o)
	if got := x.f.resourceTags(instID)[tagIncident]; got != "INC-42" {
		t.Errorf("%s = %q, want INC-42", tagIncident, got)
	}
	if !x.f.terminationProtected(instID) {
		t.Errorf("termination protection not on")
	}
	snaps := x.f.snapshotList()
	if len(snaps) != 2 || snaps[0].volume != "vol-0aaaaaaaaaaaaaaa1" || snaps[1].volume != "vol-0aaaaaaaaaaaaaaa2" {
		t.Fatalf("snapshots = %+v, want one per volume", snaps)
	}
	for _, s := range snaps {
		tags := x.f.resourceTags(s.id)
		if tags[tagOrder] != "order-1" || tags[tagInstance] != instID || tags[tagIncident] != "INC-42" {
			t.Errorf("snapshot %s tags = %v", s.id, tags)
		}
		if !slices.ContainsFunc(a.Notes, func(n string) bool { return strings.Contains(n, s.id) }) {
			t.Errorf("Notes do not name snapshot %s: %q", s.id, a.Notes)
		}
	}
	for _, want := range []string{"detach: the instance is in no Auto Scaling group", "detach: the instance is in no load balancer target group",
		"revoke sessions: the instance has no instance profile"} {
		if !slices.ContainsFunc(a.Notes, func(n string) bool { return strings.HasPrefix(n, want) }) {
			t.Errorf("Notes lack %q: %q", want, a.Notes)
		}
	}
	// The same order again takes no second snapshot and tags nothing anew.
	x.f.resetCalls()
	x.isolate(t, o)
	if n := len(x.f.snapshotList()); n != 2 {
		t.Errorf("%d snapshots after the same order twice, want 2", n)
	}
	if n := x.f.count("CreateSnapshot") + x.f.count("CreateTags"); n != 0 {
		t.Errorf("the same order again called CreateSnapshot or CreateTags %d times", n)
	}
	// Release keeps the evidence.
	x.release(t)
	x.assertOriginal(t)
	if x.f.resourceTags(instID)[tagIncident] != "INC-42" || !x.f.terminationProtected(instID) {
		t.Errorf("Release removed the incident tag or termination protection")
	}
}

func TestOptionFailureIsANote(t *testing.T) {
	x := newFixture(t)
	x.f.deny("CreateSnapshot")
	a := x.isolate(t, cloud.Options{Snapshot: true})
	if st := x.status(t); !st.Isolated {
		t.Fatalf("a failed snapshot undid the isolation: %+v", st)
	}
	if !slices.ContainsFunc(a.Notes, func(n string) bool {
		return strings.Contains(n, "failed") && strings.Contains(n, "ec2:CreateSnapshot")
	}) {
		t.Errorf("Notes do not say the snapshot was denied: %q", a.Notes)
	}
}

func TestInvalidPolicy(t *testing.T) {
	x := newFixture(t)
	_, err := x.p.Isolate(context.Background(), x.inst, policy.Policy{}, cloud.Options{}, "o")
	if !errors.Is(err, cloud.ErrInvalid) {
		t.Fatalf("Isolate with no controller: %v, want ErrInvalid", err)
	}
	if n := len(x.f.callList()); n != 0 {
		t.Errorf("%d calls to EC2 for an invalid policy", n)
	}
}

func TestForeignGroupNameRefused(t *testing.T) {
	x := newFixture(t)
	// A group named like Cordon's but not tagged as Cordon's (made by
	// someone else, perhaps with the host's stolen credentials).
	x.f.addGroup(vpcID, untrackName)
	_, err := x.p.Isolate(context.Background(), x.inst, testPolicy, cloud.Options{}, "o")
	if !errors.Is(err, cloud.ErrInvalid) || !strings.Contains(err.Error(), "not Cordon's") {
		t.Fatalf("Isolate: %v, want ErrInvalid for a group that is not Cordon's", err)
	}
	x.assertOriginal(t)
}

func TestOriginalTagsChunked(t *testing.T) {
	var groups []string
	for i := range 16 {
		groups = append(groups, "sg-0123456789abcde"+string(rune('a'+i%6))+string(rune('0'+i%10)))
	}
	tags := originalTags("eni-0123456789abcdef0", groups)
	if len(tags) < 2 {
		t.Fatalf("16 groups fit in %d tag(s)", len(tags))
	}
	for _, tg := range tags {
		if len(aws.ToString(tg.Value)) > maxTagValue {
			t.Errorf("tag %s is %d characters", aws.ToString(tg.Key), len(aws.ToString(tg.Value)))
		}
	}
	rec := readRecord(tags)
	if got := rec.originals["eni-0123456789abcdef0"]; !slices.Equal(got, groups) {
		t.Errorf("read back %v, want %v", got, groups)
	}
}
