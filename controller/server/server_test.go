package server

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
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

func startServer(t *testing.T) *testServer {
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
	srv, err := New(Config{Store: st, Evidence: ev, HostKey: hostKey})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
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
	if err := wire.ReadFrame(ch, &resp); err != nil {
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
	wire.WriteFrame(ch, &wire.Hello{V: wire.Version, Name: name, AgentVersion: "test", Firewall: wire.FirewallState{Plugin: "none"}})
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
