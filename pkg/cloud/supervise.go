package cloud

import (
	"context"
	"errors"
	"sync"

	"github.com/cordon-ir/cordon/pkg/policy"
)

// Supervised is a Layer that runs the plugin cfg names and starts it again
// when it has crashed: the call that found it dead fails with
// ErrPluginCrashed (its outcome at the provider is unknown: a retry, or
// Status, finds out), and the next call runs on a new process. Close stops
// the process.
type Supervised struct {
	cfg LaunchConfig
	mu  sync.Mutex
	c   *Client
}

var _ Layer = (*Supervised)(nil)

// Supervise starts the plugin cfg names and returns it supervised; the
// error is Launch's.
func Supervise(cfg LaunchConfig) (*Supervised, error) {
	s := &Supervised{cfg: cfg}
	if _, err := s.client(); err != nil {
		return nil, err
	}
	return s, nil
}

// client returns the running plugin, starting it again if it has exited.
func (s *Supervised) client() (*Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil && !s.c.Exited() {
		return s.c, nil
	}
	if s.c != nil {
		s.c.Close()
		s.c = nil
	}
	c, err := Launch(s.cfg)
	if err != nil {
		return nil, err
	}
	s.c = c
	return c, nil
}

// done drops a plugin that crashed during a call, so that the next call
// starts a new one.
func (s *Supervised) done(c *Client, err error) error {
	if errors.Is(err, ErrPluginCrashed) {
		s.mu.Lock()
		if s.c == c {
			c.Close()
			s.c = nil
		}
		s.mu.Unlock()
	}
	return err
}

// Close stops the plugin process.
func (s *Supervised) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil {
		s.c.Close()
		s.c = nil
	}
}

// Info implements Layer.
func (s *Supervised) Info(ctx context.Context) (Info, error) {
	c, err := s.client()
	if err != nil {
		return Info{}, err
	}
	i, err := c.Info(ctx)
	return i, s.done(c, err)
}

// Lookup implements Layer.
func (s *Supervised) Lookup(ctx context.Context, inst Instance) (Instance, error) {
	c, err := s.client()
	if err != nil {
		return inst, err
	}
	i, err := c.Lookup(ctx, inst)
	return i, s.done(c, err)
}

// Isolate implements Layer.
func (s *Supervised) Isolate(ctx context.Context, inst Instance, p policy.Policy, o Options, orderID string) (Applied, error) {
	c, err := s.client()
	if err != nil {
		return Applied{}, err
	}
	a, err := c.Isolate(ctx, inst, p, o, orderID)
	return a, s.done(c, err)
}

// Release implements Layer.
func (s *Supervised) Release(ctx context.Context, inst Instance, orderID string) (Applied, error) {
	c, err := s.client()
	if err != nil {
		return Applied{}, err
	}
	a, err := c.Release(ctx, inst, orderID)
	return a, s.done(c, err)
}

// Status implements Layer.
func (s *Supervised) Status(ctx context.Context, inst Instance) (Status, error) {
	c, err := s.client()
	if err != nil {
		return Status{}, err
	}
	st, err := c.Status(ctx, inst)
	return st, s.done(c, err)
}
