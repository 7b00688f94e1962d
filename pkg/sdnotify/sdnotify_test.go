package sdnotify

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// listen makes a notification socket as systemd does (a Unix datagram
// socket named in NOTIFY_SOCKET) and returns what arrives on it.
func listen(t *testing.T) <-chan string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", p)
	ch := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch
}

func next(t *testing.T, ch <-chan string, d time.Duration) string {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(d):
		return ""
	}
}

func TestReady(t *testing.T) {
	ch := listen(t)
	if ok, err := Ready("plugin nftables"); !ok || err != nil {
		t.Fatalf("Ready: %v %v", ok, err)
	}
	if m := next(t, ch, time.Second); m != "READY=1\nSTATUS=plugin nftables" {
		t.Errorf("got %q", m)
	}
	Stopping()
	if m := next(t, ch, time.Second); m != "STOPPING=1" {
		t.Errorf("got %q", m)
	}
}

func TestNotUnderSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	if ok, err := Ready("x"); ok || err != nil {
		t.Errorf("Ready without NOTIFY_SOCKET: %v %v", ok, err)
	}
	// No watchdog asked for: returns at once.
	done := make(chan struct{})
	go func() {
		Watchdog(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), func(context.Context) error { return nil })
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Watchdog ran without WATCHDOG_USEC")
	}
}

// TestWatchdog: fed while healthy, not while unhealthy, fed again after.
func TestWatchdog(t *testing.T) {
	ch := listen(t)
	t.Setenv("WATCHDOG_USEC", strconv.Itoa(int((150 * time.Millisecond).Microseconds())))
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	var sick atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watchdog(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), func(context.Context) error {
			if sick.Load() {
				return errors.New("stuck")
			}
			return nil
		})
	}()
	defer func() { cancel(); <-done }()
	for i := 0; i < 3; i++ {
		if m := next(t, ch, time.Second); m != "WATCHDOG=1" {
			t.Fatalf("healthy: got %q, want WATCHDOG=1", m)
		}
	}
	sick.Store(true)
	time.Sleep(120 * time.Millisecond)
	for len(ch) > 0 {
		<-ch // pings sent before it fell sick
	}
	if m := next(t, ch, 300*time.Millisecond); m != "" {
		t.Fatalf("unhealthy, yet sent %q", m)
	}
	sick.Store(false)
	if m := next(t, ch, time.Second); !strings.HasPrefix(m, "WATCHDOG=1") {
		t.Fatalf("healthy again: got %q", m)
	}
}
