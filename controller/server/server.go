// Package server is the controller daemon: an SSH server (DESIGN.md §2) that
// keeps one connection per agent, pushes orders to agents on it, receives
// their reports and evidence, and answers operators' API requests.
//
// The server serves no shell, no PTY and no forwarding: only Cordon's own
// channel types (package wire). Agents authenticate with their enrolled key;
// an unknown agent key is accepted only together with a one-time enrollment
// token, sent as an SSH keyboard-interactive answer after the key has been
// proven. Operators authenticate with a registered key and act within its
// role.
//
// Orders are stored before they are sent: an order for an offline host stays
// pending and is delivered when the agent connects.
package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/controller/evidencestore"
	"github.com/cordon-ir/cordon/controller/store"
	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/cordon-ir/cordon/pkg/sshkey"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// Version is the controller's version, reported to operators.
var Version = "0.1.0-dev"

// Config configures a Server.
type Config struct {
	Store    store.Store
	Evidence *evidencestore.Dir
	HostKey  ssh.Signer
	// Advertise lists controller endpoints that agents must keep reaching
	// while isolated, besides the address each agent is connected to (for a
	// controller behind NAT or with several addresses).
	Advertise []policy.Endpoint
	Logger    *slog.Logger
	// KeepaliveInterval is how often the server checks that an agent
	// answers; a keepalive unanswered for one more interval disconnects
	// it. 0 means 10 s.
	KeepaliveInterval time.Duration
	// HandshakeTimeout bounds the SSH handshake and the agent's hello.
	// 0 means 10 s.
	HandshakeTimeout time.Duration
	// Clouds are the cloud containment layers by provider ("aws", …): a
	// host whose agent reports an instance of one of them gets that layer
	// on every isolate and release order, beside its own.
	Clouds map[string]cloud.Layer
}

// Server is the controller daemon. Create it with New and run it with Serve.
type Server struct {
	cfg Config
	log *slog.Logger
	ssh *ssh.ServerConfig

	mu      sync.Mutex
	agents  map[string]*agentConn
	changed chan struct{} // closed and replaced whenever an order changes
	conns   map[net.Conn]struct{}
	// operators maps live operator connections to their key fingerprint.
	operators map[*ssh.ServerConn]string
	wg        sync.WaitGroup
	// cloudQueues hold each host's cloud layer steps, carried out one at
	// a time in the order the orders were issued (cloudJob).
	cloudQueues map[string][]func()
	// metrics are the Prometheus metrics (metrics.go).
	metrics *metrics
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Evidence == nil || cfg.HostKey == nil {
		return nil, errors.New("server: store, evidence directory and host key are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.KeepaliveInterval == 0 {
		cfg.KeepaliveInterval = 10 * time.Second
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "controller"),
		agents:    make(map[string]*agentConn),
		changed:   make(chan struct{}),
		conns:     make(map[net.Conn]struct{}),
		operators: make(map[*ssh.ServerConn]string),
	}
	s.metrics = newMetrics(s, slices.Sorted(maps.Keys(cfg.Clouds)))
	s.ssh = &ssh.ServerConfig{
		PublicKeyCallback:         s.authKey,
		VerifiedPublicKeyCallback: s.verifiedKey,
		AuthLogCallback:           s.authLog,
		ServerVersion:             "SSH-2.0-Cordon_" + Version,
		MaxAuthTries:              6,
	}
	s.ssh.AddHostKey(cfg.HostKey)
	return s, nil
}

// Healthy reports whether the controller's database answers a read: the
// controller's liveness for systemd's watchdog (package sdnotify).
func (s *Server) Healthy(ctx context.Context) error {
	return s.cfg.Store.View(ctx, func(tx store.Tx) error {
		_, err := tx.Operators()
		return err
	})
}

