package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// callTimeout bounds each plugin call, as the agent's plugin timeout does.
const callTimeout = 30 * time.Second

// benchPolicy is the policy isolated with: a controller in each family and
// an allowlist entry in each.
var benchPolicy = policy.Policy{
	Controllers: []policy.Endpoint{
		{Addr: netip.MustParseAddr("198.18.0.1"), Port: 7443},
		{Addr: netip.MustParseAddr("fd00:c0de::1"), Port: 7443},
	},
	Allow: []netip.Prefix{netip.MustParsePrefix("198.18.0.4/30"), netip.MustParsePrefix("fd00:c0de::4/126")},
}

// series is one measured duration per iteration.
type series []time.Duration

// pluginResult is what the child measured for one plugin.
type pluginResult struct {
	Name         string   `json:"name"`
	Version      string   `json:"version"`
	Capabilities []string `json:"capabilities"`
	// Start is firewall.Launch plus the first Info call.
	Start time.Duration `json:"start_ns"`
	// Rules is how many rules of its own Status lists once isolated.
	Rules int `json:"rules"`

	Isolate       series `json:"isolate_ns"`        // Isolate call -> Status verified
	IsolateApply  series `json:"isolate_apply_ns"`  // the Isolate call
	IsolateVerify series `json:"isolate_verify_ns"` // the Status call after it
	Release       series `json:"release_ns"`

	Repairs []repairResult `json:"repairs"`
	// HostIntact says whether the host's own rules were as loaded after
	// the last Release.
	HostIntact bool `json:"host_intact"`
}

// repairResult is the drift repair measured after one kind of wipe.
type repairResult struct {
	Wipe     string `json:"wipe"`
	Note     string `json:"note"`
	WipeCmd  series `json:"wipe_cmd_ns"`  // the wipe command(s) themselves
	Total    series `json:"total_ns"`     // wipe done -> Status verified
	Detect   series `json:"detect_ns"`    // wipe done -> Status reported the drift
	Wait     series `json:"wait_ns"`      // of Detect: waiting for the poll
	Poll     series `json:"poll_ns"`      // of Detect: the Status call that saw it
	Repair   series `json:"repair_ns"`    // the Isolate call
	Verify   series `json:"verify_ns"`    // the Status call after it
	Polls    int    `json:"extra_polls"`  // polls that found the rules still intact
	Restores int    `json:"restores"`     // host reloads between iterations (not counted)
	Redigest int    `json:"digest_diffs"` // repairs whose digest differed (must be 0)
	// PollErrors counts Status calls that failed; the agent logs those
	// and tries again at the next tick.
	PollErrors int `json:"poll_errors"`
	// Failed says why the rules were not back within giveUp, if so; the
	// iterations stop there.
	Failed string `json:"failed,omitempty"`
}

// giveUp is how long after a wipe the benchmark waits for the repair.
const giveUp = 10 * time.Second

// errNotRepaired marks a wipe that the drift loop did not repair in time.
var errNotRepaired = errors.New("not repaired")

// wipe is one way the rules get wiped behind the agent's back.
type wipe struct {
	name, note string
	run        func() error
	// keepsHost: the host's own rules survive it; otherwise they are
	// reloaded before the next iteration, and that is not counted.
	keepsHost bool
}

func wipesFor(plugin string, h hostRules) []wipe {
	flushRuleset := wipe{name: "nft flush ruleset",
		note: "removes every table: Cordon's, the host's own nftables table and its iptables(-nft) rules",
		run:  func() error { return runIn("", "nft", "flush", "ruleset") }}
	switch plugin {
	case "iptables":
		return []wipe{
			{name: "iptables -F; ip6tables -F",
				note: "flushes every chain of the filter table, the host's own rules included",
				run: func() error {
					return errors.Join(runIn("", "iptables", "-w", "-F"), runIn("", "ip6tables", "-w", "-F"))
				}},
			{name: "host firewall reload: iptables-restore + ip6tables-restore of its own rules",
				note: "the host's own filter tables replace those with Cordon's chains; the host's rules stay in place",
				run:  func() error { return h.loadParts(true, false) }, keepsHost: true},
			flushRuleset,
		}
	case "nftables":
		return []wipe{
			{name: "nft delete table inet cordon", note: "the host's own rules stay in place",
				run: func() error { return runIn("", "nft", "delete", "table", "inet", "cordon") }, keepsHost: true},
			flushRuleset,
		}
	}
	return nil
}

