package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/pkg/sshkey"
)

func newOperatorCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "operator",
		Short: "Manage operator keys",
	}
	var role, keyFile string
	add := &cobra.Command{
		Use:   "add NAME --role ROLE --key PUBKEY_FILE",
		Short: "Register an operator's SSH public key with a role: responder, forensic, viewer or admin (role admin)",
		Args:  exactArgs(1, "an operator name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOperatorAdd(cmd.Context(), g, args[0], role, keyFile)
		},
	}
	add.Flags().StringVar(&role, "role", "", "responder (isolate, release), forensic (evidence), viewer, or admin")
	add.Flags().StringVar(&keyFile, "key", "", "the operator's public key `file` (authorized_keys format, e.g. id_ed25519.pub)")
	add.MarkFlagRequired("role")
	add.MarkFlagRequired("key")
	whoami := &cobra.Command{
		Use:   "whoami",
		Short: "Show which operator and role your key is",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var op api.Operator
			if err := g.call(cmd.Context(), api.OpWhoami, api.NoArgs{}, &op); err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(op)
			}
			_, err := fmt.Fprintf(g.io.Out, "%s (role %s, key %s)\n", op.Name, op.Role, op.Fingerprint)
			return err
		},
	}
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Revoke an operator key: it can no longer connect (role admin)",
		Args:  exactArgs(1, "an operator name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var op api.Operator
			if err := g.call(cmd.Context(), api.OpOperatorRemove, api.OperatorRemoveArgs{Name: args[0]}, &op); err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(op)
			}
			_, err := fmt.Fprintf(g.io.Out, "operator %s removed (key %s, role %s)\n", op.Name, op.Fingerprint, op.Role)
			return err
		},
	}
	cmd.AddCommand(add, remove, whoami)
	return cmd
}

func runOperatorAdd(ctx context.Context, g *globals, name, role, keyFile string) error {
	k, err := readPublicKey(keyFile)
	if err != nil {
		return usageErr("--key: %v", err)
	}
	var op api.Operator
	if err := g.call(ctx, api.OpOperatorAdd, api.OperatorAddArgs{Name: name, Role: role, PublicKey: sshkey.AuthorizedKey(k)}, &op); err != nil {
		return err
	}
	if g.json() {
		return g.printJSON(op)
	}
	_, err = fmt.Fprintf(g.io.Out, "operator %s added with role %s (key %s)\n", op.Name, op.Role, op.Fingerprint)
	return err
}
