package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cordon-ir/cordon/controller/server"
)

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(g.io.Out, "cordon", server.Version)
			return err
		},
	}
}
