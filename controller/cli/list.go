package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cordon-ir/cordon/controller/api"
)

func newHostsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "hosts",
		Short: "List enrolled hosts: online or offline, isolation state, last seen",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runHosts(cmd.Context(), g)
		},
	}
}

func runHosts(ctx context.Context, g *globals) error {
	var hosts []api.Host
	if err := g.call(ctx, api.OpHosts, api.HostsArgs{}, &hosts); err != nil {
		return err
	}
	if g.json() {
		return g.printJSON(hosts)
	}
	if len(hosts) == 0 {
		_, err := fmt.Fprintln(g.io.Out, "no hosts enrolled yet: mint a token with 'cordon enroll create', then run 'cordon-agent enroll' on the host")
		return err
	}
	now := time.Now()
	tw := g.table("NAME\tCONNECTION\tSTATE\tSINCE\tLAST SEEN\tADDRESS\tCLOUD\tREPAIRS\tPLUGIN\tCHOSEN BECAUSE")
	for _, h := range hosts {
		conn := "offline"
		if h.Online {
			conn = "online"
		}
		state := h.State
		if h.StateReason != "" {
			state += ": " + clip(h.StateReason, 60)
		}
		repairs := "0"
		if h.Repairs > 0 || !h.LastRepair.IsZero() {
			repairs = fmt.Sprintf("%d (last %s)", h.Repairs, ago(h.LastRepair, now))
		}
		cloudID := ""
		if h.CloudProvider != "" {
			cloudID = clip(strings.TrimSpace(h.CloudProvider+" "+h.CloudInstanceID), 30)
			if h.CloudState != "" {
				cloudID += " (" + h.CloudState + ")"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Name, conn, state, ago(h.StateSince, now), ago(h.LastSeen, now),
			dash(h.Addr), dash(cloudID), repairs, dash(clip(h.Plugin, 40)), dash(clip(h.PluginReason, 80)))
	}
	return tw.Flush()
}

// clip shortens s to n characters for a table; -o json has the full text.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newOrdersCmd(g *globals) *cobra.Command {
	var host string
	var limit int
	cmd := &cobra.Command{
		Use:   "orders [--host NAME]",
		Short: "List orders, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var orders []api.Order
			if err := g.call(cmd.Context(), api.OpOrders, api.OrdersArgs{Host: host, Limit: limit}, &orders); err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(orders)
			}
			if len(orders) == 0 {
				_, err := fmt.Fprintln(g.io.Out, "no orders"+forHost(host))
				return err
			}
			tw := g.table("ORDER\tHOST\tKIND\tSTATE\tCLOUD LAYER\tISSUED\tTOOK\tBY\tREASON")
			now := time.Now()
			for _, o := range orders {
				took := "-"
				if !o.DoneAt.IsZero() {
					took = o.DoneAt.Sub(o.CreatedAt).Round(time.Millisecond).String()
				}
				state := o.State
				if o.Error != "" {
					state += ": " + clip(o.Error, 60)
				}
				cloudLayer := dash(o.CloudState)
				if o.CloudError != "" {
					cloudLayer += ": " + clip(o.CloudError, 40)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", o.ID, o.Host, o.Kind, state, cloudLayer, ago(o.CreatedAt, now), took, o.Operator, o.Reason)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "only orders for this host")
	cmd.Flags().IntVar(&limit, "limit", 50, "at most this many orders")
	return cmd
}

func newAuditCmd(g *globals) *cobra.Command {
	var host string
	var limit int
	cmd := &cobra.Command{
		Use:   "audit [--host NAME]",
		Short: "Show the audit log, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var entries []api.AuditEntry
			if err := g.call(cmd.Context(), api.OpAudit, api.AuditArgs{Host: host, Limit: limit}, &entries); err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(entries)
			}
			if len(entries) == 0 {
				_, err := fmt.Fprintln(g.io.Out, "no audit entries"+forHost(host))
				return err
			}
			tw := g.table("TIME (UTC)\tACTOR\tACTION\tHOST\tORDER\tDETAIL")
			for _, e := range entries {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.At.Format("2006-01-02 15:04:05.000"), e.Actor, e.Action, dash(e.Host), dash(e.OrderID), e.Detail)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "only entries about this host")
	cmd.Flags().IntVar(&limit, "limit", 100, "at most this many entries")
	return cmd
}

// forHost completes "no orders" and the like for a --host filter.
func forHost(host string) string {
	if host == "" {
		return ""
	}
	return " for host " + host + " ('cordon hosts' lists the hosts)"
}
