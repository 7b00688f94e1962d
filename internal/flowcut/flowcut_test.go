package flowcut

import (
	"net/netip"
	"testing"

	"github.com/cordon-ir/cordon/pkg/policy"
)

func TestKeep(t *testing.T) {
	eff := policy.Policy{
		Controllers: []policy.Endpoint{
			{Addr: netip.MustParseAddr("198.18.0.1"), Port: 7443},
			{Addr: netip.MustParseAddr("fd00:c0de::1"), Port: 7443},
		},
		Allow: []netip.Prefix{
			netip.MustParsePrefix("198.18.0.4/30"),
			netip.MustParsePrefix("fd00:c0de::4/126"),
		},
	}.Canonical()
	local := func(a netip.Addr) bool {
		return a == netip.MustParseAddr("198.18.0.2") || a == netip.MustParseAddr("fd00:c0de::2")
	}
	tcp := func(src string, sport int, dst string, dport int) Flow {
		s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
		return Flow{Proto: ProtoTCP,
			Orig:  Tuple{Src: s, Dst: d, SrcPort: uint16(sport), DstPort: uint16(dport)},
			Reply: Tuple{Src: d, Dst: s, SrcPort: uint16(dport), DstPort: uint16(sport)}}
	}
	cases := []struct {
		name string
		fl   Flow
		want bool
	}{
		{"agent to controller", tcp("198.18.0.2", 40000, "198.18.0.1", 7443), true},
		{"agent to controller v6", tcp("fd00:c0de::2", 40000, "fd00:c0de::1", 7443), true},
		// Opened from the controller's address and port: what someone who
		// took that address would open (or the agent's own connection
		// picked up mid-stream the wrong way round, which the host's next
		// packet picks up again the right way).
		{"from the controller's address and port", tcp("198.18.0.1", 7443, "198.18.0.2", 22), false},
		{"from the controller's address and port v6", tcp("fd00:c0de::1", 7443, "fd00:c0de::2", 40000), false},
		{"agent to controller through DNAT", Flow{Proto: ProtoTCP,
			Orig:  Tuple{Src: netip.MustParseAddr("198.18.0.2"), Dst: netip.MustParseAddr("198.19.0.10"), SrcPort: 40000, DstPort: 443},
			Reply: Tuple{Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2"), SrcPort: 7443, DstPort: 40000}}, true},
		{"controller other port", tcp("198.18.0.2", 40000, "198.18.0.1", 22), false},
		{"forwarded to controller", tcp("10.9.0.2", 40000, "198.18.0.1", 7443), false},
		{"allowlisted peer", tcp("198.18.0.5", 40000, "198.18.0.2", 22), true},
		{"outside in", tcp("198.18.0.3", 40000, "198.18.0.2", 8080), false},
		{"outside v6", tcp("fd00:c0de::2", 40000, "fd00:c0de::3", 8080), false},
		{"loopback", tcp("127.0.0.1", 40000, "127.0.0.1", 8080), true},
		{"own address", tcp("198.18.0.2", 40000, "198.18.0.2", 8080), true},
		{"udp to controller address", Flow{Proto: 17, Orig: Tuple{Src: netip.MustParseAddr("198.18.0.2"), Dst: netip.MustParseAddr("198.18.0.1"), DstPort: 7443}}, false},
	}
	for _, tc := range cases {
		if got := Keep(tc.fl, eff, local); got != tc.want {
			t.Errorf("%s: keep = %v, want %v", tc.name, got, tc.want)
		}
	}
}
