package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// SQLite is a Store in one SQLite file, through database/sql with the pure-Go
// modernc.org/sqlite driver. Writes are serialized (one connection), which
// suits one controller process.
type SQLite struct {
	db *sql.DB
}

var _ Store = (*SQLite)(nil)

// OpenSQLite opens or creates the database at path and brings its schema up
// to date.
func OpenSQLite(ctx context.Context, path string) (*SQLite, error) {
	dsn := "file:" + path + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=foreign_keys(1)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	s := &SQLite{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return s, nil
}

// schemaV1 is the first schema, kept as its own constant so that tests
// can build a database as it was.
const schemaV1 = `
CREATE TABLE operators (
	fingerprint TEXT PRIMARY KEY,
	name        TEXT NOT NULL UNIQUE,
	role        TEXT NOT NULL,
	public_key  TEXT NOT NULL,
	created_at  INTEGER NOT NULL
);
CREATE TABLE enroll_tokens (
	hash       TEXT PRIMARY KEY,
	created_at INTEGER NOT NULL,
	expires_at INTEGER NOT NULL,
	created_by TEXT NOT NULL,
	used_at    INTEGER NOT NULL DEFAULT 0,
	used_by    TEXT NOT NULL DEFAULT ''
);
CREATE TABLE hosts (
	name          TEXT PRIMARY KEY,
	fingerprint   TEXT NOT NULL UNIQUE,
	public_key    TEXT NOT NULL,
	enrolled_at   INTEGER NOT NULL,
	state         TEXT NOT NULL,
	state_reason  TEXT NOT NULL DEFAULT '',
	state_since   INTEGER NOT NULL,
	desired       TEXT NOT NULL,
	last_order    TEXT NOT NULL DEFAULT '',
	isolate_order TEXT NOT NULL DEFAULT '',
	digest        TEXT NOT NULL DEFAULT '',
	last_seen     INTEGER NOT NULL DEFAULT 0,
	addr          TEXT NOT NULL DEFAULT '',
	hostname      TEXT NOT NULL DEFAULT '',
	machine_id    TEXT NOT NULL DEFAULT '',
	boot_id       TEXT NOT NULL DEFAULT '',
	agent_version TEXT NOT NULL DEFAULT '',
	plugin        TEXT NOT NULL DEFAULT ''
);
CREATE TABLE orders (
	seq             INTEGER PRIMARY KEY AUTOINCREMENT,
	id              TEXT NOT NULL UNIQUE,
	host            TEXT NOT NULL REFERENCES hosts(name),
	kind            TEXT NOT NULL,
	reason          TEXT NOT NULL,
	incident        TEXT NOT NULL DEFAULT '',
	allow           TEXT NOT NULL DEFAULT '[]',
	operator        TEXT NOT NULL,
	operator_key    TEXT NOT NULL DEFAULT '',
	state           TEXT NOT NULL,
	error           TEXT NOT NULL DEFAULT '',
	created_at      INTEGER NOT NULL,
	delivered_at    INTEGER NOT NULL DEFAULT 0,
	done_at         INTEGER NOT NULL DEFAULT 0,
	digest          TEXT NOT NULL DEFAULT '',
	snapshot_id     TEXT NOT NULL DEFAULT '',
	snapshot_sha256 TEXT NOT NULL DEFAULT '',
	snapshot_size   INTEGER NOT NULL DEFAULT 0,
	snapshot_stored INTEGER NOT NULL DEFAULT 0,
	snapshot_verified INTEGER NOT NULL DEFAULT 0,
	snapshot_ns     INTEGER NOT NULL DEFAULT 0,
	apply_ns        INTEGER NOT NULL DEFAULT 0,
	verify_ns       INTEGER NOT NULL DEFAULT 0,
	flows_cut       INTEGER NOT NULL DEFAULT 0,
	version         INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX orders_host_state ON orders(host, state);
CREATE TABLE snapshots (
	id          TEXT PRIMARY KEY,
	sha256      TEXT NOT NULL,
	size        INTEGER NOT NULL,
	host        TEXT NOT NULL,
	order_id    TEXT NOT NULL DEFAULT '',
	taken_at    INTEGER NOT NULL,
	received_at INTEGER NOT NULL,
	agent_key   TEXT NOT NULL,
	file_name   TEXT NOT NULL,
	verified    INTEGER NOT NULL DEFAULT 0,
	verify_error TEXT NOT NULL DEFAULT '',
	receipt     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX snapshots_host ON snapshots(host);
CREATE TABLE custody (
	seq         INTEGER PRIMARY KEY AUTOINCREMENT,
	snapshot_id TEXT NOT NULL,
	at          INTEGER NOT NULL,
	event       TEXT NOT NULL,
	actor       TEXT NOT NULL,
	actor_key   TEXT NOT NULL DEFAULT '',
	sha256      TEXT NOT NULL,
	detail      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX custody_snapshot ON custody(snapshot_id);
CREATE TABLE audit (
	seq       INTEGER PRIMARY KEY AUTOINCREMENT,
	at        INTEGER NOT NULL,
	actor     TEXT NOT NULL,
	actor_key TEXT NOT NULL DEFAULT '',
	action    TEXT NOT NULL,
	host      TEXT NOT NULL DEFAULT '',
	order_id  TEXT NOT NULL DEFAULT '',
	detail    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_host ON audit(host);
`

// migrations bring the schema from version i to i+1 (PRAGMA user_version).
var migrations = []string{schemaV1, `
ALTER TABLE hosts ADD COLUMN plugin_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN repairs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN last_repair INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN last_repair_detail TEXT NOT NULL DEFAULT '';
`, `
ALTER TABLE orders ADD COLUMN dns TEXT NOT NULL DEFAULT '[]';
ALTER TABLE orders ADD COLUMN dhcp INTEGER NOT NULL DEFAULT 0;
`, `
ALTER TABLE hosts ADD COLUMN cloud_provider TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN cloud_instance_id TEXT NOT NULL DEFAULT '';
`, `
ALTER TABLE orders ADD COLUMN cloud_state TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN cloud_detail TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN cloud_error TEXT NOT NULL DEFAULT '';
`, `
ALTER TABLE hosts ADD COLUMN cloud_region TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN cloud_zone TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN cloud_project TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN cloud_bound_by TEXT NOT NULL DEFAULT '';
`, `
ALTER TABLE orders ADD COLUMN cloud_options TEXT NOT NULL DEFAULT '';
`, `
ALTER TABLE hosts ADD COLUMN controller_endpoint TEXT NOT NULL DEFAULT '';
`}

func (s *SQLite) migrate(ctx context.Context) error {
	var v int
	if err := s.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this controller (%d)", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate schema to version %d: %w", i+1, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", i+1)); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the database.
func (s *SQLite) Close() error { return s.db.Close() }

// Update implements Store.
func (s *SQLite) Update(ctx context.Context, fn func(Tx) error) error {
	return s.run(ctx, false, fn)
}

// View implements Store.
func (s *SQLite) View(ctx context.Context, fn func(Tx) error) error {
	return s.run(ctx, true, fn)
}

func (s *SQLite) run(ctx context.Context, readOnly bool, fn func(Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: begin: %w", err)
	}
	if err := fn(&sqliteTx{tx: tx}); err != nil {
		tx.Rollback()
		return err
	}
	if readOnly {
		return tx.Rollback()
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return nil
}

type sqliteTx struct{ tx *sql.Tx }

func ns(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func isUnique(err error) bool {
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}

func notFound(err error, what string) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return err
}

func (t *sqliteTx) AddOperator(o Operator) error {
	_, err := t.tx.Exec(`INSERT INTO operators(fingerprint, name, role, public_key, created_at) VALUES (?,?,?,?,?)`,
		o.Fingerprint, o.Name, o.Role, o.PublicKey, ns(o.CreatedAt))
	if isUnique(err) {
		return fmt.Errorf("operator %s (%s): %w", o.Name, o.Fingerprint, ErrExists)
	}
	return err
}

func (t *sqliteTx) Operator(fp string) (Operator, error) {
	var o Operator
	var created int64
	err := t.tx.QueryRow(`SELECT fingerprint, name, role, public_key, created_at FROM operators WHERE fingerprint = ?`, fp).
		Scan(&o.Fingerprint, &o.Name, &o.Role, &o.PublicKey, &created)
	o.CreatedAt = fromNS(created)
	return o, notFound(err, "operator "+fp)
}

func (t *sqliteTx) Operators() ([]Operator, error) {
	rows, err := t.tx.Query(`SELECT fingerprint, name, role, public_key, created_at FROM operators ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Operator
	for rows.Next() {
		var o Operator
		var created int64
		if err := rows.Scan(&o.Fingerprint, &o.Name, &o.Role, &o.PublicKey, &created); err != nil {
			return nil, err
		}
		o.CreatedAt = fromNS(created)
		out = append(out, o)
	}
	return out, rows.Err()
}

func (t *sqliteTx) RemoveOperator(name string) error {
	res, err := t.tx.Exec(`DELETE FROM operators WHERE name = ?`, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("operator %s: %w", name, ErrNotFound)
	}
	return nil
}

func (t *sqliteTx) AddToken(k Token) error {
	_, err := t.tx.Exec(`INSERT INTO enroll_tokens(hash, created_at, expires_at, created_by) VALUES (?,?,?,?)`,
		k.Hash, ns(k.CreatedAt), ns(k.ExpiresAt), k.CreatedBy)
	if isUnique(err) {
		return fmt.Errorf("token: %w", ErrExists)
	}
	return err
}

func (t *sqliteTx) UseToken(hash, host string, now time.Time) error {
	res, err := t.tx.Exec(`UPDATE enroll_tokens SET used_at = ?, used_by = ? WHERE hash = ? AND used_at = 0 AND expires_at > ?`,
		ns(now), host, hash, ns(now))
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return ErrTokenInvalid
	}
	return nil
}

const hostCols = `name, fingerprint, public_key, enrolled_at, state, state_reason, state_since, desired, last_order,
	isolate_order, digest, last_seen, addr, hostname, machine_id, boot_id, agent_version, plugin, plugin_reason,
	repairs, last_repair, last_repair_detail, cloud_provider, cloud_instance_id, cloud_region, cloud_zone, cloud_project, cloud_bound_by, controller_endpoint`

func hostArgs(h Host) []any {
	return []any{h.Name, h.Fingerprint, h.PublicKey, ns(h.EnrolledAt), h.State, h.StateReason, ns(h.StateSince),
		h.Desired, h.LastOrder, h.IsolateOrder, h.Digest, ns(h.LastSeen), h.Addr, h.Hostname, h.MachineID, h.BootID,
		h.AgentVersion, h.Plugin, h.PluginReason, h.Repairs, ns(h.LastRepair), h.LastRepairDetail, h.CloudProvider, h.CloudInstanceID, h.CloudRegion, h.CloudZone, h.CloudProject, h.CloudBoundBy, h.ControllerEndpoint}
}

type scanner interface{ Scan(...any) error }

func scanHost(r scanner) (Host, error) {
	var h Host
	var enrolled, since, seen, repaired int64
	err := r.Scan(&h.Name, &h.Fingerprint, &h.PublicKey, &enrolled, &h.State, &h.StateReason, &since, &h.Desired,
		&h.LastOrder, &h.IsolateOrder, &h.Digest, &seen, &h.Addr, &h.Hostname, &h.MachineID, &h.BootID,
		&h.AgentVersion, &h.Plugin, &h.PluginReason, &h.Repairs, &repaired, &h.LastRepairDetail, &h.CloudProvider, &h.CloudInstanceID, &h.CloudRegion, &h.CloudZone, &h.CloudProject, &h.CloudBoundBy, &h.ControllerEndpoint)
	h.EnrolledAt, h.StateSince, h.LastSeen, h.LastRepair = fromNS(enrolled), fromNS(since), fromNS(seen), fromNS(repaired)
	return h, err
}

func (t *sqliteTx) AddHost(h Host) error {
	_, err := t.tx.Exec(`INSERT INTO hosts(`+hostCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`, hostArgs(h)...)
	if isUnique(err) {
		return fmt.Errorf("host %s: %w", h.Name, ErrExists)
	}
	return err
}

func (t *sqliteTx) Host(name string) (Host, error) {
	h, err := scanHost(t.tx.QueryRow(`SELECT `+hostCols+` FROM hosts WHERE name = ?`, name))
	return h, notFound(err, "host "+name)
}

func (t *sqliteTx) HostByFingerprint(fp string) (Host, error) {
	h, err := scanHost(t.tx.QueryRow(`SELECT `+hostCols+` FROM hosts WHERE fingerprint = ?`, fp))
	return h, notFound(err, "host with key "+fp)
}

func (t *sqliteTx) Hosts() ([]Host, error) {
	rows, err := t.tx.Query(`SELECT ` + hostCols + ` FROM hosts ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Host
	for rows.Next() {
		h, err := scanHost(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

func (t *sqliteTx) PutHost(h Host) error {
	args := append(hostArgs(h)[1:], h.Name)
	res, err := t.tx.Exec(`UPDATE hosts SET fingerprint=?, public_key=?, enrolled_at=?, state=?, state_reason=?,
		state_since=?, desired=?, last_order=?, isolate_order=?, digest=?, last_seen=?, addr=?, hostname=?, machine_id=?,
		boot_id=?, agent_version=?, plugin=?, plugin_reason=?, repairs=?, last_repair=?, last_repair_detail=?, cloud_provider=?, cloud_instance_id=?, cloud_region=?, cloud_zone=?, cloud_project=?, cloud_bound_by=?, controller_endpoint=? WHERE name = ?`, args...)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("host %s: %w", h.Name, ErrNotFound)
	}
	return nil
}

const orderCols = `seq, id, host, kind, reason, incident, allow, operator, operator_key, state, error, created_at,
	delivered_at, done_at, digest, snapshot_id, snapshot_sha256, snapshot_size, snapshot_stored, snapshot_verified,
	snapshot_ns, apply_ns, verify_ns, flows_cut, version, dns, dhcp, cloud_state, cloud_detail, cloud_error, cloud_options`

func scanOrder(r scanner) (Order, error) {
	var o Order
	var allow, dns string
	var created, delivered, done int64
	err := r.Scan(&o.Seq, &o.ID, &o.Host, &o.Kind, &o.Reason, &o.Incident, &allow, &o.Operator, &o.OperatorKey,
		&o.State, &o.Error, &created, &delivered, &done, &o.Digest, &o.SnapshotID, &o.SnapshotSHA256, &o.SnapshotSize,
		&o.SnapshotStored, &o.SnapshotVerified, &o.SnapshotNS, &o.ApplyNS, &o.VerifyNS, &o.FlowsCut, &o.Version, &dns, &o.DHCP, &o.CloudState, &o.CloudDetail, &o.CloudError, &o.CloudOptions)
	if err != nil {
		return o, err
	}
	o.CreatedAt, o.DeliveredAt, o.DoneAt = fromNS(created), fromNS(delivered), fromNS(done)
	if err := json.Unmarshal([]byte(allow), &o.Allow); err != nil {
		return o, fmt.Errorf("order %s: allowlist column: %w", o.ID, err)
	}
	if err := json.Unmarshal([]byte(dns), &o.DNS); err != nil {
		return o, fmt.Errorf("order %s: dns column: %w", o.ID, err)
	}
	return o, nil
}

func allowJSON(a []string) string {
	if a == nil {
		a = []string{}
	}
	b, _ := json.Marshal(a)
	return string(b)
}

func (t *sqliteTx) AddOrder(o *Order) error {
	res, err := t.tx.Exec(`INSERT INTO orders(id, host, kind, reason, incident, allow, operator, operator_key, state,
		error, created_at, delivered_at, done_at, digest, snapshot_id, snapshot_sha256, snapshot_size, snapshot_stored,
		snapshot_ns, apply_ns, verify_ns, flows_cut, version, dns, dhcp, cloud_state, cloud_detail, cloud_error, cloud_options)
		VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,1,?,?,?,?,?,?)`,
		o.ID, o.Host, o.Kind, o.Reason, o.Incident, allowJSON(o.Allow), o.Operator, o.OperatorKey, o.State, o.Error,
		ns(o.CreatedAt), ns(o.DeliveredAt), ns(o.DoneAt), o.Digest, o.SnapshotID, o.SnapshotSHA256, o.SnapshotSize,
		o.SnapshotStored, o.SnapshotNS, o.ApplyNS, o.VerifyNS, o.FlowsCut, allowJSON(o.DNS), o.DHCP, o.CloudState, o.CloudDetail, o.CloudError, o.CloudOptions)
	if isUnique(err) {
		return fmt.Errorf("order %s: %w", o.ID, ErrExists)
	}
	if err != nil {
		return err
	}
	o.Seq, err = res.LastInsertId()
	o.Version = 1
	return err
}

func (t *sqliteTx) Order(id string) (Order, error) {
	o, err := scanOrder(t.tx.QueryRow(`SELECT `+orderCols+` FROM orders WHERE id = ?`, id))
	return o, notFound(err, "order "+id)
}

// PutOrder stores o and increments its version.
func (t *sqliteTx) PutOrder(o Order) error {
	res, err := t.tx.Exec(`UPDATE orders SET state=?, error=?, delivered_at=?, done_at=?, digest=?, snapshot_id=?,
		snapshot_sha256=?, snapshot_size=?, snapshot_stored=?, snapshot_verified=?, snapshot_ns=?, apply_ns=?, verify_ns=?,
		flows_cut=?, cloud_state=?, cloud_detail=?, cloud_error=?, version = version + 1 WHERE id = ?`,
		o.State, o.Error, ns(o.DeliveredAt), ns(o.DoneAt), o.Digest, o.SnapshotID, o.SnapshotSHA256, o.SnapshotSize,
		o.SnapshotStored, o.SnapshotVerified, o.SnapshotNS, o.ApplyNS, o.VerifyNS, o.FlowsCut, o.CloudState, o.CloudDetail, o.CloudError, o.ID)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("order %s: %w", o.ID, ErrNotFound)
	}
	return nil
}

func (t *sqliteTx) queryOrders(q string, args ...any) ([]Order, error) {
	rows, err := t.tx.Query(q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Order
	for rows.Next() {
		o, err := scanOrder(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, rows.Err()
}

func (t *sqliteTx) Orders(host string, limit int) ([]Order, error) {
	if limit <= 0 {
		limit = 100
	}
	return t.queryOrders(`SELECT `+orderCols+` FROM orders WHERE (? = '' OR host = ?) ORDER BY seq DESC LIMIT ?`, host, host, limit)
}

func (t *sqliteTx) PendingOrders(host string) ([]Order, error) {
	return t.queryOrders(`SELECT `+orderCols+` FROM orders WHERE host = ? AND state = ? ORDER BY seq`, host, OrderPending)
}

const snapCols = `id, sha256, size, host, order_id, taken_at, received_at, agent_key, file_name, verified, verify_error, receipt`

func scanSnapshot(r scanner) (Snapshot, error) {
	var s Snapshot
	var taken, received int64
	err := r.Scan(&s.ID, &s.SHA256, &s.Size, &s.Host, &s.OrderID, &taken, &received, &s.AgentKey, &s.FileName, &s.Verified, &s.VerifyError, &s.Receipt)
	s.TakenAt, s.ReceivedAt = fromNS(taken), fromNS(received)
	return s, err
}

func (t *sqliteTx) AddSnapshot(s Snapshot) error {
	_, err := t.tx.Exec(`INSERT INTO snapshots(`+snapCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)`,
		s.ID, s.SHA256, s.Size, s.Host, s.OrderID, ns(s.TakenAt), ns(s.ReceivedAt), s.AgentKey, s.FileName, s.Verified, s.VerifyError, s.Receipt)
	if isUnique(err) {
		return fmt.Errorf("snapshot %s: %w", s.ID, ErrExists)
	}
	return err
}

func (t *sqliteTx) Snapshot(id string) (Snapshot, error) {
	s, err := scanSnapshot(t.tx.QueryRow(`SELECT `+snapCols+` FROM snapshots WHERE id = ?`, id))
	return s, notFound(err, "snapshot "+id)
}

func (t *sqliteTx) Snapshots(host string) ([]Snapshot, error) {
	rows, err := t.tx.Query(`SELECT `+snapCols+` FROM snapshots WHERE (? = '' OR host = ?) ORDER BY taken_at DESC, id`, host, host)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Snapshot
	for rows.Next() {
		s, err := scanSnapshot(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

func (t *sqliteTx) AddCustody(c Custody) error {
	_, err := t.tx.Exec(`INSERT INTO custody(snapshot_id, at, event, actor, actor_key, sha256, detail) VALUES (?,?,?,?,?,?,?)`,
		c.SnapshotID, ns(c.At), c.Event, c.Actor, c.ActorKey, c.SHA256, c.Detail)
	return err
}

func (t *sqliteTx) Custody(id string) ([]Custody, error) {
	rows, err := t.tx.Query(`SELECT snapshot_id, at, event, actor, actor_key, sha256, detail FROM custody WHERE snapshot_id = ? ORDER BY seq`, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Custody
	for rows.Next() {
		var c Custody
		var at int64
		if err := rows.Scan(&c.SnapshotID, &at, &c.Event, &c.Actor, &c.ActorKey, &c.SHA256, &c.Detail); err != nil {
			return nil, err
		}
		c.At = fromNS(at)
		out = append(out, c)
	}
	return out, rows.Err()
}

func (t *sqliteTx) AddAudit(e Audit) error {
	_, err := t.tx.Exec(`INSERT INTO audit(at, actor, actor_key, action, host, order_id, detail) VALUES (?,?,?,?,?,?,?)`,
		ns(e.At), e.Actor, e.ActorKey, e.Action, e.Host, e.OrderID, e.Detail)
	return err
}

func (t *sqliteTx) Audit(host string, limit int) ([]Audit, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := t.tx.Query(`SELECT at, actor, actor_key, action, host, order_id, detail FROM audit
		WHERE (? = '' OR host = ?) ORDER BY seq DESC LIMIT ?`, host, host, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Audit
	for rows.Next() {
		var e Audit
		var at int64
		if err := rows.Scan(&at, &e.Actor, &e.ActorKey, &e.Action, &e.Host, &e.OrderID, &e.Detail); err != nil {
			return nil, err
		}
		e.At = fromNS(at)
		out = append(out, e)
	}
	return out, rows.Err()
}
