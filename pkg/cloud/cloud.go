// Package cloud is the contract between the controller and its cloud
// containment plugins (cordon-plugin-aws, -gcp, -azure): a second layer of
// isolation at the provider's network, applied with the controller's own
// credentials, never the host's, which are presumed stolen.
//
// A plugin is an executable named cordon-plugin-<provider> that serves a
// Layer over go-plugin; the controller runs it. Errors cross the boundary
// as gRPC status codes, mapped back to the sentinels below, which callers
// branch on with errors.Is.
package cloud

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/cordon-ir/cordon/pkg/policy"
)

// Instance names a machine at a provider, and what the provider says of it.
//
// The controller binds a host to an instance from what the host's agent
// reports (its cloud instance id, from local files) or as an operator sets
// it; the binding holds only when Lookup finds the instance and one of its
// private addresses is the one the agent connects from.
type Instance struct {
	// Provider is "aws", "gcp" or "azure".
	Provider string `json:"provider"`
	// ID is the provider's id: an EC2 instance id ("i-0abc…"), a Compute
	// Engine instance name, an Azure VM resource id
	// ("/subscriptions/…/resourceGroups/…/providers/Microsoft.Compute/virtualMachines/…").
	ID string `json:"id"`
	// Region (AWS, Azure location), Zone (GCP) and Project (GCP) locate
	// it; empty when the provider's default applies.
	Region  string `json:"region,omitempty"`
	Zone    string `json:"zone,omitempty"`
	Project string `json:"project,omitempty"`
	// PrivateIPs are the instance's private addresses, as the provider
	// lists them (Lookup fills them in).
	PrivateIPs []netip.Addr `json:"private_ips,omitempty"`
	// Interfaces are the provider's ids of the instance's network
	// interfaces (ENIs, NICs), as Lookup finds them.
	Interfaces []string `json:"interfaces,omitempty"`
}

// Options are what an isolate order asks of the cloud layer besides
// cutting the network; each is off unless set (the provider's name for it
// in brackets).
type Options struct {
	// Snapshot takes a snapshot of every volume (AWS: EBS CreateSnapshot).
	Snapshot bool `json:"snapshot,omitempty"`
	// Tag tags the instance with the incident (AWS: CreateTags).
	Tag bool `json:"tag,omitempty"`
	// TerminationProtection keeps the instance from being terminated
	// (AWS: DisableApiTermination).
	TerminationProtection bool `json:"termination_protection,omitempty"`
	// Detach takes the instance out of its Auto Scaling group and load
	// balancer target groups (AWS).
	Detach bool `json:"detach,omitempty"`
	// RevokeSessions revokes the active sessions of the instance's role
	// (AWS: an inline deny policy on aws:TokenIssueTime), since stolen
	// instance credentials keep working after the network is cut.
	RevokeSessions bool `json:"revoke_sessions,omitempty"`
	// Incident names the incident, for tags and descriptions.
	Incident string `json:"incident,omitempty"`
}

// Applied is the result of an Isolate: what the provider now holds, as the
// plugin read it back, and what each option did.
type Applied struct {
	// State describes the isolation in place, such as "eni-1: sg-iso
	// (was sg-web, sg-db)".
	State []string `json:"state"`
	// Notes are what the operator should know: an option's result, or
	// what the layer cannot do (a VPC's DNS resolver cannot be blocked by
	// a security group, so the host layer must block DNS).
	Notes []string `json:"notes,omitempty"`
}

// Status is the isolation the provider has in place for an instance.
type Status struct {
	// Isolated is true when every interface is isolated as Isolate left it.
	Isolated bool `json:"isolated"`
	// State describes what is in place, as Applied.State.
	State []string `json:"state,omitempty"`
	// Partial says what is missing or extra when not isolated but not
	// released either ("eni-2 has its original groups").
	Partial string `json:"partial,omitempty"`
	// Since is when the isolation was applied, from the provider's own
	// record (a tag), zero when unknown.
	Since time.Time `json:"since,omitzero"`
}

// Info names a plugin and its provider.
type Info struct {
	Name     string `json:"name"`
	Version  string `json:"version"`
	Provider string `json:"provider"`
}

// Layer is what a cloud plugin implements.
//
// Isolate cuts the instance off at the provider's network except for the
// controller endpoints and allowlist of p, and remembers what it changed
// (the original security groups, network tags or NSG associations) both
// in its return and at the provider (a tag), so that Release restores
// exactly that, also after a controller restart. It must leave no
// interface half changed: on an error, interfaces already changed are put
// back, and what could not be is said in the error. Calling it again with
// the same policy changes nothing. Release restores the original state
// and succeeds when nothing of Cordon's is in place.
type Layer interface {
	Info(ctx context.Context) (Info, error)
	// Lookup finds the instance and fills in PrivateIPs and Interfaces;
	// ErrNotFound when the provider has no such instance.
	Lookup(ctx context.Context, inst Instance) (Instance, error)
	Isolate(ctx context.Context, inst Instance, p policy.Policy, o Options, orderID string) (Applied, error)
	Release(ctx context.Context, inst Instance, orderID string) (Applied, error)
	Status(ctx context.Context, inst Instance) (Status, error)
}

// Sentinel errors a plugin returns (wrapped) so that the controller can
// branch on them across the gRPC boundary.
var (
	// ErrNotFound: the provider has no such instance (or interface).
	ErrNotFound = errors.New("cloud instance not found")
	// ErrDenied: the controller's credentials may not do this; the error
	// names the API call and, where the provider says it, the permission.
	ErrDenied = errors.New("cloud permission denied")
	// ErrThrottled: the provider kept refusing for rate after the SDK's
	// retries.
	ErrThrottled = errors.New("cloud API throttled")
	// ErrInvalid: the request cannot be carried out as given (a policy
	// the provider cannot express, an instance id of the wrong form).
	ErrInvalid = errors.New("invalid cloud request")
	// ErrPluginCrashed: the plugin process died or stopped answering. Only
	// the controller side returns it.
	ErrPluginCrashed = errors.New("cloud plugin crashed")
)
