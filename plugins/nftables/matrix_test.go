package main

import (
	"testing"

	"github.com/cordon-ir/cordon/internal/fwtest"
	"github.com/cordon-ir/cordon/pkg/firewall"
)

// TestMatrix runs the shared isolation matrix (internal/fwtest) against the
// plugin: every starting ruleset, isolate, probe, release, compare dumps.
// Release removes the one table the plugin made, so every dump after
// release is the one before, exactly.
func TestMatrix(t *testing.T) {
	fwtest.Run(t, fwtest.Plugin{
		New:    func(t *testing.T) firewall.Firewall { return newTestPlugin(t) },
		Resets: true,
	})
}
