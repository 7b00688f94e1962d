package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/internal/netlab/labtest"
)

// Helper modes of this test binary, run in the outside namespace.
const (
	helperEnv = "CORDON_NFT_HELPER" // "echo" or "dial"
	addrEnv   = "CORDON_NFT_ADDR"   // echo: listen address; dial: address to dial
	nsEnv     = "CORDON_NFT_OUTSIDE"
)

func init() {
	switch os.Getenv(helperEnv) {
	case "echo":
		os.Exit(echoHelper())
	case "dial":
		os.Exit(dialHelper())
	}
}

// echoHelper echoes every line of every connection on addrEnv.
func echoHelper() int {
	l, err := net.Listen("tcp", os.Getenv(addrEnv))
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ready")
	for {
		c, err := l.Accept()
		if err != nil {
			return 1
		}
		go io.Copy(c, c)
	}
}

// dialHelper connects to addrEnv, then for each line on stdin sends it and
// prints "echo LINE" or "error: …".
func dialHelper() int {
	c, err := net.DialTimeout("tcp", os.Getenv(addrEnv), 2*time.Second)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	r := bufio.NewReader(c)
	for in.Scan() {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := fmt.Fprintln(c, in.Text()); err != nil {
			fmt.Println("error:", err)
			continue
		}
		line, err := r.ReadString('\n')
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Println("echo", strings.TrimSpace(line))
	}
	return 0
}

// TestFlowsCutWithResets opens TCP connections both ways between the host
// and an outside peer, isolates, and expects the host's own process told
// at once (a reset when it writes), the outside peer told nothing (its
// data dropped, no reset leaves the host), and no data through. The
// flows were not in conntrack (nothing tracked in the namespace before
// isolation): the rules alone must hold them.
func TestFlowsCutWithResets(t *testing.T) {
	if labtest.IsChild(t) {
		flowsInNamespace(t)
		return
	}
	l := labtest.New(t)
	h := labtest.AddHost(t, l, "host", "198.18.0.2/24", "")
	out := labtest.AddHost(t, l, "outside", "198.18.0.3/24", "")
	labtest.RunChild(t, h, nsEnv+"="+out.NS)
}

func startHelper(t *testing.T, mode, addr string) (*exec.Cmd, *bufio.Reader, io.Writer) {
	t.Helper()
	exe, _ := os.Executable()
	cmd := exec.Command("ip", "netns", "exec", os.Getenv(nsEnv), exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, addrEnv+"="+addr)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	r := bufio.NewReader(stdout)
	if line, err := r.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("%s helper: %q, %v", mode, line, err)
	}
	return cmd, r, stdin
}

func flowsInNamespace(t *testing.T) {
	// host → outside
	startHelper(t, "echo", "198.18.0.3:8090")
	out, err := net.DialTimeout("tcp", "198.18.0.3:8090", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	outR := bufio.NewReader(out)
	// outside → host
	ln, err := net.Listen("tcp", "198.18.0.2:8091")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(c, c)
		}
	}()
	_, dialR, dialW := startHelper(t, "dial", "198.18.0.2:8091")
	send := func(line string) string {
		fmt.Fprintln(dialW, line)
		got, _ := dialR.ReadString('\n')
		return strings.TrimSpace(got)
	}
	if got := send("before"); got != "echo before" {
		t.Fatalf("outside → host before isolation: %q", got)
	}
	fmt.Fprintln(out, "before")
	out.SetDeadline(time.Now().Add(2 * time.Second))
	if got, err := outR.ReadString('\n'); err != nil || got != "before\n" {
		t.Fatalf("host → outside before isolation: %q, %v", got, err)
	}

	p := newTestPlugin(t)
	a, err := p.Isolate(bg, testPolicy(), "order-1")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("flows cut from conntrack: %d", a.FlowsCut)
	// The outside peer sends: nothing comes back, not even a reset (a
	// packet out of an isolated host).
	if got := send("after"); !strings.Contains(got, "i/o timeout") {
		t.Errorf("outside → host after isolation: %q, want a timeout", got)
	}
	// The host's process writes: its own stack gets the reset. The first
	// write may be buffered; the reset shows on the next read or write.
	out.SetDeadline(time.Now().Add(2 * time.Second))
	_, werr := fmt.Fprintln(out, "after")
	_, rerr := outR.ReadString('\n')
	if !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(rerr, syscall.ECONNRESET) {
		t.Errorf("host → outside after isolation: write %v, read %v; want a connection reset", werr, rerr)
	}
	if _, err := p.Release(bg, "order-2"); err != nil {
		t.Fatal(err)
	}
}
