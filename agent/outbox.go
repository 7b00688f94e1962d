package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/pkg/evidence"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// outbox holds what the agent must tell the controller, in memory, until the
// controller acknowledges it. It has two lanes, each sent in order by its
// own goroutine: small reports, so that "isolated" is never stuck behind a
// large upload, and evidence bundles.
type outbox struct {
	a *Agent

	mu      sync.Mutex
	reports []wire.Report
	bundles []pendingBundle
	wake    [2]chan struct{}
}

type pendingBundle struct {
	orderID string
	b       *evidence.Bundle
}

type lane int

const (
	laneReports lane = iota
	laneEvidence
)

func (l lane) String() string { return [...]string{"reports", "evidence"}[l] }

func newOutbox(a *Agent) *outbox {
	return &outbox{a: a, wake: [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}}
}

// addReport queues r. A repair report that follows another one still
// queued is merged into it (mergeRepair), so that a host whose rules
// something keeps removing while the controller cannot be reached queues
// one report, not one per repair.
func (o *outbox) addReport(r wire.Report) {
	o.mu.Lock()
	// Never into the first: it may be on its way.
	if n := len(o.reports); n > 1 && r.Stage == wire.StageRepaired && o.reports[n-1].Stage == wire.StageRepaired &&
		o.reports[n-1].OrderID == r.OrderID {
		o.reports[n-1] = *mergeRepair(&o.reports[n-1], &r)
	} else {
		o.reports = append(o.reports, r)
	}
	o.mu.Unlock()
	o.poke(laneReports)
}

func (o *outbox) addEvidence(orderID string, b *evidence.Bundle) {
	o.mu.Lock()
	o.bundles = append(o.bundles, pendingBundle{orderID, b})
	o.mu.Unlock()
	o.poke(laneEvidence)
}

func (o *outbox) poke(l lane) {
	select {
	case o.wake[l] <- struct{}{}:
	default:
	}
}

// pending returns the number of items waiting in a lane.
func (o *outbox) pending(l lane) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	if l == laneReports {
		return len(o.reports)
	}
	return len(o.bundles)
}

// headOrder returns the order of the first item in a lane, the one being
// sent ("" if none).
func (o *outbox) headOrder(l lane) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case l == laneReports && len(o.reports) > 0:
		return o.reports[0].OrderID
	case l == laneEvidence && len(o.bundles) > 0:
		return o.bundles[0].orderID
	}
	return ""
}

// run sends one lane's items in order until ctx ends and the lane is empty
// or there is no connection to send on. A failed send is retried with
// backoff; nothing is dropped.
func (o *outbox) run(ctx context.Context, l lane) {
	backoff := 500 * time.Millisecond
	for {
		conn, _, changed := o.a.current()
		if conn == nil || o.pending(l) == 0 {
			if ctx.Err() != nil {
				if n := o.pending(l); n > 0 {
					o.a.log.Error("stopping with unsent items; they are lost with this process", "lane", l.String(), "count", n)
				}
				return
			}
			select {
			case <-ctx.Done():
			case <-changed:
			case <-o.wake[l]:
			}
			continue
		}
		var err error
		if l == laneReports {
			err = o.sendReport(conn)
		} else {
			err = o.sendEvidence(conn)
		}
		if err == nil {
			backoff = 500 * time.Millisecond
			continue
		}
		// The item stays first in its lane until sent: its order's.
		id := o.headOrder(l)
		o.a.orderLog(id, o.a.incidentOf(id)).Warn("send to controller failed; will retry", "lane", l.String(), "err", err, "retry_in", backoff)
		select {
		case <-time.After(backoff):
		case <-changed:
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// exchange opens a channel, lets send write on it, and reads the Ack, all
// within timeout.
func exchange(conn ssh.Conn, chanType string, timeout time.Duration, send func(ssh.Channel) error) error {
	ch, reqs, err := conn.OpenChannel(chanType, nil)
	if err != nil {
		return err
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	t := time.AfterFunc(timeout, func() { ch.Close() })
	defer t.Stop()
	if err := send(ch); err != nil {
		return err
	}
	if err := ch.CloseWrite(); err != nil {
		return err
	}
	var ack wire.Ack
	if err := wire.ReadFrame(ch, &ack); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("controller closed the channel without an answer")
		}
		return err
	}
	if !ack.OK {
		if ack.Drop {
			return &refusedError{ack.Error}
		}
		return fmt.Errorf("controller: %s", ack.Error)
	}
	return nil
}

// refusedError is an item the controller will never accept.
type refusedError struct{ msg string }

func (e *refusedError) Error() string { return "controller refused it for good: " + e.msg }

func (o *outbox) sendReport(conn ssh.Conn) error {
	o.mu.Lock()
	r := o.reports[0]
	o.mu.Unlock()
	err := exchange(conn, wire.ChanReport, 30*time.Second, func(ch ssh.Channel) error { return wire.WriteFrame(ch, &r) })
	var refused *refusedError
	if errors.As(err, &refused) {
		o.a.orderLog(r.OrderID, o.a.incidentOf(r.OrderID)).Error("report dropped: the controller will not take it", "stage", string(r.Stage), "err", err)
	} else if err != nil {
		return fmt.Errorf("report %s of order %s: %w", r.Stage, r.OrderID, err)
	}
	o.mu.Lock()
	o.reports = o.reports[1:]
	o.mu.Unlock()
	return nil
}

func (o *outbox) sendEvidence(conn ssh.Conn) error {
	o.mu.Lock()
	p := o.bundles[0]
	o.mu.Unlock()
	b := p.b
	l := o.a.orderLog(p.orderID, o.a.incidentOf(p.orderID))
	hdr := wire.EvidenceHeader{V: wire.Version, SnapshotID: b.Manifest.SnapshotID, OrderID: p.orderID, SHA256: b.SHA256,
		Size: int64(len(b.Data)), TakenAt: b.Manifest.StartedAt}
	// Allow for a slow link: a minute plus a second per 256 KiB.
	timeout := time.Minute + time.Duration(len(b.Data)/(256<<10))*time.Second
	t0 := time.Now()
	err := exchange(conn, wire.ChanEvidence, timeout, func(ch ssh.Channel) error {
		if err := wire.WriteFrame(ch, &hdr); err != nil {
			return err
		}
		_, err := ch.Write(b.Data)
		return err
	})
	var refused *refusedError
	if errors.As(err, &refused) {
		l.Error("evidence dropped: the controller will not take it", "snapshot_id", hdr.SnapshotID, "err", err)
	} else if err != nil {
		return fmt.Errorf("evidence %s: %w", hdr.SnapshotID, err)
	}
	o.mu.Lock()
	o.bundles = o.bundles[1:]
	o.mu.Unlock()
	if err != nil {
		return nil
	}
	l.Info("evidence delivered", "snapshot_id", hdr.SnapshotID, "size", hdr.Size,
		"took", time.Since(t0).Round(time.Millisecond))
	return nil
}
