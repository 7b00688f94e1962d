// Package evidence reads and writes Cordon evidence bundles (DESIGN.md §4):
// one gzip-compressed tar per snapshot, holding a signed manifest and the
// artifacts it lists.
//
// A bundle contains:
//
//	manifest.json      the Manifest, indented JSON
//	manifest.json.sig  an armored SSHSIG signature (OpenSSH PROTOCOL.sshsig,
//	                   SHA-512, namespace "cordon-evidence") of the exact
//	                   manifest.json bytes by the agent's key
//	artifacts/*.jsonl  one JSON object per line per record
//	raw/...            raw kernel text the records were parsed from
//
// Invariants a caller can rely on: bundles are built in memory, never on
// disk, and streaming: each artifact is compressed as it is written, so no
// uncompressed copy is held; the gzip file is made of several members
// (RFC 1952 §2.2), which gzip(1), tar(1) and Go's gzip.Reader read as one
// stream; tar headers are deterministic (mode 0444, uid/gid 0, no user or
// group names, mtime = the snapshot's start); every entry except
// manifest.json and its signature is listed in the manifest with its size
// and SHA-256, so the signature covers every byte of the bundle. The
// signature can be checked with stock OpenSSH:
//
//	ssh-keygen -Y verify -f allowed_signers -I <principal> \
//	    -n cordon-evidence -s manifest.json.sig < manifest.json
//
// Verify checks all of this offline and names the first thing that does not
// hold.
package evidence

import (
	"fmt"
	"path"
	"regexp"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/pkg/policy"
)

// FormatVersion is the bundle format this package writes and reads, carried
// in Manifest.FormatVersion.
const FormatVersion = 1

// Namespace is the SSHSIG namespace of manifest signatures (PROTOCOL.sshsig):
// a signature made for any other purpose does not verify as evidence.
const Namespace = "cordon-evidence"

// Names of the two bundle entries that the manifest does not list.
const (
	ManifestPath  = "manifest.json"
	SignaturePath = "manifest.json.sig"
)

// Directories that artifacts live under inside a bundle.
const (
	ArtifactsDir = "artifacts/" // parsed records, <name>.jsonl
	RawDir       = "raw/"       // raw kernel text, raw/<original path>
)

// Manifest describes one snapshot and lists every artifact in its bundle. It
// is stored as manifest.json and signed. Times are UTC; encoding/json writes
// them in RFC 3339 with up to nanosecond precision.
type Manifest struct {
	// FormatVersion is FormatVersion.
	FormatVersion int `json:"format_version"`
	// SnapshotID names this snapshot.
	SnapshotID string `json:"snapshot_id"`
	// OrderID names the order that asked for it.
	OrderID string `json:"order_id"`
	// Incident is the operator's incident reference, if any.
	Incident string `json:"incident"`
	// Reason is the operator's reason for the order.
	Reason string `json:"reason"`
	// Host identifies the machine the snapshot was taken on.
	Host Host `json:"host"`
	// AgentVersion is the version of the agent that took the snapshot.
	AgentVersion string `json:"agent_version"`
	// AgentKey is the public key that signs manifest.json, in
	// authorized_keys format without comment ("ssh-ed25519 AAAA…").
	AgentKey string `json:"agent_key"`
	// AgentKeyFingerprint is AgentKey's OpenSSH SHA-256 fingerprint
	// ("SHA256:…", as ssh-keygen -l prints it).
	AgentKeyFingerprint string `json:"agent_key_fingerprint"`
	// StartedAt is when collection started (host clock, UTC).
	StartedAt time.Time `json:"started_at"`
	// FinishedAt is when collection ended (host clock, UTC), before the
	// bundle was encoded and signed.
	FinishedAt time.Time `json:"finished_at"`
	// ClockOffsetNS is the controller's clock minus the host's, in
	// nanoseconds, measured during the snapshot; nil when it could not be
	// measured, and then ClockOffsetError says why.
	ClockOffsetNS *int64 `json:"clock_offset_ns,omitempty"`
	// ClockOffsetError says why ClockOffsetNS is absent.
	ClockOffsetError string `json:"clock_offset_error,omitempty"`
	// Sandbox says how the agent was kept from writing to the host's disks
	// while it took the snapshot (Landlock, or none), and which process
	// collected the evidence.
	Sandbox string `json:"sandbox,omitempty"`
	// Policy is the isolation policy of the order, as the agent applies it
	// right after the snapshot (controller endpoints, allowlist, DNS
	// resolvers, DHCP; policy.Policy, canonical); absent on a triage
	// snapshot, which isolates nothing.
	Policy *policy.Policy `json:"policy,omitempty"`
	// Artifacts lists every file in the bundle except manifest.json and
	// manifest.json.sig, in the order they appear in the tar.
	Artifacts []Artifact `json:"artifacts"`
}

