package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// stats returns the 50th and 99th percentiles (nearest rank) and the
// maximum; zeros for no samples.
func (s series) stats() (p50, p99, hi time.Duration) {
	if len(s) == 0 {
		return 0, 0, 0
	}
	d := slices.Clone(s)
	slices.Sort(d)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(d))+0.999999) - 1
		return d[max(0, min(i, len(d)-1))]
	}
	return rank(0.50), rank(0.99), d[len(d)-1]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

const rowFmt = "%-58s %10s %10s %10s %8s  %s\n"

func printText(w io.Writer, r childResult) {
	fmt.Fprintf(w, "Cordon firewall plugins: isolation and drift repair on a host with a firewall of its own\n")
	fmt.Fprintf(w, "host: network namespace %s on %s, kernel %s; %s\n", r.Namespace, r.Machine, r.Kernel, strings.Join(r.Tools, ", "))
	fmt.Fprintf(w, "the host's own rules, loaded before the plugins run and left in place:\n")
	fmt.Fprintf(w, "  iptables-restore: %d IPv4 + %d IPv6 rules in the filter table (%d user chains each, jumped to from INPUT and FORWARD;\n",
		r.Loaded.V4, r.Loaded.V6, r.IPTChains)
	fmt.Fprintf(w, "    -s CIDR -p tcp --dport N -j ACCEPT, multiport, comment, udp, DROP lists; INPUT and FORWARD policy DROP)\n")
	fmt.Fprintf(w, "  nft -f: table inet %s, %d rules in %d chains (saddr/dport accepts, anonymous port sets, counters, a drop list)\n",
		hostTable, r.Loaded.Nft, r.NftChains)
	fmt.Fprintf(w, "  = %d rules of the host's own", r.Loaded.V4+r.Loaded.V6+r.Loaded.Nft)
	if r.Loaded != r.Generated {
		fmt.Fprintf(w, " (generated %d + %d + %d)", r.Generated.V4, r.Generated.V6, r.Generated.Nft)
	}
	fmt.Fprintf(w, "\n%d iterations per row; drift interval %v (agent.DefaultDriftInterval); p99 is nearest rank", r.N, r.Interval)
	if r.N < 100 {
		fmt.Fprintf(w, " (with %d samples, the maximum)", r.N)
	}
	fmt.Fprintln(w)
	for _, p := range r.Plugins {
		fmt.Fprintf(w, "\ncordon-plugin-%s %s (%s): start + Info %s; %d rules of its own once isolated; host's own rules intact after release: %s\n",
			p.Name, p.Version, strings.Join(p.Capabilities, ", "), ms(p.Start), p.Rules, yesNo(p.HostIntact))
		fmt.Fprintf(w, rowFmt, "", "p50", "p99", "max", "target", "met (p99)")
		row(w, "isolate: Isolate call -> Status verified", p.Isolate, targetIsolate)
		row(w, "  Isolate (apply + read back)", p.IsolateApply, 0)
		row(w, "  Status (verify: isolated, same digest)", p.IsolateVerify, 0)
		row(w, "release: Release call", p.Release, 0)
		for _, rr := range p.Repairs {
			fmt.Fprintf(w, "repair after %q:\n    %s", rr.Wipe, rr.Note)
			if rr.Restores > 0 {
				fmt.Fprintf(w, " (put back between iterations, not counted)")
			}
			fmt.Fprintln(w)
			row(w, "  wipe -> rules verified back", rr.Total, targetRepair)
			row(w, "    detection: wipe -> Status reports drift", rr.Detect, 0)
			row(w, "      waiting for the poll (random phase)", rr.Wait, 0)
			row(w, "      Status call that saw it", rr.Poll, 0)
			row(w, "    repair: Isolate", rr.Repair, 0)
			row(w, "    verify: Status", rr.Verify, 0)
			row(w, "  (the wipe command itself, not counted)", rr.WipeCmd, 0)
			if rr.PollErrors > 0 || rr.Redigest > 0 {
				fmt.Fprintf(w, "    %d Status calls failed (the agent retries at the next tick); %d repairs changed the digest\n", rr.PollErrors, rr.Redigest)
			}
			if rr.Failed != "" {
				fmt.Fprintf(w, "    NOT REPAIRED after %d of %d iterations: %s\n", len(rr.Total), r.N, rr.Failed)
			}
		}
	}
}

