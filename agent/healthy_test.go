package agent

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestHealthy(t *testing.T) {
	a := &Agent{cfg: Config{PluginTimeout: time.Second, DriftInterval: 250 * time.Millisecond}} // stuck after 1+22+30 = 53 s
	if err := a.Healthy(context.Background()); err != nil {
		t.Errorf("before the loop started: %v", err)
	}
	a.beat.Store(time.Now().Add(-52 * time.Second).UnixNano())
	if err := a.Healthy(context.Background()); err != nil {
		t.Errorf("a round within the longest legitimate one: %v", err)
	}
	a.beat.Store(time.Now().Add(-54 * time.Second).UnixNano())
	if err := a.Healthy(context.Background()); err == nil || !strings.Contains(err.Error(), "stuck for 54s") {
		t.Errorf("a loop stuck for 54 s: %v", err)
	}
	// A long drift interval is a longer legitimate wait.
	a.cfg.DriftInterval = time.Minute
	if err := a.Healthy(context.Background()); err != nil {
		t.Errorf("54 s with a 1 m drift interval: %v", err)
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
