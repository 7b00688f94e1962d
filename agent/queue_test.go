package agent

import (
	"context"
	"slices"
	"testing"

	"github.com/cordon-ir/cordon/pkg/wire"
)

// TestContainmentGoesFirst: isolate and release orders keep their order
// among themselves and are carried out before snapshot orders queued
// earlier.
func TestContainmentGoesFirst(t *testing.T) {
	a := &Agent{queue: make(chan wire.Order, 8), snapQueue: make(chan wire.Order, 8)}
	for _, o := range []wire.Order{{ID: "s1", Kind: wire.KindSnapshot}, {ID: "s2", Kind: wire.KindSnapshot}} {
		a.snapQueue <- o
	}
	for _, o := range []wire.Order{{ID: "i1", Kind: wire.KindIsolate}, {ID: "r1", Kind: wire.KindRelease}} {
		a.queue <- o
	}
	var got []string
	for range 4 {
		o, ok := a.next(context.Background())
		if !ok {
			t.Fatal("no order")
		}
		got = append(got, o.ID)
	}
	if want := []string{"i1", "r1", "s1", "s2"}; !slices.Equal(got, want) {
		t.Errorf("carried out %v, want %v", got, want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, ok := a.next(ctx); ok {
		t.Error("next returned an order from empty queues")
	}
}
