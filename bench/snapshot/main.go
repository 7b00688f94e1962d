// Command snapshot measures the evidence snapshot on a busy host: inside a
// network namespace it makes, it starts 10,000 processes and holds 20,000
// TCP connections (10,000 connected pairs on loopback, held by two helper
// processes), then prints, in one
// run, the wall time of snapshot.Take, the peak RSS of the process taking
// it (VmHWM), the bundle's size, and as the yardstick the wall time of
// "ps -eo pid,ppid,user,lstart,args" plus "ss -tanup" on the same host and
// in the same namespace. Run it as root with 'make bench'.
//
// Each Take runs in a fresh copy of this program started inside the
// namespace, so its peak RSS is the snapshot's alone. Everything it
// starts runs in the namespace and is killed, and the namespace removed,
// when it ends.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cordon-ir/cordon/internal/netlab"
	"github.com/cordon-ir/cordon/pkg/snapshot"
	"golang.org/x/crypto/ssh"
)

// modeEnv selects what a copy of this program started by the benchmark
// does.
const modeEnv = "CORDON_BENCH_SNAPSHOT_MODE"

// Targets from issue 3.
const (
	targetRatio = 1.5
	targetRSSMB = 150
)

func main() {
	switch os.Getenv(modeEnv) {
	case "server":
		exitOn(holdServer(atoiEnv("CORDON_BENCH_CONNS")))
	case "client":
		exitOn(holdClient(atoiEnv("CORDON_BENCH_CONNS"), atoiEnv("CORDON_BENCH_PORT")))
	case "procs":
		exitOn(holdProcs(atoiEnv("CORDON_BENCH_PROCS")))
	case "take":
		exitOn(take(os.Getenv("CORDON_BENCH_PROFILE")))
	case "yardstick":
		exitOn(yardstick())
	}
	procs := flag.Int("procs", 10000, "processes to start")
	pairs := flag.Int("pairs", 10000, "connected TCP pairs to hold (two sockets each)")
	runs := flag.Int("runs", 5, "snapshots (and yardstick runs) to time; the median is reported")
	profile := flag.String("cpuprofile", "", "write a CPU profile of the last Take to this file")
	track := flag.Bool("conntrack", false, "track the connections (an iptables conntrack rule in the namespace), so that conntrack.jsonl has them too")
	flag.Parse()
	if err := netlab.Available(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v (run as root: it works in a namespace it makes)\n", err)
		os.Exit(1)
	}
	if err := run(*procs, *pairs, *runs, *profile, *track); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func atoiEnv(k string) int {
	n, _ := strconv.Atoi(os.Getenv(k))
	return n
}

// takeResult is what a "take" child prints.
type takeResult struct {
	TookNS      int64            `json:"took_ns"`
	VmHWMKB     int64            `json:"vmhwm_kb"`
	BundleBytes int              `json:"bundle_bytes"`
	Records     map[string]int64 `json:"records"`
	Errors      []string         `json:"errors"`
}

func run(procs, pairs, runs int, profile string, track bool) error {
	lab, err := netlab.New()
	if err != nil {
		return err
	}
	var ns string
	cleanup := func() {
		// Kill what runs in the namespace and wait until it is gone, so
		// that nothing outlives the benchmark.
		for i := 0; ns != "" && i < 100; i++ {
			out, _ := exec.Command("ip", "netns", "pids", ns).Output()
			pids := strings.Fields(string(out))
			if len(pids) == 0 {
				break
			}
			for _, p := range pids {
				if pid, err := strconv.Atoi(p); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err := lab.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: cleanup:", err)
		}
	}
	defer cleanup()
	// A closed stdout (| head) must not kill the benchmark before it
	// cleans up: writes fail instead.
	signal.Ignore(syscall.SIGPIPE)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		cleanup()
		os.Exit(130)
	}()
	h, err := lab.AddHost("busy", netip.MustParsePrefix("198.18.0.2/24"), netip.MustParsePrefix("fd00:c0de::2/64"))
	if err != nil {
		return err
	}
	ns = h.NS
	self, err := os.Executable()
	if err != nil {
		return err
	}
	start := func(mode string, env ...string) (*exec.Cmd, *bufio.Reader, error) {
		cmd := h.Command(self)
		cmd.Env = append(append(os.Environ(), modeEnv+"="+mode), env...)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, nil, err
		}
		if err := h.Start(cmd); err != nil {
			return nil, nil, err
		}
		return cmd, bufio.NewReader(out), nil
	}
	waitReady := func(what string, r *bufio.Reader) error {
		line, err := r.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != "ready" {
			return fmt.Errorf("%s helper: %q %v", what, line, err)
		}
		return nil
	}

	if track {
		if _, err := h.Output("iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT"); err != nil {
			return err
		}
	}
	fmt.Printf("Setting up namespace %s: %d processes, %d TCP connections (%d loopback pairs)…\n", h.NS, procs, 2*pairs, pairs)
	t0 := time.Now()
	_, sr, err := start("server", "CORDON_BENCH_CONNS="+strconv.Itoa(pairs))
	if err != nil {
		return err
	}
	portLine, err := sr.ReadString('\n')
	if err != nil {
		return fmt.Errorf("server helper: %w", err)
	}
	_, cr, err := start("client", "CORDON_BENCH_CONNS="+strconv.Itoa(pairs), "CORDON_BENCH_PORT="+strings.TrimSpace(portLine))
	if err != nil {
		return err
	}
	if err := waitReady("client", cr); err != nil {
		return err
	}
	if err := waitReady("server", sr); err != nil {
		return err
	}
	_, pr, err := start("procs", "CORDON_BENCH_PROCS="+strconv.Itoa(procs))
	if err != nil {
		return err
	}
	if err := waitReady("processes", pr); err != nil {
		return err
	}
	nprocs := countProcs()
	fmt.Printf("Ready in %v: %d processes on the host, %s; %d CPUs\n\n", time.Since(t0).Round(time.Millisecond), nprocs, sockstat(h), runtime.NumCPU())

	var yard, ps, ss []time.Duration
	for range runs {
		cmd := h.Command(self)
		cmd.Env = append(os.Environ(), modeEnv+"=yardstick")
		b, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("yardstick: %w", err)
		}
		var y struct{ PS, SS int64 }
		if err := json.Unmarshal(b, &y); err != nil {
			return fmt.Errorf("yardstick said %q: %w", b, err)
		}
		ps, ss = append(ps, time.Duration(y.PS)), append(ss, time.Duration(y.SS))
		yard = append(yard, time.Duration(y.PS+y.SS))
	}

	var takes []time.Duration
	var rss []int64
	var last takeResult
	for i := range runs {
		cmd := h.Command(self)
		cmd.Env = append(os.Environ(), modeEnv+"=take")
		if profile != "" && i == runs-1 {
			cmd.Env = append(cmd.Env, "CORDON_BENCH_PROFILE="+profile)
		}
		cmd.Stderr = os.Stderr
		b, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("take: %w", err)
		}
		if err := json.Unmarshal(b, &last); err != nil {
			return fmt.Errorf("take said %q: %w", b, err)
		}
		takes = append(takes, time.Duration(last.TookNS))
		rss = append(rss, last.VmHWMKB)
	}

	// The scene must be what it claims, or the figures mean nothing.
	if last.Records["connections"] < int64(2*pairs) || last.Records["processes"] < int64(procs) {
		return fmt.Errorf("the snapshot saw %d connections and %d processes, want at least %d and %d: the helpers died?",
			last.Records["connections"], last.Records["processes"], 2*pairs, procs)
	}
	my, mt := median(yard), median(takes)
	ratio := float64(mt) / float64(my)
	peak := slices.Max(rss)
	fmt.Printf("Yardstick, ps -eo pid,ppid,user,lstart,args + ss -tanup (median of %d): %v (ps %v, ss %v)\n", runs, my.Round(time.Millisecond), median(ps).Round(time.Millisecond), median(ss).Round(time.Millisecond))
	fmt.Printf("snapshot.Take (median of %d):                                        %v  (runs: %v; the first is cold)\n", runs, mt.Round(time.Millisecond), roundAll(takes))
	fmt.Printf("Take / yardstick:                                                    %.2f  (target ≤ %.1f: %s; first, cold run: %.2f)\n", ratio, targetRatio, verdict(ratio <= targetRatio), float64(takes[0])/float64(my))
	fmt.Printf("Peak RSS of the snapshotting process (VmHWM, max of %d):              %.1f MB  (target < %d MB: %s)\n", runs, float64(peak)/1024, targetRSSMB, verdict(float64(peak)/1024 < targetRSSMB))
	fmt.Printf("Bundle size:                                                         %.2f MB\n", float64(last.BundleBytes)/(1<<20))
	var names []string
	for n := range last.Records {
		names = append(names, n)
	}
	slices.Sort(names)
	fmt.Print("Records:")
	for _, n := range names {
		fmt.Printf(" %s %d", n, last.Records[n])
	}
	fmt.Println()
	if len(last.Errors) > 0 {
		fmt.Printf("Collection errors recorded (%d):\n", len(last.Errors))
		for _, e := range last.Errors[:min(len(last.Errors), 10)] {
			fmt.Println("  " + e)
		}
	}
	if profile != "" {
		fmt.Printf("CPU profile of the last Take: %s (go tool pprof %s)\n", profile, profile)
	}
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func roundAll(d []time.Duration) []time.Duration {
	out := make([]time.Duration, len(d))
	for i, x := range d {
		out[i] = x.Round(time.Millisecond)
	}
	return out
}

