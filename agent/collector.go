package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/pkg/evidence"
	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/cordon-ir/cordon/pkg/snapshot"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// Why the snapshot runs in a process of its own: Landlock, which keeps the
// agent from writing to disk, also keeps a confined process from reading
// other processes' /proc/PID/fd, exe, cwd, environ and ns (the kernel
// checks them as ptrace access, and Landlock refuses ptrace across its
// domain). The evidence needs exactly those. So the agent starts a collector
// before it confines itself: the collector keeps full read access, has no
// network and only answers snapshot requests on a pipe; the agent, its SSH
// session, its plugin and every firewall command run confined.

// CollectRequest asks the collector for one snapshot.
type CollectRequest struct {
	SnapshotID   string `json:"snapshot_id"`
	OrderID      string `json:"order_id"`
	Incident     string `json:"incident,omitempty"`
	Reason       string `json:"reason"`
	HostName     string `json:"host_name"`
	AgentVersion string `json:"agent_version"`
	// BudgetMS bounds the snapshot, in milliseconds; 0 or less means the
	// agent's default budget (10 s).
	BudgetMS int64 `json:"budget_ms"`
	// The controller clock offset the agent measured just before.
	ClockOffsetNS    *int64 `json:"clock_offset_ns,omitempty"`
	ClockOffsetError string `json:"clock_offset_error,omitempty"`
	// Sandbox goes into the manifest (snapshot.Request.Sandbox).
	Sandbox string `json:"sandbox"`
	// Policy goes into the manifest (snapshot.Request.Policy).
	Policy *policy.Policy `json:"policy,omitempty"`
}

// collectResponse precedes Size bytes of bundle on the collector's stdout.
type collectResponse struct {
	Error    string          `json:"error,omitempty"`
	SHA256   string          `json:"sha256,omitempty"`
	Size     int64           `json:"size,omitempty"`
	Manifest json.RawMessage `json:"manifest,omitempty"`
}

// maxCollectFrame bounds the collector's response header (the manifest).
const maxCollectFrame = 16 << 20

// Collector is a snapshot collector process started before the agent
// confines itself. Take is safe for use by one goroutine at a time (the
// agent's order worker).
type Collector struct {
	mu  sync.Mutex
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

// StartCollector starts `cordon-agent collector --key KEY` from the running
// executable. The collector dies with the agent (PR_SET_PDEATHSIG).
func StartCollector(keyPath string) (*Collector, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "collector", "--key", keyPath)
	dieWithParent(cmd)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the snapshot collector: %w", err)
	}
	return &Collector{cmd: cmd, in: in, out: bufio.NewReaderSize(out, 1<<20)}, nil
}

// Close stops the collector.
func (c *Collector) Close() {
	c.in.Close()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// ErrCollectorGone is returned once the collector process has died; it
// cannot be started again from inside the sandbox.
var ErrCollectorGone = errors.New("snapshot collector process is gone")

// Take asks the collector for a snapshot. If ctx ends first, or the
// collector breaks, the collector is killed and ErrCollectorGone returned
// from then on.
func (c *Collector) Take(ctx context.Context, req CollectRequest) (*evidence.Bundle, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd.ProcessState != nil || c.in == nil {
		return nil, ErrCollectorGone
	}
	type result struct {
		b   *evidence.Bundle
		err error
	}
	rc := make(chan result, 1)
	go func() {
		b, err := c.exchange(req)
		rc <- result{b, err}
	}()
	select {
	case r := <-rc:
		if r.err != nil && !errors.Is(r.err, errCollect) {
			c.kill()
			return nil, fmt.Errorf("%w: %v", ErrCollectorGone, r.err)
		}
		return r.b, r.err
	case <-ctx.Done():
		c.kill()
		<-rc
		return nil, fmt.Errorf("%w: no answer before the snapshot's deadline: %v", ErrCollectorGone, ctx.Err())
	}
}

// errCollect marks an error the collector reported, after which it is
// still usable.
var errCollect = errors.New("snapshot failed")

func (c *Collector) exchange(req CollectRequest) (*evidence.Bundle, error) {
	if err := wire.WriteFrame(c.in, &req); err != nil {
		return nil, err
	}
	var resp collectResponse
	if err := readFrameLoose(c.out, &resp); err != nil {
		return nil, err
	}
	if resp.Error != "" {
		return nil, fmt.Errorf("%w: %s", errCollect, resp.Error)
	}
	if resp.Size <= 0 || resp.Size > wire.MaxBundle {
		return nil, fmt.Errorf("collector announced a %d-byte bundle (1 to %d)", resp.Size, int64(wire.MaxBundle))
	}
	b := &evidence.Bundle{SHA256: resp.SHA256, Data: make([]byte, resp.Size)}
	if _, err := io.ReadFull(c.out, b.Data); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(resp.Manifest, &b.Manifest); err != nil {
		return nil, err
	}
	b.FileName = evidence.FileName(b.Manifest.Host.Name, b.Manifest.StartedAt, b.Manifest.SnapshotID)
	return b, nil
}

func (c *Collector) kill() {
	c.cmd.Process.Kill()
	c.in.Close()
	c.in = nil
}

// readFrameLoose reads one frame up to maxCollectFrame bytes into v. The
// collector is the agent's own child, so unknown fields are not an error.
func readFrameLoose(r io.Reader, v any) error {
	var raw json.RawMessage
	if err := wire.ReadFrameMax(r, &raw, maxCollectFrame); err != nil {
		return err
	}
	return json.Unmarshal(raw, v)
}

// RunCollector is the collector process: it answers CollectRequests from in
// with bundles on out, signed with signer, until in ends.
func RunCollector(in io.Reader, out io.Writer, signer ssh.Signer) error {
	r := bufio.NewReader(in)
	w := bufio.NewWriterSize(out, 1<<20)
	// Hash the executables running now, ahead of any incident, so that the
	// first snapshot of one does not wait for large binaries to be read.
	warm, stopWarm := context.WithCancel(context.Background())
	defer stopWarm()
	go snapshot.WarmHashes(warm)
	for {
		var req CollectRequest
		if err := readFrameLoose(r, &req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("collector: read request: %w", err)
		}
		budget := time.Duration(req.BudgetMS) * time.Millisecond
		if budget <= 0 {
			// No budget given: the agent's own, never an expired context.
			budget = snapshotBudget
		}
		ctx, cancel := context.WithTimeout(context.Background(), budget)
		b, err := snapshot.Take(ctx, snapshot.Request{
			SnapshotID: req.SnapshotID, OrderID: req.OrderID, Incident: req.Incident, Reason: req.Reason,
			HostName: req.HostName, AgentVersion: req.AgentVersion, Signer: signer, Sandbox: req.Sandbox, Policy: req.Policy,
			ClockProbe: func(context.Context) (time.Duration, error) {
				if req.ClockOffsetNS == nil {
					return 0, errors.New(req.ClockOffsetError)
				}
				return time.Duration(*req.ClockOffsetNS), nil
			},
		})
		cancel()
		var resp collectResponse
		if err != nil {
			resp.Error = err.Error()
		} else {
			resp.SHA256, resp.Size = b.SHA256, int64(len(b.Data))
			if resp.Manifest, err = json.Marshal(b.Manifest); err != nil {
				resp = collectResponse{Error: err.Error()}
			}
		}
		if err := wire.WriteFrameMax(w, &resp, maxCollectFrame); err != nil {
			return err
		}
		if resp.Error == "" {
			if _, err := w.Write(b.Data); err != nil {
				return err
			}
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
}
