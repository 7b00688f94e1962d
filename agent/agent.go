// Package agent is cordon-agent, the daemon on each card-data host
// (DESIGN.md §1). It dials the controller, keeps one SSH connection open,
// and carries out the orders the controller pushes on it: snapshot the
// host's volatile state as signed evidence, then isolate it through a
// firewall plugin, or release it.
//
// The agent is stateless: the kernel holds the firewall state and the
// controller holds the desired state. It writes nothing to disk while it
// handles an order: evidence is built in memory and kept there until the
// controller has acknowledged it. An order runs to the end whatever happens
// to the connection; reports and evidence wait in memory and are sent when
// the controller is reachable again.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/cordon-ir/cordon/pkg/snapshot"
	"github.com/cordon-ir/cordon/pkg/sshkey"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// Version is the agent's version, reported to the controller and written
// into every evidence manifest.
var Version = "0.1.0-dev"

// Config configures an Agent.
type Config struct {
	// Controller is the controller's address, host:port. A name is resolved
	// when connecting only; isolation rules use the IP actually connected to.
	Controller string
	// Fingerprint pins the controller's SSH host key ("SHA256:…").
	Fingerprint string
	// EnrollToken is the one-time token for the first connection; ignored
	// once the key is enrolled.
	EnrollToken string
	// Signer is the agent's key: its SSH identity and evidence signing key.
	Signer ssh.Signer
	// Name is the host's Cordon name.
	Name string
	// Plugin configures the firewall plugin.
	Plugin firewall.LaunchConfig
	// PluginReason says why this plugin (firewall.Choose, or configured);
	// the agent reports it to the controller.
	PluginReason string
	// Allow lists CIDRs that stay reachable during every isolation, in
	// addition to each order's own allowlist.
	Allow []netip.Prefix
	// Logger receives the agent's logs; nil means slog.Default().
	Logger *slog.Logger
	// KeepaliveInterval is how often the agent checks that the controller
	// answers; a keepalive unanswered for one more interval drops the
	// connection, which is then dialed again. 0 means 10 s, so a dead or
	// half-dead controller is noticed within 20 s.
	KeepaliveInterval time.Duration
	// DialTimeout bounds connecting, the SSH handshake and the hello.
	// 0 means 10 s.
	DialTimeout time.Duration
	// PluginTimeout bounds one firewall plugin call; a plugin that takes
	// longer is killed and the order fails. 0 means 60 s.
	PluginTimeout time.Duration
	// MaxBackoff caps the wait between reconnection attempts. 0 means 30 s.
	MaxBackoff time.Duration
	// DriftInterval is how often the rules are read back while the host
	// is isolated, to put them back if something removed or changed them
	// (see watchDrift); 0 means DefaultDriftInterval, negative turns drift
	// repair off.
	DriftInterval time.Duration
	// Sandbox says how the agent is kept from writing to disk (see
	// RestrictWrites), for the evidence manifest.
	Sandbox string
	// Collector, when set, takes the snapshots in a process outside the
	// sandbox (see StartCollector); otherwise the agent takes them itself.
	Collector *Collector
}

// Agent is a running cordon-agent.
type Agent struct {
	cfg Config
	log *slog.Logger

	fw     *plugin
	outbox *outbox

	connMu     sync.Mutex
	conn       ssh.Conn       // current controller connection, or nil
	remote     netip.AddrPort // controller endpoint of conn
	lastRemote netip.AddrPort // controller endpoint last connected to
	connCh     chan struct{}  // closed and replaced when conn changes

	// queue holds received isolate and release orders, snapQueue snapshot
	// orders; one worker carries them out one at a time, each queue in the
	// order it arrived, containment first.
	queue, snapQueue chan wire.Order
	ordMu            sync.Mutex
	orders           map[string]string // ids of orders received since start (the last 256), to their incidents
	ordList          []string
	// inForce is the policy this agent applied and has in force, nil when
	// the host is not isolated; inForceKnown is false when the host was
	// found isolated at start, by rules whose policy this agent never saw.
	inForce      *policy.Policy
	inForceKnown bool
	// isolateOrder and isolateDigest are the isolate order in force ("" if
	// the host was found isolated at start) and the digest of its rules as
	// last verified, for drift repair.
	isolateOrder, isolateDigest string
	// execMu is held while an order or a drift repair uses the firewall.
	execMu sync.Mutex
	// beat is when (Unix ns) the housekeeping loop (watchDrift) last came
	// round, for Healthy.
	beat atomic.Int64
}

