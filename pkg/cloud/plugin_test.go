package cloud_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// The test binary is its own plugin: run under a plugin's name (a symlink
// cordon-plugin-fake, see pluginDir) it serves fakeLayer and exits, so it
// can never run the tests again. Its Info reports versionEnv, which
// LaunchConfig.Env sets.
const (
	versionEnv  = "CORDON_CLOUD_TEST_VERSION"
	fakeVersion = "1.2.3-test"
)

func TestMain(m *testing.M) {
	if strings.HasPrefix(filepath.Base(os.Args[0]), cloud.BinaryPrefix) {
		cloud.Serve(fakeLayer{})
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Fixtures: every field of every type set, so that a field the glue drops
// fails the round trip (TestFixturesComplete keeps them so).
var (
	wantInfo = cloud.Info{Name: "fake", Version: fakeVersion, Provider: "aws"}

	// askInstance is what the controller knows before Lookup, foundInstance
	// what the plugin answers.
	askInstance = cloud.Instance{
		Provider:   "aws",
		ID:         "i-0abc",
		Region:     "eu-west-3",
		Zone:       "eu-west-3a",
		Project:    "proj-1",
		PrivateIPs: []netip.Addr{netip.MustParseAddr("10.0.0.9")},
		Interfaces: []string{"eni-0"},
	}
	foundInstance = cloud.Instance{
		Provider: "gcp",
		ID:       "vm-1",
		Region:   "europe-west9",
		Zone:     "europe-west9-b",
		Project:  "ir-prod",
		PrivateIPs: []netip.Addr{
			netip.MustParseAddr("10.0.1.5"),
			netip.MustParseAddr("2001:db8::5"),
			netip.MustParseAddr("fe80::1%eth0"),
		},
		Interfaces: []string{"nic0", "nic1"},
	}
	wantPolicy = policy.Policy{
		Controllers: []policy.Endpoint{
			{Addr: netip.MustParseAddr("198.18.0.1"), Port: 7443},
			{Addr: netip.MustParseAddr("2001:db8::1"), Port: 443},
		},
		Allow: []netip.Prefix{netip.MustParsePrefix("198.18.0.4/30"), netip.MustParsePrefix("2001:db8:1::/64")},
		DNS:   []netip.Addr{netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("2001:db8::53")},
		DHCP:  true,
	}
	wantOptions = cloud.Options{
		Snapshot:              true,
		Tag:                   true,
		TerminationProtection: true,
		Detach:                true,
		RevokeSessions:        true,
		Incident:              "INC-42",
	}
	wantOrder     = "ord-7"
	wantIsolated  = cloud.Applied{State: []string{"eni-0: sg-iso (was sg-web, sg-db)"}, Notes: []string{"snapshot snap-1", "DNS: block on the host"}}
	wantReleased  = cloud.Applied{State: []string{"eni-0: sg-web, sg-db"}, Notes: []string{"tags removed"}}
	wantStatusFix = cloud.Status{
		Isolated: true,
		State:    []string{"eni-0: sg-iso"},
		Partial:  "eni-1 has its original groups",
		Since:    time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC),
	}
)

// fakeLayer checks that every argument arrived as the fixtures say and
// answers with fixtures. An instance id drives other behaviour: "err:KIND"
// returns that error wrapped, "sleep" waits for the context, "crash" exits
// mid-call, "panic" panics, "unknown" reads back an unknown Status.
type fakeLayer struct{}

var fakeErrors = map[string]error{
	"notfound":  cloud.ErrNotFound,
	"denied":    cloud.ErrDenied,
	"throttled": cloud.ErrThrottled,
	"invalid":   cloud.ErrInvalid,
	"deadline":  context.DeadlineExceeded,
	"canceled":  context.Canceled,
	"other":     errors.New("something else"),
}

func behave(ctx context.Context, op string, inst cloud.Instance) (handled bool, err error) {
	switch id := inst.ID; {
	case strings.HasPrefix(id, "err:"):
		kind, ok := fakeErrors[strings.TrimPrefix(id, "err:")]
		if !ok {
			return true, fmt.Errorf("fake: no error kind %q", id)
		}
		return true, fmt.Errorf("fake %s %s: %w", op, id, kind)
	case id == "sleep":
		<-ctx.Done()
		return true, ctx.Err()
	case id == "crash":
		os.Exit(3)
	case id == "panic":
		panic("fake plugin panics")
	}
	return false, nil
}

func mismatch(what string, got, want any) error {
	return fmt.Errorf("fake plugin got %s %+v, want %+v", what, got, want)
}

func (fakeLayer) Info(context.Context) (cloud.Info, error) {
	return cloud.Info{Name: "fake", Version: os.Getenv(versionEnv), Provider: "aws"}, nil
}

func (fakeLayer) Lookup(ctx context.Context, inst cloud.Instance) (cloud.Instance, error) {
	if ok, err := behave(ctx, "lookup", inst); ok {
		return cloud.Instance{}, err
	}
	if !reflect.DeepEqual(inst, askInstance) {
		return cloud.Instance{}, mismatch("instance", inst, askInstance)
	}
	return foundInstance, nil
}

func (fakeLayer) Isolate(ctx context.Context, inst cloud.Instance, p policy.Policy, o cloud.Options, orderID string) (cloud.Applied, error) {
	if ok, err := behave(ctx, "isolate", inst); ok {
		return cloud.Applied{}, err
	}
	switch {
	case !reflect.DeepEqual(inst, foundInstance):
		return cloud.Applied{}, mismatch("instance", inst, foundInstance)
	case !reflect.DeepEqual(p, wantPolicy):
		return cloud.Applied{}, mismatch("policy", p, wantPolicy)
	case o != wantOptions:
		return cloud.Applied{}, mismatch("options", o, wantOptions)
	case orderID != wantOrder:
		return cloud.Applied{}, mismatch("order id", orderID, wantOrder)
	}
	return wantIsolated, nil
}

func (fakeLayer) Release(ctx context.Context, inst cloud.Instance, orderID string) (cloud.Applied, error) {
	if ok, err := behave(ctx, "release", inst); ok {
		return cloud.Applied{}, err
	}
	if !reflect.DeepEqual(inst, foundInstance) || orderID != wantOrder {
		return cloud.Applied{}, mismatch("instance and order", []any{inst, orderID}, []any{foundInstance, wantOrder})
	}
	return wantReleased, nil
}

func (fakeLayer) Status(ctx context.Context, inst cloud.Instance) (cloud.Status, error) {
	if ok, err := behave(ctx, "status", inst); ok {
		return cloud.Status{}, err
	}
	if inst.ID == "unknown" {
		return cloud.Status{}, nil
	}
	if !reflect.DeepEqual(inst, foundInstance) {
		return cloud.Status{}, mismatch("instance", inst, foundInstance)
	}
	// In another zone: the instant must cross, not the location.
	st := wantStatusFix
	st.Since = st.Since.In(time.FixedZone("UTC+2", 2*3600))
	return st, nil
}

// pluginDir returns a directory holding the test binary as
// cordon-plugin-fake.
func pluginDir(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(exe, filepath.Join(dir, cloud.BinaryPrefix+"fake")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// launch starts the fake plugin; t's cleanup closes it.
func launch(t *testing.T, mod ...func(*cloud.LaunchConfig)) *cloud.Client {
	t.Helper()
	cfg := cloud.LaunchConfig{
		Dir:       pluginDir(t),
		Name:      "fake",
		SocketDir: t.TempDir(),
		Stderr:    io.Discard,
		Env:       []string{versionEnv + "=" + fakeVersion},
	}
	for _, f := range mod {
		f(&cfg)
	}
	c, err := cloud.Launch(cfg)
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// TestFixturesComplete fails when a type gains a field the fixtures (and so
// the round trip) do not set.
func TestFixturesComplete(t *testing.T) {
	for name, v := range map[string]any{
		"Info": wantInfo, "Instance (ask)": askInstance, "Instance (found)": foundInstance,
		"Policy": wantPolicy, "Endpoint": wantPolicy.Controllers[0], "Options": wantOptions,
		"Applied (isolate)": wantIsolated, "Applied (release)": wantReleased, "Status": wantStatusFix,
	} {
		rv := reflect.ValueOf(v)
		for i := range rv.NumField() {
			if rv.Field(i).IsZero() {
				t.Errorf("fixture %s leaves %s unset", name, rv.Type().Field(i).Name)
			}
		}
	}
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	c := launch(t)
	ctx := ctx(t)

	info, err := c.Info(ctx)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if info != wantInfo {
		t.Errorf("Info = %+v, want %+v (Version comes from LaunchConfig.Env)", info, wantInfo)
	}

	found, err := c.Lookup(ctx, askInstance)
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	if !reflect.DeepEqual(found, foundInstance) {
		t.Errorf("Lookup = %+v, want %+v", found, foundInstance)
	}

	a, err := c.Isolate(ctx, foundInstance, wantPolicy, wantOptions, wantOrder)
	if err != nil {
		t.Fatalf("Isolate: %v", err)
	}
	if !reflect.DeepEqual(a, wantIsolated) {
		t.Errorf("Isolate = %+v, want %+v", a, wantIsolated)
	}

	st, err := c.Status(ctx, foundInstance)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if !st.Since.Equal(wantStatusFix.Since) {
		t.Errorf("Status.Since = %v, want %v", st.Since, wantStatusFix.Since)
	}
	st.Since = wantStatusFix.Since
	if !reflect.DeepEqual(st, wantStatusFix) {
		t.Errorf("Status = %+v, want %+v", st, wantStatusFix)
	}

	st, err = c.Status(ctx, cloud.Instance{ID: "unknown"})
	if err != nil {
		t.Fatalf("Status (unknown): %v", err)
	}
	if !st.Since.IsZero() || !reflect.DeepEqual(st, cloud.Status{}) {
		t.Errorf("Status (unknown) = %+v, want the zero Status", st)
	}

	r, err := c.Release(ctx, foundInstance, wantOrder)
	if err != nil {
		t.Fatalf("Release: %v", err)
	}
	if !reflect.DeepEqual(r, wantReleased) {
		t.Errorf("Release = %+v, want %+v", r, wantReleased)
	}
}

// TestErrors sends each sentinel across the boundary from each method.
func TestErrors(t *testing.T) {
	t.Parallel()
	c := launch(t)
	sentinels := []error{cloud.ErrNotFound, cloud.ErrDenied, cloud.ErrThrottled, cloud.ErrInvalid,
		cloud.ErrPluginCrashed, context.DeadlineExceeded, context.Canceled}
	calls := map[string]func(context.Context, cloud.Instance) error{
		"lookup": func(ctx context.Context, i cloud.Instance) error { _, err := c.Lookup(ctx, i); return err },
		"isolate": func(ctx context.Context, i cloud.Instance) error {
			_, err := c.Isolate(ctx, i, wantPolicy, wantOptions, wantOrder)
			return err
		},
		"release": func(ctx context.Context, i cloud.Instance) error { _, err := c.Release(ctx, i, wantOrder); return err },
		"status":  func(ctx context.Context, i cloud.Instance) error { _, err := c.Status(ctx, i); return err },
	}
	for kind, want := range fakeErrors {
		for op, call := range calls {
			t.Run(kind+"/"+op, func(t *testing.T) {
				id := "err:" + kind
				err := call(ctx(t), cloud.Instance{ID: id})
				if err == nil {
					t.Fatal("no error")
				}
				for _, s := range sentinels {
					if got, wantIs := errors.Is(err, s), s == want; got != wantIs {
						t.Errorf("errors.Is(%v, %v) = %v, want %v", err, s, got, wantIs)
					}
				}
				// The plugin's own words survive.
				if msg := fmt.Sprintf("fake %s %s: ", op, id); !strings.Contains(err.Error(), msg) {
					t.Errorf("error %q does not carry the plugin's %q", err, msg)
				}
				var pe *cloud.PluginError
				if !errors.As(err, &pe) {
					t.Errorf("error %T is not a *PluginError", err)
				}
			})
		}
	}
}

// TestInvalidRequest: what the glue cannot decode or validate never reaches
// the plugin and comes back as ErrInvalid.
func TestInvalidRequest(t *testing.T) {
	t.Parallel()
	c := launch(t)
	noController := wantPolicy
	noController.Controllers = nil
	badIP := foundInstance
	badIP.PrivateIPs = []netip.Addr{{}}
	for name, call := range map[string]func() error{
		"policy without controller": func() error {
			_, err := c.Isolate(ctx(t), foundInstance, noController, wantOptions, wantOrder)
			return err
		},
		"zero private address": func() error { _, err := c.Lookup(ctx(t), badIP); return err },
	} {
		t.Run(name, func(t *testing.T) {
			if err := call(); !errors.Is(err, cloud.ErrInvalid) {
				t.Errorf("error %v, want ErrInvalid", err)
			}
		})
	}
}

func TestClientDeadline(t *testing.T) {
	t.Parallel()
	c := launch(t)
	cctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.Lookup(cctx, cloud.Instance{ID: "sleep"})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, cloud.ErrPluginCrashed) {
		t.Fatalf("error %v, want context.DeadlineExceeded only", err)
	}
	// The plugin lives on.
	if _, err := c.Info(ctx(t)); err != nil {
		t.Errorf("Info after a deadline: %v", err)
	}
}

func TestCrashMidCall(t *testing.T) {
	t.Parallel()
	for _, id := range []string{"crash", "panic"} {
		t.Run(id, func(t *testing.T) {
			t.Parallel()
			c := launch(t)
			if _, err := c.Info(ctx(t)); err != nil {
				t.Fatalf("Info: %v", err)
			}
			_, err := c.Isolate(ctx(t), cloud.Instance{ID: id}, wantPolicy, wantOptions, wantOrder)
			if !errors.Is(err, cloud.ErrPluginCrashed) {
				t.Fatalf("Isolate: error %v, want ErrPluginCrashed", err)
			}
			if !strings.Contains(err.Error(), cloud.ErrPluginCrashed.Error()) {
				t.Errorf("error %q does not say the plugin crashed", err)
			}
			// Every later call says so too.
			if _, err := c.Status(ctx(t), foundInstance); !errors.Is(err, cloud.ErrPluginCrashed) {
				t.Errorf("Status after the crash: error %v, want ErrPluginCrashed", err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for !c.Exited() && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if !c.Exited() {
				t.Error("Exited() = false after the crash")
			}
		})
	}
}

func TestChecksumPin(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	good := "sha256:" + hex.EncodeToString(sum[:])
	c := launch(t, func(cfg *cloud.LaunchConfig) { cfg.SHA256 = good })
	if _, err := c.Info(ctx(t)); err != nil {
		t.Errorf("Info with the right pin: %v", err)
	}

	sum[0] ^= 0xff
	_, err = cloud.Launch(cloud.LaunchConfig{
		Dir: pluginDir(t), Name: "fake", SHA256: hex.EncodeToString(sum[:]), Stderr: io.Discard,
	})
	if !errors.Is(err, cloud.ErrChecksumMismatch) {
		t.Errorf("wrong pin: error %v, want ErrChecksumMismatch", err)
	}
}

func TestLaunchErrors(t *testing.T) {
	t.Parallel()
	dir := pluginDir(t)
	for name, script := range map[string]string{
		"noexec": "",
		"hang":   "exec sleep 30",
		"talk":   "echo not a plugin; echo it says this >&2",
	} {
		mode := os.FileMode(0o755)
		if name == "noexec" {
			mode = 0o644
		}
		if err := os.WriteFile(filepath.Join(dir, cloud.BinaryPrefix+name), []byte("#!/bin/sh\n"+script+"\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		cfg  cloud.LaunchConfig
		want error // nil: any error
	}{
		{"missing", cloud.LaunchConfig{Dir: dir, Name: "aws"}, cloud.ErrPluginNotFound},
		{"not executable", cloud.LaunchConfig{Dir: dir, Name: "noexec"}, cloud.ErrPluginNotFound},
		{"bad name", cloud.LaunchConfig{Dir: dir, Name: "../fake"}, nil},
		{"bad env", cloud.LaunchConfig{Dir: dir, Name: "fake", Env: []string{"=x"}}, nil},
		{"bad pin", cloud.LaunchConfig{Dir: dir, Name: "fake", SHA256: "abc"}, nil},
		{"hangs", cloud.LaunchConfig{Dir: dir, Name: "hang", StartTimeout: 300 * time.Millisecond}, cloud.ErrHandshake},
		{"not a plugin", cloud.LaunchConfig{Dir: dir, Name: "talk"}, cloud.ErrHandshake},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Stderr = io.Discard
			c, err := cloud.Launch(tc.cfg)
			if err == nil {
				c.Close()
				t.Fatal("Launch succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
		})
	}
}

// buildPlugin builds the package pkg (relative to the module root) as
// dir/cordon-plugin-name.
func buildPlugin(t *testing.T, pkg, name string) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, cloud.BinaryPrefix+name), pkg)
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return dir
}

// TestFirewallPluginRefused: a firewall plugin fails the cloud handshake
// with a clear error, and the cloud plugin fails the firewall one.
func TestFirewallPluginRefused(t *testing.T) {
	t.Parallel()
	dir := buildPlugin(t, "./plugins/nftables", "nftables")
	c, err := cloud.Launch(cloud.LaunchConfig{Dir: dir, Name: "nftables", Stderr: io.Discard})
	if err == nil {
		c.Close()
		t.Fatal("a firewall plugin launched as a cloud plugin")
	}
	if !errors.Is(err, cloud.ErrHandshake) {
		t.Errorf("error %v, want ErrHandshake", err)
	}
	for _, want := range []string{"cordon-plugin-nftables", "did not start", "stderr: This binary is a plugin"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	t.Logf("firewall plugin as cloud: %v", err)

	fw, err := firewall.Launch(firewall.LaunchConfig{Dir: pluginDir(t), Name: "fake", Stderr: io.Discard, StartTimeout: 5 * time.Second})
	if err == nil {
		fw.Close()
		t.Fatal("the cloud test plugin launched as a firewall plugin")
	}
	t.Logf("cloud plugin as firewall: %v", err)
}

// TestSupervisedRestarts: a supervised plugin that crashes fails that call
// with ErrPluginCrashed, and the next call runs on a new process.
func TestSupervisedRestarts(t *testing.T) {
	s, err := cloud.Supervise(cloud.LaunchConfig{Dir: pluginDir(t), Name: "fake", SocketDir: t.TempDir(), Stderr: io.Discard,
		Env: []string{versionEnv + "=" + fakeVersion}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, err := s.Isolate(ctx(t), cloud.Instance{ID: "crash"}, wantPolicy, wantOptions, wantOrder); !errors.Is(err, cloud.ErrPluginCrashed) {
		t.Fatalf("Isolate on a crashing plugin: %v, want ErrPluginCrashed", err)
	}
	if info, err := s.Info(ctx(t)); err != nil || info.Name == "" {
		t.Errorf("Info after the crash = %+v, %v; want a new process answering", info, err)
	}
}
