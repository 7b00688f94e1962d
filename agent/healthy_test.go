package agent

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestHealthy(t *testing.T) {
	a := &Agent{cfg: Config{PluginTimeout: time.Second}} // stuck after 32 s
	if err := a.Healthy(context.Background()); err != nil {
		t.Errorf("before the loop started: %v", err)
	}
	a.beat.Store(time.Now().Add(-31 * time.Second).UnixNano())
	if err := a.Healthy(context.Background()); err != nil {
		t.Errorf("a round within the longest legitimate one: %v", err)
	}
	a.beat.Store(time.Now().Add(-33 * time.Second).UnixNano())
	if err := a.Healthy(context.Background()); err == nil || !strings.Contains(err.Error(), "stuck for 33s") {
		t.Errorf("a loop stuck for 33 s: %v", err)
	}
}

// TestHousekeepingBeats: the loop beats also with drift repair off, and
// stops beating when it stops.
func TestHousekeepingBeats(t *testing.T) {
	a := &Agent{cfg: Config{PluginTimeout: time.Second, DriftInterval: -1}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.watchDrift(ctx) }()
	deadline := time.Now().Add(3 * time.Second)
	first := int64(0)
	for time.Now().Before(deadline) {
		b := a.beat.Load()
		if first == 0 {
			first = b
		} else if b > first {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done
	if a.beat.Load() <= first || first == 0 {
		t.Fatalf("no second beat within 3 s with drift repair off (first %d, last %d)", first, a.beat.Load())
	}
}