// childOpts are what the parent passes to the copy inside the namespace.
type childOpts struct {
	pluginDir, socketDir string
	plugins              []string
	n                    int
	interval             time.Duration
	iptRules, nftRules   int
}

// syncBuf collects the plugin's log; safe for concurrent use.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.b.Bytes()
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// benchPlugin measures one plugin, started here, inside the namespace.
func benchPlugin(ctx context.Context, o childOpts, name string, h hostRules, baseline string, progress func(string)) (pluginResult, error) {
	r := pluginResult{Name: name}
	logs := &syncBuf{}
	t0 := time.Now()
	c, err := firewall.Launch(firewall.LaunchConfig{Dir: o.pluginDir, Name: name, SocketDir: o.socketDir, Stderr: logs})
	if err != nil {
		return r, err
	}
	defer c.Close()
	info, err := call(ctx, func(ctx context.Context) (firewall.Info, error) { return c.Info(ctx) })
	if err != nil {
		return r, fmt.Errorf("info: %w", err)
	}
	r.Start = time.Since(t0)
	r.Version, r.Capabilities = info.Version, info.Capabilities
	err = measure(ctx, o, c, &r, h, baseline, progress)
	if err != nil {
		err = fmt.Errorf("%s plugin: %w\nplugin log (tail):\n%s", name, err, logs.tail(4000))
	}
	return r, err
}

func measure(ctx context.Context, o childOpts, c *firewall.Client, r *pluginResult, h hostRules, baseline string, progress func(string)) error {
	// Isolation from a released state, then Release, N times.
	var digest string
	for i := range o.n {
		progress(fmt.Sprintf("%s: isolate %d/%d", r.Name, i+1, o.n))
		id := fmt.Sprintf("bench-isolate-%d", i+1)
		t0 := time.Now()
		a, err := call(ctx, func(ctx context.Context) (firewall.Applied, error) { return c.Isolate(ctx, benchPolicy, id) })
		if err != nil {
			return err
		}
		t1 := time.Now()
		st, err := call(ctx, func(ctx context.Context) (firewall.Status, error) { return c.Status(ctx) })
		if err != nil {
			return err
		}
		t2 := time.Now()
		if !st.Isolated || st.Digest != a.Digest {
			return fmt.Errorf("after Isolate, Status says isolated=%v digest %s (Isolate returned %s): %s", st.Isolated, st.Digest, a.Digest, st.Partial)
		}
		if digest != "" && a.Digest != digest {
			return fmt.Errorf("the same policy gave digest %s, then %s", digest, a.Digest)
		}
		digest, r.Rules = a.Digest, len(st.Rules)
		r.Isolate = append(r.Isolate, t2.Sub(t0))
		r.IsolateApply = append(r.IsolateApply, t1.Sub(t0))
		r.IsolateVerify = append(r.IsolateVerify, t2.Sub(t1))
		t3 := time.Now()
		if _, err := call(ctx, func(ctx context.Context) (int, error) { return c.Release(ctx, id) }); err != nil {
			return err
		}
		r.Release = append(r.Release, time.Since(t3))
		if st, err := c.Status(ctx); err != nil || len(st.Rules) > 0 {
			return fmt.Errorf("after Release, Status lists %d rules (%v)", len(st.Rules), err)
		}
	}

	// Drift repair: isolated, wipe, then the agent's loop.
	if _, err := call(ctx, func(ctx context.Context) (firewall.Applied, error) {
		return c.Isolate(ctx, benchPolicy, "bench-repair")
	}); err != nil {
		return err
	}
	for _, w := range wipesFor(r.Name, h) {
		rr := repairResult{Wipe: w.name, Note: w.note}
		for i := range o.n {
			progress(fmt.Sprintf("%s: repair after %q %d/%d", r.Name, w.name, i+1, o.n))
			err := repairOnce(ctx, c, w, digest, o.interval, &rr)
			if errors.Is(err, errNotRepaired) {
				rr.Failed = err.Error()
			} else if err != nil {
				return fmt.Errorf("repair after %q: %w", w.name, err)
			}
			if !w.keepsHost || rr.Failed != "" {
				// Not counted: put the host's own rules back, then
				// Cordon's (a reload of iptables replaces its chains).
				if err := h.load(); err != nil {
					return err
				}
				rr.Restores++
				st, err := c.Status(ctx)
				if err != nil {
					return err
				}
				if !st.Isolated || st.Digest != digest {
					if _, err := call(ctx, func(ctx context.Context) (firewall.Applied, error) {
						return c.Isolate(ctx, benchPolicy, "bench-repair")
					}); err != nil {
						return err
					}
				}
			}
			if rr.Failed != "" {
				break
			}
		}
		r.Repairs = append(r.Repairs, rr)
	}
	if _, err := call(ctx, func(ctx context.Context) (int, error) { return c.Release(ctx, "bench-repair") }); err != nil {
		return err
	}
	after, err := hostDump()
	if err != nil {
		return err
	}
	r.HostIntact = after == baseline
	if !r.HostIntact {
		fmt.Fprintf(os.Stderr, "%s: the host's own rules differ from those loaded:\n%s\n", r.Name, firstDiff(baseline, after))
	}
	return nil
}

