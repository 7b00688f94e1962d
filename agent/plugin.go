package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// errPluginStart marks an error from starting the plugin: no rule was
// touched.
var errPluginStart = errors.New("firewall plugin could not start")

// plugin owns the firewall plugin process: it starts it on first use,
// starts it again after a crash, and kills it when a call outlasts its
// timeout, so a hung plugin never holds an order and never stays behind.
type plugin struct {
	cfg firewall.LaunchConfig
	log *slog.Logger

	mu sync.Mutex
	c  *firewall.Client
}

func newPlugin(cfg firewall.LaunchConfig, log *slog.Logger) *plugin {
	return &plugin{cfg: cfg, log: log}
}

// client returns a running plugin, starting one if there is none or the
// last one died.
func (p *plugin) client() (*firewall.Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.c != nil && !p.c.Exited() {
		return p.c, nil
	}
	if p.c != nil {
		p.c.Close()
		p.c = nil
		p.log.Warn("firewall plugin had exited; starting it again", "plugin", p.cfg.Name)
	}
	c, err := firewall.Launch(p.cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errPluginStart, err)
	}
	p.c = c
	return c, nil
}

// kill stops the plugin process; the next call starts a new one.
func (p *plugin) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.c != nil {
		p.c.Close()
		p.c = nil
	}
}

func (p *plugin) close() { p.kill() }

// call runs fn against the plugin with a timeout. A crash or a timeout kills
// the process and is reported as firewall.ErrPluginCrashed.
func (p *plugin) call(ctx context.Context, timeout time.Duration, what string, fn func(context.Context, *firewall.Client) error) error {
	c, err := p.client()
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err = fn(cctx, c)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, firewall.ErrPluginCrashed):
		p.kill()
		return fmt.Errorf("%s: %w", what, err)
	case cctx.Err() != nil && ctx.Err() == nil:
		p.kill()
		return fmt.Errorf("%s: %w: no answer in %v, plugin process killed", what, firewall.ErrPluginCrashed, timeout)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (p *plugin) info(ctx context.Context, timeout time.Duration) (firewall.Info, error) {
	var i firewall.Info
	err := p.call(ctx, timeout, "plugin info", func(ctx context.Context, c *firewall.Client) (err error) {
		i, err = c.Info(ctx)
		return err
	})
	return i, err
}

func (p *plugin) status(ctx context.Context, timeout time.Duration) (firewall.Status, error) {
	var st firewall.Status
	err := p.call(ctx, timeout, "read firewall state", func(ctx context.Context, c *firewall.Client) (err error) {
		st, err = c.Status(ctx)
		return err
	})
	return st, err
}

func (p *plugin) isolate(ctx context.Context, timeout time.Duration, pol policy.Policy, orderID string) (firewall.Applied, error) {
	var ap firewall.Applied
	err := p.call(ctx, timeout, "isolate", func(ctx context.Context, c *firewall.Client) (err error) {
		ap, err = c.Isolate(ctx, pol, orderID)
		return err
	})
	return ap, err
}

func (p *plugin) release(ctx context.Context, timeout time.Duration, orderID string) (int, error) {
	var n int
	err := p.call(ctx, timeout, "release", func(ctx context.Context, c *firewall.Client) (err error) {
		n, err = c.Release(ctx, orderID)
		return err
	})
	return n, err
}
