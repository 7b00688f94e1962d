package agent

import (
	"net/netip"
	"testing"

	"github.com/cordon-ir/cordon/pkg/policy"
)

func TestForbiddenProbe(t *testing.T) {
	ctl := []policy.Endpoint{{Addr: netip.MustParseAddr("198.18.0.1"), Port: 7443}}
	remote := netip.MustParseAddrPort("[::ffff:198.18.0.1]:7443")
	if got, ok := forbiddenProbe(policy.Policy{Controllers: ctl}, remote); !ok || got != netip.MustParseAddrPort("198.18.0.1:9") {
		t.Errorf("probe = %v, %v", got, ok)
	}
	if got, ok := forbiddenProbe(policy.Policy{Controllers: ctl}, netip.AddrPort{}); !ok || got != netip.MustParseAddrPort("198.18.0.1:9") {
		t.Errorf("probe without a connection = %v, %v", got, ok)
	}
	allowed := policy.Policy{Controllers: ctl, Allow: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}}
	if got, ok := forbiddenProbe(allowed, remote); ok {
		t.Errorf("probe of an allowlisted controller = %v", got)
	}
	if got, ok := forbiddenProbe(policy.Policy{}, netip.AddrPort{}); ok {
		t.Errorf("probe with nothing known = %v", got)
	}
}