func row(w io.Writer, name string, s series, target time.Duration) {
	p50, p99, hi := s.stats()
	t, met := "", ""
	if target > 0 {
		t = fmt.Sprintf("%d ms", target.Milliseconds())
		if target%time.Second == 0 {
			t = fmt.Sprintf("%d s", target/time.Second)
		}
		met = yesNo(len(s) > 0 && p99 < target)
		if met == "no" && len(s) > 0 {
			met += fmt.Sprintf(" (+%s)", ms(p99-target))
		}
	}
	fmt.Fprintf(w, rowFmt, name, ms(p50), ms(p99), ms(hi), t, met)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// summary is a series in the JSON report.
type summary struct {
	P50MS     float64         `json:"p50_ms"`
	P99MS     float64         `json:"p99_ms"`
	MaxMS     float64         `json:"max_ms"`
	TargetMS  float64         `json:"target_ms,omitempty"`
	Met       *bool           `json:"met,omitempty"`
	SamplesNS []time.Duration `json:"samples_ns"`
}

func summarize(s series, target time.Duration) summary {
	p50, p99, hi := s.stats()
	f := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	out := summary{P50MS: f(p50), P99MS: f(p99), MaxMS: f(hi), SamplesNS: s}
	if target > 0 {
		met := len(s) > 0 && p99 < target
		out.TargetMS, out.Met = f(target), &met
	}
	return out
}

func jsonReport(r childResult) any {
	type repair struct {
		Wipe       string  `json:"wipe"`
		Note       string  `json:"note"`
		Total      summary `json:"wipe_to_verified"`
		Detect     summary `json:"detect"`
		Wait       summary `json:"detect_wait"`
		Poll       summary `json:"detect_status"`
		Repair     summary `json:"repair_isolate"`
		Verify     summary `json:"verify_status"`
		WipeCmd    summary `json:"wipe_command"`
		PollErrors int     `json:"poll_errors"`
		Failed     string  `json:"failed,omitempty"`
	}
	type plugin struct {
		Name          string   `json:"name"`
		Version       string   `json:"version"`
		Capabilities  []string `json:"capabilities"`
		StartMS       float64  `json:"start_ms"`
		Rules         int      `json:"rules"`
		HostIntact    bool     `json:"host_intact"`
		Isolate       summary  `json:"isolate_to_verified"`
		IsolateApply  summary  `json:"isolate_call"`
		IsolateVerify summary  `json:"isolate_verify_status"`
		Release       summary  `json:"release"`
		Repairs       []repair `json:"repairs"`
	}
	out := struct {
		Namespace  string   `json:"namespace"`
		Machine    string   `json:"machine"`
		Kernel     string   `json:"kernel"`
		Tools      []string `json:"tools"`
		Loaded     loaded   `json:"host_rules"`
		N          int      `json:"iterations"`
		IntervalMS float64  `json:"drift_interval_ms"`
		Plugins    []plugin `json:"plugins"`
	}{Namespace: r.Namespace, Machine: r.Machine, Kernel: r.Kernel, Tools: r.Tools, Loaded: r.Loaded, N: r.N,
		IntervalMS: float64(r.Interval.Microseconds()) / 1000}
	for _, p := range r.Plugins {
		pj := plugin{Name: p.Name, Version: p.Version, Capabilities: p.Capabilities, StartMS: float64(p.Start.Microseconds()) / 1000,
			Rules: p.Rules, HostIntact: p.HostIntact, Isolate: summarize(p.Isolate, targetIsolate),
			IsolateApply: summarize(p.IsolateApply, 0), IsolateVerify: summarize(p.IsolateVerify, 0), Release: summarize(p.Release, 0)}
		for _, rr := range p.Repairs {
			pj.Repairs = append(pj.Repairs, repair{Wipe: rr.Wipe, Note: rr.Note, Total: summarize(rr.Total, targetRepair),
				Detect: summarize(rr.Detect, 0), Wait: summarize(rr.Wait, 0), Poll: summarize(rr.Poll, 0),
				Repair: summarize(rr.Repair, 0), Verify: summarize(rr.Verify, 0), WipeCmd: summarize(rr.WipeCmd, 0),
				PollErrors: rr.PollErrors, Failed: rr.Failed})
		}
		out.Plugins = append(out.Plugins, pj)
	}
	return out
}
