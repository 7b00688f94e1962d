// Command cordon-plugin-gcp is Cordon's cloud layer for Google Cloud
// (pkg/cloud): the controller launches it through go-plugin, and it
// isolates a Compute Engine instance at the VPC network with firewall rules
// and network tags, using the controller's credentials, never the host's.
//
// Isolate makes sure that each network of the instance's interfaces has
// Cordon's VPC firewall rules: cordon-quarantine-deny-{ingress,egress}[6]-*
// (priority 1) deny all traffic of instances tagged cordon-quarantine, and
// cordon-quarantine-allow-<policy>-* (priority 0, above the deny, since a
// deny wins over an allow of equal priority) let instances tagged
// cordon-quarantine-<policy> reach the controller endpoints, the policy's
// DNS resolvers and its allowlist. It then records the isolation in
// instance labels (cordon-isolated, cordon-policy, cordon-since,
// cordon-had-tag) and adds the two tags. Release removes the tags Isolate
// added and the labels, and leaves the rules for the next isolation.
//
// What VPC firewall rules cannot stop, Isolate says in its notes: the
// metadata server (and its DNS), connections already tracked, and
// hierarchical firewall policies evaluated first. The host layer must
// block DNS and cut established connections.
//
// Credentials come from Application Default Credentials
// (GOOGLE_APPLICATION_CREDENTIALS, workload identity federation, gcloud's
// application default login, or the metadata server's service account, as
// with GKE workload identity); Cordon holds no Google secret and logs none.
// GOOGLE_CLOUD_PROJECT is the project of an instance that names none.
// CORDON_GCP_ENDPOINT, used only when set, replaces
// https://compute.googleapis.com: for tests and private endpoints. IAM.md
// lists the permissions it needs.
package main

import (
	"log/slog"
	"os"
	"strings"

	"github.com/cordon-ir/cordon/pkg/cloud"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: hclogKeys}))
	cloud.Serve(New(Options{
		Logger:   log,
		Endpoint: envEndpoint(),
		Project:  os.Getenv("GOOGLE_CLOUD_PROJECT"),
	}))
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
