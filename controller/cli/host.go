package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cordon-ir/cordon/controller/api"
)

// newHostCmd is 'cordon host': what an operator sets on one host.
func newHostCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Settings of one host",
	}
	var a api.HostBindArgs
	bind := &cobra.Command{
		Use:   "bind NAME --cloud aws|azure|gcp --instance ID [--region R] [--zone Z] [--project P] | host bind NAME --clear",
		Short: "Bind a host to its cloud instance by hand (role admin)",
		Long: `Bind a host to its cloud instance by hand, for an agent that cannot name
its instance (Azure, Google Cloud) or connects through NAT (its address is then
none of the instance's): the controller's cloud layer then isolates that
instance on every order for the host, without checking the agent's address.
--instance is the EC2 instance id, the Compute Engine instance name, or the
Azure VM's resource id. --clear goes back to the agent's own report.`,
		Args: exactArgs(1, "a host name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			a.Host = args[0]
			if a.Clear && (a.Provider != "" || a.Instance != "" || a.Region != "" || a.Zone != "" || a.Project != "") {
				return usageErr("--clear takes no other flag: it removes the binding set by hand")
			}
			if !a.Clear && (a.Provider == "" || a.Instance == "") {
				return usageErr("--cloud and --instance are required (or --clear)")
			}
			var h api.Host
			if err := g.call(cmd.Context(), api.OpHostBind, a, &h); err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(h)
			}
			if a.Clear {
				_, err := fmt.Fprintf(g.io.Out, "%s: cloud binding cleared; the agent's report counts again\n", h.Name)
				return err
			}
			_, err := fmt.Fprintf(g.io.Out, "%s: bound to %s instance %s by %s\n", h.Name, h.CloudProvider, h.CloudInstanceID, h.CloudBoundBy)
			return err
		},
	}
	f := bind.Flags()
	f.StringVar(&a.Provider, "cloud", "", "the `provider`: aws, azure or gcp")
	f.StringVar(&a.Instance, "instance", "", "the instance's `id` at the provider")
	f.StringVar(&a.Region, "region", "", "its `region` (AWS, Azure)")
	f.StringVar(&a.Zone, "zone", "", "its `zone` (Google Cloud)")
	f.StringVar(&a.Project, "project", "", "its `project` (Google Cloud)")
	f.BoolVar(&a.Clear, "clear", false, "remove the binding set by hand")
	cmd.AddCommand(bind)
	return cmd
}
