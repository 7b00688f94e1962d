package cli

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMetricsListenUsage(t *testing.T) {
	for _, addr := range []string{"localhost", "127.0.0.1:", "127.0.0.1:metrics", "127.0.0.1:70000", "[::1"} {
		code, _, stderr := run(t, "controller", "serve", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--metrics-listen", addr)
		if code != ExitConfig || !strings.Contains(stderr, "--metrics-listen") {
			t.Errorf("--metrics-listen %q: exit %d, %q; want exit %d naming the flag", addr, code, stderr, ExitConfig)
		}
	}
}

// TestServeMetricsListen runs 'cordon controller serve --metrics-listen'
// and scrapes /metrics over HTTP.
func TestServeMetricsListen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ctl")
	if code, _, stderr := run(t, "controller", "init", "--data-dir", dir); code != 0 {
		t.Fatalf("init: exit %d: %s", code, stderr)
	}
	// A free port for the metrics listener.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exit := make(chan int, 1)
	go func() {
		exit <- Run(ctx, []string{"controller", "serve", "--data-dir", dir, "--listen", "127.0.0.1:0", "--metrics-listen", addr}, io.Discard, io.Discard)
	}()
	var body []byte
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /metrics: %s", resp.Status)
			}
			break
		}
		select {
		case code := <-exit:
			t.Fatalf("serve exited %d before serving metrics", code)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no metrics at %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{"\ncordon_agents_connected 0\n", "\ncordon_hosts{state=\"released\"} 0\n", "\ngo_goroutines "} {
		if !strings.Contains("\n"+string(body), want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	cancel()
	select {
	case code := <-exit:
		if code != 0 {
			t.Errorf("serve exited %d after its context ended", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return after its context ended")
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Error("the metrics listener is still open after serve returned")
	}
}
