package main

// Namespace tests of the agent's lifeline, the controller endpoint: nobody
// else can use it to reach the host, the agent's connection survives
// isolation even when conntrack was not tracking it before, and path-MTU
// discovery keeps working over a path with a smaller MTU.

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/internal/netlab"
	"github.com/cordon-ir/cordon/internal/netlab/labtest"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// TestControllerSpoof: a machine on the LAN takes the controller's
// addresses and dials the host from the controller's port. Once the host is
// isolated it can open no connection to a service on the host, over IPv4 or
// IPv6, and the one it opened before isolation carries nothing more: cut
// from conntrack where conntrack tracked it (user-rules), dropped as new
// where it did not (pristine).
func TestControllerSpoof(t *testing.T) {
	for _, setup := range []string{"pristine", "user-rules"} {
		t.Run(setup, func(t *testing.T) {
			if labtest.IsChild(t) {
				spoofInNamespace(t, setup)
				return
			}
			host, env := newLab(t)
			labtest.RunChild(t, host, env...)
		})
	}
}

func spoofInNamespace(t *testing.T, setup string) {
	hosts := childLab(t)
	loadSetup(t, setup)
	// outside takes the controller's addresses from it.
	ipIn(t, hosts["ctrl"], "addr", "del", ctrlV4.String()+"/24", "dev", "eth0")
	ipIn(t, hosts["ctrl"], "-6", "addr", "del", ctrlV6.String()+"/64", "dev", "eth0")
	ipIn(t, hosts["outside"], "addr", "add", ctrlV4.String()+"/24", "dev", "eth0")
	ipIn(t, hosts["outside"], "-6", "addr", "add", ctrlV6.String()+"/64", "dev", "eth0", "nodad")
	if out, err := exec.Command("ip", "neigh", "flush", "all").CombinedOutput(); err != nil {
		t.Fatalf("ip neigh flush: %v: %s", err, out)
	}
	spoofed := func(want bool) []probe {
		return []probe{
			{"outside@" + ap(ctrlV4, ctrlPort).String(), ap(hostV4, svcPort), want},
			{"outside@" + ap(ctrlV6, ctrlPort).String(), ap(hostV6, svcPort), want},
		}
	}
	// The take-over works: before isolation the spoofed dial gets through.
	checkReach(t, hosts, "before isolation, controller address taken", spoofed(true))
	// And a spoofed connection opened now stays open (another source port
	// than the dials', which use ctrlPort).
	held := map[string]*peerProc{}
	for fam, a := range map[string]netip.Addr{"IPv4": ctrlV4, "IPv6": ctrlV6} {
		to := hostV4
		if fam == "IPv6" {
			to = hostV6
		}
		held[fam] = startProc(t, hosts["outside"], "hold", fromEnv+"="+ap(a, ctrlPort+1).String(), addrEnv+"="+ap(to, svcPort).String())
		held[fam].writeLine(t, "s1")
		if l := held[fam].next(t); l != "echo s1" {
			t.Fatalf("%s spoofed connection before isolation: %q", fam, l)
		}
	}

	pol := labPolicy()
	pol.Controllers = append(pol.Controllers, policy.Endpoint{Addr: ctrlV4, Port: ctrlPort + 1}, policy.Endpoint{Addr: ctrlV6, Port: ctrlPort + 1})
	p := nsPlugin(t)
	a, err := p.Isolate(bg, pol, "order-spoof")
	if err != nil {
		t.Fatalf("Isolate: %v", err)
	}
	t.Logf("flows cut: %d", a.FlowsCut)
	checkReach(t, hosts, "isolated, controller address taken", append(spoofed(false),
		probe{"outside", ap(hostV4, svcPort), false},
		probe{"outside", ap(hostV6, svcPort), false},
	))
	for fam, h := range held {
		h.writeLine(t, "s2")
		if l := h.next(t); !strings.HasPrefix(l, "error") {
			t.Errorf("%s spoofed connection opened before isolation still works after it: %q", fam, l)
		}
	}
	if _, err := p.Release(bg, "order-spoof"); err != nil {
		t.Fatal(err)
	}
	checkReach(t, hosts, "released, controller address taken", spoofed(true))
}

// ipIn runs ip(8) with args in h's namespace.
func ipIn(t *testing.T, h *netlab.Host, args ...string) {
	t.Helper()
	if _, err := h.Output("ip", args...); err != nil {
		t.Fatal(err)
	}
}