// New checks cfg and returns an Agent.
func New(cfg Config) (*Agent, error) {
	if cfg.Controller == "" {
		return nil, errors.New("no controller address")
	}
	if !sshkey.ValidFingerprint(cfg.Fingerprint) {
		return nil, fmt.Errorf("controller fingerprint %q: want SHA256: and 43 base64 characters, as 'cordon controller init' prints", cfg.Fingerprint)
	}
	if cfg.Signer == nil {
		return nil, errors.New("no agent key")
	}
	if !wire.ValidHostName(cfg.Name) {
		return nil, fmt.Errorf("host name %q: use 1 to 63 letters, digits, '.', '_' or '-'", cfg.Name)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.KeepaliveInterval == 0 {
		cfg.KeepaliveInterval = 10 * time.Second
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.DriftInterval == 0 {
		cfg.DriftInterval = DefaultDriftInterval
	}
	if cfg.PluginTimeout == 0 {
		cfg.PluginTimeout = 60 * time.Second
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	log := cfg.Logger.With("component", "agent", "host", cfg.Name)
	a := &Agent{
		cfg:       cfg,
		log:       log,
		connCh:    make(chan struct{}),
		orders:    make(map[string]string),
		queue:     make(chan wire.Order, maxQueued),
		snapQueue: make(chan wire.Order, maxQueued),
	}
	pc := cfg.Plugin
	if pc.Logger == nil {
		// The plugin's lines go to the agent's log with their fields;
		// one about an order gets the order's incident added.
		pc.Logger = slog.New(&incidentHandler{h: cfg.Logger.With("component", "plugin", "host", cfg.Name).Handler(), incidentOf: a.incidentOf})
	}
	a.fw = newPlugin(pc, log)
	a.outbox = newOutbox(a)
	return a, nil
}

// Run starts the firewall plugin and keeps a connection to the controller
// until ctx ends. An order being carried out when ctx ends is finished
// first. Run returns nil after ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	a.log.Info("starting", "agent_version", Version, "key", sshkey.Fingerprint(a.cfg.Signer.PublicKey()),
		"controller", a.cfg.Controller, "plugin", a.cfg.Plugin.Name)
	if st, err := a.fw.status(ctx, 10*time.Second); err != nil {
		a.log.Error("firewall plugin not usable; orders will fail until it is", "err", err)
	} else {
		if st.Isolated {
			a.log.Warn("host is isolated: Cordon's rules are in place from before this start", "digest", st.Digest)
		} else if st.Partial != "" {
			a.log.Warn("remnants of Cordon's rules found", "partial", st.Partial)
		}
		a.refreshApplied(ctx)
	}
	defer a.fw.close()

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.outbox.run(ctx, laneReports) }()
	go func() { defer wg.Done(); a.outbox.run(ctx, laneEvidence) }()
	workerDone := make(chan struct{})
	go func() { defer close(workerDone); a.work(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); a.watchDrift(ctx) }()

	backoff := time.Second
	for ctx.Err() == nil {
		start := time.Now()
		connected, err := a.session(ctx)
		if ctx.Err() != nil {
			break
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		// Jitter keeps a fleet from reconnecting in step after a
		// controller restart.
		wait := backoff/2 + rand.N(backoff/2+1)
		msg := "cannot connect to the controller; retrying"
		if connected {
			msg = "controller connection lost; reconnecting"
		}
		a.log.Warn(msg, "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		backoff = min(2*backoff, a.cfg.MaxBackoff)
	}
	// Let a running order finish: it may be halfway through isolating.
	<-workerDone
	wg.Wait()
	a.log.Info("stopped")
	return nil
}

// Healthy reports whether the agent's housekeeping loop, which reads the
// rules back while the host is isolated, has come round lately: within the
// longest round it may legitimately take (a plugin restart, a status read
// and a repair, each bounded by the plugin timeout, see stallAfter). It is
// the agent's liveness for systemd's watchdog (package sdnotify); it does
// not watch the controller connection, which has keepalives of its own.
func (a *Agent) Healthy(context.Context) error {
	last := a.beat.Load()
	if last == 0 {
		return nil // not started yet
	}
	if d := time.Since(time.Unix(0, last)); d > a.stallAfter() {
		return fmt.Errorf("housekeeping loop stuck for %v (longest legitimate round %v)", d.Round(time.Second), a.stallAfter())
	}
	return nil
}

// stallAfter is how long the housekeeping loop may go without coming round
// before Healthy calls it stuck: it waits a drift interval, then a round
// reads the rules and puts them back (two plugin calls, each within the
// plugin timeout), each maybe starting the plugin again first (10 s);
// 30 s of slack on top.
func (a *Agent) stallAfter() time.Duration {
	return max(a.cfg.DriftInterval, time.Second) + 2*(a.cfg.PluginTimeout+10*time.Second) + 30*time.Second
}

// session makes one connection, says hello, and serves orders until the
// connection ends. connected reports whether it got as far as the hello.
func (a *Agent) session(ctx context.Context) (connected bool, err error) {
	nc, err := a.dial(ctx)
	if err != nil {
		return false, err
	}
	defer nc.Close()
	remote, err := netip.ParseAddrPort(nc.RemoteAddr().String())
	if err != nil {
		return false, fmt.Errorf("controller address %s: %w", nc.RemoteAddr(), err)
	}
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	nc.SetDeadline(time.Now().Add(a.cfg.DialTimeout))
	conn, chans, reqs, err := handshake(nc, a.cfg.Controller, a.cfg.Name, a.cfg.Fingerprint, a.cfg.Signer, a.cfg.EnrollToken, a.cfg.DialTimeout, nil)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	go a.globalRequests(reqs)
	if err := a.hello(ctx, conn); err != nil {
		nc.SetDeadline(time.Time{})
		return false, fmt.Errorf("hello: %w", err)
	}
	nc.SetDeadline(time.Time{})
	a.setConn(conn, remote)
	defer a.setConn(nil, netip.AddrPort{})
	a.log.Info("connected to controller", "controller", remote.String())

	done := make(chan struct{})
	defer close(done)
	go a.keepalive(conn, done)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	for nc := range chans {
		if nc.ChannelType() != wire.ChanOrder {
			nc.Reject(ssh.UnknownChannelType, "agents accept only "+wire.ChanOrder)
			continue
		}
		go a.receiveOrder(nc)
	}
	return true, conn.Wait()
}

// handshake runs the agent's side of the SSH handshake on nc: it pins the
// controller's host key, proves the agent key and, for a key not yet
// enrolled, answers the controller's keyboard-interactive question with the
// enrollment token. A refusal says why (the controller's banner).
//
// tokenAsked, if not nil, is set when the controller asked for the token:
// the key was not enrolled yet.
func handshake(nc net.Conn, controller, name, fingerprint string, signer ssh.Signer, token string, timeout time.Duration, tokenAsked *bool) (ssh.Conn, <-chan ssh.NewChannel, <-chan *ssh.Request, error) {
	auth := []ssh.AuthMethod{ssh.PublicKeys(signer)}
	if token != "" {
		auth = append(auth, ssh.KeyboardInteractive(func(name, instruction string, questions []string, echos []bool) ([]string, error) {
			if tokenAsked != nil {
				*tokenAsked = true
			}
			answers := make([]string, len(questions))
			for i := range questions {
				answers[i] = token
			}
			return answers, nil
		}))
	}
	var banner strings.Builder
	conn, chans, reqs, err := ssh.NewClientConn(nc, controller, &ssh.ClientConfig{
		User:            name,
		Auth:            auth,
		HostKeyCallback: sshkey.Pin(fingerprint),
		BannerCallback:  func(m string) error { banner.WriteString(strings.TrimSpace(m)); return nil },
		ClientVersion:   "SSH-2.0-CordonAgent_" + Version,
		Timeout:         timeout,
	})
	if err == nil {
		return conn, chans, reqs, nil
	}
	if errors.Is(err, sshkey.ErrHostKeyMismatch) {
		return nil, nil, nil, err
	}
	why := banner.String()
	switch {
	case why != "":
	case !strings.Contains(err.Error(), "unable to authenticate"):
		// Not a refusal: the connection broke during the handshake.
		return nil, nil, nil, fmt.Errorf("SSH handshake with the controller at %s failed: %w", nc.RemoteAddr(), err)
	case token == "":
		why = "the key is not enrolled; a new agent needs --enroll-token"
	default:
		why = err.Error()
	}
	return nil, nil, nil, fmt.Errorf("controller refused the agent key %s: %s", sshkey.Fingerprint(signer.PublicKey()), why)
}

// EnrollConfig says which controller to enroll an agent key with.
type EnrollConfig struct {
	Controller  string // host:port
	Fingerprint string // the controller's pinned host key, "SHA256:…"
	Name        string // the host's Cordon name
	Signer      ssh.Signer
	Token       string        // one-time enrollment token
	Timeout     time.Duration // for the connection and handshake; 0 means 15 s
}

// Enroll enrolls the agent key with the controller, as the agent's first
// connection would (a cordon-agent enroll at install time): it connects,
// pins the host key, proves the key and gives the token, then hangs up.
// It returns nil when the key is enrolled, with tokenUsed false when it
// already was (the controller did not ask for the token, which stays
// unused); a refusal says why.
func Enroll(ctx context.Context, c EnrollConfig) (tokenUsed bool, err error) {
	if c.Timeout == 0 {
		c.Timeout = 15 * time.Second
	}
	d := net.Dialer{Timeout: c.Timeout}
	nc, err := d.DialContext(ctx, "tcp", c.Controller)
	if err != nil {
		return false, fmt.Errorf("cannot connect to the controller: %w", err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(c.Timeout))
	conn, _, reqs, err := handshake(nc, c.Controller, c.Name, c.Fingerprint, c.Signer, c.Token, c.Timeout, &tokenUsed)
	if err != nil {
		return false, err
	}
	go ssh.DiscardRequests(reqs)
	return tokenUsed, conn.Close()
}

// dial connects to the controller. While Cordon's rules are in place it
// dials only the controller endpoints they allow, by IP, the one it was last
// connected to first: nothing is resolved on an isolated host, where a name
// lookup would fail and lock the agent out (DESIGN.md §3). Otherwise it dials
// the configured address, resolving a name if it is one. The pinned host key
// authenticates the controller whichever address answers.
func (a *Agent) dial(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: a.cfg.DialTimeout, KeepAlive: 15 * time.Second}
	targets := []string{a.cfg.Controller}
	if p, _ := a.applied(); p != nil && len(p.Controllers) > 0 {
		targets = targets[:0]
		a.connMu.Lock()
		last := a.lastRemote
		a.connMu.Unlock()
		for _, e := range p.Controllers {
			ap := netip.AddrPortFrom(e.Addr, e.Port)
			if ap == last {
				targets = append([]string{ap.String()}, targets...)
			} else {
				targets = append(targets, ap.String())
			}
		}
	}
	var errs []error
	for _, t := range targets {
		nc, err := d.DialContext(ctx, "tcp", t)
		if err == nil {
			return nc, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("connect: %w", errors.Join(errs...))
}

// globalRequests answers the controller's keepalives.
func (a *Agent) globalRequests(reqs <-chan *ssh.Request) {
	for r := range reqs {
		r.Reply(r.Type == wire.ReqKeepalive, nil)
	}
}

// keepalive drops the connection when the controller stops answering, so a
// half-dead controller is noticed within two intervals.
func (a *Agent) keepalive(conn ssh.Conn, done <-chan struct{}) {
	t := time.NewTicker(a.cfg.KeepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		errc := make(chan error, 1)
		go func() {
			_, _, err := conn.SendRequest(wire.ReqKeepalive, true, nil)
			errc <- err
		}()
		select {
		case err := <-errc:
			if err == nil {
				continue
			}
		case <-time.After(a.cfg.KeepaliveInterval):
		case <-done:
			return
		}
		a.log.Warn("controller stopped answering keepalives; dropping the connection")
		conn.Close()
		return
	}
}

// hello tells the controller who the agent is and what its firewall looks
// like, and waits for the controller to accept it.
func (a *Agent) hello(ctx context.Context, conn ssh.Conn) error {
	h := wire.Hello{V: wire.Version, Name: a.cfg.Name, AgentVersion: Version, Firewall: a.firewallState(ctx)}
	id := hostIdentity()
	h.Hostname, h.MachineID, h.BootID = id.Hostname, id.MachineID, id.BootID
	provider, instance := snapshot.CloudIdentity()
	h.CloudProvider, h.CloudInstanceID = wire.CleanText(provider, 32), wire.CleanText(instance, 256)
	h.Orders = a.knownOrders()
	ch, reqs, err := conn.OpenChannel(wire.ChanHello, nil)
	if err != nil {
		return err
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	if err := wire.WriteFrame(ch, &h); err != nil {
		return err
	}
	var ack wire.HelloAck
	if err := wire.ReadFrame(ch, &ack); err != nil {
		return err
	}
	if !ack.OK {
		return fmt.Errorf("controller refused the hello: %s", ack.Error)
	}
	return nil
}

// firewallState asks the plugin for the live state, for hello and reports.
func (a *Agent) firewallState(ctx context.Context) wire.FirewallState {
	fs := wire.FirewallState{Plugin: a.cfg.Plugin.Name, PluginReason: wire.CleanText(a.cfg.PluginReason, wire.MaxError)}
	info, err := a.fw.info(ctx, 5*time.Second)
	if err != nil {
		fs.Error = wire.CleanText(err.Error(), wire.MaxError)
		return fs
	}
	fs.Plugin, fs.Version = info.Name, info.Version
	st, err := a.fw.status(ctx, 10*time.Second)
	if err != nil {
		fs.Error = wire.CleanText(err.Error(), wire.MaxError)
		return fs
	}
	fs.Isolated, fs.Digest, fs.Partial = st.Isolated, wire.CleanText(st.Digest, 128), wire.CleanText(st.Partial, wire.MaxError)
	fs.Plugin, fs.Version = wire.CleanText(fs.Plugin, 64), wire.CleanText(fs.Version, 64)
	return fs
}

func (a *Agent) setConn(c ssh.Conn, remote netip.AddrPort) {
	a.connMu.Lock()
	a.conn, a.remote = c, remote
	if remote.IsValid() {
		a.lastRemote = remote
	}
	close(a.connCh)
	a.connCh = make(chan struct{})
	a.connMu.Unlock()
}

// current returns the live connection (or nil), the controller endpoint it
// goes to, and a channel closed when that changes.
func (a *Agent) current() (ssh.Conn, netip.AddrPort, <-chan struct{}) {
	a.connMu.Lock()
	defer a.connMu.Unlock()
	return a.conn, a.remote, a.connCh
}

// knownOrders lists the ids of orders received since the agent started,
// newest last, for the hello.
func (a *Agent) knownOrders() []string {
	a.ordMu.Lock()
	defer a.ordMu.Unlock()
	return append([]string(nil), a.ordList...)
}

// incidentOf returns the incident of an order recorded by rememberOrder
// ("" when it has none, or is not among the last 256 received), for the
// logs: every line about an order carries its order_id, host and incident.
func (a *Agent) incidentOf(id string) string {
	a.ordMu.Lock()
	defer a.ordMu.Unlock()
	return a.orders[id]
}

// incidentHandler adds "incident" to a record that has an "order_id" and
// no incident, from incidentOf: the plugin's lines about an order know its
// id only.
type incidentHandler struct {
	h          slog.Handler
	incidentOf func(orderID string) string
}

func (h *incidentHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.h.Enabled(ctx, l) }

func (h *incidentHandler) Handle(ctx context.Context, r slog.Record) error {
	var id string
	var has bool
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "order_id":
			id = a.Value.String()
		case "incident":
			has = true
		}
		return true
	})
	if id != "" && !has {
		r = r.Clone()
		r.AddAttrs(slog.String("incident", h.incidentOf(id)))
	}
	return h.h.Handle(ctx, r)
}

func (h *incidentHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &incidentHandler{h: h.h.WithAttrs(as), incidentOf: h.incidentOf}
}

func (h *incidentHandler) WithGroup(name string) slog.Handler {
	return &incidentHandler{h: h.h.WithGroup(name), incidentOf: h.incidentOf}
}

// orderLog returns the agent's logger with the fields of every line about
// an order: order_id and incident (host is the agent's own, on every line);
// incident is "" for an order without one, present all the same, so that a
// search by field finds every line either way.
func (a *Agent) orderLog(id, incident string) *slog.Logger {
	return a.log.With("order_id", id, "incident", incident)
}

// forgetOrder drops an order id recorded by rememberOrder, for an order
// that was refused.
func (a *Agent) forgetOrder(id string) {
	a.ordMu.Lock()
	defer a.ordMu.Unlock()
	delete(a.orders, id)
	if i := slices.Index(a.ordList, id); i >= 0 {
		a.ordList = slices.Delete(a.ordList, i, i+1)
	}
}

// rememberOrder records an order id and its incident, and reports whether
// it was new.
func (a *Agent) rememberOrder(id, incident string) bool {
	a.ordMu.Lock()
	defer a.ordMu.Unlock()
	if _, ok := a.orders[id]; ok {
		return false
	}
	a.orders[id] = incident
	a.ordList = append(a.ordList, id)
	if len(a.ordList) > 256 {
		delete(a.orders, a.ordList[0])
		a.ordList = a.ordList[1:]
	}
	return true
}
