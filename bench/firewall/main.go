// Command firewall measures Cordon's firewall plugins on a host that has a
// firewall of its own: for cordon-plugin-iptables and
// cordon-plugin-nftables, the time from the Isolate call to the rules
// verified (Status isolated, same digest), and from a wipe of the ruleset
// behind the agent's back to the rules verified back by the agent's drift
// loop (a Status every agent.DefaultDriftInterval, Isolate when they
// drifted). Targets: under 200 ms for isolation and under 1 s for repair.
// Run it as root with 'make bench'.
//
// It builds both plugins into a temporary directory and makes a network
// namespace, where it loads the host's own rules (iptables-restore, nft -f).
// The measuring runs in a copy of this program started inside the
// namespace, since firewall.Launch starts the plugin as a child of its
// caller. Everything it starts runs in the namespace and is killed, and the
// namespace removed, when it ends; nothing touches this machine's own
// firewall.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cordon-ir/cordon/agent"
	"github.com/cordon-ir/cordon/internal/netlab"
)

// Targets from the issue.
const (
	targetIsolate = 200 * time.Millisecond
	targetRepair  = time.Second
)

var pluginNames = []string{"iptables", "nftables"}

func main() {
	var o childOpts
	child := flag.Bool("child", false, "internal: measure inside the namespace")
	flag.IntVar(&o.n, "n", 20, "iterations of each measurement")
	flag.IntVar(&o.iptRules, "iptables-rules", 5000, "the host's own iptables rules, half IPv4, half IPv6")
	flag.IntVar(&o.nftRules, "nft-rules", 3000, "rules in the host's own nftables table")
	flag.DurationVar(&o.interval, "interval", agent.DefaultDriftInterval, "the agent's drift interval")
	plugins := flag.String("plugins", strings.Join(pluginNames, ","), "plugins to measure")
	format := flag.String("o", "text", "output: text or json")
	flag.StringVar(&o.pluginDir, "plugin-dir", "", "internal: where the plugins are")
	flag.StringVar(&o.socketDir, "socket-dir", "", "internal: where their sockets go")
	flag.Parse()
	o.plugins = strings.Split(*plugins, ",")
	var err error
	if *child {
		err = runChild(o)
	} else {
		err = run(o, *format)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(o childOpts, format string) error {
	if format != "text" && format != "json" {
		return fmt.Errorf("-o %s: want text or json", format)
	}
	if o.n < 1 {
		return errors.New("-n must be at least 1")
	}
	if err := netlab.Available(); err != nil {
		return fmt.Errorf("%w (run as root: it works in a namespace it makes)", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	work, err := os.MkdirTemp("", "cordon-bench-fw-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	o.pluginDir, o.socketDir = filepath.Join(work, "bin"), filepath.Join(work, "run")
	if err := os.Mkdir(o.socketDir, 0o700); err != nil {
		return err
	}
	if err := build(o.pluginDir, o.plugins); err != nil {
		return err
	}
	lab, err := netlab.New()
	if err != nil {
		return err
	}
	defer lab.Close()
	h, err := lab.AddHost("host", netip.MustParsePrefix("198.18.0.10/24"), netip.MustParsePrefix("fd00:c0de::10/64"))
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := h.Command(exe, "--child", "-plugin-dir", o.pluginDir, "-socket-dir", o.socketDir,
		"-plugins", strings.Join(o.plugins, ","), "-n", fmt.Sprint(o.n), "-interval", o.interval.String(),
		"-iptables-rules", fmt.Sprint(o.iptRules), "-nft-rules", fmt.Sprint(o.nftRules))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := h.Start(cmd); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		// Close stops the copy (its process group) and removes the
		// namespace; the plugins die with their parent.
		lab.Close()
		<-done
		return errors.New("interrupted")
	}
	if err != nil {
		return fmt.Errorf("inside namespace %s: %w", h.NS, err)
	}
	var res childResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return fmt.Errorf("inside namespace %s: output %q: %w", h.NS, out.String(), err)
	}
	res.Namespace = h.NS
	res.Machine, _ = os.Hostname()
	if err := lab.Close(); err != nil {
		return err
	}
	if format == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(jsonReport(res))
	}
	printText(os.Stdout, res)
	return nil
}

// build builds the plugins into dir, static as 'make build' does.
func build(dir string, plugins []string) error {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	for _, p := range plugins {
		cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, "cordon-plugin-"+p), "./plugins/"+p)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build ./plugins/%s: %w\n%s", p, err, b)
		}
	}
	return nil
}

// childResult is what the copy inside the namespace reports.
type childResult struct {
	Namespace string         `json:"namespace"`
	Machine   string         `json:"machine"`
	Kernel    string         `json:"kernel"`
	Tools     []string       `json:"tools"`
	Generated loaded         `json:"generated"`
	Loaded    loaded         `json:"loaded"`
	IPTChains int            `json:"iptables_user_chains"`
	NftChains int            `json:"nft_chains"`
	N         int            `json:"iterations"`
	Interval  time.Duration  `json:"interval_ns"`
	Plugins   []pluginResult `json:"plugins"`
}

// runChild runs inside the namespace: it loads the host's rules, measures
// each plugin and prints the results as JSON.
func runChild(o childOpts) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h := genHostRules(o.iptRules, o.nftRules)
	if err := h.load(); err != nil {
		return err
	}
	l, err := countLoaded()
	if err != nil {
		return err
	}
	baseline, err := hostDump()
	if err != nil {
		return err
	}
	res := childResult{Generated: loaded{V4: h.n4, V6: h.n6, Nft: h.nNft}, Loaded: l,
		IPTChains: h.iptChains, NftChains: h.nftChain + 2, N: o.n, Interval: o.interval}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		res.Kernel = strings.TrimSpace(string(b))
	}
	for _, t := range [][]string{{"iptables", "--version"}, {"nft", "--version"}} {
		if v, err := output(t[0], t[1:]...); err == nil {
			res.Tools = append(res.Tools, strings.TrimSpace(v))
		}
	}
	st, _ := os.Stderr.Stat()
	tty := st != nil && st.Mode()&os.ModeCharDevice != 0
	progress := func(s string) {
		if tty {
			fmt.Fprintf(os.Stderr, "\r\033[K%s", s)
		}
	}
	for _, name := range o.plugins {
		r, err := benchPlugin(ctx, o, name, h, baseline, progress)
		if err != nil {
			progress("")
			return err
		}
		res.Plugins = append(res.Plugins, r)
	}
	progress("")
	return json.NewEncoder(os.Stdout).Encode(res)
}
