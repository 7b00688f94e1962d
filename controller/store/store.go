// Package store keeps the controller's durable state: operators, enrollment
// tokens, hosts, orders, snapshots, the custody log and the audit log.
//
// All access goes through transactions: Update runs a function in a
// read-write transaction, View in a read-only one. A function's error rolls
// the transaction back, so a multi-step change (an order, the host's state
// and the audit entry that records them) is stored whole or not at all.
// Times are stored as UTC nanoseconds.
package store

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned when a looked-up row does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned when an insert clashes with an existing row.
var ErrExists = errors.New("already exists")

// ErrTokenInvalid is returned when an enrollment token is unknown, used or
// expired.
var ErrTokenInvalid = errors.New("enrollment token is unknown, used or expired")

// Store is the controller's state. Implementations: SQLite (OpenSQLite).
type Store interface {
	// Update runs fn in a read-write transaction and commits it if fn
	// returns nil.
	Update(ctx context.Context, fn func(Tx) error) error
	// View runs fn in a read-only transaction.
	View(ctx context.Context, fn func(Tx) error) error
	Close() error
}

// Tx is what a transaction can do.
type Tx interface {
	AddOperator(o Operator) error
	Operator(fingerprint string) (Operator, error)
	Operators() ([]Operator, error)
	// RemoveOperator deletes the operator with this name; ErrNotFound if
	// there is none.
	RemoveOperator(name string) error

	AddToken(t Token) error
	// UseToken marks the token with this hash used by host at now, or
	// returns ErrTokenInvalid.
	UseToken(hash, host string, now time.Time) error

	// AddHost inserts a new host; ErrExists if its name or key is taken.
	AddHost(h Host) error
	Host(name string) (Host, error)
	HostByFingerprint(fp string) (Host, error)
	Hosts() ([]Host, error)
	PutHost(h Host) error

	// AddOrder inserts o and sets o.Seq.
	AddOrder(o *Order) error
	Order(id string) (Order, error)
	PutOrder(o Order) error
	// Orders lists orders, newest first; host "" means all; limit 0 means 100.
	Orders(host string, limit int) ([]Order, error)
	// PendingOrders lists a host's undelivered orders, oldest first.
	PendingOrders(host string) ([]Order, error)

	// AddSnapshot inserts s; ErrExists if its id is taken.
	AddSnapshot(s Snapshot) error
	Snapshot(id string) (Snapshot, error)
	// Snapshots lists snapshots, newest first; host "" means all.
	Snapshots(host string) ([]Snapshot, error)

	AddCustody(c Custody) error
	Custody(snapshotID string) ([]Custody, error)

	AddAudit(e Audit) error
	// Audit lists entries, newest first; host "" means all; limit 0 means 100.
	Audit(host string, limit int) ([]Audit, error)
}

// Operator is an operator key and its role.
type Operator struct {
	Fingerprint string
	Name        string
	Role        string
	PublicKey   string // authorized_keys format
	CreatedAt   time.Time
}

// Token is a one-time enrollment token, stored as the hex SHA-256 of the
// token so the database never holds a usable token.
type Token struct {
	Hash      string
	CreatedAt time.Time
	ExpiresAt time.Time
	CreatedBy string
	UsedAt    time.Time
	UsedBy    string
}

// Host states (DESIGN.md §3).
const (
	StateReleased  = "released"
	StateIsolating = "isolating"
	StateIsolated  = "isolated"
	StateReleasing = "releasing"
	StateFailed    = "failed"
)