func countProcs() int {
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			n++
		}
	}
	return n
}

func sockstat(h *netlab.Host) string {
	out, err := h.Output("cat", "/proc/net/sockstat")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "TCP:") {
			return "sockstat " + strings.TrimSpace(l)
		}
	}
	return ""
}

// raiseNoFile raises RLIMIT_NOFILE to hold n descriptors, the hard limit
// too when it is lower and the process may (CAP_SYS_RESOURCE).
func raiseNoFile(n uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= n {
		return nil
	}
	want := syscall.Rlimit{Cur: n, Max: max(n, lim.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE to %d (hard limit %d): %w", n, lim.Max, err)
	}
	return nil
}

// holdServer listens on loopback, prints its port, accepts n
// connections, says "ready", and holds them until killed. With
// holdClient, which dials them, it makes n connected pairs: two helpers,
// so that each holds n descriptors, within a hard RLIMIT_NOFILE that
// root without CAP_SYS_RESOURCE cannot raise.
func holdServer(n int) error {
	if err := raiseNoFile(uint64(n + 64)); err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	held := make([]net.Conn, 0, n)
	for range n {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		held = append(held, c)
	}
	fmt.Println("ready")
	return holdForever()
}

// holdClient dials n connections to port on loopback, says "ready", and
// holds them until killed.
func holdClient(n, port int) error {
	if err := raiseNoFile(uint64(n + 64)); err != nil {
		return err
	}
	held := make([]net.Conn, 0, n)
	for range n {
		c, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			return err
		}
		held = append(held, c)
	}
	fmt.Println("ready")
	return holdForever()
}

