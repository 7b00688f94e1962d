// Command cordon-plugin-azure is Cordon's cloud layer for Azure
// (pkg/cloud): the controller launches it through go-plugin, and it
// isolates a VM at the virtual network with a network security group,
// using the controller's credentials, never the host's.
//
// Isolate moves every network interface of the VM to
// cordon-quarantine-<location>-<policy digest>, an NSG of the VM's
// resource group that allows only TCP to the controller endpoints, UDP and
// TCP 53 to the policy's DNS resolvers and the allowlist both ways, denies
// Azure DNS, the metadata service and then everything else, and has
// flushConnection on, so that Azure re-evaluates established flows
// against it. Each NIC's original NSG (or none) is kept in a tag on the
// NIC (cordon:original-nsg), written in the same request that moves it,
// and Release restores exactly that. The VM itself is never written, so
// never restarted.
//
// What an NSG cannot stop, Isolate says in its notes: Azure's DHCP and
// wire server, and flows Azure has not re-evaluated yet. The host layer
// must cut established connections.
//
// Credentials come from the SDK's standard chain
// (azidentity.NewDefaultAzureCredential: environment, workload identity,
// managed identity, Azure CLI); Cordon holds no Azure secret and logs
// none. CORDON_AZURE_ENDPOINT, for tests only, overrides the Resource
// Manager endpoint (https). RBAC.md lists the permissions it needs.
package main

import (
	"log/slog"
	"os"
	"strings"

	"github.com/cordon-ir/cordon/pkg/cloud"
)

// endpointEnv names the variable that points the plugin at another
// Resource Manager endpoint, such as a test server.
const endpointEnv = "CORDON_AZURE_ENDPOINT"

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: hclogKeys}))
	cloud.Serve(New(Options{Logger: log, Endpoint: os.Getenv(endpointEnv)}))
}

// hclogKeys renames slog's JSON keys to hclog's (@message, @level,
// @timestamp), which go-plugin parses from the plugin's stderr to log each
// line at its level in the controller's log; it logs other lines at debug.
func hclogKeys(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.MessageKey:
		a.Key = "@message"
	case slog.LevelKey:
		a = slog.String("@level", strings.ToLower(a.Value.String()))
	case slog.TimeKey:
		a = slog.String("@timestamp", a.Value.Time().Format("2006-01-02T15:04:05.000000Z07:00"))
	}
	return a
}
