// Package labtest adapts netlab to Go tests: a lab per test, removed by
// t.Cleanup even when the test fails.
package labtest

import (
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/cordon-ir/cordon/internal/netlab"
)

// RequireEnv is the environment variable that turns a missing capability
// into a test failure instead of a skip. make test sets it when run as root,
// so CI never skips the namespace tests silently.
const RequireEnv = "CORDON_REQUIRE_NETNS"

// New returns a lab that t's cleanup removes. It skips t when namespaces
// cannot be made here, unless RequireEnv is set, in which case it fails.
func New(t testing.TB) *netlab.Lab {
	t.Helper()
	Require(t)
	l, err := netlab.New()
	if err != nil {
		t.Fatalf("netlab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("netlab cleanup: %v", err)
		}
	})
	return l
}

// Require skips t when namespaces cannot be made here, unless RequireEnv
// is set, in which case it fails t.
func Require(t testing.TB) {
	t.Helper()
	if err := netlab.Available(); err != nil {
		if os.Getenv(RequireEnv) != "" {
			t.Fatalf("namespace test cannot run: %v (%s is set)", err, RequireEnv)
		}
		t.Skipf("skipping namespace test: %v (run as root, as CI does)", err)
	}
}

// AddHost adds a host to l or fails t.
func AddHost(t testing.TB, l *netlab.Lab, name, v4, v6 string) *netlab.Host {
	t.Helper()
	var p4, p6 netip.Prefix
	if v4 != "" {
		p4 = netip.MustParsePrefix(v4)
	}
	if v6 != "" {
		p6 = netip.MustParsePrefix(v6)
	}
	h, err := l.AddHost(name, p4, p6)
	if err != nil {
		t.Fatalf("add host %s: %v", name, err)
	}
	return h
}

// childEnv marks a test binary re-run inside a namespace by RunChild; its
// value is the name of the test to run there.
const childEnv = "CORDON_LABTEST_CHILD"

// IsChild reports whether this process is the copy of t's test binary that
// RunChild started inside a namespace for t. A test calls it first:
//
//	func TestX(t *testing.T) {
//		if labtest.IsChild(t) {
//			... the part that runs inside the namespace ...
//			return
//		}
//		l := labtest.New(t)
//		h := labtest.AddHost(t, l, "host", "198.18.0.2/24", "")
//		labtest.RunChild(t, h)
//	}
func IsChild(t testing.TB) bool {
	return os.Getenv(childEnv) == t.Name()
}

// RunChild runs t again in a copy of the test binary inside h's namespace,
// with env added to the environment, and fails t if the copy fails. Its
// output appears in t's log.
func RunChild(t testing.TB, h *netlab.Host, env ...string) {
	t.Helper()
	pattern := ""
	for i, part := range strings.Split(t.Name(), "/") {
		if i > 0 {
			pattern += "/"
		}
		pattern += "^" + regexp.QuoteMeta(part) + "$"
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(exe, "-test.run", pattern, "-test.count=1", "-test.v")
	cmd.Env = append(append(os.Environ(), childEnv+"="+t.Name()), env...)
	out, err := cmd.CombinedOutput()
	t.Logf("inside namespace %s:\n%s", h.NS, out)
	if err != nil {
		t.Fatalf("test inside namespace %s failed: %v", h.NS, err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("test inside namespace %s did not run %s", h.NS, t.Name())
	}
}
