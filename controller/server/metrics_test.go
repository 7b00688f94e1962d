package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// sample returns, from a scrape of g, the value of the series name with
// exactly these labels (name, value, name, value…): a counter's or a
// gauge's value, a histogram's sample count. It fails the test when the
// series is not there.
func sample(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	v, ok := lookup(t, g, name, labels...)
	if !ok {
		t.Fatalf("no series %s%v in the scrape", name, labels)
	}
	return v
}

func lookup(t *testing.T, g prometheus.Gatherer, name string, labels ...string) (float64, bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(want) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if v, ok := want[lp.GetName()]; !ok || v != lp.GetValue() {
					continue series
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue(), true
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

// histSum returns the sum of the histogram series name with these labels.
func histSum(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := len(m.GetLabel())*2 == len(labels)
			for i, lp := range m.GetLabel() {
				match = match && lp.GetName() == labels[2*i] && lp.GetValue() == labels[2*i+1]
			}
			if match {
				return m.GetHistogram().GetSampleSum()
			}
		}
	}
	t.Fatalf("no histogram %s%v", name, labels)
	return 0
}

// expect checks the series name{labels} has value want in a scrape of g.
func expect(t *testing.T, g prometheus.Gatherer, want float64, name string, labels ...string) {
	t.Helper()
	if got := sample(t, g, name, labels...); got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// eventually waits up to 10 s for name{labels} to reach want: for what the
// controller does on goroutines of its own (delivery, the cloud layer).
func eventually(t *testing.T, g prometheus.Gatherer, want float64, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := sample(t, g, name, labels...)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// expectHosts checks cordon_hosts for every state: the states not named
// in want must be 0.
func expectHosts(t *testing.T, g prometheus.Gatherer, want map[string]float64) {
	t.Helper()
	for _, st := range hostStates {
		expect(t, g, want[st], "cordon_hosts", "state", st)
	}
}

// issue sends an operator request that creates an order and returns it.
func issue(t *testing.T, op *ssh.Client, name string, args any) api.Order {
	t.Helper()
	b, _ := json.Marshal(args)
	resp := call(t, op, api.Request{V: wire.Version, Op: name, Args: b})
	if resp.Error != nil {
		t.Fatalf("%s: %v", name, resp.Error)
	}
	var o api.Order
	if err := json.Unmarshal(resp.Result, &o); err != nil {
		t.Fatal(err)
	}
	return o
}

// TestMetrics drives orders through the in-process controller with fake
// agents (a verified isolation, evidence, drift repairs, a failure
// reported by an agent, a release, an order the agent refuses) and checks
// what a scrape then says, also from a second server on the same store
// (a controller restart).
func TestMetrics(t *testing.T) {
	ts := startServer(t)
	g := ts.srv.metrics.reg
	a := enrollAgent(t, ts, "pay-db-01")
	b := enrollAgent(t, ts, "pay-db-02")
	c := enrollAgent(t, ts, "pay-db-03")
	orderChans := c.HandleChannelOpen(wire.ChanOrder) // pay-db-03 takes orders (and refuses them)
	op := ts.dial(t, "op", ssh.PublicKeys(ts.admin))

	eventually(t, g, 3, "cordon_agents_connected")
	expectHosts(t, g, map[string]float64{"released": 3})
	for _, k := range []string{"isolate", "release", "snapshot"} {
		expect(t, g, 0, "cordon_order_duration_seconds", "kind", k)
		expect(t, g, 0, "cordon_orders_failed_total", "kind", k)
	}

	// Isolate pay-db-01: its evidence arrives (twice: a resend after a
	// lost ack counts once), then its verified isolation (twice too).
	iso := issue(t, op, api.OpIsolate, api.IsolateArgs{Host: "pay-db-01", Reason: "test"})
	expectHosts(t, g, map[string]float64{"released": 2, "isolating": 1})
	body := []byte("not a bundle at all")
	hdr := wire.EvidenceHeader{V: wire.Version, SnapshotID: "snp-1", OrderID: iso.ID, SHA256: sha256hex(body), Size: int64(len(body)), TakenAt: time.Now()}
	for range 2 {
		if ack := upload(t, a, hdr, body); !ack.OK {
			t.Fatalf("upload: %+v", ack)
		}
	}
	expect(t, g, 1, "cordon_evidence_bundle_size_bytes", "verified", "false")
	expect(t, g, 0, "cordon_evidence_bundle_size_bytes", "verified", "true")
	if sum := histSum(t, g, "cordon_evidence_bundle_size_bytes", "verified", "false"); sum != float64(len(body)) {
		t.Errorf("evidence size sum = %v, want %d", sum, len(body))
	}
	isolated := wire.Report{V: wire.Version, OrderID: iso.ID, Stage: wire.StageIsolated, At: time.Now(), Digest: "sha256:ab"}
	for range 2 {
		if ack := sendReport(t, a, &isolated); !ack.OK {
			t.Fatalf("isolated: %+v", ack)
		}
	}
	expect(t, g, 1, "cordon_order_duration_seconds", "kind", "isolate")
	if d := histSum(t, g, "cordon_order_duration_seconds", "kind", "isolate"); d <= 0 || d > 60 {
		t.Errorf("isolate took %v s, want the time from issue to the report", d)
	}
	expectHosts(t, g, map[string]float64{"released": 2, "isolated": 1})

	// Drift: a report standing for three repairs (received twice), then a
	// repair that failed (also twice), which is also a host plugin failure.
	repair := wire.Report{V: wire.Version, Stage: wire.StageRepaired, At: time.Now().UTC(), Drift: "table gone",
		Digest: "sha256:ab", ApplyNS: int64(time.Millisecond), Repairs: 3}
	for range 2 {
		if ack := sendReport(t, a, &repair); !ack.OK {
			t.Fatalf("repair: %+v", ack)
		}
	}
	expect(t, g, 3, "cordon_drift_repairs_total", "result", "repaired")
	expect(t, g, 0, "cordon_drift_repairs_total", "result", "failed")
	failedRepair := repair
	failedRepair.At, failedRepair.Error, failedRepair.Digest, failedRepair.Repairs = repair.At.Add(time.Second), "plugin crashed", "", 0
	for range 2 {
		if ack := sendReport(t, a, &failedRepair); !ack.OK {
			t.Fatalf("failed repair: %+v", ack)
		}
	}
	expect(t, g, 3, "cordon_drift_repairs_total", "result", "repaired")
	expect(t, g, 1, "cordon_drift_repairs_total", "result", "failed")
	// The test agents report plugin "none": not a plugin name an agent
	// can put in a label.
	expect(t, g, 1, "cordon_plugin_failures_total", "layer", "host", "plugin", "other")
	expect(t, g, 0, "cordon_plugin_failures_total", "layer", "host", "plugin", "nftables")

	// pay-db-02's agent reports its isolation failed (twice).
	iso2 := issue(t, op, api.OpIsolate, api.IsolateArgs{Host: "pay-db-02", Reason: "test"})
	failed := wire.Report{V: wire.Version, OrderID: iso2.ID, Stage: wire.StageFailed, At: time.Now(),
		Error: "plugin crashed; the host's firewall now: no Cordon rules", Firewall: &wire.FirewallState{Plugin: "none"}}
	for range 2 {
		if ack := sendReport(t, b, &failed); !ack.OK {
			t.Fatalf("failed: %+v", ack)
		}
	}
	expect(t, g, 1, "cordon_orders_failed_total", "kind", "isolate")
	expect(t, g, 2, "cordon_plugin_failures_total", "layer", "host", "plugin", "other")
	expect(t, g, 1, "cordon_order_duration_seconds", "kind", "isolate") // a failure is no success
	expectHosts(t, g, map[string]float64{"released": 1, "isolated": 1, "failed": 1})

	// Release pay-db-01.
	rel := issue(t, op, api.OpRelease, api.ReleaseArgs{Host: "pay-db-01", Reason: "test"})
	expectHosts(t, g, map[string]float64{"released": 1, "releasing": 1, "failed": 1})
	if ack := sendReport(t, a, &wire.Report{V: wire.Version, OrderID: rel.ID, Stage: wire.StageReleased, At: time.Now()}); !ack.OK {
		t.Fatalf("released: %+v", ack)
	}
	expect(t, g, 1, "cordon_order_duration_seconds", "kind", "release")
	expectHosts(t, g, map[string]float64{"released": 2, "failed": 1})

	// pay-db-03's agent refuses a snapshot order: the controller fails it.
	snap := issue(t, op, api.OpSnapshotTake, api.SnapshotTakeArgs{Host: "pay-db-03", Reason: "triage"})
	select {
	case nc := <-orderChans:
		ch, reqs, err := nc.Accept()
		if err != nil {
			t.Fatal(err)
		}
		go ssh.DiscardRequests(reqs)
		var wo wire.Order
		if err := wire.ReadFrame(ch, &wo); err != nil || wo.ID != snap.ID {
			t.Fatalf("order delivered: %v %+v", err, wo)
		}
		wire.WriteFrame(ch, &wire.OrderAck{V: wire.Version, OrderID: wo.ID, Error: "busy"})
		ch.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the snapshot order was not delivered")
	}
	eventually(t, g, 1, "cordon_orders_failed_total", "kind", "snapshot")
	expect(t, g, 0, "cordon_order_duration_seconds", "kind", "snapshot")

	// An agent going away.
	a.Close()
	eventually(t, g, 2, "cordon_agents_connected")

	// A restarted controller (a new server on the same store) says the
	// same about the hosts from its first scrape.
	srv2, err := New(Config{Store: ts.st, Evidence: ts.srv.cfg.Evidence, HostKey: newKey(t), Logger: ts.srv.cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	expectHosts(t, srv2.metrics.reg, map[string]float64{"released": 2, "failed": 1})
	expect(t, srv2.metrics.reg, 0, "cordon_agents_connected")
}

// failingCloud is a cloud layer whose provider cannot be reached.
type failingCloud struct{ cloud.Layer }

func (failingCloud) Lookup(context.Context, cloud.Instance) (cloud.Instance, error) {
	return cloud.Instance{}, errors.New("connection refused")
}

func TestMetricsCloudFailure(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Clouds = map[string]cloud.Layer{"aws": failingCloud{}} })
	g := ts.srv.metrics.reg
	enrollAgent(t, ts, "pay-db-01") // reports an AWS instance
	op := ts.dial(t, "op", ssh.PublicKeys(ts.admin))
	expect(t, g, 0, "cordon_plugin_failures_total", "layer", "cloud", "plugin", "aws")
	if _, ok := lookup(t, g, "cordon_plugin_failures_total", "layer", "cloud", "plugin", "gcp"); ok {
		t.Error("a series for a cloud provider that is not configured")
	}
	issue(t, op, api.OpIsolate, api.IsolateArgs{Host: "pay-db-01", Reason: "test"})
	eventually(t, g, 1, "cordon_plugin_failures_total", "layer", "cloud", "plugin", "aws")
	expect(t, g, 0, "cordon_plugin_failures_total", "layer", "host", "plugin", "other")
}

// TestServeMetrics scrapes /metrics over HTTP, as Prometheus does, and
// checks the listener goes away when the context ends.
func TestServeMetrics(t *testing.T) {
	ts := startServer(t)
	enrollAgent(t, ts, "pay-db-01")
	// The hello's ack comes just before the server counts the agent in.
	eventually(t, ts.srv.metrics.reg, 1, "cordon_agents_connected")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ts.srv.ServeMetrics(ctx, ln) }()
	url := "http://" + ln.Addr().String()

	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := "\n" + string(body)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %s, %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	for _, want := range []string{
		"\ncordon_agents_connected 1\n",
		"\ncordon_hosts{state=\"released\"} 1\n",
		"\ncordon_hosts{state=\"isolated\"} 0\n",
		"\ncordon_order_duration_seconds_bucket{kind=\"isolate\",le=\"0.05\"} 0\n",
		"\ncordon_order_duration_seconds_bucket{kind=\"isolate\",le=\"60\"} 0\n",
		"\ncordon_evidence_bundle_size_bytes_count{verified=\"true\"} 0\n",
		"\ncordon_drift_repairs_total{result=\"repaired\"} 0\n",
		"\ncordon_plugin_failures_total{layer=\"host\",plugin=\"nftables\"} 0\n",
		"\n# TYPE cordon_order_duration_seconds histogram\n",
		"\n# HELP cordon_agents_connected ",
		"\ngo_goroutines ",
		"\nprocess_cpu_seconds_total ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if strings.Contains(text, "pay-db-01") {
		t.Error("a host name in a label")
	}
	for path, status := range map[string]int{"/": http.StatusNotFound, "/debug/pprof/": http.StatusNotFound} {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != status {
			t.Errorf("GET %s: %s, want %d", path, resp.Status, status)
		}
	}
	resp, err = http.Post(url+"/metrics", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics: %s", resp.Status)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeMetrics: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeMetrics did not return after its context ended")
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Error("the metrics listener is still open")
	}
}

func TestHostPluginLabel(t *testing.T) {
	for in, want := range map[string]string{
		"nftables 0.1.0":                    "nftables",
		"iptables 0.1.0 (unusable: no ip6)": "iptables",
		"iptables":                          "iptables",
		"none":                              "other",
		"":                                  "other",
		"pay-db-01\nnftables":               "other",
	} {
		if got := hostPlugin(in); got != want {
			t.Errorf("hostPlugin(%q) = %q, want %q", in, got, want)
		}
	}
}

func sha256hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
