package store_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/cordon-ir/cordon/controller/store"
	"github.com/cordon-ir/cordon/controller/store/storetest"
)

func TestSQLiteContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "cordon.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestSQLiteReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "cordon.db")
	s, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, func(tx store.Tx) error {
		return tx.AddOperator(store.Operator{Fingerprint: "SHA256:x", Name: "admin", Role: "admin", PublicKey: "k"})
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.View(ctx, func(tx store.Tx) error { _, err := tx.Operator("SHA256:x"); return err }); err != nil {
		t.Fatalf("operator after reopen: %v", err)
	}
}

// TestSQLiteMigratesVersion1 opens a database as the first schema left it
// (no hosts.plugin_reason) and expects it brought up to date with its
// hosts kept.
func TestSQLiteMigratesVersion1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "cordon.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(store.SchemaV1 + "PRAGMA user_version = 1;"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO hosts(name, fingerprint, public_key, enrolled_at, state, state_since, desired, plugin)
		VALUES ('pay-db-01', 'SHA256:x', 'k', 1, 'released', 1, 'released', 'iptables 0.1.0')`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var h store.Host
	if err := s.Update(ctx, func(tx store.Tx) (err error) {
		if h, err = tx.Host("pay-db-01"); err != nil {
			return err
		}
		h.PluginReason = "configured (--plugin iptables)"
		return tx.PutHost(h)
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.View(ctx, func(tx store.Tx) (err error) { h, err = tx.Host("pay-db-01"); return }); err != nil {
		t.Fatal(err)
	}
	if h.Plugin != "iptables 0.1.0" || h.PluginReason != "configured (--plugin iptables)" {
		t.Errorf("host after migration = %+v", h)
	}
}