// TestControllerSessionSurvives opens the agent's connections to the
// controller before isolation, in a fresh namespace where conntrack tracks
// nothing yet (nothing there needed it), and checks that they carry data
// both ways after isolation, over IPv4 and IPv6: conntrack picks them up
// mid-stream from the host's next packet (nf_conntrack_tcp_loose). On one
// connection the host speaks first after isolation, on the other the
// controller does: its packets are dropped until the host next sends
// (the agent's reply to the order, its keepalive), then retransmitted. A
// new connection to the controller works too.
func TestControllerSessionSurvives(t *testing.T) {
	inNamespace(t, sessionInNamespace)
}

func sessionInNamespace(t *testing.T) {
	hosts := childLab(t)
	loadSetup(t, "pristine")
	if out, err := exec.Command("sysctl", "-n", "net.netfilter.nf_conntrack_tcp_loose").Output(); err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("nf_conntrack_tcp_loose = %q, %v; the test expects the default, 1", out, err)
	}
	// The controller end: a peer that can speak first, on peerPort.
	peer := startPeer(t, hosts["ctrl"], peerPort, tagEnv+"=port")
	pol := labPolicy()
	pol.Controllers = append(pol.Controllers, policy.Endpoint{Addr: ctrlV4, Port: peerPort}, policy.Endpoint{Addr: ctrlV6, Port: peerPort})

	type session struct {
		name string
		c    net.Conn
		tag  string // the host's port, as the peer tags the connection
	}
	var hostFirst, ctrlFirst []session
	for _, a := range []netip.Addr{ctrlV4, ctrlV6} {
		for _, list := range []*[]session{&hostFirst, &ctrlFirst} {
			c, err := net.DialTimeout("tcp", ap(a, peerPort).String(), 3*time.Second)
			if err != nil {
				t.Fatalf("dial controller: %v", err)
			}
			t.Cleanup(func() { c.Close() })
			tag := strconv.Itoa(c.LocalAddr().(*net.TCPAddr).Port)
			fam := "IPv6"
			if a.Is4() {
				fam = "IPv4"
			}
			s := session{name: fam + " port " + tag, c: c, tag: tag}
			peer.expect(t, "conn "+tag)
			exchange(t, peer, s.c, s.tag, "h0", "c0", "before isolation, "+s.name)
			*list = append(*list, s)
		}
	}
	if n4, n6 := conntrackCount(t, "ipv4", peerPort), conntrackCount(t, "ipv6", peerPort); n4 != 0 || n6 != 0 {
		t.Fatalf("conntrack already tracks the controller connections (%d IPv4, %d IPv6); the test needs a namespace where it does not yet", n4, n6)
	}

	p := nsPlugin(t)
	if _, err := p.Isolate(bg, pol, "order-session"); err != nil {
		t.Fatalf("Isolate: %v", err)
	}
	for _, s := range hostFirst {
		exchange(t, peer, s.c, s.tag, "h1", "c1", "after isolation, host first, "+s.name)
	}
	for _, s := range ctrlFirst {
		start := time.Now()
		peer.send(t, s.tag, "c1")
		time.Sleep(300 * time.Millisecond)
		if _, err := s.c.Write([]byte("h1\n")); err != nil {
			t.Fatalf("%s: write: %v", s.name, err)
		}
		peer.expect(t, "got "+s.tag+" h1")
		readLine(t, s.c, "c1", "after isolation, controller first, "+s.name)
		t.Logf("after isolation, controller first, %s: its line arrived %v after it was sent", s.name, time.Since(start).Round(time.Millisecond))
		exchange(t, peer, s.c, s.tag, "h2", "c2", "after isolation, controller first, then "+s.name)
	}
	// The connections are now tracked, the host's way round (original
	// direction to the controller's port), and a new connection works.
	if n4, n6 := conntrackCount(t, "ipv4", peerPort), conntrackCount(t, "ipv6", peerPort); n4 != 2 || n6 != 2 {
		t.Errorf("after isolation: %d IPv4 and %d IPv6 conntrack entries to the controller's port, want 2 each", n4, n6)
	}
	for _, a := range []netip.Addr{ctrlV4, ctrlV6} {
		if err := echoOnce(ap(a, ctrlPort).String(), 3*time.Second); err != nil {
			t.Errorf("new connection to the controller %s after isolation: %v", a, err)
		}
	}
	if _, err := p.Release(bg, "order-session"); err != nil {
		t.Fatal(err)
	}
}

