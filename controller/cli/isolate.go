package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/controller/client"
)

type orderOptions struct {
	reason   string
	incident string
	allow    []string
	dns      []string
	dhcp     bool
	cloud    api.CloudOptions
	wait     bool
	timeout  time.Duration
}

func newIsolateCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "isolate",
		Short: "Isolate a host: snapshot its volatile state, then cut it off the network",
	}
	o := &orderOptions{}
	host := &cobra.Command{
		Use:   "host NAME --reason TEXT [--incident ID] [--allow CIDR]... [--dns IP]... [--dhcp] [--wait]",
		Short: "Isolate one host (role responder)",
		Long: `Isolate one host. The agent first captures the host's volatile state as signed
evidence, then isolates it: only loopback, the controller and the allowlist stay
reachable, inbound, outbound and forwarded, over IPv4 and IPv6. The order is
stored before it is sent, so an offline host is isolated as soon as it connects.`,
		Args: exactArgs(1, "a host name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOrder(cmd.Context(), g, api.OpIsolate, args[0], o)
		},
	}
	f := host.Flags()
	f.StringVar(&o.reason, "reason", "", "why the host is isolated (required; recorded in the audit log and the order)")
	f.StringVar(&o.incident, "incident", "", "incident `id` the order belongs to")
	f.StringArrayVar(&o.allow, "allow", nil, "`CIDR` or IP that stays reachable both ways (repeatable)")
	f.StringArrayVar(&o.dns, "dns", nil, "resolver `IP` the host may still query, UDP and TCP port 53 (repeatable; a resolver that forwards is a way out)")
	f.BoolVar(&o.dhcp, "dhcp", false, "keep the host's DHCP client working, so it keeps its address")
	f.BoolVar(&o.cloud.Snapshot, "cloud-snapshot", false, "cloud layer: snapshot every volume of the instance (AWS EBS)")
	f.BoolVar(&o.cloud.TerminationProtection, "cloud-protect", false, "cloud layer: turn on termination protection (AWS)")
	f.BoolVar(&o.cloud.Detach, "cloud-detach", false, "cloud layer: detach the instance from its Auto Scaling group and target groups (AWS)")
	f.BoolVar(&o.cloud.RevokeSessions, "revoke-sessions", false, "cloud layer: revoke the instance role's active sessions (AWS: stolen instance credentials stop working; other instances of the role too)")
	f.BoolVar(&o.wait, "wait", false, "wait until the host is verified isolated or the order failed")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "how long --wait waits")
	host.MarkFlagRequired("reason")
	cmd.AddCommand(host)
	return cmd
}

func newReleaseCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "release",
		Short: "Release an isolated host",
	}
	o := &orderOptions{}
	host := &cobra.Command{
		Use:   "host NAME --reason TEXT [--wait]",
		Short: "Release one host: remove exactly Cordon's rules (role responder)",
		Args:  exactArgs(1, "a host name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOrder(cmd.Context(), g, api.OpRelease, args[0], o)
		},
	}
	cmd.AddCommand(newReleaseTokenCmd(g))
	f := host.Flags()
	f.StringVar(&o.reason, "reason", "", "why the host is released (required)")
	f.StringVar(&o.incident, "incident", "", "incident `id` the order belongs to")
	f.BoolVar(&o.wait, "wait", false, "wait until the host is verified released or the order failed")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "how long --wait waits")
	host.MarkFlagRequired("reason")
	cmd.AddCommand(host)
	return cmd
}

func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErr("%s takes %s; got %d arguments\nRun '%s --help' for usage.", cmd.CommandPath(), what, len(args), cmd.CommandPath())
		}
		return nil
	}
}

