package server

import (
	"context"
	"testing"
)

// TestHealthy: the controller is healthy while its database answers, and
// not once it does not.
func TestHealthy(t *testing.T) {
	ts := startServer(t)
	if err := ts.srv.Healthy(context.Background()); err != nil {
		t.Fatalf("healthy server: %v", err)
	}
	ts.st.Close()
	if err := ts.srv.Healthy(context.Background()); err == nil {
		t.Fatal("Healthy with the database closed")
	}
}
