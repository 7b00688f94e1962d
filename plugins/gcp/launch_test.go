package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
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
// so: the real main, Application Default Credentials and the go-plugin glue.
func TestMain(m *testing.M) {
	if os.Getenv("CORDON_TEST_GCP_PLUGIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const testToken = "ya29.test-token-not-real"

// TestLaunched drives the plugin as the controller does: a separate process
// through cloud.Launch, configured by its environment only (a service
// account key file through GOOGLE_APPLICATION_CREDENTIALS, whose token
// endpoint is the fake; GOOGLE_CLOUD_PROJECT; CORDON_GCP_ENDPOINT), and the
// sentinel errors across the gRPC boundary.
func TestLaunched(t *testing.T) {
	x := newFixture(t)
	logs := &syncBuffer{}
	key := launchCredentials(t, x.f)
	c := launchAgainst(t, x.f, key, logs)
	ctx := context.Background()
	inst := cloud.Instance{Provider: "gcp", ID: instName, Zone: zone} // the project from GOOGLE_CLOUD_PROJECT

	info, err := c.Info(ctx)
	if err != nil || info.Provider != "gcp" {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	got, err := c.Lookup(ctx, inst)
	if err != nil || len(got.Interfaces) != 2 || got.Project != project {
		t.Fatalf("Lookup = %+v, %v", got, err)
	}
	if _, err := c.Lookup(ctx, cloud.Instance{Provider: "gcp", ID: "pay-db-99", Zone: zone}); !errors.Is(err, cloud.ErrNotFound) {
		t.Errorf("Lookup of a missing instance: %v, want ErrNotFound", err)
	}
	a, err := c.Isolate(ctx, inst, testPolicy, cloud.Options{}, "order-1")
	if err != nil {
		t.Fatalf("Isolate: %v", err)
	}
	if len(a.State) != 3 || len(a.Notes) == 0 {
		t.Errorf("Isolate = %+v", a)
	}
	if st, err := c.Status(ctx, inst); err != nil || !st.Isolated || st.Since.IsZero() {
		t.Errorf("Status = %+v, %v", st, err)
	}
	x.f.deny("compute.instances.setTags")
	if _, err := c.Release(ctx, inst, "order-2"); !errors.Is(err, cloud.ErrDenied) {
		t.Errorf("Release with setTags denied: %v, want ErrDenied", err)
	}
	x.f.allow("compute.instances.setTags")
	if _, err := c.Release(ctx, inst, "order-2"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	x.assertOriginal(t)
	x.f.mu.Lock()
	tokens := x.f.tokens
	x.f.mu.Unlock()
	if tokens == 0 {
		t.Errorf("the plugin never asked the token endpoint: not the service account's credentials")
	}

	// The plugin logs its changes, and never the credentials.
	c.Close()
	out := logs.String()
	for _, want := range []string{"instance isolated", "firewall rule created", "order-1", "instance released"} {
		if !strings.Contains(out, want) {
			t.Errorf("plugin log lacks %q:\n%s", want, out)
		}
	}
	for _, secret := range []string{testToken, "PRIVATE KEY", key[40:80]} {
		if strings.Contains(out, secret) {
			t.Errorf("plugin log holds %q:\n%s", secret, out)
		}
	}
}

// launchCredentials writes a service account key file of a fresh RSA key,
// whose token endpoint is the fake's, and has the fake require the token it
// hands out; it returns the key's PEM.
func launchCredentials(t *testing.T, f *fakeCompute) string {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.token, f.tokenKey = testToken, &k.PublicKey
	f.mu.Unlock()
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
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

// launchAgainst runs this test binary as cordon-plugin-gcp through
// cloud.Launch, a real go-plugin subprocess, pointed at f with the service
// account key keyPEM, from its environment only; its log goes to logs.
func launchAgainst(t *testing.T, f *fakeCompute, keyPEM string, logs io.Writer) *cloud.Client {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(exe, filepath.Join(dir, cloud.BinaryPrefix+"gcp")); err != nil {
		t.Fatal(err)
	}
	creds, _ := json.Marshal(map[string]string{
		"type":           "service_account",
		"project_id":     project,
		"private_key_id": "0123456789abcdef0123456789abcdef01234567",
		"private_key":    keyPEM,
		"client_email":   "cordon@" + project + ".iam.gserviceaccount.com",
		"client_id":      "100000000000000000001",
		"token_uri":      f.srv.URL + tokenPath,
	})
	credsFile := filepath.Join(dir, "sa.json")
	if err := os.WriteFile(credsFile, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := cloud.Launch(cloud.LaunchConfig{
		Dir:          dir,
		Name:         "gcp",
		Stderr:       logs,
		StartTimeout: 10 * time.Second,
		Env: []string{
			"CORDON_TEST_GCP_PLUGIN=1",
			"GOOGLE_APPLICATION_CREDENTIALS=" + credsFile,
			"GOOGLE_CLOUD_PROJECT=" + project,
			"CORDON_GCP_ENDPOINT=" + f.srv.URL,
			"GOOGLE_API_USE_CLIENT_CERTIFICATE=false",
			"GOOGLE_API_USE_MTLS_ENDPOINT=never",
			"GOOGLE_SDK_GO_LOGGING_LEVEL=debug", // the plugin must silence the SDK's log anyway
			"CLOUDSDK_CONFIG=" + filepath.Join(dir, "gcloud"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}
