package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/controller/evidencestore"
	"github.com/cordon-ir/cordon/controller/server"
	"github.com/cordon-ir/cordon/controller/store"
	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/sshkey"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// TestControllerIsolatesBothLayers runs a controller with the AWS layer
// (this plugin as a go-plugin subprocess, against the fake EC2) and an
// agent on a host that reports that instance and connects from one of its
// private addresses. An isolate order puts the instance's interface in the
// isolation group and the order reports both layers; release restores the
// original groups and reports that too; each step is in the audit trail.
func TestControllerIsolatesBothLayers(t *testing.T) {
	f := newFakeEC2(t)
	f.addVPC(vpcID)
	web := f.addGroup(vpcID, "web")
	// The agent connects from 127.0.0.1: the instance's private address.
	eni := f.addInstance(instID, vpcID, nil, eniSpec{ip: "127.0.0.1", groups: []string{web}})[0]
	layer := launchAgainst(t, f, io.Discard)

	ctl := startController(t, map[string]cloud.Layer{"aws": layer})
	agent := ctl.enrollAgent(t, "pay-db-01", "aws", instID)
	op := ctl.dial(t, "op", ssh.PublicKeys(ctl.admin))

	args, _ := json.Marshal(api.IsolateArgs{Host: "pay-db-01", Reason: "card data seen leaving", Incident: "INC-7"})
	var ord api.Order
	if resp := apiCall(t, op, api.Request{V: wire.Version, Op: api.OpIsolate, Args: args}); resp.Error != nil {
		t.Fatalf("isolate: %v", resp.Error)
	} else {
		json.Unmarshal(resp.Result, &ord)
	}
	isolated := waitOrder(t, op, ord.ID, func(o api.Order) bool { return o.CloudState != "" && o.CloudState != server.CloudApplying })
	if isolated.CloudState != server.CloudIsolated || isolated.CloudError != "" {
		t.Fatalf("cloud layer after isolate: %q %q", isolated.CloudState, isolated.CloudError)
	}
	iso := isolationGroup(f)
	if got := f.eniGroups(eni); iso == "" || !slices.Equal(got, []string{iso}) {
		t.Fatalf("%s groups after isolate = %v, want only the isolation group", eni, got)
	}
	if !strings.Contains(isolated.CloudDetail, web) {
		t.Errorf("cloud detail does not name the original group: %q", isolated.CloudDetail)
	}
	// The host layer, reported by the agent, lands on the same order.
	if ack := sendReport(t, agent, &wire.Report{V: wire.Version, OrderID: ord.ID, Stage: wire.StageIsolated, At: time.Now(), Digest: "sha256:host"}); !ack.OK {
		t.Fatalf("isolated report: %+v", ack)
	}
	both := waitOrder(t, op, ord.ID, func(o api.Order) bool { return o.State == "done" })
	if both.Digest != "sha256:host" || both.CloudState != server.CloudIsolated {
		t.Errorf("order with both layers = state %s digest %s cloud %s", both.State, both.Digest, both.CloudState)
	}

	args, _ = json.Marshal(api.ReleaseArgs{Host: "pay-db-01", Reason: "imaged"})
	var rel api.Order
	if resp := apiCall(t, op, api.Request{V: wire.Version, Op: api.OpRelease, Args: args}); resp.Error != nil {
		t.Fatalf("release: %v", resp.Error)
	} else {
		json.Unmarshal(resp.Result, &rel)
	}
	released := waitOrder(t, op, rel.ID, func(o api.Order) bool { return o.CloudState != "" && o.CloudState != server.CloudApplying })
	if released.CloudState != server.CloudReleased {
		t.Fatalf("cloud layer after release: %q %q", released.CloudState, released.CloudError)
	}
	if got := f.eniGroups(eni); !slices.Equal(got, []string{web}) {
		t.Errorf("%s groups after release = %v, want the original %s", eni, got, web)
	}
	var hosts []api.Host
	json.Unmarshal(apiCall(t, op, api.Request{V: wire.Version, Op: api.OpHosts}).Result, &hosts)
	if len(hosts) != 1 || hosts[0].CloudState != server.CloudReleased || hosts[0].State == "" {
		t.Errorf("hosts after release: %+v; want both layers' states", hosts)
	}
	var audit []api.AuditEntry
	json.Unmarshal(apiCall(t, op, api.Request{V: wire.Version, Op: api.OpAudit}).Result, &audit)
	var actions []string
	for _, e := range audit {
		if strings.HasPrefix(e.Action, "cloud-") {
			actions = append(actions, e.Action)
		}
	}
	if !slices.Contains(actions, "cloud-isolated") || !slices.Contains(actions, "cloud-released") {
		t.Errorf("audit cloud entries %q", actions)
	}
}