// repairOnce wipes the rules and runs the agent's drift loop until they are
// back: a Status every interval, the first at a uniformly random phase of
// the interval after the wipe (where the wipe lands between two of the
// agent's ticks), and Isolate when they are not exactly those applied.
func repairOnce(ctx context.Context, c *firewall.Client, w wipe, digest string, interval time.Duration, rr *repairResult) error {
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if !st.Isolated || st.Digest != digest {
		return fmt.Errorf("not isolated before the wipe: %s", st.Partial)
	}
	tw := time.Now()
	if err := w.run(); err != nil {
		return err
	}
	wiped := time.Now()
	rr.WipeCmd = append(rr.WipeCmd, wiped.Sub(tw))
	next := wiped.Add(rand.N(interval))
	var lastErr error
	for {
		if err := sleepUntil(ctx, next); err != nil {
			return err
		}
		polled := time.Now()
		st, err := call(ctx, func(ctx context.Context) (firewall.Status, error) { return c.Status(ctx) })
		detected := time.Now()
		if err != nil || (st.Isolated && st.Digest == digest) {
			if err != nil {
				// The agent logs "cannot read the rules back" and
				// tries again at the next tick.
				rr.PollErrors++
				lastErr = err
			} else {
				rr.Polls++
			}
			if detected.Sub(wiped) > giveUp {
				if lastErr != nil {
					return fmt.Errorf("%w within %v: Status fails: %v", errNotRepaired, giveUp, lastErr)
				}
				return fmt.Errorf("%w within %v: Status finds nothing wrong", errNotRepaired, giveUp)
			}
			// A time.Ticker drops the ticks a slow poll overran.
			for next = next.Add(interval); !next.After(time.Now()); next = next.Add(interval) {
			}
			continue
		}
		a, err := call(ctx, func(ctx context.Context) (firewall.Applied, error) {
			return c.Isolate(ctx, benchPolicy, "bench-repair")
		})
		if err != nil {
			return fmt.Errorf("%w: Isolate failed: %v", errNotRepaired, err)
		}
		repaired := time.Now()
		st, err = call(ctx, func(ctx context.Context) (firewall.Status, error) { return c.Status(ctx) })
		if err != nil {
			return err
		}
		verified := time.Now()
		if !st.Isolated || st.Digest != a.Digest {
			return fmt.Errorf("after the repair, Status says isolated=%v digest %s (Isolate returned %s): %s", st.Isolated, st.Digest, a.Digest, st.Partial)
		}
		if a.Digest != digest {
			rr.Redigest++
		}
		rr.Total = append(rr.Total, verified.Sub(wiped))
		rr.Detect = append(rr.Detect, detected.Sub(wiped))
		rr.Wait = append(rr.Wait, polled.Sub(wiped))
		rr.Poll = append(rr.Poll, detected.Sub(polled))
		rr.Repair = append(rr.Repair, repaired.Sub(detected))
		rr.Verify = append(rr.Verify, verified.Sub(repaired))
		return nil
	}
}

// call runs one plugin call with the agent's kind of timeout.
func call[T any](ctx context.Context, fn func(context.Context) (T, error)) (T, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return fn(cctx)
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// firstDiff returns the first differing line of two dumps, with context.
func firstDiff(a, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range max(len(la), len(lb)) {
		var x, y string
		if i < len(la) {
			x = la[i]
		}
		if i < len(lb) {
			y = lb[i]
		}
		if x != y {
			return fmt.Sprintf("line %d: loaded %q, now %q", i+1, x, y)
		}
	}
	return ""
}