// Serve accepts connections on ln until ctx ends, then closes ln and every
// connection and waits for their handlers to return.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := s.resumeCloud(ctx); err != nil {
		return fmt.Errorf("cloud steps left unfinished: %w", err)
	}
	s.log.Info("listening", "addr", ln.Addr().String(), "host_key", sshkey.Fingerprint(s.cfg.HostKey.PublicKey()))
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	defer stop()
	var tempDelay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				s.wg.Wait()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				time.Sleep(tempDelay)
				continue
			}
			s.wg.Wait()
			return fmt.Errorf("accept: %w", err)
		}
		tempDelay = 0
		s.mu.Lock()
		s.conns[nc] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				nc.Close()
				s.mu.Lock()
				delete(s.conns, nc)
				s.mu.Unlock()
			}()
			s.handleConn(ctx, nc)
		}()
	}
}

// Permission extensions set at authentication.
const (
	extKind = "cordon-kind" // "agent" or "operator"
	extName = "cordon-name"
	extRole = "cordon-role"
	extFP   = "cordon-fp"
	extKey  = "cordon-key" // agents: the key, authorized_keys format
)

func (s *Server) handleConn(ctx context.Context, nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(15 * time.Second)
	}
	nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	sconn, chans, reqs, err := ssh.NewServerConn(nc, s.ssh)
	if err != nil {
		var auth *ssh.ServerAuthError
		if errors.As(err, &auth) {
			s.log.Warn("authentication refused", "remote", nc.RemoteAddr().String(), "err", err)
		} else {
			s.log.Debug("handshake failed", "remote", nc.RemoteAddr().String(), "err", err)
		}
		return
	}
	nc.SetDeadline(time.Time{})
	defer sconn.Close()
	ext := sconn.Permissions.Extensions
	switch ext[extKind] {
	case "agent":
		s.serveAgent(ctx, sconn, chans, reqs)
	case "operator":
		s.serveOperator(ctx, sconn, chans, reqs)
	}
}

// authKey decides on a public key a client offers. Known operator and agent
// keys get in (once the client proves it holds them); an unknown key may
// enroll as an agent with a one-time token in a second step.
func (s *Server) authKey(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	fp := sshkey.Fingerprint(key)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var op store.Operator
	var host store.Host
	var opErr, hostErr error
	err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
		op, opErr = tx.Operator(fp)
		host, hostErr = tx.HostByFingerprint(fp)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	switch {
	case opErr == nil:
		return &ssh.Permissions{Extensions: map[string]string{extKind: "operator", extName: op.Name, extRole: op.Role, extFP: fp}}, nil
	case hostErr == nil:
		if meta.User() != host.Name {
			return nil, fmt.Errorf("agent key %s is enrolled as host %q, not %q", fp, host.Name, meta.User())
		}
		return &ssh.Permissions{Extensions: map[string]string{extKind: "agent", extName: host.Name, extFP: fp, extKey: host.PublicKey}}, nil
	case !errors.Is(opErr, store.ErrNotFound):
		return nil, opErr
	case !errors.Is(hostErr, store.ErrNotFound):
		return nil, hostErr
	}
	if !wire.ValidHostName(meta.User()) {
		return nil, fmt.Errorf("unknown key %s and %q is not a valid host name to enroll", fp, meta.User())
	}
	// An unknown key may enroll with a token. It is only a candidate until
	// the client has proven it holds the key (verifiedKey), so that offers
	// of random keys cost nothing but this lookup.
	return &ssh.Permissions{Extensions: map[string]string{extKind: "candidate"}}, nil
}

