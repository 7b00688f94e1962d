package wire

import (
	"errors"
	"fmt"
	"time"

	"github.com/cordon-ir/cordon/pkg/policy"
)

// OrderKind is what an order asks of an agent.
type OrderKind string

// Order kinds.
const (
	KindIsolate  OrderKind = "isolate"  // snapshot, then isolate (DESIGN.md §3)
	KindRelease  OrderKind = "release"  // remove Cordon's rules
	KindSnapshot OrderKind = "snapshot" // snapshot only, no isolation (triage)
)

// Limits on free-text fields.
const (
	MaxReason   = 1024
	MaxIncident = 128
	MaxOperator = 256
	MaxError    = 4096
)

// Order is sent by the controller on a ChanOrder channel.
type Order struct {
	V        int       `json:"v"`
	ID       string    `json:"id"`
	Kind     OrderKind `json:"kind"`
	Host     string    `json:"host"`
	Reason   string    `json:"reason"`
	Incident string    `json:"incident,omitempty"`
	// Operator is who issued the order: name and key fingerprint.
	Operator string    `json:"operator"`
	IssuedAt time.Time `json:"issued_at"`
	// Policy is required for KindIsolate and absent otherwise.
	Policy *policy.Policy `json:"policy,omitempty"`
}

// Validate checks every field of o.
func (o *Order) Validate() error {
	if err := checkVersion(o.V); err != nil {
		return err
	}
	if !ValidID(o.ID) {
		return fmt.Errorf("order id %q is not valid", o.ID)
	}
	if !ValidHostName(o.Host) {
		return fmt.Errorf("host name %q is not valid", o.Host)
	}
	if err := checkText("reason", o.Reason, MaxReason, true); err != nil {
		return err
	}
	if err := checkText("incident", o.Incident, MaxIncident, false); err != nil {
		return err
	}
	if err := checkText("operator", o.Operator, MaxOperator, true); err != nil {
		return err
	}
	if o.IssuedAt.IsZero() {
		return errors.New("issued_at is required")
	}
	switch o.Kind {
	case KindIsolate:
		if o.Policy == nil {
			return errors.New("an isolate order needs a policy")
		}
		return o.Policy.Validate()
	case KindRelease, KindSnapshot:
		if o.Policy != nil {
			return fmt.Errorf("a %s order takes no policy", o.Kind)
		}
		return nil
	default:
		return fmt.Errorf("order kind %q is not known", o.Kind)
	}
}

// OrderAck answers an Order: Accepted means the agent has it and will carry
// it out (or already has); otherwise Error says why not.
type OrderAck struct {
	V        int    `json:"v"`
	OrderID  string `json:"order_id"`
	Accepted bool   `json:"accepted"`
	Error    string `json:"error,omitempty"`
}

// Validate checks a.
func (a *OrderAck) Validate() error {
	if err := checkVersion(a.V); err != nil {
		return err
	}
	if a.OrderID != "" && !ValidID(a.OrderID) {
		return fmt.Errorf("order id %q is not valid", a.OrderID)
	}
	return checkText("error", a.Error, MaxError, false)
}

// Stage is how far an agent has got with an order.
type Stage string

// Stages an agent reports, in order. An isolate order reports snapshot, then
// isolated or failed; a release order reports released or failed; a snapshot
// order reports snapshot (which completes it) or failed.
const (
	StageSnapshot Stage = "snapshot" // evidence captured in memory, upload queued
	StageIsolated Stage = "isolated" // rules applied and verified
	StageReleased Stage = "released" // Cordon's rules removed and verified gone
	StageFailed   Stage = "failed"   // Error says why; Firewall says what stands
	// StageRepaired is not a step of an order: while a host is isolated
	// the agent found Cordon's rules changed behind its back (Drift says
	// how) and applied them again (Error says why it could not). OrderID
	// is the isolate order in force, or "" when the agent does not know it
	// (it found the host isolated at start); the controller then takes the
	// host's.
	StageRepaired Stage = "repaired"
)

