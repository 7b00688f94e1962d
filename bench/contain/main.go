// Command contain measures Cordon's headline figure, time to contain: it
// runs isolate/release cycles against an agent with the real iptables plugin
// in a network namespace and prints percentiles of "order issued →
// isolation verified" (controller clock) and of each step the agent reports
// (snapshot, apply, verify). Run it as root with 'make bench'.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/internal/netlab"
	"github.com/cordon-ir/cordon/internal/stage"
)

func main() {
	bin := flag.String("bin", "bin", "unused: the benchmark builds what it runs")
	cycles := flag.Int("cycles", 20, "isolate/release cycles")
	flag.Parse()
	if err := netlab.Available(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v (run as root: it works in namespaces it makes)\n", err)
		os.Exit(1)
	}
	if err := run(*bin, *cycles); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(bin string, cycles int) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "cordon-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	// Build everything the scene runs, netprobe included, into the work
	// directory, so bin/ keeps only what 'make build' puts there.
	bin = filepath.Join(work, "bin")
	if err := stage.Build(".", bin); err != nil {
		return err
	}
	s, err := stage.New(bin, work)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.StartController(); err != nil {
		return err
	}
	// A host with a firewall of its own and a service, as in the demo.
	if err := stage.Restore(s.Host, "iptables-restore", stage.HostRulesV4); err != nil {
		return err
	}
	if err := stage.Restore(s.Host, "ip6tables-restore", stage.HostRulesV6); err != nil {
		return err
	}
	if _, _, err := s.Serve(s.Host, "8080"); err != nil {
		return err
	}
	if err := s.StartAgent(stage.AgentOptions{Token: s.Token}); err != nil {
		return err
	}
	if err := s.WaitOnline(20 * time.Second); err != nil {
		return err
	}
	st, _ := os.Stderr.Stat()
	tty := st != nil && st.Mode()&os.ModeCharDevice != 0
	var contain, snap, apply, verify, release, cli []time.Duration
	var size int64
	for i := 0; i < cycles; i++ {
		t0 := time.Now()
		o, err := order(s, "isolate", "host", stage.HostName, "--reason", fmt.Sprintf("bench cycle %d", i+1), "--wait", "-o", "json")
		if err != nil {
			return err
		}
		cli = append(cli, time.Since(t0))
		contain = append(contain, o.DoneAt.Sub(o.CreatedAt))
		snap = append(snap, time.Duration(o.SnapshotNS))
		apply = append(apply, time.Duration(o.ApplyNS))
		verify = append(verify, time.Duration(o.VerifyNS))
		r, err := order(s, "release", "host", stage.HostName, "--reason", "bench", "--wait", "-o", "json")
		if err != nil {
			return err
		}
		release = append(release, r.DoneAt.Sub(r.CreatedAt))
		if size == 0 {
			var snaps []api.Snapshot
			out, _, _ := s.Cordon("snapshots", "-o", "json")
			if json.Unmarshal([]byte(out), &snaps) == nil && len(snaps) > 0 {
				size = snaps[0].Size
			}
		}
		if tty {
			fmt.Fprintf(os.Stderr, "\rcycle %d/%d", i+1, cycles)
		}
	}
	if tty {
		fmt.Fprintln(os.Stderr)
	}
	host, _ := os.Hostname()
	fmt.Printf("Cordon time to contain: %d isolate/release cycles, iptables plugin, host in a network namespace on %s\n", cycles, host)
	fmt.Printf("%-40s %9s %9s %9s %9s\n", "", "p50", "p99", "min", "max")
	row := func(name string, d []time.Duration) {
		p50, p99, lo, hi := stats(d)
		fmt.Printf("%-40s %9s %9s %9s %9s\n", name, ms(p50), ms(p99), ms(lo), ms(hi))
	}
	row("order issued -> isolation verified", contain)
	row("  snapshot step (agent)", snap)
	row("  apply rules (plugin Isolate)", apply)
	row("  verify rules (plugin Status)", verify)
	row("isolate --wait, CLI wall time", cli)
	row("order issued -> release verified", release)
	fmt.Printf("evidence bundle: %d bytes; target: p50 of issued -> verified <= 500 ms (with %d samples, p99 is the maximum)\n", size, cycles)
	return nil
}

func order(s *stage.Stage, args ...string) (api.Order, error) {
	var o api.Order
	out, errOut, code := s.Cordon(args...)
	if code != 0 {
		return o, fmt.Errorf("cordon %s: exit %d: %s%s", args[0], code, out, errOut)
	}
	if err := json.Unmarshal([]byte(out), &o); err != nil {
		return o, err
	}
	if o.State != "done" {
		return o, fmt.Errorf("%s order ended %s: %s", args[0], o.State, o.Error)
	}
	return o, nil
}

// stats returns the 50th and 99th percentiles (nearest rank), min and max.
func stats(d []time.Duration) (p50, p99, lo, hi time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return rank(0.50), rank(0.99), s[0], s[len(s)-1]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
