package fwtest

// Probes (TCP and UDP echo, ICMP echo with ping(8)) and the echo services
// they reach. The copy of the test binary in the host namespace probes
// from the host itself in-process; in every other namespace an agent, the
// test binary run in helper mode (see init), serves the echo services and
// runs the probes it is sent.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Environment of the agents.
const (
	helperEnv = "CORDON_FWTEST_HELPER" // "agent" runs the binary as an agent
	portsEnv  = "CORDON_FWTEST_PORTS"  // echo services: "tcp:8080,udp:8080"
)

// probeTimeout bounds each probe: a blocked one fails after this long.
const probeTimeout = 1500 * time.Millisecond

func init() {
	if os.Getenv(helperEnv) == "agent" {
		os.Exit(agentMain())
	}
	// The first test process records the namespace it started in (the
	// machine's own); the copies it starts in namespaces inherit it.
	if os.Getenv(mainNSEnv) == "" {
		if ns, err := os.Readlink("/proc/self/ns/net"); err == nil {
			os.Setenv(mainNSEnv, ns)
		}
	}
}

// Protocols of probes.
const (
	tcp  = "tcp"
	udp  = "udp"
	icmp = "icmp"
)

// probe is an attempt to reach an echo service (or, for ICMP, an address)
// from a role's namespace, and whether it should get through.
type probe struct {
	from  string
	proto string
	to    netip.AddrPort // the port is unused for ICMP
	want  bool
}

func (p probe) target() string {
	if p.proto == icmp {
		return p.to.Addr().String()
	}
	return p.to.String()
}

func (p probe) String() string {
	return fmt.Sprintf("%s -> %s %s", p.from, p.target(), p.proto)
}

// baseProbes are the matrix's probes, with want saying whether each should
// get through while the host is isolated with Policy.
func baseProbes(s setup) []probe {
	var ps []probe
	add := func(from, proto string, to netip.Addr, port uint16, want bool) {
		ps = append(ps, probe{from: from, proto: proto, to: netip.AddrPortFrom(to, port), want: want})
	}
	type addrs struct{ host, ctr, outside, ctrl, allowed, lo netip.Addr }
	for _, a := range []addrs{
		{hostV4, ctrV4, outsideV4, ctrlV4, allowedV4, netip.MustParseAddr("127.0.0.1")},
		{hostV6, ctrV6, outsideV6, ctrlV6, allowedV6, netip.IPv6Loopback()},
	} {
		for _, proto := range []string{tcp, udp, icmp} {
			add(roleOutside, proto, a.host, servicePort, false)
			add(roleOutside, proto, a.ctr, servicePort, false)
			add(roleCtrl, proto, a.host, servicePort, false)
			add(roleHost, proto, a.outside, servicePort, false)
			add(roleCtr, proto, a.outside, servicePort, false)
			add(roleAllowed, proto, a.host, servicePort, true)
			add(roleAllowed, proto, a.ctr, servicePort, true)
			add(roleHost, proto, a.allowed, servicePort, true)
		}
		add(roleHost, tcp, a.ctrl, ctrlPort, true)
		add(roleHost, tcp, a.ctrl, servicePort, false)
		add(roleHost, udp, a.ctrl, servicePort, false)
		add(roleHost, icmp, a.ctrl, 0, false)
		add(roleHost, tcp, a.lo, servicePort, true)
	}
	return append(ps, s.extra...)
}

// isolatedProbes are the probes with what Policy allows and forbids.
func isolatedProbes(s setup) []probe { return baseProbes(s) }

// openProbes are the same probes, all of which get through when the host
// is not isolated: every setup lets the lab's traffic through.
func openProbes(s setup) []probe {
	ps := baseProbes(s)
	for i := range ps {
		ps[i].want = true
	}
	return ps
}

// checkReach runs the probes in parallel and reports each that does not do
// what it should.
func checkReach(t *testing.T, stage string, agents map[string]*agent, probes []probe) {
	t.Helper()
	errs := make([]error, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p.from == roleHost {
				errs[i] = probeOnce(p.proto, p.target())
				return
			}
			errs[i] = agents[p.from].probe(p.proto, p.target())
		}()
	}
	wg.Wait()
	wrong := 0
	for i, p := range probes {
		switch {
		case p.want && errs[i] != nil:
			wrong++
			t.Errorf("%s: %s should get through: %v", stage, p, errs[i])
		case !p.want && errs[i] == nil:
			wrong++
			t.Errorf("%s: %s should be blocked but gets through", stage, p)
		}
	}
	t.Logf("%s: %d probes, %d wrong", stage, len(probes), wrong)
}