// exchange sends a line each way on a connection to the peer helper: out
// from the host, back from the peer, and checks both arrive.
func exchange(t *testing.T, peer *peerProc, c net.Conn, tag, out, back, what string) {
	t.Helper()
	if _, err := c.Write([]byte(out + "\n")); err != nil {
		t.Fatalf("%s: write: %v", what, err)
	}
	peer.expect(t, "got "+tag+" "+out)
	peer.send(t, tag, back)
	readLine(t, c, back, what)
}

// readLine reads a line from c within 5 s and checks it is want.
func readLine(t *testing.T, c net.Conn, want, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, len(want)+1)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != want+"\n" {
		t.Fatalf("%s: read %q, %v; want %q", what, buf, err, want)
	}
}

// Addresses of the path-MTU lab: the controller sits behind a router, on a
// link of its own, in other subnets of the test ranges.
var (
	routerV4, routerV6       = netip.MustParseAddr("198.18.0.254"), netip.MustParseAddr("fd00:c0de::fe")
	routerFarV4, routerFarV6 = netip.MustParseAddr("198.18.1.254"), netip.MustParseAddr("fd00:c0de::1:fe")
	farCtrlV4, farCtrlV6     = netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("fd00:c0de::1:1")
	farNet4, farNet6         = netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("fd00:c0de::1:0/112")
)

// pathMTU is the MTU of the router's route to the controller; every link is
// 1500, so the host learns it only from the router's ICMP errors.
const pathMTU = 1280

// TestPathMTU routes the host's traffic to the controller through a router
// whose route onwards has a smaller MTU (as a tunnel would), isolates, and
// sends a large payload to the controller's echo service and back, over
// IPv4 and IPv6: on a connection opened before isolation (in a namespace
// where conntrack tracked nothing yet) and on one opened after. It gets
// through only if the router's "fragmentation needed" and "packet too big"
// reach the host, which then lowers its path MTU.
func TestPathMTU(t *testing.T) {
	if labtest.IsChild(t) {
		pmtuInNamespace(t)
		return
	}
	host, env := newRouterLab(t)
	labtest.RunChild(t, host, env...)
}

