// Package api is the operator API of the controller: the requests the
// cordon CLI sends on cordon-api@v1 channels and the answers it gets, framed
// and strictly decoded as package wire describes.
//
// One channel carries one request: a Request frame, then a Response frame;
// for OpSnapshotDownload the bundle's bytes follow the Response until the
// controller closes the channel.
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cordon-ir/cordon/pkg/wire"
)

// Operations.
const (
	OpIsolate          = "isolate"           // IsolateArgs → Order (role responder)
	OpRelease          = "release"           // ReleaseArgs → Order (role responder)
	OpOrder            = "order"             // OrderArgs → Order
	OpOrderWait        = "order.wait"        // OrderWaitArgs → Order
	OpOrders           = "orders"            // OrdersArgs → []Order
	OpHosts            = "hosts"             // HostsArgs → []Host
	OpSnapshots        = "snapshots"         // SnapshotsArgs → []Snapshot (role forensic)
	OpSnapshotDownload = "snapshot.download" // SnapshotArgs → Snapshot with Receipt, then the bytes (role forensic)
	OpSnapshotTake     = "snapshot.take"     // SnapshotTakeArgs → Order (role responder or forensic)
	OpSnapshotCustody  = "snapshot.custody"  // SnapshotArgs → []CustodyEntry (role forensic)
	OpEnrollCreate     = "enroll.create"     // EnrollArgs → EnrollToken (role admin)
	OpOperatorAdd      = "operator.add"      // OperatorAddArgs → Operator (role admin)
	OpOperatorRemove   = "operator.remove"   // OperatorRemoveArgs → Operator (role admin)
	OpAudit            = "audit"             // AuditArgs → []AuditEntry
	OpWhoami           = "whoami"            // NoArgs → Operator
	OpReleaseToken     = "release.token"     // ReleaseTokenArgs → ReleaseToken (role responder)
	OpHostBind         = "host.bind"         // HostBindArgs → Host (role admin)
)

// ChanName is the SSH channel type of the operator API.
const ChanName = wire.ChanAPI

// Roles an operator key can have (DESIGN.md §2). Admin can do everything.
const (
	RoleAdmin     = "admin"
	RoleResponder = "responder" // isolate, release
	RoleForensic  = "forensic"  // list and download evidence
	RoleViewer    = "viewer"    // read state only
)

// ValidRole reports whether r is one of the roles above.
func ValidRole(r string) bool {
	switch r {
	case RoleAdmin, RoleResponder, RoleForensic, RoleViewer:
		return true
	}
	return false
}

// Request is the first frame an operator sends on a channel.
type Request struct {
	V    int             `json:"v"`
	Op   string          `json:"op"`
	Args json.RawMessage `json:"args,omitempty"`
}

// Validate checks r's envelope; Args is decoded and checked per operation.
func (r *Request) Validate() error {
	if r.V != wire.Version {
		return fmt.Errorf("protocol version %d, this controller speaks %d", r.V, wire.Version)
	}
	if r.Op == "" || len(r.Op) > 64 {
		return errors.New("op is required")
	}
	return nil
}

// Error codes in Response.Error.
const (
	CodeInvalid     = "invalid"     // bad arguments
	CodeNotFound    = "not_found"   // unknown host, order or snapshot
	CodeForbidden   = "forbidden"   // the operator's role does not allow it
	CodeConflict    = "conflict"    // the request clashes with current state
	CodeUnavailable = "unavailable" // the controller cannot do it now (disk full, …)
	CodeInternal    = "internal"
)

// Error is an API error.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an *Error with the given code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// IsCode reports whether err is an *Error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// MaxResponse is the largest Response frame, in bytes: listings of many
// hosts, orders or snapshots are large.
const MaxResponse = 64 << 20

