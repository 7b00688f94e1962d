package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/pkg/cloud"
)

func hasNote(notes []string, parts ...string) bool {
	return slices.ContainsFunc(notes, func(n string) bool {
		for _, p := range parts {
			if !strings.Contains(n, p) {
				return false
			}
		}
		return true
	})
}

const otherInst = "i-0fedcba9876543210"

func TestDetach(t *testing.T) {
	x := newFixture(t)
	x.f.addASG("web-asg", 3, otherInst, instID)
	web := x.f.addTargetGroup("web", vpcID, "instance", 80, fTarget{otherInst, 80}, fTarget{instID, 80})
	admin := x.f.addTargetGroup("admin", vpcID, "instance", 8080, fTarget{instID, 8080}, fTarget{instID, 8081})
	other := x.f.addTargetGroup("other", vpcID, "instance", 80, fTarget{otherInst, 80})
	byIP := x.f.addTargetGroup("by-ip", vpcID, "ip", 443, fTarget{"10.0.2.10", 443})
	elsewhere := x.f.addTargetGroup("elsewhere", "vpc-0ffffffffffffffff", "instance", 80, fTarget{instID, 80})

	a := x.isolate(t, cloud.Options{Detach: true})
	if st := x.status(t); !st.Isolated {
		t.Fatalf("not isolated after Detach: %+v", st)
	}
	g := x.f.asg("web-asg")
	if !slices.Equal(g.instances, []string{otherInst}) || g.desired != 3 {
		t.Errorf("web-asg = %+v, want only %s left and desired capacity 3", g, otherInst)
	}
	if d := x.f.detachList(); !slices.Equal(d, []fDetach{{"web-asg", instID, false}}) {
		t.Errorf("DetachInstances calls = %+v, want one for %s without decrementing capacity", d, instID)
	}
	for arn, want := range map[string][]fTarget{
		web: {{otherInst, 80}}, admin: nil, other: {{otherInst, 80}}, byIP: nil, elsewhere: {{instID, 80}},
	} {
		if got := x.f.targets(arn); !slices.Equal(got, want) {
			t.Errorf("targets of %s = %v, want %v", arn, got, want)
		}
	}
	if !hasNote(a.Notes, "detach:", "web-asg", "desired capacity kept", "does not re-attach") {
		t.Errorf("Notes do not say the instance left web-asg: %q", a.Notes)
	}
	for _, arn := range []string{web, admin, byIP} {
		if !hasNote(a.Notes, "detach: deregistered", arn) {
			t.Errorf("Notes do not name target group %s: %q", arn, a.Notes)
		}
	}
	if hasNote(a.Notes, other) || hasNote(a.Notes, elsewhere) {
		t.Errorf("Notes name a target group the instance was not taken from: %q", a.Notes)
	}
	if !strings.HasSuffix(x.f.scope(asVersion), "/autoscaling") || !strings.HasSuffix(x.f.scope(elbVersion), "/elasticloadbalancing") {
		t.Errorf("signed for %q and %q", x.f.scope(asVersion), x.f.scope(elbVersion))
	}

	// Again: nothing left to detach, and Release attaches nothing back.
	a = x.isolate(t, cloud.Options{Detach: true})
	if !hasNote(a.Notes, "in no Auto Scaling group") || !hasNote(a.Notes, "in no load balancer target group") {
		t.Errorf("second Detach notes: %q", a.Notes)
	}
	x.release(t)
	x.assertOriginal(t)
	if g := x.f.asg("web-asg"); slices.Contains(g.instances, instID) || len(x.f.targets(admin)) != 0 {
		t.Errorf("Release re-attached the instance")
	}
}

func TestDetachNoGroup(t *testing.T) {
	x := newFixture(t)
	x.f.addASG("other-asg", 2, otherInst)
	a := x.isolate(t, cloud.Options{Detach: true})
	if !hasNote(a.Notes, "detach: the instance is in no Auto Scaling group") {
		t.Errorf("Notes do not say the instance is in no group: %q", a.Notes)
	}
	if n := x.f.count("DetachInstances"); n != 0 {
		t.Errorf("DetachInstances called %d times for an instance in no group", n)
	}
	if g := x.f.asg("other-asg"); !slices.Equal(g.instances, []string{otherInst}) || g.desired != 2 {
		t.Errorf("other-asg changed: %+v", g)
	}
}

