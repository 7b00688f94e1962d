// Command cordon-plugin-aws is Cordon's cloud layer for AWS (pkg/cloud):
// the controller launches it through go-plugin, and it isolates an EC2
// instance at the VPC with security groups, using the controller's
// credentials, never the host's.
//
// Isolate moves every network interface of the instance to
// cordon-isolation-<policy digest>, a group of its VPC that allows only TCP
// to the controller endpoints, UDP and TCP 53 to the policy's DNS
// resolvers, and the allowlist both ways. It goes by way of cordon-untrack,
// which allows everything both ways for the moment between the two
// changes: a flow such rules allow is not tracked, so the second change
// cuts it, where a tracked flow would survive it. The original groups of
// each interface are kept in instance tags (cordon:original-groups:<eni>)
// written before any change, and Release restores exactly them.
//
// What a security group cannot stop, Isolate says in its notes: the VPC's
// DNS resolver, the metadata service and flows that AWS always tracks. The
// host layer must block DNS.
//
// Options: Detach takes the instance out of its Auto Scaling group (desired
// capacity kept) and load balancer target groups; RevokeSessions puts on its
// role AWS's documented deny on aws:TokenIssueTime. Release undoes neither.
//
// Credentials and region come from the SDK's standard chain (environment,
// shared profile, web identity, container or instance role); Cordon holds
// no AWS secret and logs none. AWS_ENDPOINT_URL_EC2 overrides the
// endpoint. IAM.md lists the permissions it needs.
package main

import (
	"log/slog"
	"os"
	"strings"

	"github.com/cordon-ir/cordon/pkg/cloud"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: hclogKeys}))
	cloud.Serve(New(Options{Logger: log}))
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
