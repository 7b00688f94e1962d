package snapshot

import (
	"context"
	"encoding/json"
	"testing"
)

func TestResources(t *testing.T) {
	signer := newSigner(t)
	b, err := Take(context.Background(), Request{SnapshotID: "s1", OrderID: "o1", HostName: "h", AgentVersion: "test", Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	_, files := bundleFiles(t, b, signer)
	var r ResourcesRecord
	if err := json.Unmarshal(files["artifacts/resources.jsonl"], &r); err != nil {
		t.Fatalf("resources: %v: %q", err, files["artifacts/resources.jsonl"])
	}
	if r.MemTotal == 0 || r.MemAvailable == 0 || r.MemAvailable > r.MemTotal || r.CPUIdle <= 0 {
		t.Errorf("resources record looks empty or wrong: %+v", r)
	}
}
