// Package client is the operator side of the controller's API: it dials the
// controller over SSH with an operator key, pins the controller's host key,
// and makes API calls (package api).
package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/pkg/sshkey"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// Config says how to reach the controller.
type Config struct {
	// Addr is the controller's host:port.
	Addr string
	// Fingerprint pins the controller's host key ("SHA256:…").
	Fingerprint string
	// IdentityFile is the operator's private key file. When empty, the keys
	// of the running ssh-agent (SSH_AUTH_SOCK) are offered.
	IdentityFile string
	// User is the SSH user name sent; it is informational for operators.
	User string
	// Timeout bounds connecting and the SSH handshake; 0 means 10 s.
	Timeout time.Duration
}

// Client is a connection to the controller.
type Client struct {
	conn *ssh.Client
}

// Dial connects and authenticates.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Addr == "" {
		return nil, errors.New("no controller address: use --controller or CORDON_CONTROLLER")
	}
	if !sshkey.ValidFingerprint(cfg.Fingerprint) {
		if cfg.Fingerprint == "" {
			return nil, errors.New("no controller fingerprint pinned: use --controller-fingerprint or CORDON_CONTROLLER_FINGERPRINT (printed by 'cordon controller init')")
		}
		return nil, fmt.Errorf("controller fingerprint %q: want SHA256: and 43 base64 characters", cfg.Fingerprint)
	}
	var auth ssh.AuthMethod
	if cfg.IdentityFile != "" {
		signer, err := sshkey.Load(cfg.IdentityFile)
		if err != nil {
			return nil, fmt.Errorf("operator key: %w", err)
		}
		auth = ssh.PublicKeys(signer)
	} else if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		ac, err := net.Dial("unix", sock)
		if err != nil {
			return nil, fmt.Errorf("ssh-agent at SSH_AUTH_SOCK: %w", err)
		}
		auth = ssh.PublicKeysCallback(agent.NewClient(ac).Signers)
	} else {
		return nil, errors.New("no operator key: use --identity or CORDON_IDENTITY, or load the key into ssh-agent")
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	user := cfg.User
	if user == "" {
		user = "operator"
	}
	d := net.Dialer{Timeout: timeout}
	nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("connect to controller %s: %w", cfg.Addr, err)
	}
	nc.SetDeadline(time.Now().Add(timeout))
	c, chans, reqs, err := ssh.NewClientConn(nc, cfg.Addr, &ssh.ClientConfig{
		User:            user,
		Auth:            []ssh.AuthMethod{auth},
		HostKeyCallback: sshkey.Pin(cfg.Fingerprint),
		Timeout:         timeout,
	})
	if err != nil {
		nc.Close()
		if errors.Is(err, sshkey.ErrHostKeyMismatch) {
			return nil, err
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			which := "the keys in ssh-agent"
			if cfg.IdentityFile != "" {
				which = "the operator key " + cfg.IdentityFile
			}
			return nil, fmt.Errorf("controller %s refused %s: not registered as an operator (an admin adds it with 'cordon operator add')", cfg.Addr, which)
		}
		return nil, fmt.Errorf("controller %s: SSH handshake failed: %w", cfg.Addr, err)
	}
	nc.SetDeadline(time.Time{})
	return &Client{conn: ssh.NewClient(c, chans, reqs)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// open starts one API request and returns the channel with the response
// already read.
func (c *Client) open(ctx context.Context, op string, args any) (ssh.Channel, *api.Response, error) {
	raw, err := json.Marshal(args)
	if err != nil {
		return nil, nil, err
	}
	ch, reqs, err := c.conn.OpenChannel(api.ChanName, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("open API channel: %w", err)
	}
	go ssh.DiscardRequests(reqs)
	stop := context.AfterFunc(ctx, func() { ch.Close() })
	if err := wire.WriteFrame(ch, &api.Request{V: wire.Version, Op: op, Args: raw}); err != nil {
		stop()
		ch.Close()
		return nil, nil, fmt.Errorf("send %s: %w", op, err)
	}
	var resp api.Response
	if err := wire.ReadFrameMax(ch, &resp, api.MaxResponse); err != nil {
		stop()
		ch.Close()
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, fmt.Errorf("read %s response: %w", op, err)
	}
	stop()
	if resp.Error != nil {
		ch.Close()
		return nil, nil, resp.Error
	}
	return ch, &resp, nil
}

// Call runs one operation and decodes its result into result (a pointer,
// or nil to ignore it). API errors come back as *api.Error.
func (c *Client) Call(ctx context.Context, op string, args, result any) error {
	ch, resp, err := c.open(ctx, op, args)
	if err != nil {
		return err
	}
	ch.Close()
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(resp.Result, result); err != nil {
		return fmt.Errorf("decode %s result: %w", op, err)
	}
	return nil
}

// Download writes snapshot id's bundle to w and checks its size and SHA-256
// against the controller's record.
func (c *Client) Download(ctx context.Context, id string, w io.Writer) (api.Snapshot, error) {
	var snap api.Snapshot
	ch, resp, err := c.open(ctx, api.OpSnapshotDownload, api.SnapshotArgs{ID: id})
	if err != nil {
		return snap, err
	}
	defer ch.Close()
	if err := json.Unmarshal(resp.Result, &snap); err != nil {
		return snap, fmt.Errorf("decode snapshot: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { ch.Close() })
	defer stop()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(ch, snap.Size+1))
	if err != nil {
		return snap, fmt.Errorf("download %s: %w", id, err)
	}
	if n != snap.Size {
		return snap, fmt.Errorf("download %s: got %d bytes, controller recorded %d", id, n, snap.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != snap.SHA256 {
		return snap, fmt.Errorf("download %s: sha256 %s, controller recorded %s", id, got, snap.SHA256)
	}
	return snap, nil
}
