package server

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/controller/evidencestore"
	"github.com/cordon-ir/cordon/controller/store"
	"github.com/cordon-ir/cordon/pkg/sshkey"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// testServer is a controller on 127.0.0.1 with an admin and a viewer key.
type testServer struct {
	addr   string
	hostFP string
	st     store.Store
	admin  ssh.Signer
	viewer ssh.Signer
	srv    *Server
}

// testLog sends the server's log to the test's, shown when it fails.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func newKey(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startServer starts a test controller; each option may change its Config
// before New.
func startServer(t *testing.T, options ...func(*Config)) *testServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := evidencestore.Open(filepath.Join(dir, "evidence"))
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{st: st, admin: newKey(t), viewer: newKey(t)}
	hostKey := newKey(t)
	ts.hostFP = sshkey.Fingerprint(hostKey.PublicKey())
	err = st.Update(ctx, func(tx store.Tx) error {
		for name, k := range map[string]ssh.Signer{"admin": ts.admin, "viewer": ts.viewer} {
			if err := tx.AddOperator(store.Operator{Fingerprint: sshkey.Fingerprint(k.PublicKey()), Name: name, Role: name,
				PublicKey: sshkey.AuthorizedKey(k.PublicKey())}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Store: st, Evidence: ev, HostKey: hostKey, Logger: slog.New(slog.NewTextHandler(testLog{t}, nil))}
	for _, o := range options {
		o(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr, ts.srv = ln.Addr().String(), srv
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })
	return ts
}

func (ts *testServer) dial(t *testing.T, user string, auth ...ssh.AuthMethod) *ssh.Client {
	t.Helper()
	c, err := ssh.Dial("tcp", ts.addr, &ssh.ClientConfig{User: user, Auth: auth, HostKeyCallback: sshkey.Pin(ts.hostFP), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("dial as %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// call sends raw bytes as one API request and returns the response.
func call(t *testing.T, c *ssh.Client, req any) api.Response {
	t.Helper()
	ch, reqs, err := c.OpenChannel(api.ChanName, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	if err := wire.WriteFrame(ch, req); err != nil {
		t.Fatal(err)
	}
	var resp api.Response
	if err := wire.ReadFrameMax(ch, &resp, api.MaxResponse); err != nil {
		t.Fatalf("read response: %v", err)
	}
	return resp
}

func TestBadRequestKeepsConnectionUsable(t *testing.T) {
	ts := startServer(t)
	c := ts.dial(t, "op", ssh.PublicKeys(ts.admin))
	for name, req := range map[string]any{
		"unknown field":   map[string]any{"v": 1, "op": "hosts", "sudo": true},
		"wrong version":   map[string]any{"v": 9, "op": "hosts"},
		"unknown op":      map[string]any{"v": 1, "op": "format-disk"},
		"bad args":        map[string]any{"v": 1, "op": "isolate", "args": map[string]any{"host": "h", "reason": "r", "allow": []string{"10.0.0.1/8"}}},
		"missing reason":  map[string]any{"v": 1, "op": "isolate", "args": map[string]any{"host": "h"}},
		"args not object": map[string]any{"v": 1, "op": "hosts", "args": "x"},
	} {
		t.Run(name, func(t *testing.T) {
			resp := call(t, c, req)
			if resp.Error == nil || resp.Error.Code != api.CodeInvalid {
				t.Fatalf("got %+v, want an invalid error", resp)
			}
			// The same connection still answers a good request.
			if resp := call(t, c, api.Request{V: wire.Version, Op: api.OpHosts}); resp.Error != nil {
				t.Fatalf("connection unusable after a bad request: %v", resp.Error)
			}
		})
	}
}

func TestUnknownHostIsNamed(t *testing.T) {
	ts := startServer(t)
	c := ts.dial(t, "op", ssh.PublicKeys(ts.admin))
	args, _ := json.Marshal(api.IsolateArgs{Host: "pay-db-99", Reason: "r"})
	resp := call(t, c, api.Request{V: wire.Version, Op: api.OpIsolate, Args: args})
	if resp.Error == nil || resp.Error.Code != api.CodeNotFound || !strings.Contains(resp.Error.Message, `unknown host "pay-db-99"`) {
		t.Fatalf("got %+v", resp.Error)
	}
}

func TestRolesAreEnforced(t *testing.T) {
	ts := startServer(t)
	c := ts.dial(t, "op", ssh.PublicKeys(ts.viewer))
	for _, op := range []string{api.OpIsolate, api.OpRelease, api.OpSnapshots, api.OpSnapshotDownload, api.OpEnrollCreate, api.OpOperatorAdd} {
		resp := call(t, c, api.Request{V: wire.Version, Op: op, Args: json.RawMessage(`{}`)})
		if resp.Error == nil || resp.Error.Code != api.CodeForbidden {
			t.Errorf("viewer %s: got %+v, want forbidden", op, resp.Error)
		}
	}
	if resp := call(t, c, api.Request{V: wire.Version, Op: api.OpHosts}); resp.Error != nil {
		t.Errorf("viewer hosts: %v", resp.Error)
	}
}

func TestNoShellNoForwarding(t *testing.T) {
	ts := startServer(t)
	c := ts.dial(t, "op", ssh.PublicKeys(ts.admin))
	if _, err := c.NewSession(); err == nil {
		t.Error("the controller opened a session channel")
	}
	if _, err := c.Dial("tcp", "127.0.0.1:22"); err == nil {
		t.Error("the controller forwarded a TCP connection")
	}
}

// enrollAgent enrolls a new agent key with a fresh token and returns its
// connection, after the hello.
func enrollAgent(t *testing.T, ts *testServer, name string) *ssh.Client {
	t.Helper()
	var token string
	err := ts.st.Update(context.Background(), func(tx store.Tx) (err error) {
		token, _, err = MintToken(tx, "admin", time.Hour, time.Now())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	c := ts.dial(t, name, ssh.PublicKeys(newKey(t)), ssh.KeyboardInteractive(func(_, _ string, q []string, _ []bool) ([]string, error) {
		return []string{token}, nil
	}))
	ch, reqs, err := c.OpenChannel(wire.ChanHello, nil)
	if err != nil {
		t.Fatal(err)
	}
	go ssh.DiscardRequests(reqs)
	wire.WriteFrame(ch, &wire.Hello{V: wire.Version, Name: name, AgentVersion: "test", Firewall: wire.FirewallState{Plugin: "none"},
		CloudProvider: "aws", CloudInstanceID: "i-0123456789abcdef0"})
	var ack wire.HelloAck
	if err := wire.ReadFrame(ch, &ack); err != nil || !ack.OK {
		t.Fatalf("hello: %v %+v", err, ack)
	}
	ch.Close()
	return c
}

func sendReport(t *testing.T, c *ssh.Client, v any) wire.Ack {
	t.Helper()
	ch, reqs, err := c.OpenChannel(wire.ChanReport, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	wire.WriteFrame(ch, v)
	var ack wire.Ack
	if err := wire.ReadFrame(ch, &ack); err != nil {
		t.Fatal(err)
	}
	return ack
}

func TestAgentBadReportsAreRefusedConnectionStays(t *testing.T) {
	ts := startServer(t)
	a := enrollAgent(t, ts, "pay-db-01")
	b := enrollAgent(t, ts, "pay-db-02")
	// An order for pay-db-02, issued by the admin.
	op := ts.dial(t, "op", ssh.PublicKeys(ts.admin))
	args, _ := json.Marshal(api.IsolateArgs{Host: "pay-db-02", Reason: "test"})
	resp := call(t, op, api.Request{V: wire.Version, Op: api.OpIsolate, Args: args})
	if resp.Error != nil {
		t.Fatal(resp.Error)
	}
	var ord api.Order
	json.Unmarshal(resp.Result, &ord)

	if ack := sendReport(t, a, map[string]any{"v": 1, "order_id": ord.ID, "stage": "isolated", "at": time.Now(), "rm": 1}); ack.OK || !strings.Contains(ack.Error, "unknown field") {
		t.Errorf("malformed report: %+v", ack)
	}
	// pay-db-01 may not report on pay-db-02's order.
	r := wire.Report{V: wire.Version, OrderID: ord.ID, Stage: wire.StageIsolated, At: time.Now(), Digest: "sha256:x"}
	if ack := sendReport(t, a, &r); ack.OK || !strings.Contains(ack.Error, "another host") {
		t.Errorf("foreign report: %+v", ack)
	}
	// Both connections still work: pay-db-02's own report is recorded.
	if ack := sendReport(t, b, &r); !ack.OK {
		t.Fatalf("own report refused: %+v", ack)
	}
	args, _ = json.Marshal(api.OrderArgs{ID: ord.ID})
	resp = call(t, op, api.Request{V: wire.Version, Op: api.OpOrder, Args: args})
	json.Unmarshal(resp.Result, &ord)
	if ord.State != "done" || ord.Digest != "sha256:x" {
		t.Errorf("order after its report: %+v", ord)
	}
	if ack := sendReport(t, a, &wire.Report{V: wire.Version, OrderID: "nope", Stage: wire.StageReleased, At: time.Now()}); ack.OK {
		t.Errorf("report on an unknown order accepted")
	}
}

func TestAgentChannelLimits(t *testing.T) {
	ts := startServer(t)
	a := enrollAgent(t, ts, "pay-db-01")
	var open []ssh.Channel
	for i := 0; i < maxEvidenceChannels; i++ {
		ch, reqs, err := a.OpenChannel(wire.ChanEvidence, nil)
		if err != nil {
			t.Fatalf("evidence channel %d refused: %v", i, err)
		}
		go ssh.DiscardRequests(reqs)
		open = append(open, ch)
	}
	_, _, err := a.OpenChannel(wire.ChanEvidence, nil)
	var oce *ssh.OpenChannelError
	if !errors.As(err, &oce) || oce.Reason != ssh.ResourceShortage {
		t.Fatalf("evidence channel beyond the limit: got %v, want a resource-shortage refusal", err)
	}
	// Reports still get through while uploads hold their channels.
	if ack := sendReport(t, a, &wire.Report{V: wire.Version, OrderID: "nope", Stage: wire.StageReleased, At: time.Now()}); ack.OK {
		t.Error("report on an unknown order accepted")
	}
	for _, ch := range open {
		ch.Close()
	}
}

func TestReportMustFitTheOrder(t *testing.T) {
	ts := startServer(t)
	a := enrollAgent(t, ts, "pay-db-01")
	op := ts.dial(t, "op", ssh.PublicKeys(ts.admin))
	args, _ := json.Marshal(api.IsolateArgs{Host: "pay-db-01", Reason: "test"})
	resp := call(t, op, api.Request{V: wire.Version, Op: api.OpIsolate, Args: args})
	var ord api.Order
	json.Unmarshal(resp.Result, &ord)
	ack := sendReport(t, a, &wire.Report{V: wire.Version, OrderID: ord.ID, Stage: wire.StageReleased, At: time.Now()})
	if ack.OK || !strings.Contains(ack.Error, "does not belong to an order of kind isolate") {
		t.Fatalf("released report on an isolate order: %+v", ack)
	}
}

// upload sends a bundle on an evidence channel and returns the ack.
func upload(t *testing.T, c *ssh.Client, hdr wire.EvidenceHeader, body []byte) wire.Ack {
	t.Helper()
	ch, reqs, err := c.OpenChannel(wire.ChanEvidence, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	wire.WriteFrame(ch, &hdr)
	ch.Write(body)
	ch.CloseWrite()
	var ack wire.Ack
	if err := wire.ReadFrame(ch, &ack); err != nil {
		t.Fatal(err)
	}
	return ack
}

func TestEvidenceChecks(t *testing.T) {
	ts := startServer(t)
	a := enrollAgent(t, ts, "pay-db-01")
	enrollAgent(t, ts, "pay-db-02")
	op := ts.dial(t, "op", ssh.PublicKeys(ts.admin))
	args, _ := json.Marshal(api.IsolateArgs{Host: "pay-db-02", Reason: "test"})
	var other api.Order
	json.Unmarshal(call(t, op, api.Request{V: wire.Version, Op: api.OpIsolate, Args: args}).Result, &other)

	args, _ = json.Marshal(api.IsolateArgs{Host: "pay-db-01", Reason: "test"})
	var own api.Order
	json.Unmarshal(call(t, op, api.Request{V: wire.Version, Op: api.OpIsolate, Args: args}).Result, &own)

	body := []byte("not a bundle at all")
	sum := sha256.Sum256(body)
	hdr := wire.EvidenceHeader{V: wire.Version, SnapshotID: "snp-1", OrderID: own.ID, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(body)), TakenAt: time.Now()}

	// Evidence must belong to one of the host's own orders, for good.
	for name, orderID := range map[string]string{"another host's order": other.ID, "no order": "", "unknown order": "ord-x"} {
		h := hdr
		h.OrderID = orderID
		if ack := upload(t, a, h, body); ack.OK || !ack.Drop || !strings.Contains(ack.Error, "evidence not expected") {
			t.Errorf("upload naming %s: %+v", name, ack)
		}
	}
	// A body that does not match its header is refused.
	if ack := upload(t, a, hdr, []byte("something else entirely")); ack.OK || !strings.Contains(ack.Error, "does not match") {
		t.Errorf("mismatched upload: %+v", ack)
	}
	// A matching upload that is no valid bundle is kept, but marked.
	if ack := upload(t, a, hdr, body); !ack.OK {
		t.Fatalf("upload refused: %+v", ack)
	}
	var snaps []api.Snapshot
	json.Unmarshal(call(t, op, api.Request{V: wire.Version, Op: api.OpSnapshots}).Result, &snaps)
	if len(snaps) != 1 || snaps[0].Verified || !strings.Contains(snaps[0].VerifyError, "gzip") {
		t.Fatalf("snapshots = %+v, want one marked unverified", snaps)
	}
	// Sent again after a lost ack: fine. Another bundle for the same
	// order: refused for good, so a host cannot fill the disk.
	if ack := upload(t, a, hdr, body); !ack.OK {
		t.Errorf("the same bundle sent again: %+v", ack)
	}
	h := hdr
	h.SnapshotID = "snp-2"
	if ack := upload(t, a, h, body); ack.OK || !ack.Drop || !strings.Contains(ack.Error, "already has its evidence") {
		t.Errorf("a second bundle for one order: %+v", ack)
	}
}

func TestOperatorRemove(t *testing.T) {
	ts := startServer(t)
	admin := ts.dial(t, "op", ssh.PublicKeys(ts.admin))
	viewer := ts.dial(t, "op", ssh.PublicKeys(ts.viewer))
	rm := func(name string) api.Response {
		args, _ := json.Marshal(api.OperatorRemoveArgs{Name: name})
		return call(t, admin, api.Request{V: wire.Version, Op: api.OpOperatorRemove, Args: args})
	}
	if resp := rm("admin"); resp.Error == nil || resp.Error.Code != api.CodeConflict {
		t.Errorf("removing the last admin: %+v", resp.Error)
	}
	if resp := rm("viewer"); resp.Error != nil {
		t.Fatalf("remove viewer: %v", resp.Error)
	}
	// An admin removing their own key gets the answer before the door shuts.
	other := newKey(t)
	args, _ := json.Marshal(api.OperatorAddArgs{Name: "admin2", Role: api.RoleAdmin, PublicKey: sshkey.AuthorizedKey(other.PublicKey())})
	if resp := call(t, admin, api.Request{V: wire.Version, Op: api.OpOperatorAdd, Args: args}); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	admin2 := ts.dial(t, "op", ssh.PublicKeys(other))
	args, _ = json.Marshal(api.OperatorRemoveArgs{Name: "admin2"})
	if resp := call(t, admin2, api.Request{V: wire.Version, Op: api.OpOperatorRemove, Args: args}); resp.Error != nil {
		t.Errorf("removing one's own key: %v", resp.Error)
	}
	// Its open connection is closed, and it cannot come back.
	done := make(chan error, 1)
	go func() { done <- viewer.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("a removed operator's connection stayed open")
	}
	_, err := ssh.Dial("tcp", ts.addr, &ssh.ClientConfig{User: "op", Auth: []ssh.AuthMethod{ssh.PublicKeys(ts.viewer)},
		HostKeyCallback: sshkey.Pin(ts.hostFP), Timeout: 5 * time.Second})
	if err == nil {
		t.Error("a removed operator key connected again")
	}
}

// TestDriftRepairReport: a repair reported for the isolation in force (by
// order id, or none when the agent does not know it) counts once, however
// often it arrives, and shows in hosts and the audit trail; one on a host
// with no isolation is refused for good.
func TestDriftRepairReport(t *testing.T) {
	ts := startServer(t)
	a := enrollAgent(t, ts, "pay-db-01")
	op := ts.dial(t, "op", ssh.PublicKeys(ts.admin))
	at := time.Now().UTC()
	repair := wire.Report{V: wire.Version, Stage: wire.StageRepaired, At: at, Drift: "none of Cordon's rules in place",
		Digest: "sha256:ab", ApplyNS: int64(40 * time.Millisecond), DriftNS: int64(300 * time.Millisecond)}
	if ack := sendReport(t, a, &repair); ack.OK || !ack.Drop || !strings.Contains(ack.Error, "no isolation in force") {
		t.Fatalf("repair with no isolation: %+v", ack)
	}
	args, _ := json.Marshal(api.IsolateArgs{Host: "pay-db-01", Reason: "test"})
	var ord api.Order
	json.Unmarshal(call(t, op, api.Request{V: wire.Version, Op: api.OpIsolate, Args: args}).Result, &ord)
	if ack := sendReport(t, a, &wire.Report{V: wire.Version, OrderID: ord.ID, Stage: wire.StageIsolated, At: at, Digest: "sha256:ab"}); !ack.OK {
		t.Fatalf("isolated: %+v", ack)
	}
	hosts := func() api.Host {
		var hs []api.Host
		json.Unmarshal(call(t, op, api.Request{V: wire.Version, Op: api.OpHosts}).Result, &hs)
		return hs[0]
	}
	for range 2 { // the second is the same report again
		if ack := sendReport(t, a, &repair); !ack.OK {
			t.Fatalf("repair: %+v", ack)
		}
	}
	h := hosts()
	// The cloud instance the agent reported, kept for the cloud layer.
	if h.CloudProvider != "aws" || h.CloudInstanceID != "i-0123456789abcdef0" {
		t.Errorf("host's cloud identity = %q %q", h.CloudProvider, h.CloudInstanceID)
	}
	if h.Repairs != 1 || !h.LastRepair.Equal(at) || h.State != "isolated" ||
		h.LastRepairDetail != "rules found changed (none of Cordon's rules in place); put back in 40ms, wrong for at most 300ms, digest sha256:ab" {
		t.Errorf("after a repair: %+v", h)
	}
	failed := repair
	failed.OrderID, failed.At, failed.Error, failed.Digest = ord.ID, at.Add(time.Second), "plugin crashed", ""
	if ack := sendReport(t, a, &failed); !ack.OK {
		t.Fatalf("failed repair: %+v", ack)
	}
	if h := hosts(); h.Repairs != 1 || !strings.Contains(h.StateReason, "drift repair failed: plugin crashed") {
		t.Errorf("after a failed repair: %+v", h)
	}
	var audit []api.AuditEntry
	json.Unmarshal(call(t, op, api.Request{V: wire.Version, Op: api.OpAudit}).Result, &audit)
	var actions []string
	for _, e := range audit {
		if strings.HasPrefix(e.Action, "drift") {
			actions = append(actions, e.Action+" "+e.OrderID)
		}
	}
	if want := []string{"drift-repaired " + ord.ID, "drift-repair-failed " + ord.ID}; strings.Join(actions, ",") != strings.Join(want, ",") &&
		strings.Join(actions, ",") != want[1]+","+want[0] {
		t.Errorf("audit drift entries %q, want %q", actions, want)
	}
}
