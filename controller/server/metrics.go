package server

// Prometheus metrics of the controller, served on a listener of their own
// (ServeMetrics, 'cordon controller serve --metrics-listen'). They come from
// a registry of the server's own, never the global default one, so that
// nothing a library registers globally is exposed by accident.
//
// Metrics (all names start with cordon_):
//
//	cordon_agents_connected                         gauge: agents with a live connection now
//	cordon_hosts{state}                             gauge: enrolled hosts per state, read from the store at each scrape
//	cordon_order_duration_seconds{kind}             histogram: order issued → terminal success (isolate, release: verified; snapshot: taken)
//	cordon_orders_failed_total{kind}                counter: orders that ended failed
//	cordon_evidence_bundle_size_bytes{verified}     histogram: sizes of evidence bundles received and stored
//	cordon_drift_repairs_total{result}              counter: drift repairs agents reported (repaired, failed)
//	cordon_plugin_failures_total{layer,plugin}      counter: host firewall (layer="host") and cloud (layer="cloud") failures
//
// plus the Go runtime (go_*) and process (process_*) collectors. No label
// carries a host name, an order id or any other value that grows with the
// fleet or over time.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cordon-ir/cordon/controller/store"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// Label values of cordon_plugin_failures_total's layer label.
const (
	layerHost  = "host"
	layerCloud = "cloud"
)

// Host firewall plugins the plugin label names; an agent reporting any other
// plugin name (the agent may be the compromised host itself) is counted as
// "other", so that an agent cannot make up label values.
var hostPlugins = []string{"nftables", "iptables"}

// orderKinds are the order kinds, as the kind label names them.
var orderKinds = []wire.OrderKind{wire.KindIsolate, wire.KindRelease, wire.KindSnapshot}

// hostStates are the states cordon_hosts always reports, 0 when no host is
// in one.
var hostStates = []string{store.StateReleased, store.StateIsolating, store.StateIsolated, store.StateReleasing, store.StateFailed}

// metrics are the controller's Prometheus metrics and their registry. The
// hooks (report, orderFailed, evidenceStored, cloudFailed) are called once
// per event, after the store has committed it.
type metrics struct {
	reg            *prometheus.Registry
	orderDuration  *prometheus.HistogramVec
	ordersFailed   *prometheus.CounterVec
	evidenceSize   *prometheus.HistogramVec
	driftRepairs   *prometheus.CounterVec
	pluginFailures *prometheus.CounterVec
}

// newMetrics makes the metrics of s in a registry of their own, with the Go
// and process collectors. clouds are the cloud providers configured, whose
// failure counters start at 0.
func newMetrics(s *Server, clouds []string) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		orderDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cordon_order_duration_seconds",
			Help: "Time from an order's issue to its success, in seconds: for isolate and release orders until the agent reported the rules verified, for snapshot orders until it reported the snapshot taken. Includes the time an order waited for an offline agent. Observed once per order.",
			// Verified isolation takes about 0.15 s on a quiet host
			// (README, Measured); a snapshot of a busy host takes
			// seconds; an order queued for an offline agent lands in
			// +Inf.
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"kind"}),
		ordersFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_orders_failed_total",
			Help: "Orders that ended failed, reported so by their agent or failed by the controller (agent refused the order, order could not be sent).",
		}, []string{"kind"}),
		evidenceSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cordon_evidence_bundle_size_bytes",
			Help: "Sizes of the evidence bundles received and stored, in bytes, once per bundle (a bundle sent again after a lost acknowledgement is not counted again); verified says whether it verified at receipt against the agent's enrolled key.",
			// 16 KiB to 1 GiB by fours: a quiet host's bundle is about
			// 54 KB, a host with 10,000 processes about 1.2 MB.
			Buckets: prometheus.ExponentialBuckets(16<<10, 4, 9),
		}, []string{"verified"}),
		driftRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_drift_repairs_total",
			Help: "Drift repairs reported by agents: Cordon's rules on an isolated host found removed or changed and put back (result=repaired, counting each repair a report stands for), or putting them back failed (result=failed).",
		}, []string{"result"}),
		pluginFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_plugin_failures_total",
			Help: "Containment plugin failures. layer=host: an order the agent reported failed, or a drift repair that failed, by the host's firewall plugin (nftables, iptables, other); layer=cloud: the cloud layer of an order failed, by provider (aws, azure, gcp).",
		}, []string{"layer", "plugin"}),
	}
	for _, k := range orderKinds {
		m.orderDuration.WithLabelValues(string(k))
		m.ordersFailed.WithLabelValues(string(k))
	}
	for _, v := range []bool{true, false} {
		m.evidenceSize.WithLabelValues(strconv.FormatBool(v))
	}
	m.driftRepairs.WithLabelValues("repaired")
	m.driftRepairs.WithLabelValues("failed")
	for _, p := range append(hostPlugins, "other") {
		m.pluginFailures.WithLabelValues(layerHost, p)
	}
	for _, p := range clouds {
		m.pluginFailures.WithLabelValues(layerCloud, p)
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newStateCollector(s),
		m.orderDuration, m.ordersFailed, m.evidenceSize, m.driftRepairs, m.pluginFailures,
	)
	return m
}