// holdProcs starts n sleep processes, says "ready", and waits; they die
// with it (PR_SET_PDEATHSIG) or with the namespace.
func holdProcs(n int) error {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		return err
	}
	runtime.LockOSThread() // the children's parent-death signal follows this thread
	for i := range n {
		cmd := exec.Command(sleep, "86400")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("process %d: %w", i, err)
		}
		// Not waited for (they outlive the benchmark's measurements);
		// releasing closes the pidfd os/exec holds for each.
		cmd.Process.Release()
	}
	fmt.Println("ready")
	return holdForever()
}

// yardstick times ps and ss as an administrator would run them, their
// output read and discarded.
func yardstick() error {
	timeIt := func(name string, args ...string) (time.Duration, error) {
		cmd := exec.Command(name, args...)
		cmd.Stdout = io.Discard
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		t := time.Now()
		if err := cmd.Run(); err != nil {
			return 0, fmt.Errorf("%s: %w: %s", name, err, stderr.String())
		}
		return time.Since(t), nil
	}
	ps, err := timeIt("ps", "-eo", "pid,ppid,user,lstart,args")
	if err != nil {
		return err
	}
	ss, err := timeIt("ss", "-tanup")
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(struct{ PS, SS int64 }{ps.Nanoseconds(), ss.Nanoseconds()})
}

// take runs one snapshot and prints a takeResult.
func take(profile string) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return err
	}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t := time.Now()
	b, err := snapshot.Take(ctx, snapshot.Request{SnapshotID: "bench", HostName: "busy", Signer: signer})
	took := time.Since(t)
	if err != nil {
		return err
	}
	res := takeResult{TookNS: took.Nanoseconds(), BundleBytes: len(b.Data), Records: map[string]int64{}}
	for _, a := range b.Manifest.Artifacts {
		if a.Records > 0 || strings.HasPrefix(a.Path, "artifacts/") {
			res.Records[a.Name] = a.Records
		}
		for _, e := range a.Errors {
			res.Errors = append(res.Errors, a.Name+": "+e)
		}
	}
	res.VmHWMKB, err = vmHWM()
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// vmHWM reads the process's peak resident set size, in KiB, from
// /proc/self/status.
func vmHWM() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, errors.New("no VmHWM in /proc/self/status")
}

// holdForever blocks until the process is killed. (A bare select{} would
// be a deadlock to the runtime when nothing else can run.)
func holdForever() error {
	for {
		time.Sleep(time.Hour)
	}
}