// newRouterLab makes host and router on the lab's bridge, and ctrl behind
// the router on a veth pair of their own. The router forwards both families
// and its routes to the controller's addresses have MTU pathMTU, locked.
// ctrl runs the echo service on ctrlPort.
func newRouterLab(t *testing.T) (*netlab.Host, []string) {
	t.Helper()
	l := labtest.New(t)
	host := labtest.AddHost(t, l, "host", hostV4.String()+"/24", hostV6.String()+"/64")
	router := labtest.AddHost(t, l, "router", routerV4.String()+"/24", routerV6.String()+"/64")
	ctrl := labtest.AddHost(t, l, "ctrl", "", "")
	ipIn(t, ctrl, "link", "set", "eth0", "down")
	ipIn(t, router, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1", "netns", ctrl.NS)
	mtu := strconv.Itoa(pathMTU)
	steps := []struct {
		h    *netlab.Host
		args []string
	}{
		{router, []string{"addr", "add", netip.PrefixFrom(routerFarV4, farNet4.Bits()).String(), "dev", "eth1"}},
		{router, []string{"-6", "addr", "add", netip.PrefixFrom(routerFarV6, farNet6.Bits()).String(), "dev", "eth1", "nodad"}},
		{router, []string{"link", "set", "eth1", "up"}},
		{router, []string{"route", "add", netip.PrefixFrom(farCtrlV4, 32).String(), "dev", "eth1", "mtu", "lock", mtu}},
		{router, []string{"-6", "route", "add", netip.PrefixFrom(farCtrlV6, 128).String(), "dev", "eth1", "mtu", "lock", mtu}},
		{ctrl, []string{"addr", "add", netip.PrefixFrom(farCtrlV4, farNet4.Bits()).String(), "dev", "eth1"}},
		{ctrl, []string{"-6", "addr", "add", netip.PrefixFrom(farCtrlV6, farNet6.Bits()).String(), "dev", "eth1", "nodad"}},
		{ctrl, []string{"link", "set", "eth1", "up"}},
		{ctrl, []string{"route", "add", "default", "via", routerFarV4.String()}},
		{ctrl, []string{"-6", "route", "add", "default", "via", routerFarV6.String()}},
		{host, []string{"route", "add", farNet4.String(), "via", routerV4.String()}},
		{host, []string{"-6", "route", "add", farNet6.String(), "via", routerV6.String()}},
	}
	for _, k := range []string{"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"} {
		if _, err := router.Output("sysctl", "-qw", k); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range steps {
		ipIn(t, s.h, s.args...)
	}
	startHelper(t, ctrl, "echo", portsEnv+"="+strconv.Itoa(ctrlPort))
	hosts := []labHost{
		{Name: host.Name, NS: host.NS, V4: host.V4, V6: host.V6},
		{Name: router.Name, NS: router.NS, V4: router.V4, V6: router.V6},
		{Name: ctrl.Name, NS: ctrl.NS, V4: farCtrlV4, V6: farCtrlV6},
	}
	js, err := json.Marshal(hosts)
	if err != nil {
		t.Fatal(err)
	}
	return host, []string{labEnv + "=" + string(js)}
}

func pmtuInNamespace(t *testing.T) {
	hosts := childLab(t)
	loadSetup(t, "pristine")
	ctrl := hosts["ctrl"]
	addrs := []netip.Addr{ctrl.V4, ctrl.V6}
	pol := policy.Policy{Controllers: []policy.Endpoint{{Addr: ctrl.V4, Port: ctrlPort}, {Addr: ctrl.V6, Port: ctrlPort}}}
	want := "mtu " + strconv.Itoa(pathMTU)

	pre := map[netip.Addr]net.Conn{}
	for _, a := range addrs {
		c, err := net.DialTimeout("tcp", ap(a, ctrlPort).String(), 3*time.Second)
		if err != nil {
			t.Fatalf("dial controller %s through the router: %v", a, err)
		}
		t.Cleanup(func() { c.Close() })
		echoOn(t, c, "small", "before isolation, to "+a.String())
		pre[a] = c
		if r := routeGet(t, a); strings.Contains(r, want) {
			t.Fatalf("path MTU to %s known before any large packet: %s", a, r)
		}
	}

	p := nsPlugin(t)
	if _, err := p.Isolate(bg, pol, "order-pmtu"); err != nil {
		t.Fatalf("Isolate: %v", err)
	}
	for _, a := range addrs {
		bulkEcho(t, pre[a], "connection opened before isolation, to "+a.String())
		if r := routeGet(t, a); !strings.Contains(r, want) {
			t.Errorf("the host did not learn the path MTU to %s: %s", a, r)
		}
	}
	// Forget the path MTU, then a new connection.
	for _, fam := range []string{"-4", "-6"} {
		if out, err := exec.Command("ip", fam, "route", "flush", "cache").CombinedOutput(); err != nil {
			t.Fatalf("ip %s route flush cache: %v: %s", fam, err, out)
		}
	}
	for _, a := range addrs {
		if r := routeGet(t, a); strings.Contains(r, want) {
			t.Fatalf("path MTU to %s still known after flushing the route cache: %s", a, r)
		}
		c, err := net.DialTimeout("tcp", ap(a, ctrlPort).String(), 3*time.Second)
		if err != nil {
			t.Fatalf("dial controller %s after isolation: %v", a, err)
		}
		t.Cleanup(func() { c.Close() })
		bulkEcho(t, c, "connection opened after isolation, to "+a.String())
	}
	if _, err := p.Release(bg, "order-pmtu"); err != nil {
		t.Fatal(err)
	}
}

// routeGet returns what ip route get says of the route to a.
func routeGet(t *testing.T, a netip.Addr) string {
	t.Helper()
	out, err := exec.Command("ip", "route", "get", a.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("ip route get %s: %v: %s", a, err, out)
	}
	return strings.Join(strings.Fields(string(out)), " ")
}

// bulkEcho sends 256 KiB of random bytes on c, a connection to an echo
// service, and expects them back within 10 s.
func bulkEcho(t *testing.T, c net.Conn, what string) {
	t.Helper()
	data := make([]byte, 256<<10)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = c.SetDeadline(start.Add(10 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		werr <- err
	}()
	got := make([]byte, len(data))
	n, err := io.ReadFull(c, got)
	if err := <-werr; err != nil {
		t.Errorf("%s: write: %v", what, err)
	}
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("%s: %d of %d bytes came back (%v)", what, n, len(data), err)
		return
	}
	t.Logf("%s: %d bytes there and back in %v", what, len(data), time.Since(start).Round(time.Millisecond))
}