// Host identifies the machine a snapshot was taken on.
type Host struct {
	// Name is the host's Cordon name (inventory name).
	Name string `json:"name"`
	// Hostname is the kernel's host name (uname -n).
	Hostname string `json:"hostname"`
	// MachineID is /etc/machine-id (machine-id(5)).
	MachineID string `json:"machine_id"`
	// BootID is /proc/sys/kernel/random/boot_id: it changes on every boot.
	BootID string `json:"boot_id"`
}

// Artifact is one file in a bundle.
type Artifact struct {
	// Name is the artifact's short name: "processes" for
	// artifacts/processes.jsonl, the original path ("/proc/net/tcp") for a
	// raw file.
	Name string `json:"name"`
	// Path is the file's path inside the bundle.
	Path string `json:"path"`
	// SHA256 is the lowercase hex SHA-256 of the file's bytes.
	SHA256 string `json:"sha256"`
	// Size is the file's length in bytes.
	Size int64 `json:"size"`
	// Records is the number of JSONL records (lines); 0 for raw files.
	Records int64 `json:"records"`
	// Source says where the data came from, e.g.
	// "/proc/[pid]/stat, /proc/[pid]/cmdline (proc(5))".
	Source string `json:"source"`
	// Errors are collection errors: the artifact may be incomplete. Never
	// nil in a manifest this package writes.
	Errors []string `json:"errors"`
}

var fileNameUnsafe = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// FileName returns the bundle's file name,
// cordon-<host>-<UTC time as 20261129T101530Z>-<id>.tar.gz. Characters other
// than letters, digits, '.', '_' and '-' in host and snapshotID become '_',
// so the name is always a single safe path element.
func FileName(host string, takenAt time.Time, snapshotID string) string {
	return fmt.Sprintf("cordon-%s-%s-%s.tar.gz",
		fileNameUnsafe.ReplaceAllString(host, "_"),
		takenAt.UTC().Format("20060102T150405Z"),
		fileNameUnsafe.ReplaceAllString(snapshotID, "_"))
}

// AllowedSigners returns one line of an OpenSSH allowed_signers file
// (ssh-keygen(1), ALLOWED SIGNERS) that trusts key for evidence signatures
// under principal, for use with ssh-keygen -Y verify -n cordon-evidence.
func AllowedSigners(principal string, key ssh.PublicKey) string {
	return fmt.Sprintf("%s namespaces=%q %s", principal, Namespace,
		strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))))
}

var jsonlName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,127}$`)

// checkPath reports why p is not a safe bundle path: relative, clean, slash
// separated, no "..", no empty or dot elements, printable, at most 1024
// bytes.
func checkPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("empty path")
	case len(p) > 1024:
		return fmt.Errorf("path longer than 1024 bytes")
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("absolute path")
	case strings.ContainsAny(p, "\\\x00"):
		return fmt.Errorf("path contains a backslash or NUL")
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return fmt.Errorf("path contains a control or invalid character")
		}
	}
	for _, el := range strings.Split(p, "/") {
		switch el {
		case "..":
			return fmt.Errorf("path contains \"..\"")
		case ".", "":
			return fmt.Errorf("path has an empty or \".\" element")
		}
	}
	if path.Clean(p) != p {
		return fmt.Errorf("path is not clean")
	}
	return nil
}
