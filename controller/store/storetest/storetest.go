// Package storetest is the contract every store.Store implementation must
// meet; each implementation's tests call Run with a constructor.
package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/controller/store"
)

// Run runs the contract against stores made by open, one fresh store per
// subtest.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	now := time.Date(2026, 11, 29, 10, 0, 0, 123456789, time.UTC)
	host := store.Host{Name: "pay-db-01", Fingerprint: "SHA256:aaa", PublicKey: "ssh-ed25519 AAAA", EnrolledAt: now,
		State: store.StateReleased, StateSince: now, Desired: store.StateReleased}

	t.Run("OperatorsAddRemove", func(t *testing.T) {
		s := open(t)
		mustUpdate(t, s, func(tx store.Tx) error {
			return tx.AddOperator(store.Operator{Fingerprint: "SHA256:o", Name: "ann", Role: "responder", PublicKey: "k", CreatedAt: now})
		})
		if err := s.Update(ctx, func(tx store.Tx) error {
			return tx.AddOperator(store.Operator{Fingerprint: "SHA256:p", Name: "ann", Role: "viewer", PublicKey: "k2"})
		}); !errors.Is(err, store.ErrExists) {
			t.Fatalf("same name: got %v, want ErrExists", err)
		}
		mustUpdate(t, s, func(tx store.Tx) error { return tx.RemoveOperator("ann") })
		if err := s.View(ctx, func(tx store.Tx) error { _, err := tx.Operator("SHA256:o"); return err }); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("removed operator still found: %v", err)
		}
		if err := s.Update(ctx, func(tx store.Tx) error { return tx.RemoveOperator("ann") }); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("removing twice: got %v, want ErrNotFound", err)
		}
	})

	t.Run("TokenIsOneTime", func(t *testing.T) {
		s := open(t)
		mustUpdate(t, s, func(tx store.Tx) error {
			return tx.AddToken(store.Token{Hash: "h1", CreatedAt: now, ExpiresAt: now.Add(time.Hour), CreatedBy: "admin"})
		})
		if err := s.Update(ctx, func(tx store.Tx) error { return tx.UseToken("h1", "a", now) }); err != nil {
			t.Fatalf("first use: %v", err)
		}
		err := s.Update(ctx, func(tx store.Tx) error { return tx.UseToken("h1", "b", now) })
		if !errors.Is(err, store.ErrTokenInvalid) {
			t.Fatalf("second use: got %v, want ErrTokenInvalid", err)
		}
	})

	t.Run("TokenExpires", func(t *testing.T) {
		s := open(t)
		mustUpdate(t, s, func(tx store.Tx) error {
			return tx.AddToken(store.Token{Hash: "h2", CreatedAt: now, ExpiresAt: now.Add(time.Minute), CreatedBy: "admin"})
		})
		err := s.Update(ctx, func(tx store.Tx) error { return tx.UseToken("h2", "a", now.Add(2*time.Minute)) })
		if !errors.Is(err, store.ErrTokenInvalid) {
			t.Fatalf("expired token: got %v, want ErrTokenInvalid", err)
		}
	})

	t.Run("RollbackOnError", func(t *testing.T) {
		s := open(t)
		boom := errors.New("boom")
		err := s.Update(ctx, func(tx store.Tx) error {
			if err := tx.AddHost(host); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("got %v, want boom", err)
		}
		err = s.View(ctx, func(tx store.Tx) error { _, err := tx.Host(host.Name); return err })
		if !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("host after rollback: got %v, want ErrNotFound", err)
		}
	})

	t.Run("HostRoundTripAndUniqueness", func(t *testing.T) {
		s := open(t)
		mustUpdate(t, s, func(tx store.Tx) error { return tx.AddHost(host) })
		dup := host
		dup.Fingerprint = "SHA256:other"
		if err := s.Update(ctx, func(tx store.Tx) error { return tx.AddHost(dup) }); !errors.Is(err, store.ErrExists) {
			t.Fatalf("same name: got %v, want ErrExists", err)
		}
		dup = host
		dup.Name = "other"
		if err := s.Update(ctx, func(tx store.Tx) error { return tx.AddHost(dup) }); !errors.Is(err, store.ErrExists) {
			t.Fatalf("same key: got %v, want ErrExists", err)
		}
		var got store.Host
		mustView(t, s, func(tx store.Tx) (err error) { got, err = tx.HostByFingerprint(host.Fingerprint); return })
		if got != host {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, host)
		}
		got.State, got.LastSeen, got.Digest = store.StateIsolated, now.Add(time.Second), "sha256:x"
		got.Plugin, got.PluginReason = "nftables 0.1.0", "nftables tables in place (inet firewalld)"
		got.Repairs, got.LastRepair, got.LastRepairDetail = 2, now.Add(2*time.Second), "chain input missing; repaired in 40ms"
		got.CloudProvider, got.CloudInstanceID = "aws", "i-0123456789abcdef0"
		got.CloudRegion, got.CloudZone, got.CloudProject, got.CloudBoundBy = "eu-west-1", "", "", "admin"
		got.ControllerEndpoint = "198.18.0.1:7443"
		mustUpdate(t, s, func(tx store.Tx) error { return tx.PutHost(got) })
		var again store.Host
		mustView(t, s, func(tx store.Tx) (err error) { again, err = tx.Host(host.Name); return })
		if again != got {
			t.Fatalf("after PutHost:\n got %+v\nwant %+v", again, got)
		}
	})

	t.Run("OrdersQueueAndVersion", func(t *testing.T) {
		s := open(t)
		mustUpdate(t, s, func(tx store.Tx) error { return tx.AddHost(host) })
		for i, id := range []string{"o1", "o2", "o3"} {
			o := &store.Order{ID: id, Host: host.Name, Kind: "isolate", Reason: "r", Allow: []string{"10.0.0.0/8"},
				DNS: []string{"198.18.0.53"}, DHCP: true, CloudState: "applying", CloudOptions: `{"snapshot":true}`,
				Operator: "admin", State: store.OrderPending, CreatedAt: now.Add(time.Duration(i) * time.Second)}
			mustUpdate(t, s, func(tx store.Tx) error { return tx.AddOrder(o) })
			if o.Seq == 0 || o.Version != 1 {
				t.Fatalf("AddOrder did not set seq/version: %+v", o)
			}
		}
		var o2 store.Order
		mustUpdate(t, s, func(tx store.Tx) (err error) {
			o2, err = tx.Order("o2")
			if err != nil {
				return err
			}
			o2.State, o2.DeliveredAt = store.OrderDelivered, now
			return tx.PutOrder(o2)
		})
		var pending, all []store.Order
		var again store.Order
		mustView(t, s, func(tx store.Tx) (err error) {
			if pending, err = tx.PendingOrders(host.Name); err != nil {
				return err
			}
			if all, err = tx.Orders("", 0); err != nil {
				return err
			}
			again, err = tx.Order("o2")
			return err
		})
		if len(pending) != 2 || pending[0].ID != "o1" || pending[1].ID != "o3" {
			t.Fatalf("pending = %v, want o1, o3 oldest first", ids(pending))
		}
		if len(all) != 3 || all[0].ID != "o3" {
			t.Fatalf("orders = %v, want newest first", ids(all))
		}
		if again.Version != 2 || again.State != store.OrderDelivered || !again.DeliveredAt.Equal(now) {
			t.Fatalf("after PutOrder: %+v", again)
		}
		if len(again.Allow) != 1 || again.Allow[0] != "10.0.0.0/8" {
			t.Fatalf("allowlist round trip: %v", again.Allow)
		}
		if again.CloudState != "applying" || again.CloudOptions != `{"snapshot":true}` {
			t.Fatalf("cloud state round trip: %q", again.CloudState)
		}
		if len(again.DNS) != 1 || again.DNS[0] != "198.18.0.53" || !again.DHCP {
			t.Fatalf("dns and dhcp round trip: %v %v", again.DNS, again.DHCP)
		}
	})

	t.Run("SnapshotsAndCustody", func(t *testing.T) {
		s := open(t)
		snap := store.Snapshot{ID: "s1", SHA256: "ab", Size: 10, Host: host.Name, TakenAt: now, ReceivedAt: now, AgentKey: "SHA256:aaa", FileName: "f.tar.gz", Verified: false, VerifyError: "not gzip", Receipt: `{"receipt":"{}"}`}
		mustUpdate(t, s, func(tx store.Tx) error {
			if err := tx.AddSnapshot(snap); err != nil {
				return err
			}
			return tx.AddCustody(store.Custody{SnapshotID: "s1", At: now, Event: "received", Actor: "agent", SHA256: "ab"})
		})
		if err := s.Update(ctx, func(tx store.Tx) error { return tx.AddSnapshot(snap) }); !errors.Is(err, store.ErrExists) {
			t.Fatalf("duplicate snapshot: got %v, want ErrExists", err)
		}
		var got store.Snapshot
		var cust []store.Custody
		mustView(t, s, func(tx store.Tx) (err error) {
			if got, err = tx.Snapshot("s1"); err != nil {
				return err
			}
			cust, err = tx.Custody("s1")
			return err
		})
		if got != snap {
			t.Fatalf("snapshot round trip:\n got %+v\nwant %+v", got, snap)
		}
		if len(cust) != 1 || cust[0].Event != "received" {
			t.Fatalf("custody = %+v", cust)
		}
	})

	t.Run("AuditNewestFirst", func(t *testing.T) {
		s := open(t)
		mustUpdate(t, s, func(tx store.Tx) error {
			for i, a := range []string{"isolate", "release"} {
				if err := tx.AddAudit(store.Audit{At: now.Add(time.Duration(i)), Actor: "admin", Action: a, Host: host.Name}); err != nil {
					return err
				}
			}
			return tx.AddAudit(store.Audit{At: now, Actor: "admin", Action: "enroll.create"})
		})
		var got []store.Audit
		mustView(t, s, func(tx store.Tx) (err error) { got, err = tx.Audit(host.Name, 0); return })
		if len(got) != 2 || got[0].Action != "release" {
			t.Fatalf("audit for host = %+v", got)
		}
	})
}

func ids(os []store.Order) []string {
	var out []string
	for _, o := range os {
		out = append(out, o.ID)
	}
	return out
}

func mustUpdate(t *testing.T, s store.Store, fn func(store.Tx) error) {
	t.Helper()
	if err := s.Update(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
}

func mustView(t *testing.T, s store.Store, fn func(store.Tx) error) {
	t.Helper()
	if err := s.View(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
}
