package policy

import (
	"net/netip"
	"strings"
	"testing"
)

func TestCanonicalAndDigest(t *testing.T) {
	a := Policy{
		Controllers: []Endpoint{{netip.MustParseAddr("::ffff:198.18.0.1"), 7443}, {netip.MustParseAddr("198.18.0.1"), 7443}},
		Allow:       []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::ffff:192.0.2.0/120"), netip.MustParsePrefix("10.0.0.0/8")},
	}
	b := Policy{
		Controllers: []Endpoint{{netip.MustParseAddr("198.18.0.1"), 7443}},
		Allow:       []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("10.0.0.0/8")},
	}
	if a.Digest() != b.Digest() {
		t.Errorf("equal policies digest differently:\n%+v\n%+v", a.Canonical(), b.Canonical())
	}
	c := b
	c.Allow = append([]netip.Prefix(nil), b.Allow...)
	c.Allow[0] = netip.MustParsePrefix("192.0.3.0/24")
	if c.Digest() == b.Digest() {
		t.Error("different policies digest equal")
	}
	// DNS resolvers in any order and form are one policy; DHCP counts.
	d, e := b, b
	d.DNS = []netip.Addr{netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("::ffff:198.18.0.54"), netip.MustParseAddr("198.18.0.53")}
	e.DNS = []netip.Addr{netip.MustParseAddr("198.18.0.54"), netip.MustParseAddr("198.18.0.53")}
	if d.Digest() != e.Digest() || d.Digest() == b.Digest() {
		t.Errorf("DNS lists digest wrongly: %+v %+v", d.Canonical(), e.Canonical())
	}
	e.DHCP = true
	if d.Digest() == e.Digest() {
		t.Error("DHCP does not change the digest")
	}
	if !strings.HasPrefix(b.Digest(), "sha256:") || len(b.Digest()) != 7+64 {
		t.Errorf("digest %q", b.Digest())
	}
}

func TestValidate(t *testing.T) {
	ctl := []Endpoint{{netip.MustParseAddr("198.18.0.1"), 7443}}
	for name, tc := range map[string]struct {
		p    Policy
		want string
	}{
		"ok":               {Policy{Controllers: ctl}, ""},
		"no controller":    {Policy{}, "no controller"},
		"port 0":           {Policy{Controllers: []Endpoint{{netip.MustParseAddr("198.18.0.1"), 0}}}, "port 0"},
		"unspecified":      {Policy{Controllers: []Endpoint{{netip.MustParseAddr("0.0.0.0"), 1}}}, "not a usable IP"},
		"allow all v4":     {Policy{Controllers: ctl, Allow: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}}, "no isolation"},
		"allow all v6":     {Policy{Controllers: ctl, Allow: []netip.Prefix{netip.MustParsePrefix("::/0")}}, "no isolation"},
		"half of v4":       {Policy{Controllers: ctl, Allow: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/1")}}, "no isolation"},
		"mapped all v4":    {Policy{Controllers: ctl, Allow: []netip.Prefix{netip.MustParsePrefix("::ffff:0:0/96")}}, "no isolation"},
		"nat64 all v4":     {Policy{Controllers: ctl, Allow: []netip.Prefix{netip.MustParsePrefix("64:ff9b::/96")}}, "no isolation"},
		"many /8":          {Policy{Controllers: ctl, Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("11.0.0.0/8")}}, "together cover"},
		"one /8 is fine":   {Policy{Controllers: ctl, Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/32")}}, ""},
		"invalid allow":    {Policy{Controllers: ctl, Allow: []netip.Prefix{{}}}, "not a valid CIDR"},
		"zoned controller": {Policy{Controllers: []Endpoint{{netip.MustParseAddr("fe80::1%eth0"), 1}}}, "zone"},
		"dns and dhcp":     {Policy{Controllers: ctl, DNS: []netip.Addr{netip.MustParseAddr("198.18.0.53")}, DHCP: true}, ""},
		"dns unspecified":  {Policy{Controllers: ctl, DNS: []netip.Addr{netip.MustParseAddr("::")}}, "DNS resolver"},
		"dns invalid":      {Policy{Controllers: ctl, DNS: []netip.Addr{{}}}, "DNS resolver"},
		"too many dns":     {Policy{Controllers: ctl, DNS: make([]netip.Addr, MaxDNS+1)}, "DNS resolvers, at most"},
	} {
		t.Run(name, func(t *testing.T) {
			err := tc.p.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParsePrefix(t *testing.T) {
	for in, want := range map[string]string{"10.1.2.3": "10.1.2.3/32", "fd00::1": "fd00::1/128", "10.0.0.0/8": "10.0.0.0/8",
		"::ffff:192.0.2.0/120": "192.0.2.0/24", "2001:db8::/32": "2001:db8::/32"} {
		got, err := ParsePrefix(in)
		if err != nil || got.String() != want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"10.0.0.1/8", "pay-db-01", "10.0.0.0/33", "fe80::1%eth0", "0.0.0.0/0", "::/0", "0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1", "::ffff:0:0/96", "2000::/3", "64:ff9b::/96", "64:ff9b::/100"} {
		if _, err := ParsePrefix(in); err == nil {
			t.Errorf("ParsePrefix(%q) accepted", in)
		}
	}
}
