package main

import (
	"context"
	"encoding/pem"
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
// so: the real main, the SDK's default credential chain and the go-plugin
// glue.
func TestMain(m *testing.M) {
	if os.Getenv("CORDON_TEST_AZURE_PLUGIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const testMSISecret = "msi-header-secret-not-real"

// TestLaunched drives the plugin as the controller does: a separate process
// through cloud.Launch, configured by its environment only (the endpoint
// override, and a managed identity that azidentity's default chain finds
// in IDENTITY_ENDPOINT and IDENTITY_HEADER, as on App Service), and the
// sentinel errors across the gRPC boundary.
func TestLaunched(t *testing.T) {
	x := newFixture(t)
	x.f.mu.Lock()
	x.f.msiHeader = testMSISecret
	x.f.mu.Unlock()
	logs := &syncBuffer{}
	c := launchAgainst(t, x.f, logs)
	ctx := context.Background()
	inst := cloud.Instance{Provider: "azure", ID: x.vmID}

	info, err := c.Info(ctx)
	if err != nil || info.Provider != "azure" {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	got, err := c.Lookup(ctx, inst)
	if err != nil || len(got.Interfaces) != 2 || got.Region != testLocation {
		t.Fatalf("Lookup = %+v, %v", got, err)
	}
	if _, err := c.Lookup(ctx, cloud.Instance{Provider: "azure", ID: x.f.resourceID(testRG, vmType, "vm-gone")}); !errors.Is(err, cloud.ErrNotFound) {
		t.Errorf("Lookup of a missing VM: %v, want ErrNotFound", err)
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
	x.f.deny("Microsoft.Network/networkInterfaces/write")
	if _, err := c.Release(ctx, inst, "order-2"); !errors.Is(err, cloud.ErrDenied) {
		t.Errorf("Release with NIC writes denied: %v, want ErrDenied", err)
	}
	x.f.allowAll()
	if _, err := c.Release(ctx, inst, "order-2"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	x.assertOriginal(t)
	x.f.mu.Lock()
	tokens := x.f.tokens
	x.f.mu.Unlock()
	if tokens == 0 {
		t.Errorf("the managed identity endpoint issued no token: the plugin did not use the environment's credential")
	}

	// The plugin logs its changes, and never the credentials.
	c.Close()
	out := logs.String()
	if !strings.Contains(out, "network interface isolated") || !strings.Contains(out, "order-1") {
		t.Errorf("plugin log lacks the changes:\n%s", out)
	}
	for _, secret := range []string{testToken, testMSISecret} {
		if strings.Contains(out, secret) {
			t.Errorf("plugin log holds a secret (%s):\n%s", secret, out)
		}
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

// launchAgainst runs this test binary as cordon-plugin-azure through
// cloud.Launch, a real go-plugin subprocess, pointed at f by its
// environment only: CORDON_AZURE_ENDPOINT, the fake's certificate in
// SSL_CERT_FILE, and the fake's managed identity endpoint; its log goes to
// logs.
func launchAgainst(t *testing.T, f *fakeARM, logs io.Writer) *cloud.Client {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(exe, filepath.Join(dir, cloud.BinaryPrefix+"azure")); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "fake-arm.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := cloud.Launch(cloud.LaunchConfig{
		Dir:          dir,
		Name:         "azure",
		Stderr:       logs,
		StartTimeout: 10 * time.Second,
		Env: []string{
			"CORDON_TEST_AZURE_PLUGIN=1",
			endpointEnv + "=" + f.srv.URL,
			"SSL_CERT_FILE=" + ca,
			"SSL_CERT_DIR=" + filepath.Join(dir, "none"),
			// Environment, workload identity and managed identity, as the
			// controller should run it: no developer tool credentials.
			"AZURE_TOKEN_CREDENTIALS=prod",
			"IDENTITY_ENDPOINT=" + f.srv.URL + "/msi/token",
			"IDENTITY_HEADER=" + testMSISecret,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}