func TestRevokeSessions(t *testing.T) {
	x := newFixture(t)
	x.f.addProfile(instID, "web-profile", "web-role")
	before := time.Now()
	a := x.isolate(t, cloud.Options{RevokeSessions: true})
	after := time.Now()
	doc, ok := x.f.rolePolicy("web-role", revokePolicyName)
	if !ok {
		t.Fatalf("no inline policy %s on web-role; notes %q", revokePolicyName, a.Notes)
	}
	var p struct {
		Version   string
		Statement struct {
			Effect, Action, Resource string
			Condition                map[string]map[string]string
		}
	}
	if err := json.Unmarshal([]byte(doc), &p); err != nil {
		t.Fatalf("policy %s: %v", doc, err)
	}
	s := p.Statement
	if p.Version != "2012-10-17" || s.Effect != "Deny" || s.Action != "*" || s.Resource != "*" ||
		len(s.Condition) != 1 || len(s.Condition["DateLessThan"]) != 1 {
		t.Fatalf("policy is not AWS's revoke-older-sessions policy: %s", doc)
	}
	raw := s.Condition["DateLessThan"]["aws:TokenIssueTime"]
	at, err := time.Parse(time.RFC3339, raw)
	if err != nil || !strings.HasSuffix(raw, "Z") {
		t.Fatalf("aws:TokenIssueTime %q is not RFC 3339 UTC: %v", raw, err)
	}
	if at.Before(before.Add(-time.Second)) || at.After(after.Add(2*time.Second)) {
		t.Errorf("aws:TokenIssueTime %s is not close to now (%s…%s)", at, before, after)
	}
	if !hasNote(a.Notes, "revoke sessions:", "web-role", raw, "other instances", "Release does not remove") {
		t.Errorf("Notes do not say what was revoked: %q", a.Notes)
	}
	if !strings.HasSuffix(x.f.scope(iamVersion), "/iam") {
		t.Errorf("IAM request signed for %q", x.f.scope(iamVersion))
	}
	x.release(t)
	if _, ok := x.f.rolePolicy("web-role", revokePolicyName); !ok {
		t.Errorf("Release removed the revoke policy")
	}
}

func TestRevokeSessionsProfileWithoutRole(t *testing.T) {
	x := newFixture(t)
	x.f.addProfile(instID, "empty-profile", "")
	a := x.isolate(t, cloud.Options{RevokeSessions: true})
	if !hasNote(a.Notes, "revoke sessions:", "empty-profile", "has no role") {
		t.Errorf("Notes: %q", a.Notes)
	}
	if n := x.f.count("PutRolePolicy"); n != 0 {
		t.Errorf("PutRolePolicy called %d times", n)
	}
}

func TestDetachRevokeDeniedIsANote(t *testing.T) {
	x := newFixture(t)
	x.f.addASG("web-asg", 3, instID)
	tg := x.f.addTargetGroup("web", vpcID, "instance", 80, fTarget{instID, 80})
	x.f.addProfile(instID, "web-profile", "web-role")
	for _, a := range []string{"DetachInstances", "DeregisterTargets", "PutRolePolicy"} {
		x.f.deny(a)
	}
	a := x.isolate(t, cloud.Options{Detach: true, RevokeSessions: true})
	if st := x.status(t); !st.Isolated {
		t.Fatalf("a denied option undid the isolation: %+v", st)
	}
	for _, call := range []string{"autoscaling:DetachInstances", "elasticloadbalancing:DeregisterTargets", "iam:PutRolePolicy"} {
		if !hasNote(a.Notes, "failed", cloud.ErrDenied.Error(), call) {
			t.Errorf("Notes do not say %s was denied: %q", call, a.Notes)
		}
	}
	if !slices.Contains(x.f.asg("web-asg").instances, instID) || len(x.f.targets(tg)) != 1 {
		t.Errorf("a denied call changed the fake's state")
	}
	if _, ok := x.f.rolePolicy("web-role", revokePolicyName); ok {
		t.Errorf("a denied PutRolePolicy put the policy")
	}
}
