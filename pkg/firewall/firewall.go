// Package firewall is the contract between Cordon and its firewall plugins:
// the Firewall interface, the go-plugin handshake, and the gRPC glue on both
// sides (DESIGN.md §5).
//
// A plugin is an executable named cordon-plugin-<name> that calls Serve with
// its implementation. A host launches it with Launch, which starts the
// process, checks its SHA-256 when one is pinned, and returns a Client that
// implements Firewall over gRPC. Errors cross the boundary as gRPC status
// codes; callers branch on them with errors.Is against the sentinels below,
// never on message text.
package firewall

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"

	"github.com/cordon-ir/cordon/pkg/policy"
)

// Capabilities a plugin may report in Info.
const (
	CapIPv6      = "ipv6"      // isolates IPv6 as well as IPv4
	CapConntrack = "conntrack" // cuts established flows outside the policy
	CapCloud     = "cloud"     // isolates at a cloud provider's network layer
)

// Info names a plugin and what it can do.
type Info struct {
	Name         string   `json:"name"`
	Version      string   `json:"version"`
	Capabilities []string `json:"capabilities"`
}

// Applied is the result of a successful Isolate: the rules as read back from
// the kernel (or provider), in the plugin's own text form, and their digest
// ("sha256:<hex>"). FlowsCut counts connection-tracking entries removed
// because the policy does not allow them.
type Applied struct {
	Digest   string   `json:"digest"`
	Rules    []string `json:"rules"`
	FlowsCut uint64   `json:"flows_cut"`
}

// Status is the live state of a plugin's rules.
//
// Isolated is true only when every rule of the plugin's own is in place and
// nothing of its own is out of place. Partial is non-empty when something is
// missing or extra (a chain without its jump, a stray generation), and says
// what; Isolated is then false.
//
// Policy is the policy the rules in place enforce, read back from them, so
// that a host that restarts while isolated knows, without asking anything
// (no name lookups), which controller endpoints it may still reach. It is
// nil when nothing of the plugin's is in place.
type Status struct {
	Isolated bool           `json:"isolated"`
	Digest   string         `json:"digest,omitempty"`
	Rules    []string       `json:"rules,omitempty"`
	Partial  string         `json:"partial,omitempty"`
	Policy   *policy.Policy `json:"policy,omitempty"`
}

// Firewall is what a plugin implements.
//
// Isolate must be atomic as seen from the network: the new rules are built
// complete and then linked in, and on any error nothing of the attempt stays
// applied (rules of an earlier isolation stay as they were), but for
// ErrRulesChanged, where the new rules stay (fail closed). Calling it again
// with the same policy is a no-op that returns the same digest; Isolate
// also removes remnants of an earlier attempt that crashed. Release removes
// the plugin's own rules and nothing else, succeeds when there is nothing to
// remove, and returns how many of its own rules and chains it removed.
type Firewall interface {
	Info(ctx context.Context) (Info, error)
	Isolate(ctx context.Context, p policy.Policy, orderID string) (Applied, error)
	Release(ctx context.Context, orderID string) (removed int, err error)
	Status(ctx context.Context) (Status, error)
}

// Sentinel errors a plugin returns (wrapped) so that the host can branch on
// them across the gRPC boundary.
var (
	// ErrInvalidPolicy: the policy cannot be applied as given.
	ErrInvalidPolicy = errors.New("invalid policy")
	// ErrUnavailable: the firewall backend is missing or not working on this
	// host (binary absent, kernel module missing, provider unreachable).
	ErrUnavailable = errors.New("firewall backend unavailable")
	// ErrPluginCrashed: the plugin process died or stopped answering. Only the
	// host side returns it.
	ErrPluginCrashed = errors.New("firewall plugin crashed")
	// ErrRulesChanged: Isolate applied the rules, and something else on the
	// host changed them before they could be read back, again on every
	// try. The rules written stay in place (fail closed); the caller
	// should keep checking and putting them back (drift repair).
	ErrRulesChanged = errors.New("rules changed by something else while they were applied")
)

// DigestLines returns "sha256:" and the hex SHA-256 of a plugin's rule
// lines, each ended by "\n" ("" when there are none): the digest of
// Applied and Status.
func DigestLines(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	h := sha256.New()
	for _, l := range lines {
		h.Write([]byte(l))
		h.Write([]byte{'\n'})
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}