// reportEffect is what one agent report changed, found inside the store
// transaction that recorded it and counted (metrics.report) once that
// transaction has committed. A report received twice has no effect the
// second time.
type reportEffect struct {
	// finished: the order reached done or failed with this report.
	finished bool
	order    store.Order
	// repaired counts the drift repairs this report added; repairFailed:
	// it reported a repair that failed.
	repaired     int
	repairFailed bool
	// plugin is the host's firewall plugin, as the plugin label names it.
	plugin string
}

// applyReportMeasured is applyReport, also returning what the report
// changed, for the metrics.
func applyReportMeasured(tx store.Tx, host string, r *wire.Report, now time.Time) (store.Order, reportEffect, error) {
	var fx reportEffect
	before, err := tx.Host(host)
	if err != nil {
		return store.Order{}, fx, err
	}
	prev := ""
	if r.OrderID != "" {
		if o, err := tx.Order(r.OrderID); err == nil {
			prev = o.State
		}
	}
	o, err := applyReport(tx, host, r, now)
	if err != nil {
		return o, fx, err
	}
	after, err := tx.Host(host)
	if err != nil {
		return o, fx, err
	}
	fx.plugin = hostPlugin(after.Plugin)
	if r.Stage == wire.StageRepaired {
		if !after.LastRepair.Equal(before.LastRepair) {
			fx.repaired = after.Repairs - before.Repairs
			fx.repairFailed = r.Error != ""
		}
		return o, fx, nil
	}
	terminal := func(st string) bool { return st == store.OrderDone || st == store.OrderFailed }
	fx.finished = !terminal(prev) && terminal(o.State)
	fx.order = o
	return o, fx, nil
}

// hostPlugin names the firewall plugin of a host record ("nftables 0.1.0",
// "iptables 0.1.0 (unusable: …)") as the plugin label does.
func hostPlugin(p string) string {
	name, _, _ := strings.Cut(p, " ")
	for _, known := range hostPlugins {
		if name == known {
			return known
		}
	}
	return "other"
}

// report counts what a recorded report changed.
func (m *metrics) report(fx reportEffect) {
	if fx.repaired > 0 {
		m.driftRepairs.WithLabelValues("repaired").Add(float64(fx.repaired))
	}
	if fx.repairFailed {
		m.driftRepairs.WithLabelValues("failed").Inc()
		m.pluginFailures.WithLabelValues(layerHost, fx.plugin).Inc()
	}
	if !fx.finished {
		return
	}
	switch fx.order.State {
	case store.OrderDone:
		m.orderDuration.WithLabelValues(fx.order.Kind).Observe(fx.order.DoneAt.Sub(fx.order.CreatedAt).Seconds())
	case store.OrderFailed:
		m.ordersFailed.WithLabelValues(fx.order.Kind).Inc()
		// Only isolate and release orders use the firewall plugin; a
		// snapshot order fails on its own.
		if fx.order.Kind == string(wire.KindIsolate) || fx.order.Kind == string(wire.KindRelease) {
			m.pluginFailures.WithLabelValues(layerHost, fx.plugin).Inc()
		}
	}
}