// TestControllerRefusesForeignInstance: an agent that names an instance
// whose private addresses are not the one it connects from gets no cloud
// layer (it might name another machine's instance); the order says why and
// the instance is left alone.
func TestControllerRefusesForeignInstance(t *testing.T) {
	f := newFakeEC2(t)
	f.addVPC(vpcID)
	web := f.addGroup(vpcID, "web")
	eni := f.addInstance(instID, vpcID, nil, eniSpec{ip: "10.0.1.10", groups: []string{web}})[0]
	ctl := startController(t, map[string]cloud.Layer{"aws": launchAgainst(t, f, io.Discard)})
	ctl.enrollAgent(t, "pay-db-01", "aws", instID)
	op := ctl.dial(t, "op", ssh.PublicKeys(ctl.admin))
	args, _ := json.Marshal(api.IsolateArgs{Host: "pay-db-01", Reason: "r"})
	var ord api.Order
	json.Unmarshal(apiCall(t, op, api.Request{V: wire.Version, Op: api.OpIsolate, Args: args}).Result, &ord)
	got := waitOrder(t, op, ord.ID, func(o api.Order) bool { return o.CloudState != "" && o.CloudState != server.CloudApplying })
	if got.CloudState != server.CloudFailed || !strings.Contains(got.CloudError, "not the same machine") {
		t.Errorf("cloud layer for a foreign instance: %q %q", got.CloudState, got.CloudError)
	}
	if g := f.eniGroups(eni); !slices.Equal(g, []string{web}) {
		t.Errorf("foreign instance's groups changed: %v", g)
	}
}

// isolationGroup returns the id of the fake's one isolation group, "" if
// none or several.
func isolationGroup(f *fakeEC2) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := ""
	for _, g := range f.groups {
		if strings.HasPrefix(g.name, "cordon-isolation-") {
			if id != "" {
				return ""
			}
			id = g.id
		}
	}
	return id
}

// controller is a controller on 127.0.0.1 with an admin operator.
type controller struct {
	addr, hostFP string
	st           store.Store
	admin        ssh.Signer
}

func startController(t *testing.T, clouds map[string]cloud.Layer) *controller {
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
	c := &controller{st: st, admin: newSigner(t)}
	hostKey := newSigner(t)
	c.hostFP = sshkey.Fingerprint(hostKey.PublicKey())
	if err := st.Update(ctx, func(tx store.Tx) error {
		return tx.AddOperator(store.Operator{Fingerprint: sshkey.Fingerprint(c.admin.PublicKey()), Name: "admin", Role: api.RoleAdmin,
			PublicKey: sshkey.AuthorizedKey(c.admin.PublicKey())})
	}); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Store: st, Evidence: ev, HostKey: hostKey, Clouds: clouds,
		Logger: slog.New(slog.NewTextHandler(testLogWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })
	return c
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (c *controller) dial(t *testing.T, user string, auth ...ssh.AuthMethod) *ssh.Client {
	t.Helper()
	cl, err := ssh.Dial("tcp", c.addr, &ssh.ClientConfig{User: user, Auth: auth, HostKeyCallback: sshkey.Pin(c.hostFP), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("dial as %s: %v", user, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// enrollAgent connects as a new agent with a fresh token and says hello,
// reporting the cloud instance the host runs as; the connection stays open
// (the host is online).
func (c *controller) enrollAgent(t *testing.T, name, provider, instance string) *ssh.Client {
	t.Helper()
	cl, _ := c.enrollAgentKey(t, name, provider, instance)
	return cl
}

// enrollAgentKey is enrollAgent that also returns the agent's key.
func (c *controller) enrollAgentKey(t *testing.T, name, provider, instance string) (*ssh.Client, ssh.Signer) {
	t.Helper()
	var token string
	if err := c.st.Update(context.Background(), func(tx store.Tx) (err error) {
		token, _, err = server.MintToken(tx, "admin", time.Hour, time.Now())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	key := newSigner(t)
	cl := c.dial(t, name, ssh.PublicKeys(key), ssh.KeyboardInteractive(func(_, _ string, q []string, _ []bool) ([]string, error) {
		return []string{token}, nil
	}))
	c.hello(t, cl, name, provider, instance)
	return cl, key
}

// hello says hello on an agent connection.
func (c *controller) hello(t *testing.T, cl *ssh.Client, name, provider, instance string) {
	t.Helper()
	ch, reqs, err := cl.OpenChannel(wire.ChanHello, nil)
	if err != nil {
		t.Fatal(err)
	}
	go ssh.DiscardRequests(reqs)
	wire.WriteFrame(ch, &wire.Hello{V: wire.Version, Name: name, AgentVersion: "test", Firewall: wire.FirewallState{Plugin: "none"},
		CloudProvider: provider, CloudInstanceID: instance})
	var ack wire.HelloAck
	if err := wire.ReadFrame(ch, &ack); err != nil || !ack.OK {
		t.Fatalf("hello: %v %+v", err, ack)
	}
	ch.Close()
}

func apiCall(t *testing.T, c *ssh.Client, req api.Request) api.Response {
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

func sendReport(t *testing.T, c *ssh.Client, r *wire.Report) wire.Ack {
	t.Helper()
	ch, reqs, err := c.OpenChannel(wire.ChanReport, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	wire.WriteFrame(ch, r)
	var ack wire.Ack
	if err := wire.ReadFrame(ch, &ack); err != nil {
		t.Fatal(err)
	}
	return ack
}

// waitOrder polls an order until done returns true, for at most 30 s.
func waitOrder(t *testing.T, op *ssh.Client, id string, done func(api.Order) bool) api.Order {
	t.Helper()
	args, _ := json.Marshal(api.OrderArgs{ID: id})
	deadline := time.Now().Add(30 * time.Second)
	for {
		var o api.Order
		resp := apiCall(t, op, api.Request{V: wire.Version, Op: api.OpOrder, Args: args})
		if resp.Error != nil {
			t.Fatalf("order %s: %v", id, resp.Error)
		}
		json.Unmarshal(resp.Result, &o)
		if done(o) {
			return o
		}
		if time.Now().After(deadline) {
			t.Fatalf("order %s: still %+v after 30 s", id, o)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
