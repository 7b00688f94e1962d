// Command leakyplugin is a firewall plugin for tests that says it isolated
// the host and changes nothing: what a broken or subverted plugin would
// do. The agent's self-test must catch it.
package main

import (
	"context"
	"sync"

	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/policy"
)

type leaky struct {
	mu  sync.Mutex
	pol *policy.Policy
}

const digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

func (l *leaky) Info(context.Context) (firewall.Info, error) {
	return firewall.Info{Name: "leaky", Version: "0"}, nil
}

func (l *leaky) Isolate(_ context.Context, p policy.Policy, _ string) (firewall.Applied, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pol = &p
	return firewall.Applied{Digest: digest, Rules: []string{"(nothing)"}}, nil
}

func (l *leaky) Release(context.Context, string) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pol = nil
	return 0, nil
}

func (l *leaky) Status(context.Context) (firewall.Status, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pol == nil {
		return firewall.Status{}, nil
	}
	return firewall.Status{Isolated: true, Digest: digest, Rules: []string{"(nothing)"}, Policy: l.pol}, nil
}

func main() { firewall.Serve(&leaky{}) }