// SnapshotRef names an evidence bundle.
type SnapshotRef struct {
	ID     string `json:"id"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Errors counts artifacts that recorded collection errors.
	Errors int `json:"errors"`
}

// Report is sent by an agent on a ChanReport channel as an order advances.
// Reports are idempotent: the controller may receive one twice after a
// reconnect.
type Report struct {
	V       int       `json:"v"`
	OrderID string    `json:"order_id"`
	Stage   Stage     `json:"stage"`
	At      time.Time `json:"at"` // agent clock
	// Digest of the rules read back from the kernel (isolated).
	Digest   string       `json:"digest,omitempty"`
	Snapshot *SnapshotRef `json:"snapshot,omitempty"`
	Error    string       `json:"error,omitempty"`
	// Firewall is the firewall state after a failure.
	Firewall *FirewallState `json:"firewall,omitempty"`
	// Durations of the steps, in nanoseconds.
	SnapshotNS int64  `json:"snapshot_ns,omitempty"`
	ApplyNS    int64  `json:"apply_ns,omitempty"`
	VerifyNS   int64  `json:"verify_ns,omitempty"`
	FlowsCut   uint64 `json:"flows_cut,omitempty"`
	// SelfTest says what the agent found when it tried the isolation from
	// the host once the rules were verified (isolated): whether the
	// controller answered, and that a connection the policy forbids did
	// not get through.
	SelfTest string `json:"self_test,omitempty"`
	// Drift says what the agent found wrong with the rules (repaired).
	Drift string `json:"drift,omitempty"`
	// DriftNS bounds how long the rules were wrong (repaired): from the
	// last check that found them intact to the repair, in nanoseconds.
	DriftNS int64 `json:"drift_ns,omitempty"`
	// Repairs is how many repairs a repaired report stands for (an agent
	// whose rules something keeps removing sends one report per few
	// seconds); 0 means 1.
	Repairs int `json:"repairs,omitempty"`
}

// Validate checks r.
func (r *Report) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if !ValidID(r.OrderID) && (r.Stage != StageRepaired || r.OrderID != "") {
		return fmt.Errorf("order id %q is not valid", r.OrderID)
	}
	switch r.Stage {
	case StageRepaired:
		if r.Drift == "" {
			return errors.New("a repaired report needs the drift found")
		}
	case StageSnapshot:
		if r.Snapshot == nil {
			return errors.New("a snapshot report needs a snapshot")
		}
		if err := r.Snapshot.validate(); err != nil {
			return err
		}
	case StageIsolated, StageReleased:
	case StageFailed:
		if r.Error == "" {
			return errors.New("a failed report needs an error")
		}
	default:
		return fmt.Errorf("stage %q is not known", r.Stage)
	}
	if r.At.IsZero() {
		return errors.New("at is required")
	}
	if err := checkText("self_test", r.SelfTest, MaxError, false); err != nil {
		return err
	}
	if err := checkText("drift", r.Drift, MaxError, false); err != nil {
		return err
	}
	if r.Repairs < 0 || r.Repairs > 1_000_000 {
		return fmt.Errorf("repairs %d out of range", r.Repairs)
	}
	if r.SnapshotNS < 0 || r.ApplyNS < 0 || r.VerifyNS < 0 || r.DriftNS < 0 {
		return errors.New("negative duration")
	}
	if err := checkText("digest", r.Digest, 128, false); err != nil {
		return err
	}
	if r.Firewall != nil {
		if err := r.Firewall.validate(); err != nil {
			return err
		}
	}
	return checkText("error", r.Error, MaxError, false)
}

func (f *FirewallState) validate() error {
	for _, x := range []struct {
		name, v string
		max     int
	}{{"firewall.plugin", f.Plugin, 64}, {"firewall.plugin_reason", f.PluginReason, MaxError}, {"firewall.version", f.Version, 64}, {"firewall.digest", f.Digest, 128},
		{"firewall.partial", f.Partial, MaxError}, {"firewall.error", f.Error, MaxError}} {
		if err := checkText(x.name, x.v, x.max, false); err != nil {
			return err
		}
	}
	return nil
}

func (s *SnapshotRef) validate() error {
	if !ValidID(s.ID) {
		return fmt.Errorf("snapshot id %q is not valid", s.ID)
	}
	if !validSHA256(s.SHA256) {
		return fmt.Errorf("snapshot sha256 %q is not 64 lowercase hex digits", s.SHA256)
	}
	if s.Size <= 0 {
		return fmt.Errorf("snapshot size %d", s.Size)
	}
	return nil
}

// FirewallState is what an agent knows of its firewall: the plugin in use
// and whether Cordon's rules are in place.
type FirewallState struct {
	Plugin string `json:"plugin"`
	// PluginReason says why the agent uses Plugin: what --plugin auto
	// found on the host, or that it was configured.
	PluginReason string `json:"plugin_reason,omitempty"`
	Version      string `json:"version,omitempty"`
	Isolated     bool   `json:"isolated"`
	Digest       string `json:"digest,omitempty"`
	Partial      string `json:"partial,omitempty"`
	Error        string `json:"error,omitempty"`
}

// Ack answers a Report or an evidence upload. Drop, with an error, means
// the controller will never accept what was sent, so the agent should not
// send it again.
type Ack struct {
	V     int    `json:"v"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	Drop  bool   `json:"drop,omitempty"`
}

