package pluginproc

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"
)

// slogWriter takes go-plugin's log output, one hclog JSON object per line
// (go-plugin's own lines and those the plugin logged, which it relays),
// and logs each as a record of log: the message, the level, the plugin's
// module as "plugin_module" and every other field as an attribute, so that
// a plugin's lines reach the journal with their fields (order_id, …) like
// the host's own. A line that is not JSON is logged as it is.
type slogWriter struct {
	log *slog.Logger

	mu  sync.Mutex
	buf []byte
}

func (w *slogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.line(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 { // a line without end: log what there is
		w.line(w.buf)
		w.buf = nil
	}
	return len(p), nil
}

// hclog's keys for its own fields.
const (
	hclogLevel   = "@level"
	hclogMessage = "@message"
	hclogModule  = "@module"
	hclogTime    = "@timestamp"
	hclogCaller  = "@caller"
)

func (w *slogWriter) line(b []byte) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if b[0] != '{' || dec.Decode(&m) != nil {
		w.log.Info(string(b))
		return
	}
	level := slog.LevelInfo
	switch lv, _ := m[hclogLevel].(string); strings.ToLower(lv) {
	case "trace", "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	msg, _ := m[hclogMessage].(string)
	keys := make([]string, 0, len(m))
	for k := range m {
		if k != hclogLevel && k != hclogMessage && k != hclogTime && k != hclogCaller && k != "timestamp" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	attrs := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		name := k
		if k == hclogModule {
			name = "plugin_module"
		}
		attrs = append(attrs, slog.Any(name, plain(k, m[k])))
	}
	r := slog.NewRecord(time.Now(), level, strings.TrimSuffix(strings.TrimSpace(msg), ":"), 0)
	r.AddAttrs(attrs...)
	if w.log.Enabled(context.Background(), level) {
		w.log.Handler().Handle(context.Background(), r)
	}
}

// plain returns a JSON value for slog: numbers as int64 when whole (hclog
// writes durations as nanoseconds, "took" as 4.1e+07), else float64.
func plain(key string, v any) any {
	n, ok := v.(json.Number)
	if !ok {
		return v
	}
	if i, err := n.Int64(); err == nil {
		if key == "took" {
			return time.Duration(i)
		}
		return i
	}
	f, _ := n.Float64()
	if key == "took" {
		return time.Duration(f)
	}
	return f
}
