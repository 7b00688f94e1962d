// Package e2e tests Cordon end to end on real kernels: a controller, an
// agent with the real iptables plugin and an outside peer, each in a
// network namespace of its own, run as the built binaries (package stage).
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/internal/netlab"
	"github.com/cordon-ir/cordon/internal/netlab/labtest"
	"github.com/cordon-ir/cordon/internal/stage"
)

// binDir holds the binaries TestMain built.
var binDir string

func TestMain(m *testing.M) {
	code := func() int {
		if netlab.Available() != nil {
			return m.Run() // every test skips (or fails when required)
		}
		if os.Getenv("CORDON_LABTEST_CHILD") != "" {
			return m.Run() // a copy inside a namespace (labtest.RunChild): the parent built what it needs
		}
		dir, err := os.MkdirTemp("", "cordon-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if err := stage.Build("../..", dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		binDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

// world is a stage.Stage whose failures fail the test.
type world struct {
	*stage.Stage
	t *testing.T
}

const (
	hostName                     = stage.HostName
	hostV4, outV4, hostV6, outV6 = stage.HostV4, stage.OutV4, stage.HostV6, stage.OutV6
)

// newWorld sets the scene with the controller running; t's cleanup removes
// it and, if t failed, logs the controller's and the agent's output.
func newWorld(t *testing.T) *world {
	t.Helper()
	labtest.Require(t)
	s, err := stage.New(binDir, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w := &world{Stage: s, t: t}
	t.Cleanup(func() {
		if t.Failed() {
			if s.CtlLog != nil {
				t.Logf("controller log:\n%s", s.CtlLog)
			}
			if s.AgentLog != nil {
				t.Logf("agent log:\n%s", s.AgentLog)
			}
		}
		if err := s.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := s.StartController(); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *world) mustCordon(args ...string) string {
	w.t.Helper()
	out, errOut, code := w.Cordon(args...)
	if code != 0 {
		w.t.Fatalf("cordon %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func (w *world) startAgent(o stage.AgentOptions) {
	w.t.Helper()
	if err := w.StartAgent(o); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) waitOnline() {
	w.t.Helper()
	if err := w.WaitOnline(20 * time.Second); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) eventually(d time.Duration, what string, cond func() bool) {
	w.t.Helper()
	if err := stage.Eventually(d, what, cond); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) rules(h *netlab.Host) string {
	w.t.Helper()
	r, err := stage.Rules(h)
	if err != nil {
		w.t.Fatal(err)
	}
	return r
}

func (w *world) restoreHostRules() {
	w.t.Helper()
	if err := stage.Restore(w.Host, "iptables-restore", stage.HostRulesV4); err != nil {
		w.t.Fatal(err)
	}
	if err := stage.Restore(w.Host, "ip6tables-restore", stage.HostRulesV6); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) mustHosts() []api.Host {
	w.t.Helper()
	h, err := w.Hosts()
	if err != nil {
		w.t.Fatal(err)
	}
	return h
}

func (w *world) mustServe(h *netlab.Host, port string) (*exec.Cmd, *stage.LogBuf) {
	w.t.Helper()
	cmd, log, err := w.Serve(h, port)
	if err != nil {
		w.t.Fatal(err)
	}
	return cmd, log
}

func (w *world) mustHold(from *netlab.Host, addr string) *stage.Held {
	w.t.Helper()
	h, err := w.Hold(from, addr)
	if err != nil {
		w.t.Fatal(err)
	}
	return h
}

func (w *world) send(h *stage.Held, line string) string {
	w.t.Helper()
	got, err := h.Send(line)
	if err != nil {
		w.t.Fatal(err)
	}
	return got
}
