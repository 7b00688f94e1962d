package fwtest

// The lab: a host on a LAN with a controller, an outside host and an
// allowlisted one, and a "container" namespace behind the host, which
// routes for it.

import (
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/cordon-ir/cordon/internal/netlab"
	"github.com/cordon-ir/cordon/internal/netlab/labtest"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// Roles of the lab's namespaces.
const (
	roleHost    = "host"    // the isolated host, where the firewall runs
	roleCtr     = "ctr"     // a container behind the host
	roleOutside = "outside" // anyone on the LAN
	roleCtrl    = "ctrl"    // the controller
	roleAllowed = "allowed" // a host on the allowlist
)

// Lab addresses. The LAN is 198.18.0.0/24 and fd00:c0de::/112; the
// container network behind the host is 198.19.0.0/24 and fd00:c0de::1:0/112,
// with the host at .1 and the container at .2. The allowlist
// (198.18.0.4/30, fd00:c0de::4/126) holds "allowed" and no one else.
var (
	ctrlV4, ctrlV6       = netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("fd00:c0de::1")
	hostV4, hostV6       = netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("fd00:c0de::2")
	outsideV4, outsideV6 = netip.MustParseAddr("198.18.0.3"), netip.MustParseAddr("fd00:c0de::3")
	allowedV4, allowedV6 = netip.MustParseAddr("198.18.0.5"), netip.MustParseAddr("fd00:c0de::5")
	gwV4, gwV6           = netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("fd00:c0de::1:1")
	ctrV4, ctrV6         = netip.MustParseAddr("198.19.0.2"), netip.MustParseAddr("fd00:c0de::1:2")
	allowNet, allowNet6  = netip.MustParsePrefix("198.18.0.4/30"), netip.MustParsePrefix("fd00:c0de::4/126")
	ctrNet, ctrNet6      = netip.MustParsePrefix("198.19.0.0/24"), netip.MustParsePrefix("fd00:c0de::1:0/112")
)

// Ports of the lab's services: every namespace runs TCP and UDP echo
// services on servicePort; the controller also runs a TCP one on ctrlPort.
// The Docker setup publishes the container's servicePort on the host's
// publishedPort.
const (
	ctrlPort      = 7443
	servicePort   = 8080
	publishedPort = 8081
)

// Policy is the policy the matrix isolates with: the controller over IPv4
// and IPv6 (TCP port 7443) and the allowlisted host's networks.
func Policy() policy.Policy {
	return policy.Policy{
		Controllers: []policy.Endpoint{{Addr: ctrlV4, Port: ctrlPort}, {Addr: ctrlV6, Port: ctrlPort}},
		Allow:       []netip.Prefix{allowNet, allowNet6},
	}
}

// servicePorts returns the echo services of a role, as the agent reads
// them: "tcp:8080,udp:8080".
func servicePorts(role string) string {
	s := "tcp:" + strconv.Itoa(servicePort) + ",udp:" + strconv.Itoa(servicePort)
	if role == roleCtrl {
		s += ",tcp:" + strconv.Itoa(ctrlPort)
	}
	return s
}

type lab struct {
	host *netlab.Host
	ns   map[string]string // role -> namespace
}

// newLab builds the lab for setup s; t's cleanup removes it.
func newLab(t *testing.T, s setup) lab {
	t.Helper()
	l := labtest.New(t)
	lb := lab{ns: map[string]string{}}
	lan := []struct {
		role   string
		v4, v6 netip.Addr
	}{
		{roleCtrl, ctrlV4, ctrlV6},
		{roleHost, hostV4, hostV6},
		{roleOutside, outsideV4, outsideV6},
		{roleAllowed, allowedV4, allowedV6},
	}
	for _, h := range lan {
		nh := labtest.AddHost(t, l, h.role, h.v4.String()+"/24", h.v6.String()+"/112")
		lb.ns[h.role] = nh.NS
		if h.role == roleHost {
			lb.host = nh
		}
	}
	host := lb.host.NS
	// The container's namespace follows netlab's naming, so that
	// netlab.Sweep removes it too if this process dies.
	ctr := strings.TrimSuffix(host, "-"+roleHost) + "-" + roleCtr
	if err := run("ip", "netns", "add", ctr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeNS(ctr); err != nil {
			t.Errorf("remove namespace %s: %v", ctr, err)
		}
	})
	lb.ns[roleCtr] = ctr

	veth, gwIf := "ctr0", "ctr0"
	if s.bridge != "" {
		veth, gwIf = "vethc0de", s.bridge
	}
	steps := [][]string{
		{"ip", "-n", ctr, "link", "set", "lo", "up"},
		{"ip", "-n", host, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ctr},
		{"ip", "netns", "exec", ctr, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"},
		{"ip", "-n", ctr, "addr", "add", ctrV4.String() + "/24", "dev", "eth0"},
		{"ip", "-n", ctr, "-6", "addr", "add", ctrV6.String() + "/112", "dev", "eth0", "nodad"},
		{"ip", "-n", ctr, "link", "set", "eth0", "up"},
		{"ip", "-n", ctr, "route", "add", "default", "via", gwV4.String()},
		{"ip", "-n", ctr, "-6", "route", "add", "default", "via", gwV6.String()},
	}
	if s.bridge != "" {
		steps = append(steps,
			[]string{"ip", "-n", host, "link", "add", s.bridge, "type", "bridge"},
			[]string{"ip", "-n", host, "link", "set", veth, "master", s.bridge},
		)
	}
	steps = append(steps,
		[]string{"ip", "-n", host, "link", "set", veth, "up"},
		[]string{"ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv6.conf." + gwIf + ".accept_dad=0"},
		[]string{"ip", "-n", host, "addr", "add", gwV4.String() + "/24", "dev", gwIf},
		[]string{"ip", "-n", host, "-6", "addr", "add", gwV6.String() + "/112", "dev", gwIf, "nodad"},
		[]string{"ip", "-n", host, "link", "set", gwIf, "up"},
		[]string{"ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"},
	)
	for _, role := range []string{roleCtrl, roleOutside, roleAllowed} {
		steps = append(steps,
			[]string{"ip", "-n", lb.ns[role], "route", "add", ctrNet.String(), "via", hostV4.String()},
			[]string{"ip", "-n", lb.ns[role], "-6", "route", "add", ctrNet6.String(), "via", hostV6.String()},
		)
	}
	for _, st := range steps {
		if err := run(st...); err != nil {
			t.Fatalf("lab: %v", err)
		}
	}
	return lb
}

// removeNS kills what runs in a namespace and removes it.
func removeNS(ns string) error {
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				if p, err := os.FindProcess(pid); err == nil {
					_ = p.Kill()
				}
			}
		}
	}
	return run("ip", "netns", "delete", ns)
}