// Validate checks a.
func (a *Ack) Validate() error {
	if err := checkVersion(a.V); err != nil {
		return err
	}
	return checkText("error", a.Error, MaxError, false)
}

// MaxBundle is the largest evidence bundle accepted, in bytes.
const MaxBundle = 2 << 30

// EvidenceHeader precedes an evidence bundle on a ChanEvidence channel.
type EvidenceHeader struct {
	V          int       `json:"v"`
	SnapshotID string    `json:"snapshot_id"`
	OrderID    string    `json:"order_id,omitempty"`
	SHA256     string    `json:"sha256"`
	Size       int64     `json:"size"`
	TakenAt    time.Time `json:"taken_at"`
}

// Validate checks h.
func (h *EvidenceHeader) Validate() error {
	if err := checkVersion(h.V); err != nil {
		return err
	}
	if !ValidID(h.SnapshotID) {
		return fmt.Errorf("snapshot id %q is not valid", h.SnapshotID)
	}
	if h.OrderID != "" && !ValidID(h.OrderID) {
		return fmt.Errorf("order id %q is not valid", h.OrderID)
	}
	if !validSHA256(h.SHA256) {
		return fmt.Errorf("sha256 %q is not 64 lowercase hex digits", h.SHA256)
	}
	if h.Size <= 0 || h.Size > MaxBundle {
		return fmt.Errorf("bundle size %d out of range (1..%d)", h.Size, int64(MaxBundle))
	}
	if h.TakenAt.IsZero() {
		return errors.New("taken_at is required")
	}
	return nil
}

// Hello is the first message of an agent connection: who the agent is and
// what its firewall looks like right now, so the controller can reconcile
// (DESIGN.md §3.7).
type Hello struct {
	V            int    `json:"v"`
	Name         string `json:"name"`
	AgentVersion string `json:"agent_version"`
	Hostname     string `json:"hostname"`
	MachineID    string `json:"machine_id,omitempty"`
	BootID       string `json:"boot_id,omitempty"`
	// CloudProvider and CloudInstanceID are the cloud and instance the
	// host records for itself (snapshot.CloudIdentity), "" when none: what
	// the controller binds the host's cloud layer to, once the provider
	// confirms it.
	CloudProvider   string        `json:"cloud_provider,omitempty"`
	CloudInstanceID string        `json:"cloud_instance_id,omitempty"`
	Firewall        FirewallState `json:"firewall"`
	// Orders lists ids of orders the agent is carrying out or has finished
	// since it started, so the controller does not send them again.
	Orders []string `json:"orders,omitempty"`
}

// Validate checks h.
func (h *Hello) Validate() error {
	if err := checkVersion(h.V); err != nil {
		return err
	}
	if !ValidHostName(h.Name) {
		return fmt.Errorf("host name %q is not valid", h.Name)
	}
	for _, f := range []struct {
		name, v string
		max     int
	}{{"agent_version", h.AgentVersion, 64}, {"hostname", h.Hostname, 255}, {"machine_id", h.MachineID, 64}, {"boot_id", h.BootID, 64},
		{"cloud_provider", h.CloudProvider, 32}, {"cloud_instance_id", h.CloudInstanceID, 256}} {
		if err := checkText(f.name, f.v, f.max, false); err != nil {
			return err
		}
	}
	if err := h.Firewall.validate(); err != nil {
		return err
	}
	if len(h.Orders) > 1024 {
		return fmt.Errorf("%d order ids, at most 1024", len(h.Orders))
	}
	for _, id := range h.Orders {
		if !ValidID(id) {
			return fmt.Errorf("order id %q is not valid", id)
		}
	}
	return nil
}

// HelloAck answers Hello.
type HelloAck struct {
	V     int    `json:"v"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// Validate checks a.
func (a *HelloAck) Validate() error {
	if err := checkVersion(a.V); err != nil {
		return err
	}
	return checkText("error", a.Error, MaxError, false)
}

func validSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
