package cli

import (
	"context"
	"fmt"
	"os"

	"github.com/cordon-ir/cordon/controller/api"
)

func runOperatorAdd(ctx context.Context, g *globals, name, role, keyFile string) error {
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return fmt.Errorf("operator public key: %w", err)
	}
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	var op api.Operator
	if err := c.Call(ctx, api.OpOperatorAdd, api.OperatorAddArgs{Name: name, Role: role, PublicKey: string(b)}, &op); err != nil {
		return err
	}
	if g.json() {
		return g.printJSON(op)
	}
	_, err = fmt.Fprintf(g.io.Out, "operator %s added with role %s (key %s)\n", op.Name, op.Role, op.Fingerprint)
	return err
}