// probeOnce reaches addr once over proto, within probeTimeout: a line sent
// to a TCP echo service comes back, a datagram sent to a UDP one comes back
// (it is sent again every 300 ms), ping(8) gets a reply.
func probeOnce(proto, addr string) error {
	deadline := time.Now().Add(probeTimeout)
	switch proto {
	case tcp:
		c, err := net.DialTimeout("tcp", addr, probeTimeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.SetDeadline(deadline)
		if _, err := c.Write([]byte("probe\n")); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != "probe\n" {
			return fmt.Errorf("echo returned %q", line)
		}
		return nil
	case udp:
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		msg := "probe " + strconv.FormatInt(time.Now().UnixNano(), 36)
		buf := make([]byte, 128)
		for time.Now().Before(deadline) {
			if _, err := c.Write([]byte(msg)); err != nil {
				return err
			}
			wait := time.Now().Add(300 * time.Millisecond)
			if wait.After(deadline) {
				wait = deadline
			}
			_ = c.SetReadDeadline(wait)
			n, err := c.Read(buf)
			if err == nil && string(buf[:n]) == msg {
				return nil
			}
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return err
			}
		}
		return fmt.Errorf("no echo within %v", probeTimeout)
	case icmp:
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		// One echo request every 200 ms until a reply; the context, not
		// ping's whole-second deadline, bounds it.
		out, err := exec.CommandContext(ctx, "ping", "-n", "-q", "-c", "1", "-i", "0.2", "-w", "2", addr).CombinedOutput()
		if ctx.Err() != nil {
			return fmt.Errorf("no ping reply within %v", probeTimeout)
		}
		if err != nil {
			return fmt.Errorf("ping: %v: %s", err, lastLine(out))
		}
		return nil
	}
	return fmt.Errorf("unknown protocol %q", proto)
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// serve starts echo services on ports ("tcp:8080,udp:8080"), on every
// address of both families, and returns a function that stops them.
func serve(ports string) (stop func(), err error) {
	var closers []io.Closer
	stop = func() {
		for _, c := range closers {
			_ = c.Close()
		}
	}
	for _, p := range strings.Split(ports, ",") {
		proto, port, _ := strings.Cut(p, ":")
		switch proto {
		case tcp:
			l, err := net.Listen("tcp", ":"+port)
			if err != nil {
				stop()
				return nil, err
			}
			closers = append(closers, l)
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						_ = c.SetDeadline(time.Now().Add(10 * time.Second))
						_, _ = io.Copy(c, c)
					}()
				}
			}()
		case udp:
			pc, err := net.ListenPacket("udp", ":"+port)
			if err != nil {
				stop()
				return nil, err
			}
			closers = append(closers, pc)
			go func() {
				buf := make([]byte, 2048)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					_, _ = pc.WriteTo(buf[:n], from)
				}
			}()
		default:
			stop()
			return nil, fmt.Errorf("bad service %q", p)
		}
	}
	return stop, nil
}

// request and response are the agent's protocol: one JSON object a line,
// requests on its standard input, responses on its standard output.
type request struct {
	ID    int64  `json:"id"`
	Proto string `json:"proto"`
	Addr  string `json:"addr"`
}

type response struct {
	ID  int64  `json:"id"`
	Err string `json:"err,omitempty"`
}

// agentMain serves the echo services of portsEnv, says "ready", then runs
// each probe it reads, concurrently, until its standard input closes.
func agentMain() int {
	stop, err := serve(os.Getenv(portsEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fwtest agent:", err)
		return 1
	}
	defer stop()
	fmt.Println("ready")
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	var wg sync.WaitGroup
	dec := json.NewDecoder(os.Stdin)
	for {
		var req request
		if err := dec.Decode(&req); err != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := response{ID: req.ID}
			if err := probeOnce(req.Proto, req.Addr); err != nil {
				resp.Err = err.Error()
			}
			mu.Lock()
			defer mu.Unlock()
			_ = enc.Encode(resp)
		}()
	}
	wg.Wait()
	return 0
}

// agent is the test's side of an agent running in another namespace.
type agent struct {
	role    string
	mu      sync.Mutex
	stdin   io.WriteCloser
	enc     *json.Encoder
	next    atomic.Int64
	waiting map[int64]chan string
	dead    error
}

// startAgent starts this test binary as an agent in namespace ns, serving
// role's echo services, and waits until it is ready; t's cleanup stops it.
func startAgent(t *testing.T, role, ns string) *agent {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, exe)
	cmd.Env = append(os.Environ(), helperEnv+"=agent", portsEnv+"="+servicePorts(role))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent in %s: %v", ns, err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	br := bufio.NewReader(stdout)
	ready := make(chan error, 1)
	go func() {
		line, err := br.ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("agent said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("agent in %s: %v", ns, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("agent in %s not ready after 10s", ns)
	}
	a := &agent{role: role, stdin: stdin, enc: json.NewEncoder(stdin), waiting: map[int64]chan string{}}
	go a.read(br)
	return a
}

// read hands each response to the probe waiting for it.
func (a *agent) read(r io.Reader) {
	dec := json.NewDecoder(r)
	for {
		var resp response
		if err := dec.Decode(&resp); err != nil {
			a.mu.Lock()
			a.dead = fmt.Errorf("agent in %s exited: %v", a.role, err)
			for id, ch := range a.waiting {
				ch <- a.dead.Error()
				delete(a.waiting, id)
			}
			a.mu.Unlock()
			return
		}
		a.mu.Lock()
		ch := a.waiting[resp.ID]
		delete(a.waiting, resp.ID)
		a.mu.Unlock()
		if ch != nil {
			ch <- resp.Err
		}
	}
}

// probe has the agent reach addr over proto and returns what it found.
func (a *agent) probe(proto, addr string) error {
	id := a.next.Add(1)
	ch := make(chan string, 1)
	a.mu.Lock()
	if a.dead != nil {
		a.mu.Unlock()
		return a.dead
	}
	a.waiting[id] = ch
	err := a.enc.Encode(request{ID: id, Proto: proto, Addr: addr})
	a.mu.Unlock()
	if err != nil {
		return fmt.Errorf("agent in %s: %v", a.role, err)
	}
	select {
	case msg := <-ch:
		if msg != "" {
			return errors.New(msg)
		}
		return nil
	case <-time.After(10 * probeTimeout):
		return fmt.Errorf("agent in %s did not answer", a.role)
	}
}