// verifiedKey runs once the client has proven it holds the key authKey
// accepted. For an unknown key it asks, as a second step, for a one-time
// enrollment token (keyboard-interactive).
func (s *Server) verifiedKey(meta ssh.ConnMetadata, key ssh.PublicKey, perms *ssh.Permissions, _ string) (*ssh.Permissions, error) {
	if perms.Extensions[extKind] != "candidate" {
		return perms, nil
	}
	name, fp := meta.User(), sshkey.Fingerprint(key)
	s.log.Info("unknown key; asking for an enrollment token", "key", fp, "host", name, "remote", meta.RemoteAddr().String())
	return nil, &ssh.PartialSuccessError{Next: ssh.ServerAuthCallbacks{
		KeyboardInteractiveCallback: func(meta ssh.ConnMetadata, client ssh.KeyboardInteractiveChallenge) (*ssh.Permissions, error) {
			answers, err := client("cordon", "Enroll this agent with a one-time token.", []string{"enrollment token: "}, []bool{false})
			if err != nil {
				return nil, err
			}
			if len(answers) != 1 || answers[0] == "" {
				return nil, errors.New("no enrollment token given")
			}
			if err := s.enroll(name, key, answers[0], meta.RemoteAddr()); err != nil {
				// The banner tells the agent why, so its operator sees it.
				return nil, &ssh.BannerError{Err: err, Message: "cordon: enrollment refused: " + err.Error() + "\n"}
			}
			return &ssh.Permissions{Extensions: map[string]string{extKind: "agent", extName: name, extFP: fp,
				extKey: sshkey.AuthorizedKey(key)}}, nil
		},
	}}
}

func (s *Server) authLog(meta ssh.ConnMetadata, method string, err error) {
	if err == nil || method == "none" {
		return
	}
	var partial *ssh.PartialSuccessError
	if errors.As(err, &partial) {
		return
	}
	s.log.Debug("authentication step refused", "remote", meta.RemoteAddr().String(), "user", meta.User(), "method", method, "err", err)
}

// HashToken returns how a token is stored: the hex SHA-256 of its text.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return hex.EncodeToString(sum[:])
}

// DefaultTokenTTL is how long an enrollment token stays valid by default.
const DefaultTokenTTL = 24 * time.Hour

// MintToken creates a one-time enrollment token valid for ttl and stores
// its hash in tx. The token itself is returned and never stored.
func MintToken(tx store.Tx, createdBy string, ttl time.Duration, now time.Time) (token string, expires time.Time, err error) {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", time.Time{}, err
	}
	token = "cdn-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
	expires = now.Add(ttl)
	err = tx.AddToken(store.Token{Hash: HashToken(token), CreatedAt: now, ExpiresAt: expires, CreatedBy: createdBy})
	return token, expires, err
}

// enroll registers key as host name, using up token, in one transaction.
func (s *Server) enroll(name string, key ssh.PublicKey, token string, remote net.Addr) error {
	now := time.Now().UTC()
	fp := sshkey.Fingerprint(key)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.UseToken(HashToken(token), name, now); err != nil {
			return err
		}
		if err := tx.AddHost(store.Host{Name: name, Fingerprint: fp, PublicKey: sshkey.AuthorizedKey(key), EnrolledAt: now,
			State: store.StateReleased, StateSince: now, Desired: store.StateReleased, Addr: remote.String()}); err != nil {
			if errors.Is(err, store.ErrExists) {
				return fmt.Errorf("host name %q is already enrolled with another key", name)
			}
			return err
		}
		return tx.AddAudit(store.Audit{At: now, Actor: name, ActorKey: fp, Action: "enroll", Host: name,
			Detail: "agent enrolled from " + remote.String()})
	})
	if err != nil {
		s.log.Warn("enrollment refused", "host", name, "key", fp, "remote", remote.String(), "err", err)
		return err
	}
	s.log.Info("agent enrolled", "host", name, "key", fp, "remote", remote.String())
	return nil
}

// notify wakes everything waiting for an order change.
func (s *Server) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// changedCh returns a channel closed at the next order change.
func (s *Server) changedCh() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// online reports whether host has a live agent connection.
func (s *Server) online(host string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.agents[host]
	return ok
}

// kick asks the host's delivery loop, if connected, to look for pending
// orders.
func (s *Server) kick(host string) {
	s.mu.Lock()
	ac := s.agents[host]
	s.mu.Unlock()
	if ac != nil {
		ac.kick()
	}
}

// newID returns a sortable, readable id: prefix, UTC time to the second and
// 32 random bits, such as "ord-20261129t101530-9f2ab1c3".
func newID(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s-%s-%x", prefix, time.Now().UTC().Format("20060102t150405"), b)
}