func runOrder(ctx context.Context, g *globals, op, host string, o *orderOptions) error {
	if o.reason == "" {
		return usageErr("--reason is required: say why, it goes into the audit log")
	}
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	var args any
	switch op {
	case api.OpIsolate:
		args = api.IsolateArgs{Host: host, Reason: o.reason, Incident: o.incident, Allow: o.allow, DNS: o.dns, DHCP: o.dhcp, Cloud: o.cloud}
	case api.OpRelease:
		args = api.ReleaseArgs{Host: host, Reason: o.reason, Incident: o.incident}
	default:
		args = api.SnapshotTakeArgs{Host: host, Reason: o.reason, Incident: o.incident}
	}
	var ord api.Order
	if err := c.Call(ctx, op, args, &ord); err != nil {
		return err
	}
	text := !g.json()
	if text {
		fmt.Fprintf(g.io.Out, "order %s: %s host %s\n", ord.ID, ord.Kind, ord.Host)
		if !ord.HostOnline {
			fmt.Fprintf(g.io.Out, "agent offline: order queued, delivered as soon as %s connects\n", ord.Host)
		}
	}
	if !o.wait {
		if g.json() {
			return g.printJSON(ord)
		}
		fmt.Fprintf(g.io.Out, "follow it with: cordon orders --host %s\n", ord.Host)
		return nil
	}
	final, err := waitOrder(ctx, g, c, ord, o.timeout)
	if g.json() {
		if perr := g.printJSON(final); perr != nil {
			return perr
		}
	}
	return err
}

// waitOrder follows an order until it is done or failed and, for an isolate
// order, until its evidence is stored, printing each step in text mode.
func waitOrder(ctx context.Context, g *globals, c *client.Client, ord api.Order, timeout time.Duration) (api.Order, error) {
	deadline := time.Now().Add(timeout)
	text := !g.json()
	seen := ord
	seen.DeliveredAt, seen.SnapshotID, seen.SnapshotStored, seen.State = time.Time{}, "", false, "pending"
	seen.CloudState = ""
	report := func(o api.Order) {
		if !text {
			return
		}
		if !o.DeliveredAt.IsZero() && seen.DeliveredAt.IsZero() {
			fmt.Fprintf(g.io.Out, "delivered to the agent (%v after issue)\n", o.DeliveredAt.Sub(o.CreatedAt).Round(time.Millisecond))
		}
		if o.SnapshotID != "" && seen.SnapshotID == "" {
			fmt.Fprintf(g.io.Out, "evidence captured: snapshot %s in %v (sha256 %s)\n", o.SnapshotID,
				time.Duration(o.SnapshotNS).Round(time.Millisecond), short(o.SnapshotSHA256))
		}
		if o.Terminal() && !seen.Terminal() {
			switch {
			case o.State == "failed" && o.Kind == api.OpIsolate:
				fmt.Fprintf(g.io.Out, "FAILED: %s\n", o.Error)
				fmt.Fprintf(g.io.Out, "the host stays marked for isolation: the controller sends it again when the agent reconnects\n"+
					"(fix the cause and isolate again, or cancel with 'cordon release host %s')\n", o.Host)
			case o.State == "failed":
				fmt.Fprintf(g.io.Out, "FAILED: %s\n", o.Error)
			case o.Kind == "snapshot":
				fmt.Fprintf(g.io.Out, "snapshot taken (the host is not isolated), %v after issue\n", o.DoneAt.Sub(o.CreatedAt).Round(time.Millisecond))
				if o.Error != "" {
					fmt.Fprintf(g.io.Out, "WARNING: %s\n", o.Error)
				}
			case o.Kind == api.OpIsolate:
				fmt.Fprintf(g.io.Out, "isolated: rules verified on the host (digest %s), %v after issue\n", short(o.Digest),
					o.DoneAt.Sub(o.CreatedAt).Round(time.Millisecond))
				if o.Error != "" {
					fmt.Fprintf(g.io.Out, "WARNING: %s\n", o.Error)
				}
			default:
				fmt.Fprintf(g.io.Out, "released: Cordon's rules removed and verified gone, %v after issue\n", o.DoneAt.Sub(o.CreatedAt).Round(time.Millisecond))
			}
		}
		if o.CloudState != seen.CloudState {
			switch o.CloudState {
			case "applying":
				fmt.Fprintln(g.io.Out, "cloud layer: applying at the provider")
			case "failed":
				fmt.Fprintf(g.io.Out, "cloud layer FAILED (the host layer goes on): %s\n", o.CloudError)
			default:
				fmt.Fprintf(g.io.Out, "cloud layer %s: %s\n", o.CloudState, o.CloudDetail)
			}
		}
		if o.SnapshotStored && !seen.SnapshotStored {
			if o.SnapshotVerified {
				fmt.Fprintf(g.io.Out, "evidence stored at the controller, verified against the agent's key: cordon snapshot download %s --out .\n", o.SnapshotID)
			} else {
				fmt.Fprintf(g.io.Out, "WARNING: evidence stored at the controller but it did NOT verify at receipt: see 'cordon snapshots --host %s'\n", o.Host)
			}
		}
		seen = o
	}
	report(ord)
	cur := ord
	for !(cur.Terminal() && (cur.SnapshotID == "" || cur.SnapshotStored) && cur.CloudState != "applying") {
		left := time.Until(deadline)
		if left <= 0 {
			if cur.Terminal() {
				if text {
					fmt.Fprintf(g.io.Out, "evidence not yet stored at the controller; 'cordon snapshots --host %s' will list it\n", cur.Host)
				}
				break
			}
			return cur, &ExitError{Code: ExitWaitTimedOut, Err: fmt.Errorf("order %s is still %s after %v; it stays in force: follow it with 'cordon orders --host %s'", cur.ID, cur.State, timeout, cur.Host)}
		}
		var next api.Order
		err := c.Call(ctx, api.OpOrderWait, api.OrderWaitArgs{ID: cur.ID, After: cur.Version, TimeoutMS: min(left, 30*time.Second).Milliseconds()}, &next)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return cur, err
			}
			return cur, fmt.Errorf("waiting for order %s: %w (the order stays in force)", cur.ID, err)
		}
		report(next)
		cur = next
	}
	if cur.State == "failed" {
		return cur, &ExitError{Code: ExitOrderFailed, Err: fmt.Errorf("order %s failed: %s", cur.ID, cur.Error)}
	}
	return cur, nil
}

