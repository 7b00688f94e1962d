package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/cordon-ir/cordon/controller/api"
)

func newEnrollCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "enroll",
		Short: "Manage agent enrollment tokens",
	}
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create",
		Short: "Mint a one-time enrollment token for one more agent (role admin)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runEnrollCreate(cmd.Context(), g, ttl)
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token stays valid (1m to 720h)")
	cmd.AddCommand(create)
	return cmd
}

func runEnrollCreate(ctx context.Context, g *globals, ttl time.Duration) error {
	var tok api.EnrollToken
	if err := g.call(ctx, api.OpEnrollCreate, api.EnrollArgs{TTLSeconds: int64(ttl / time.Second)}, &tok); err != nil {
		return err
	}
	if g.json() {
		return g.printJSON(tok)
	}
	fmt.Fprintf(g.io.Out, "%s\n(one-time enrollment token; expires %s)\n", tok.Token, tok.ExpiresAt.Format(time.RFC3339))
	return nil
}
