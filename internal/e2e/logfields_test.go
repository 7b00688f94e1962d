package e2e

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/internal/stage"
)

// TestOrderLogFields: with --log-format json, every line of the
// controller's and the agent's logs that names an order (order_id) also
// names its host and its incident, with that order's values, the incident
// empty but present for an order without one; and each daemon logs about
// each order. A search of the logs by order_id, host or incident finds
// every line of an order.
func TestOrderLogFields(t *testing.T) {
	w := newWorld(t)
	w.StopController()
	w.CtlArgs = []string{"--log-format", "json"}
	if err := w.StartController(); err != nil {
		t.Fatal(err)
	}
	w.startAgent(stage.AgentOptions{Token: w.Token, Args: []string{"--log-format", "json"}})
	w.waitOnline()

	incidents := map[string]string{} // order id → incident
	order := func(args ...string) api.Order {
		t.Helper()
		var o api.Order
		out := w.mustCordon(append(args, "--wait", "-o", "json")...)
		if err := json.Unmarshal([]byte(out), &o); err != nil || o.ID == "" {
			t.Fatalf("cordon %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		if o.State != "done" {
			t.Fatalf("order %s not done: %+v", o.ID, o)
		}
		incidents[o.ID] = o.Incident
		return o
	}
	iso := order("isolate", "host", hostName, "--reason", "card data seen leaving", "--incident", "INC-LOG-1")
	if iso.Incident != "INC-LOG-1" {
		t.Fatalf("isolate order has incident %q", iso.Incident)
	}
	w.mustCordon("snapshot", "download", iso.SnapshotID, "--out", t.TempDir())
	order("snapshot", "take", "host", hostName, "--reason", "triage") // no incident
	rel := order("release", "host", hostName, "--reason", "contained", "--incident", "INC-LOG-2")
	// The agent logs the delivery of the last evidence after the orders
	// are done.
	w.eventually(10*time.Second, "agent logs all evidence delivered", func() bool {
		return strings.Count(w.AgentLog.String(), `"msg":"evidence delivered"`) == 2
	})

	for _, d := range []struct {
		name string
		log  *stage.LogBuf
	}{{"controller", w.CtlLog}, {"agent", w.AgentLog}} {
		seen := map[string]int{} // order id → lines
		jsonLines, pluginLines := 0, 0
		sc := bufio.NewScanner(strings.NewReader(d.log.String()))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) != nil {
				continue // a plugin's own output, not the daemon's log
			}
			jsonLines++
			id, ok := rec["order_id"]
			if !ok {
				continue
			}
			want, known := incidents[id.(string)]
			if !known {
				t.Errorf("%s: line about an unknown order %v: %s", d.name, id, sc.Text())
				continue
			}
			seen[id.(string)]++
			if _, ok := rec["plugin_module"]; ok {
				pluginLines++ // the firewall plugin's own line, through the agent's log
			}
			if rec["host"] != hostName {
				t.Errorf("%s: line about order %v has host %v, want %q: %s", d.name, id, rec["host"], hostName, sc.Text())
			}
			if inc, ok := rec["incident"]; !ok || inc != want {
				t.Errorf("%s: line about order %v has incident %v (present: %v), want %q: %s", d.name, id, inc, ok, want, sc.Text())
			}
		}
		if jsonLines == 0 {
			t.Fatalf("%s: no JSON log line: --log-format json not in effect", d.name)
		}
		if d.name == "agent" && pluginLines == 0 {
			t.Errorf("agent: no line of the firewall plugin about an order in the agent's log")
		}
		for id := range incidents {
			if seen[id] == 0 {
				t.Errorf("%s: no log line about order %s", d.name, id)
			}
		}
		t.Logf("%s: %d JSON lines, lines per order: %v", d.name, jsonLines, seen)
	}
	if t.Failed() {
		return
	}
	// The agent's line for the release names the release's incident, not
	// the isolation's.
	if !strings.Contains(w.AgentLog.String(), `"msg":"host released and verified"`) ||
		!strings.Contains(w.AgentLog.String(), `"order_id":"`+rel.ID+`","incident":"INC-LOG-2"`) {
		t.Errorf("agent log has no release line with its incident:\n%s", w.AgentLog)
	}
}