// short abbreviates a digest for text output.
func short(d string) string {
	if len(d) > 19 {
		return d[:19] + "…"
	}
	return d
}

// newReleaseTokenCmd is 'cordon release token host NAME': a break-glass
// token, signed by the controller, that releases the host from its console
// with 'cordon-agent release --local' when the controller cannot be
// reached.
func newReleaseTokenCmd(g *globals) *cobra.Command {
	var reason, out string
	var ttl time.Duration
	token := &cobra.Command{
		Use:   "token",
		Short: "Break-glass release tokens, for when the controller is gone",
	}
	host := &cobra.Command{
		Use:   "host NAME --reason TEXT --out FILE [--ttl 1h]",
		Short: "Sign a token that releases one host from its console (role responder)",
		Long: `Sign a token that lets 'cordon-agent release --local --token FILE', run on the
host's console, remove Cordon's rules when the controller cannot be reached.
The token names the host and its machine-id, expires (--ttl, at most 24h), and
is signed by the controller's key, which the agent pins; its issue is in the
audit log. Keep it like a password until it expires.`,
		Args: exactArgs(1, "a host name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" {
				return usageErr("--reason is required: say why, it goes into the audit log")
			}
			if out == "" {
				return usageErr("--out is required: the file to write the token to")
			}
			c, err := g.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			var tok api.ReleaseToken
			if err := c.Call(cmd.Context(), api.OpReleaseToken, api.ReleaseTokenArgs{Host: args[0], Reason: reason, TTL: ttl}, &tok); err != nil {
				return err
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("write the token: %w (it is not overwritten)", err)
			}
			if _, err := f.WriteString(tok.File + "\n"); err != nil {
				f.Close()
				return fmt.Errorf("write the token: %w", err)
			}
			if err := f.Close(); err != nil {
				return fmt.Errorf("write the token: %w", err)
			}
			if g.json() {
				return g.printJSON(struct {
					ID        string    `json:"id"`
					Host      string    `json:"host"`
					MachineID string    `json:"machine_id,omitempty"`
					NotAfter  time.Time `json:"not_after"`
					Path      string    `json:"path"`
				}{tok.ID, tok.Host, tok.MachineID, tok.NotAfter, out})
			}
			_, err = fmt.Fprintf(g.io.Out, "release token %s for %s written to %s, valid until %s.\nOn the host's console: cordon-agent release --local --token %s\n",
				tok.ID, tok.Host, out, tok.NotAfter.Local().Format(time.RFC1123), filepath.Base(out))
			return err
		},
	}
	f := host.Flags()
	f.StringVar(&reason, "reason", "", "why a local release may be needed (required; recorded in the audit log and the token)")
	f.StringVar(&out, "out", "", "`file` to write the token to (not overwritten)")
	f.DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid (at most 24h)")
	token.AddCommand(host)
	return token
}