// Response answers a Request.
type Response struct {
	V      int             `json:"v"`
	Error  *Error          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// Validate checks r.
func (r *Response) Validate() error {
	if r.V != wire.Version {
		return fmt.Errorf("protocol version %d, this client speaks %d", r.V, wire.Version)
	}
	return nil
}

// NoArgs is the argument of operations that take none.
type NoArgs struct{}

// IsolateArgs asks for a host to be isolated.
type IsolateArgs struct {
	Host     string `json:"host"`
	Reason   string `json:"reason"`
	Incident string `json:"incident,omitempty"`
	// Allow lists CIDRs (or bare IPs) that stay reachable both ways.
	Allow []string `json:"allow,omitempty"`
	// DNS lists resolvers (IPs) the host may still query, UDP and TCP
	// port 53; DHCP keeps its DHCP client working (policy.Policy).
	DNS  []string `json:"dns,omitempty"`
	DHCP bool     `json:"dhcp,omitempty"`
	// Cloud asks the cloud layer for more than cutting the network: EBS
	// snapshots, termination protection, detaching from Auto Scaling and
	// target groups, revoking the role's sessions (cloud.Options; the
	// incident tag is always set).
	Cloud CloudOptions `json:"cloud,omitzero"`
}

// CloudOptions are the optional steps of a cloud layer's isolation.
type CloudOptions struct {
	Snapshot              bool `json:"snapshot,omitempty"`
	TerminationProtection bool `json:"termination_protection,omitempty"`
	Detach                bool `json:"detach,omitempty"`
	RevokeSessions        bool `json:"revoke_sessions,omitempty"`
}

// ReleaseArgs asks for a host to be released.
type ReleaseArgs struct {
	Host     string `json:"host"`
	Reason   string `json:"reason"`
	Incident string `json:"incident,omitempty"`
}

// SnapshotTakeArgs asks for a snapshot without isolation.
type SnapshotTakeArgs struct {
	Host     string `json:"host"`
	Reason   string `json:"reason"`
	Incident string `json:"incident,omitempty"`
}

// OrderArgs names an order.
type OrderArgs struct {
	ID string `json:"id"`
}

// OrderWaitArgs waits until the order's Version exceeds After, or TimeoutMS
// milliseconds pass (at most 60 000); either way the current Order is
// returned.
type OrderWaitArgs struct {
	ID        string `json:"id"`
	After     int64  `json:"after"`
	TimeoutMS int64  `json:"timeout_ms"`
}

// OrdersArgs lists orders, newest first.
type OrdersArgs struct {
	Host  string `json:"host,omitempty"`
	Limit int    `json:"limit,omitempty"`
}

// HostsArgs lists hosts.
type HostsArgs struct{}

// SnapshotsArgs lists snapshots, newest first.
type SnapshotsArgs struct {
	Host string `json:"host,omitempty"`
}

// SnapshotArgs names a snapshot.
type SnapshotArgs struct {
	ID string `json:"id"`
}

// EnrollArgs asks for a one-time agent enrollment token.
type EnrollArgs struct {
	// TTLSeconds is how long the token stays valid; 0 means the default.
	TTLSeconds int64 `json:"ttl_seconds,omitempty"`
}

// OperatorAddArgs registers an operator key.
type OperatorAddArgs struct {
	Name      string `json:"name"`
	Role      string `json:"role"`
	PublicKey string `json:"public_key"` // authorized_keys format
}

// OperatorRemoveArgs revokes an operator key.
type OperatorRemoveArgs struct {
	Name string `json:"name"`
}

// AuditArgs filters the audit log.
type AuditArgs struct {
	Host  string `json:"host,omitempty"`
	Limit int    `json:"limit,omitempty"`
}

// Host is a host as the controller sees it.
type Host struct {
	Name        string    `json:"name"`
	Online      bool      `json:"online"`
	State       string    `json:"state"` // released, isolating, isolated, releasing, failed
	StateReason string    `json:"state_reason,omitempty"`
	StateSince  time.Time `json:"state_since"`
	LastSeen    time.Time `json:"last_seen,omitzero"`
	Addr        string    `json:"addr,omitempty"` // agent's address as seen by the controller
	Digest      string    `json:"digest,omitempty"`
	Fingerprint string    `json:"fingerprint"` // agent key
	PublicKey   string    `json:"public_key"`  // agent key, authorized_keys format
	Hostname    string    `json:"hostname,omitempty"`
	MachineID   string    `json:"machine_id,omitempty"`
	Agent       string    `json:"agent_version,omitempty"`
	Plugin      string    `json:"plugin,omitempty"`
	// PluginReason says why the agent uses that plugin.
	PluginReason string `json:"plugin_reason,omitempty"`
	// Repairs counts drift repairs: Cordon's rules found changed while
	// isolated and put back. LastRepair (agent clock) and
	// LastRepairDetail describe the last one.
	Repairs          int       `json:"repairs"`
	LastRepair       time.Time `json:"last_repair,omitzero"`
	LastRepairDetail string    `json:"last_repair_detail,omitempty"`
	// CloudProvider and CloudInstanceID are the cloud instance the agent
	// reports the host runs as, unconfirmed by the provider.
	CloudProvider   string `json:"cloud_provider,omitempty"`
	CloudInstanceID string `json:"cloud_instance_id,omitempty"`
	// CloudBoundBy is the operator who bound the instance by hand, "" when
	// it is the agent's report.
	CloudBoundBy string `json:"cloud_bound_by,omitempty"`
	// CloudState is the cloud layer's state after the host's last order
	// (api.Order.CloudState), "" when it has none.
	CloudState string    `json:"cloud_state,omitempty"`
	EnrolledAt time.Time `json:"enrolled_at"`
	LastOrder  string    `json:"last_order,omitempty"`
}

// Order is an order and what came of it.
type Order struct {
	ID       string   `json:"id"`
	Host     string   `json:"host"`
	Kind     string   `json:"kind"`
	Reason   string   `json:"reason"`
	Incident string   `json:"incident,omitempty"`
	Allow    []string `json:"allow,omitempty"`
	DNS      []string `json:"dns,omitempty"`
	DHCP     bool     `json:"dhcp,omitempty"`
	// CloudState is the cloud layer's part ("" when the host has none,
	// applying, isolated, released, failed); CloudDetail what the
	// provider holds, CloudError why it failed.
	CloudState  string `json:"cloud_state,omitempty"`
	CloudDetail string `json:"cloud_detail,omitempty"`
	CloudError  string `json:"cloud_error,omitempty"`
	Operator    string `json:"operator"`
	// State: pending (stored, not yet delivered), delivered (the agent has
	// it), done, failed.
	State       string    `json:"state"`
	Error       string    `json:"error,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	DeliveredAt time.Time `json:"delivered_at,omitzero"`
	DoneAt      time.Time `json:"done_at,omitzero"`
	Digest      string    `json:"digest,omitempty"`
	HostOnline  bool      `json:"host_online"`
	// Snapshot taken for the order (isolate), and whether the controller
	// has stored it.
	SnapshotID     string `json:"snapshot_id,omitempty"`
	SnapshotSHA256 string `json:"snapshot_sha256,omitempty"`
	SnapshotStored bool   `json:"snapshot_stored"`
	// SnapshotVerified: the stored bundle verified at receipt against the
	// agent's enrolled key.
	SnapshotVerified bool `json:"snapshot_verified"`
	// Step durations reported by the agent, in nanoseconds.
	SnapshotNS int64  `json:"snapshot_ns,omitempty"`
	ApplyNS    int64  `json:"apply_ns,omitempty"`
	VerifyNS   int64  `json:"verify_ns,omitempty"`
	FlowsCut   uint64 `json:"flows_cut,omitempty"`
	// Version increases with every change; see OrderWaitArgs.
	Version int64 `json:"version"`
}

// Terminal reports whether the order will not change state any more.
func (o *Order) Terminal() bool { return o.State == "done" || o.State == "failed" }

// Snapshot is a stored evidence bundle.
type Snapshot struct {
	ID         string    `json:"id"`
	Host       string    `json:"host"`
	OrderID    string    `json:"order_id,omitempty"`
	SHA256     string    `json:"sha256"`
	Size       int64     `json:"size"`
	TakenAt    time.Time `json:"taken_at"`
	ReceivedAt time.Time `json:"received_at"`
	AgentKey   string    `json:"agent_key"` // fingerprint of the agent key that sent (and signed) it
	FileName   string    `json:"file_name"`
	// Verified says whether the bundle verified at receipt against the
	// agent's enrolled key; VerifyError says why not.
	Verified    bool   `json:"verified"`
	VerifyError string `json:"verify_error,omitempty"`
	// Receipt is the controller's signed receipt file (evidence.ReceiptFile
	// as JSON); only snapshot.download fills it in.
	Receipt string `json:"receipt,omitempty"`
}

// CustodyEntry is one event in a snapshot's chain of custody.
type CustodyEntry struct {
	At       time.Time `json:"at"`
	Event    string    `json:"event"` // received, downloaded
	Actor    string    `json:"actor"`
	ActorKey string    `json:"actor_key,omitempty"`
	SHA256   string    `json:"sha256"`
	Detail   string    `json:"detail,omitempty"`
}

// EnrollToken is a one-time agent enrollment token.
// HostBindArgs binds a host to its cloud instance by hand (an agent behind
// NAT, or one that cannot name its instance); Clear undoes it, so that the
// agent's own report counts again.
type HostBindArgs struct {
	Host     string `json:"host"`
	Provider string `json:"provider,omitempty"` // aws, azure, gcp
	Instance string `json:"instance,omitempty"` // the provider's instance id (AWS), name (GCP), resource id (Azure)
	Region   string `json:"region,omitempty"`
	Zone     string `json:"zone,omitempty"`
	Project  string `json:"project,omitempty"`
	Clear    bool   `json:"clear,omitempty"`
}

// ReleaseTokenArgs asks for a break-glass release token for a host whose
// controller may become unreachable (releasetoken).
type ReleaseTokenArgs struct {
	Host   string `json:"host"`
	Reason string `json:"reason"`
	// TTL is how long the token is valid; 0 means one hour, at most 24 h.
	TTL time.Duration `json:"ttl,omitempty"`
}

// ReleaseToken is a signed token file (releasetoken.File as JSON) and
// what it permits.
type ReleaseToken struct {
	ID        string    `json:"id"`
	Host      string    `json:"host"`
	MachineID string    `json:"machine_id,omitempty"`
	NotAfter  time.Time `json:"not_after"`
	File      string    `json:"file"`
}

type EnrollToken struct {
	Token     string    `json:"enroll_token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Operator is an operator key.
type Operator struct {
	Name        string `json:"name"`
	Role        string `json:"role"`
	Fingerprint string `json:"fingerprint"`
}

// AuditEntry is one line of the audit log.
type AuditEntry struct {
	At       time.Time `json:"at"`
	Actor    string    `json:"actor"`
	ActorKey string    `json:"actor_key,omitempty"`
	Action   string    `json:"action"`
	Host     string    `json:"host,omitempty"`
	OrderID  string    `json:"order_id,omitempty"`
	Detail   string    `json:"detail,omitempty"`
}
