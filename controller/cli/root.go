// Package cli is the cordon command line: the controller daemon
// (cordon controller …) and the operator commands (cordon isolate host …).
// Each subcommand has an options struct and a run function, and writes to
// the writers it is given, so tests run it in-process.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/controller/client"
)

// ExitError carries a process exit status for main.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Exit statuses.
const (
	ExitFailure = 1 // anything went wrong
	ExitUsage   = 2 // bad flags or arguments
	// ExitConfig is 'cordon controller serve''s status for flags or a
	// configuration it refuses: EX_CONFIG of sysexits.h, not 2, which is
	// also the Go runtime's status for a panic, a fatal error and SIGABRT
	// (systemd's watchdog signal). The unit does not restart on it.
	ExitConfig       = 78
	ExitOrderFailed  = 3 // --wait: the order failed
	ExitWaitTimedOut = 4 // --wait: the order had not finished in time
)

// IO is where a command reads and writes.
type IO struct {
	Out, Err io.Writer
}

// globals are the operator connection flags shared by every operator
// command.
type globals struct {
	io          IO
	controller  string
	identity    string
	fingerprint string
	output      string
}

// NewRootCommand returns the cordon command tree writing to out and errw.
func NewRootCommand(out, errw io.Writer) *cobra.Command {
	out, errw = cleanWriter{out}, cleanWriter{errw}
	g := &globals{io: IO{Out: out, Err: errw}}
	root := &cobra.Command{
		Use:   "cordon",
		Short: "Contain compromised hosts: isolate them and keep their volatile state as signed evidence",
		Long: `cordon is the controller and operator tool of Cordon.

An incident responder isolates a host with 'cordon isolate host NAME --reason …'.
The agent on that host first captures its volatile state (processes,
connections, …) as signed evidence, then cuts the host off the network except
for the controller and the allowlist. Forensic staff list, download and verify
the evidence with 'cordon snapshots' and 'cordon snapshot …'.

Operator commands reach the controller over SSH: set --controller,
--controller-fingerprint and --identity, or CORDON_CONTROLLER,
CORDON_CONTROLLER_FINGERPRINT and CORDON_IDENTITY.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errw)
	pf := root.PersistentFlags()
	pf.StringVar(&g.controller, "controller", os.Getenv("CORDON_CONTROLLER"), "controller address `host:port` (env CORDON_CONTROLLER)")
	pf.StringVar(&g.identity, "identity", os.Getenv("CORDON_IDENTITY"), "operator private key `file` (env CORDON_IDENTITY; default: keys in ssh-agent)")
	pf.StringVar(&g.fingerprint, "controller-fingerprint", os.Getenv("CORDON_CONTROLLER_FINGERPRINT"), "pinned controller host key `SHA256:…` (env CORDON_CONTROLLER_FINGERPRINT)")
	pf.StringVarP(&g.output, "output", "o", "text", "output format: text or json")
	root.AddCommand(
		newControllerCmd(g),
		newEnrollCmd(g),
		newIsolateCmd(g),
		newReleaseCmd(g),
		newHostsCmd(g),
		newHostCmd(g),
		newOrdersCmd(g),
		newSnapshotsCmd(g),
		newSnapshotCmd(g),
		newOperatorCmd(g),
		newAuditCmd(g),
		newVersionCmd(g),
	)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("%w\nRun '%s --help' for usage.", err, c.CommandPath())}
	})
	return root
}

// Run runs the cordon command line with args (without the program name),
// writing to out and errw, and returns the exit status.
func Run(ctx context.Context, args []string, out, errw io.Writer) int {
	root := NewRootCommand(out, errw)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(cleanWriter{errw}, "cordon: "+err.Error())
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	if api.IsCode(err, api.CodeInvalid) {
		return ExitUsage // the controller found the arguments wrong
	}
	if strings.HasPrefix(err.Error(), "unknown command") || strings.Contains(err.Error(), "accepts ") ||
		strings.HasPrefix(err.Error(), "required flag") {
		return ExitUsage
	}
	return ExitFailure
}

func (g *globals) checkOutput() error {
	if g.output != "text" && g.output != "json" {
		return usageErr("-o %q: want text or json", g.output)
	}
	return nil
}

func (g *globals) json() bool { return g.output == "json" }

func usageErr(format string, args ...any) error {
	return &ExitError{Code: ExitUsage, Err: fmt.Errorf(format, args...)}
}

// dial connects to the controller with the global flags.
func (g *globals) dial(ctx context.Context) (*client.Client, error) {
	if err := g.checkOutput(); err != nil {
		return nil, err
	}
	return client.Dial(ctx, client.Config{Addr: g.controller, Fingerprint: g.fingerprint, IdentityFile: g.identity})
}

// call makes one API call on a connection of its own.
func (g *globals) call(ctx context.Context, op string, args, result any) error {
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Call(ctx, op, args, result)
}

// table returns a writer for aligned text columns; the caller flushes it.
func (g *globals) table(header string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(g.io.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	return tw
}

func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.io.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// ago formats a past time for people: "3s ago", "never".
func ago(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return t.Format(time.RFC3339)
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.Format("2006-01-02 15:04Z")
}

// humanBytes formats a size: "12.3 KiB".
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
