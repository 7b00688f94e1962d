package store_test

import (
	"context"
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
