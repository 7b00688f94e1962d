package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/pkg/cloud"
)

// TestMain runs the test binary as the plugin when the launch test starts it
// so: the real main, the SDK's default chain and the go-plugin glue.
func TestMain(m *testing.M) {
	if os.Getenv("CORDON_TEST_AWS_PLUGIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestLaunched drives the plugin as the controller does: a separate process
// through cloud.Launch, credentials, region and endpoint from the
// environment only (the SDK's standard chain and AWS_ENDPOINT_URL_EC2), and
// the sentinel errors across the gRPC boundary.
func TestLaunched(t *testing.T) {
	x := newFixture(t)
	logs := &syncBuffer{}
	c := launchAgainst(t, x.f, logs)
	ctx := context.Background()
	inst := cloud.Instance{Provider: "aws", ID: instID}

	info, err := c.Info(ctx)
	if err != nil || info.Provider != "aws" {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	got, err := c.Lookup(ctx, inst)
	if err != nil || len(got.Interfaces) != 2 {
		t.Fatalf("Lookup = %+v, %v", got, err)
	}
	if _, err := c.Lookup(ctx, cloud.Instance{Provider: "aws", ID: "i-0fffffffffffffff0"}); !errors.Is(err, cloud.ErrNotFound) {
		t.Errorf("Lookup of a missing instance: %v, want ErrNotFound", err)
	}
	a, err := c.Isolate(ctx, inst, testPolicy, cloud.Options{}, "order-1")
	if err != nil {
		t.Fatalf("Isolate: %v", err)
	}
	if len(a.State) != 2 || len(a.Notes) == 0 {
		t.Errorf("Isolate = %+v", a)
	}
	if st, err := c.Status(ctx, inst); err != nil || !st.Isolated || st.Since.IsZero() {
		t.Errorf("Status = %+v, %v", st, err)
	}
	x.f.deny("DeleteTags")
	if _, err := c.Release(ctx, inst, "order-2"); !errors.Is(err, cloud.ErrDenied) {
		t.Errorf("Release with DeleteTags denied: %v, want ErrDenied", err)
	}
	x.f.mu.Lock()
	x.f.denied = map[string]bool{}
	x.f.mu.Unlock()
	if _, err := c.Release(ctx, inst, "order-2"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	x.assertOriginal(t)

	// The plugin logs its changes, and never the credentials.
	c.Close()
	out := logs.String()
	if !strings.Contains(out, "interface isolated") || !strings.Contains(out, "order-1") {
		t.Errorf("plugin log lacks the changes:\n%s", out)
	}
	if strings.Contains(out, "test-secret-not-real") {
		t.Errorf("plugin log holds the secret key:\n%s", out)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// launchAgainst runs this test binary as cordon-plugin-aws through
// cloud.Launch, a real go-plugin subprocess, pointed at f with test
// credentials from its environment only; its log goes to logs.
func launchAgainst(t *testing.T, f *fakeEC2, logs io.Writer) *cloud.Client {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(exe, filepath.Join(dir, cloud.BinaryPrefix+"aws")); err != nil {
		t.Fatal(err)
	}
	nowhere := filepath.Join(dir, "none")
	c, err := cloud.Launch(cloud.LaunchConfig{
		Dir:          dir,
		Name:         "aws",
		Stderr:       logs,
		StartTimeout: 10 * time.Second,
		Env: []string{
			"CORDON_TEST_AWS_PLUGIN=1",
			"AWS_ACCESS_KEY_ID=" + testKeyID,
			"AWS_SECRET_ACCESS_KEY=test-secret-not-real",
			"AWS_SESSION_TOKEN=",
			"AWS_PROFILE=",
			"AWS_REGION=eu-west-1",
			"AWS_ENDPOINT_URL_EC2=" + f.srv.URL,
			"AWS_CONFIG_FILE=" + nowhere,
			"AWS_SHARED_CREDENTIALS_FILE=" + nowhere,
			"AWS_EC2_METADATA_DISABLED=true",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}