// orderFailed counts an order the controller failed itself (failOrder).
func (m *metrics) orderFailed(kind string) {
	m.ordersFailed.WithLabelValues(kind).Inc()
}

// evidenceStored counts a bundle of size bytes received and stored for the
// first time.
func (m *metrics) evidenceStored(size int64, verified bool) {
	m.evidenceSize.WithLabelValues(strconv.FormatBool(verified)).Observe(float64(size))
}

// cloudFailed counts a failed cloud layer step of provider.
func (m *metrics) cloudFailed(provider string) {
	m.pluginFailures.WithLabelValues(layerCloud, provider).Inc()
}

// stateCollector reports, at each scrape, the agents connected (from the
// server's connections) and the hosts per state (from the store), so both
// are right from the first scrape after a controller restart.
type stateCollector struct {
	s      *Server
	agents *prometheus.Desc
	hosts  *prometheus.Desc
}

func newStateCollector(s *Server) *stateCollector {
	return &stateCollector{
		s: s,
		agents: prometheus.NewDesc("cordon_agents_connected",
			"Agents with a live SSH connection to this controller.", nil, nil),
		hosts: prometheus.NewDesc("cordon_hosts",
			"Enrolled hosts per containment state (released, isolating, isolated, releasing, failed), as the controller's store holds them.",
			[]string{"state"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.agents
	ch <- c.hosts
}

// storeScrapeTimeout bounds the store read of one scrape.
const storeScrapeTimeout = 5 * time.Second

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.s.mu.Lock()
	n := len(c.s.agents)
	c.s.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.agents, prometheus.GaugeValue, float64(n))

	counts := make(map[string]int, len(hostStates))
	for _, st := range hostStates {
		counts[st] = 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeScrapeTimeout)
	defer cancel()
	err := c.s.cfg.Store.View(ctx, func(tx store.Tx) error {
		hosts, err := tx.Hosts()
		for _, h := range hosts {
			counts[h.State]++
		}
		return err
	})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.hosts, err)
		return
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.hosts, prometheus.GaugeValue, float64(n), st)
	}
}

// MetricsHandler returns the HTTP handler of the controller's Prometheus
// metrics (text exposition format). A metric that cannot be read (the
// store not answering) is left out of the answer, the rest is served, and
// promhttp_metric_handler_errors_total counts it.
func (s *Server) MetricsHandler() http.Handler {
	h := promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{
		ErrorLog:            promLogger{s.log},
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            s.metrics.reg,
		MaxRequestsInFlight: 4,
		Timeout:             metricsWriteTimeout - time.Second,
	})
	return promhttp.InstrumentMetricHandler(s.metrics.reg, h)
}

// Bounds on the metrics listener's HTTP exchanges.
const (
	metricsReadHeaderTimeout = 5 * time.Second
	metricsWriteTimeout      = 15 * time.Second
	metricsIdleTimeout       = 2 * time.Minute
)

// ServeMetrics serves the Prometheus metrics at GET /metrics on ln until
// ctx ends, then shuts the HTTP server down (letting scrapes in progress
// finish, for a few seconds) and closes ln. It returns nil when ctx ended,
// or the error that stopped the server otherwise.
//
// The endpoint has no authentication: bind it to localhost or a
// management network.
func (s *Server) ServeMetrics(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.MetricsHandler())
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: metricsReadHeaderTimeout,
		ReadTimeout:       metricsReadHeaderTimeout,
		WriteTimeout:      metricsWriteTimeout,
		IdleTimeout:       metricsIdleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.With("listener", "metrics").Handler(), slog.LevelDebug),
	}
	s.log.Info("serving metrics", "addr", ln.Addr().String(), "path", "/metrics")
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := hs.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

// promLogger passes promhttp's error messages to the server's log.
type promLogger struct{ log *slog.Logger }

// Println implements promhttp.Logger.
func (l promLogger) Println(v ...any) {
	l.log.Warn("metrics", "err", strings.TrimSpace(fmt.Sprintln(v...)))
}
