package pluginproc

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

// TestSlogWriter: go-plugin's hclog JSON lines become records with their
// level, message and fields, also when split across writes.
func TestSlogWriter(t *testing.T) {
	var out bytes.Buffer
	w := &slogWriter{log: slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	in := `{"@level":"info","@message":"isolated:","@module":"plugin.nftables.cordon-plugin-nftables","@timestamp":"2026-11-29T16:27:45.611Z","digest":"sha256:61cb","order_id":"ord-1","rules":15,"took":3.4549862e+07,"timestamp":"x"}
{"@level":"warn","@message":"plugin process exited","error":"signal: killed"}
not json at all
`
	// In pieces, as a pipe may deliver them.
	for _, part := range []string{in[:40], in[40:200], in[200:]} {
		w.Write([]byte(part))
	}
	var recs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		recs = append(recs, m)
	}
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3:\n%s", len(recs), out.String())
	}
	r := recs[0]
	if r["msg"] != "isolated" || r["level"] != "INFO" || r["order_id"] != "ord-1" || r["rules"] != float64(15) ||
		r["took"] != float64(34549862) || r["plugin_module"] != "plugin.nftables.cordon-plugin-nftables" || r["digest"] != "sha256:61cb" {
		t.Errorf("first record: %v", r)
	}
	for _, k := range []string{"@timestamp", "timestamp", "@level", "@message"} {
		if _, ok := r[k]; ok {
			t.Errorf("hclog's own field %s kept: %v", k, r)
		}
	}
	if recs[1]["level"] != "WARN" || recs[1]["error"] != "signal: killed" {
		t.Errorf("second record: %v", recs[1])
	}
	if recs[2]["msg"] != "not json at all" {
		t.Errorf("third record: %v", recs[2])
	}
}