// Host is an enrolled host.
type Host struct {
	Name        string
	Fingerprint string
	PublicKey   string
	EnrolledAt  time.Time
	State       string
	StateReason string
	StateSince  time.Time
	// Desired is StateIsolated or StateReleased: what the last order asked.
	Desired string
	// LastOrder is the id of the newest order for the host.
	LastOrder string
	// IsolateOrder is the id of the order whose policy is in force (or
	// wanted) while Desired is isolated; re-pushed after a reboot.
	IsolateOrder string
	Digest       string
	LastSeen     time.Time
	Addr         string
	Hostname     string
	MachineID    string
	BootID       string
	AgentVersion string
	// Plugin is the agent's firewall plugin and its version ("nftables
	// 0.1.0"), with why it cannot be used, if so.
	Plugin string
	// PluginReason says why the agent uses that plugin (chosen by
	// --plugin auto from what the host's firewall is, or configured).
	PluginReason string
	// Repairs counts the times the agent found Cordon's rules changed
	// behind its back while isolated and put them back (drift repair).
	Repairs int
	// LastRepair is when the last one was done (agent clock); zero when
	// none was. LastRepairDetail says what was found and how long it took.
	LastRepair       time.Time
	LastRepairDetail string
	// CloudProvider and CloudInstanceID are the cloud instance the host's
	// agent reports it runs as (snapshot.CloudIdentity); "" when none.
	CloudProvider   string
	CloudInstanceID string
	// CloudRegion, CloudZone and CloudProject locate the instance when an
	// operator bound it (AWS and Azure region, GCP zone and project).
	CloudRegion, CloudZone, CloudProject string
	// CloudBoundBy is "" when the cloud instance is what the agent
	// reports (checked with the provider at each order), or the operator
	// who bound it by hand (trusted as set; agents' reports no longer
	// change it), or "provider" once the provider confirmed the agent's
	// report (kept thereafter: an agent that later names another instance
	// or none is reported, not followed).
	CloudBoundBy string
	// ControllerEndpoint is the controller address and port the agent
	// last connected to ("198.18.0.1:7443"), for the cloud layer of an
	// order issued while the agent is offline.
	ControllerEndpoint string
}

// Order states.
const (
	OrderPending   = "pending"
	OrderDelivered = "delivered"
	OrderDone      = "done"
	OrderFailed    = "failed"
)

// Order is an order and its outcome.
type Order struct {
	Seq      int64
	ID       string
	Host     string
	Kind     string
	Reason   string
	Incident string
	Allow    []string
	// DNS lists the resolvers the isolated host may still query; DHCP
	// keeps its DHCP client working (policy.Policy).
	DNS            []string
	DHCP           bool
	Operator       string
	OperatorKey    string
	State          string
	Error          string
	CreatedAt      time.Time
	DeliveredAt    time.Time
	DoneAt         time.Time
	Digest         string
	SnapshotID     string
	SnapshotSHA256 string
	SnapshotSize   int64
	SnapshotStored bool
	// SnapshotVerified: the stored bundle verified at receipt.
	SnapshotVerified bool
	SnapshotNS       int64
	ApplyNS          int64
	VerifyNS         int64
	FlowsCut         uint64
	Version          int64
	// CloudState is the cloud layer's part of the order: "" when the
	// host has no cloud layer, "applying", "isolated", "released",
	// "failed"; CloudDetail says what the provider holds (and notes),
	// CloudError why it failed.
	CloudState  string
	CloudDetail string
	CloudError  string
	// CloudOptions are the optional steps the order asks of the cloud
	// layer, as JSON (api.CloudOptions); "" for none.
	CloudOptions string
}

// Snapshot is a stored evidence bundle.
type Snapshot struct {
	ID         string
	SHA256     string
	Size       int64
	Host       string
	OrderID    string
	TakenAt    time.Time
	ReceivedAt time.Time
	AgentKey   string // fingerprint of the uploading (and, if verified, signing) agent key
	FileName   string
	// Verified says whether the bundle verified at receipt against the
	// agent's enrolled key; VerifyError says why not.
	Verified    bool
	VerifyError string
	// Receipt is the controller's signed receipt file (evidence.ReceiptFile
	// as JSON).
	Receipt string
}

// Custody is one event in a snapshot's chain of custody.
type Custody struct {
	SnapshotID string
	At         time.Time
	Event      string // received, downloaded
	Actor      string
	ActorKey   string
	SHA256     string
	Detail     string
}

// Audit is one entry of the audit log.
type Audit struct {
	At       time.Time
	Actor    string
	ActorKey string
	Action   string
	Host     string
	OrderID  string
	Detail   string
}
