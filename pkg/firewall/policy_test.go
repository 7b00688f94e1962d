package firewall

import (
	"net/netip"
	"testing"

	"github.com/cordon-ir/cordon/pkg/policy"
)

// TestPolicyProtoRoundTrip: every field of a policy crosses the plugin
// boundary.
func TestPolicyProtoRoundTrip(t *testing.T) {
	p := policy.Policy{
		Controllers: []policy.Endpoint{{Addr: netip.MustParseAddr("198.18.0.1"), Port: 7443}, {Addr: netip.MustParseAddr("fd00:c0de::1"), Port: 7443}},
		Allow:       []netip.Prefix{netip.MustParsePrefix("198.18.0.4/30")},
		DNS:         []netip.Addr{netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("fd00:c0de::53")},
		DHCP:        true,
	}
	got, err := policyFromProto(policyToProto(p))
	if err != nil || got.Digest() != p.Digest() {
		t.Errorf("round trip = %+v, %v; want %+v", got, err, p)
	}
	bad := policyToProto(p)
	bad.Dns = []string{"resolver.example"}
	if _, err := policyFromProto(bad); err == nil {
		t.Error("a DNS resolver by name crossed the boundary")
	}
}
