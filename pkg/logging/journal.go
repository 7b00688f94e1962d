package logging

import (
	"context"
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// JournalSocket is where systemd-journald reads entries in its native
// protocol: one AF_UNIX/SOCK_DGRAM datagram per entry, or an empty datagram
// carrying a sealed memfd that holds an entry too large for one
// (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/).
const JournalSocket = "/run/systemd/journal/socket"

// JournalHandler is a slog.Handler that writes each record as one journal
// entry over journald's native protocol, so that every attribute is a
// field that journalctl can select on (journalctl ORDER_ID=ord-…):
//
//   - the message is MESSAGE; the level is PRIORITY, the syslog(3)
//     priority: 7 (debug) below slog.LevelInfo, 6 (info) below
//     slog.LevelWarn, 4 (warning) below slog.LevelError, 3 (err) from
//     slog.LevelError up; SYSLOG_IDENTIFIER is the program's base name;
//   - an attribute's key becomes a field name as journald requires
//     (systemd.journal-fields(7), the native protocol page): ASCII letters
//     upper-cased, every other character but digits and '_' turned into
//     '_', leading underscores (fields reserved to journald) dropped, "X_"
//     put before a leading digit, at most 64 characters; "order_id" is
//     ORDER_ID. A key that would clash with a field the journal gives a
//     meaning to (MESSAGE, PRIORITY, CODE_LINE, SYSLOG_IDENTIFIER, …) gets
//     "ATTR_" in front, so a record cannot forge them;
//   - a group's name joins its attributes' keys with '_' (a group "peer"
//     with "addr" gives PEER_ADDR); an empty group adds nothing;
//   - a value is written as the text handler writes it (times in RFC 3339
//     with nanoseconds, durations as 1.5s); one with a newline is sent in
//     the protocol's length-prefixed form, unchanged.
//
// Journald stamps each entry with the time it receives it, so records
// carry no time field. A record that cannot be sent (journald stopped, its
// socket gone, its queue full for longer than a moment) is written by the
// fallback handler instead, and so is every record for a few seconds after
// such a failure: logs go to stderr rather than being lost, and a stuck
// journal never holds up an order for more than a moment.
type JournalHandler struct {
	j        *journalConn
	level    slog.Leveler
	fallback slog.Handler
	prefix   string // groups opened by WithGroup, each followed by '_'
	pre      []byte // fields of WithAttrs, encoded
	ident    []byte // SYSLOG_IDENTIFIER=…\n
	down     *atomic.Int64
}

// NewJournalHandler returns a JournalHandler that sends to the journal
// socket at path (JournalSocket, unless a test points it elsewhere) the
// records at level or above, and writes them with fallback when they
// cannot be sent. It fails when nothing listens on path, so that the
// caller can log somewhere else from the start.
func NewJournalHandler(path string, level slog.Leveler, fallback slog.Handler) (*JournalHandler, error) {
	j, err := dialJournal(path)
	if err != nil {
		return nil, err
	}
	if level == nil {
		level = slog.LevelInfo
	}
	ident := appendField(nil, "SYSLOG_IDENTIFIER", filepath.Base(os.Args[0]))
	return &JournalHandler{j: j, level: level, fallback: fallback, ident: ident, down: new(atomic.Int64)}, nil
}

// Enabled reports whether records at level are logged.
func (h *JournalHandler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= h.level.Level()
}

// journalBackoff is how long records go to the fallback handler after one
// could not be sent to the journal, before the journal is tried again.
const journalBackoff = 5 * time.Second

// Handle sends r as one journal entry, or writes it with the fallback
// handler when the journal does not take it.
func (h *JournalHandler) Handle(ctx context.Context, r slog.Record) error {
	if until := h.down.Load(); until != 0 && time.Now().UnixNano() < until {
		return h.fallback.Handle(ctx, r)
	}
	b := make([]byte, 0, 512)
	b = appendField(b, "MESSAGE", r.Message)
	b = appendField(b, "PRIORITY", strconv.Itoa(priority(r.Level)))
	b = append(b, h.ident...)
	b = append(b, h.pre...)
	r.Attrs(func(a slog.Attr) bool {
		b = appendAttr(b, h.prefix, a)
		return true
	})
	if err := h.j.send(b); err != nil {
		h.down.Store(time.Now().Add(journalBackoff).UnixNano())
		return h.fallback.Handle(ctx, r)
	}
	return nil
}

// WithAttrs returns a handler whose records carry attrs too.
func (h *JournalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	h2 := *h
	h2.pre = append([]byte(nil), h.pre...)
	for _, a := range attrs {
		h2.pre = appendAttr(h2.pre, h.prefix, a)
	}
	h2.fallback = h.fallback.WithAttrs(attrs)
	return &h2
}

// WithGroup returns a handler that puts the attributes added after it in
// the group name: their field names start with the group's.
func (h *JournalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.prefix = h.prefix + name + "_"
	h2.fallback = h.fallback.WithGroup(name)
	return &h2
}

// priority maps a slog level to a syslog(3) priority, the journal's
// PRIORITY field.
func priority(l slog.Level) int {
	switch {
	case l < slog.LevelInfo:
		return 7 // LOG_DEBUG
	case l < slog.LevelWarn:
		return 6 // LOG_INFO
	case l < slog.LevelError:
		return 4 // LOG_WARNING
	}
	return 3 // LOG_ERR
}

// appendAttr encodes a as journal fields, its key after prefix (the groups
// it is in).
func appendAttr(b []byte, prefix string, a slog.Attr) []byte {
	a.Value = a.Value.Resolve() // a LogValuer (a secret) speaks for itself
	if a.Equal(slog.Attr{}) {
		return b
	}
	if a.Value.Kind() == slog.KindGroup {
		if a.Key != "" {
			prefix += a.Key + "_"
		}
		for _, ga := range a.Value.Group() {
			b = appendAttr(b, prefix, ga)
		}
		return b
	}
	var v string
	switch a.Value.Kind() {
	case slog.KindTime:
		v = a.Value.Time().Format(time.RFC3339Nano)
	default:
		v = a.Value.String()
	}
	return appendField(b, FieldName(prefix+a.Key), v)
}

// appendField encodes one field of the native protocol: NAME=value and a
// newline, or, for a value with a newline in it, NAME, a newline, the
// value's length as a little-endian 64-bit integer, the value and a
// newline.
func appendField(b []byte, name, value string) []byte {
	b = append(b, name...)
	if strings.IndexByte(value, '\n') < 0 {
		b = append(b, '=')
		b = append(b, value...)
		return append(b, '\n')
	}
	b = append(b, '\n')
	b = binary.LittleEndian.AppendUint64(b, uint64(len(value)))
	b = append(b, value...)
	return append(b, '\n')
}

// journalFields are the fields the journal gives a meaning to that a
// client may send (systemd.journal-fields(7), "User Journal Fields"), and
// that an attribute must therefore not set.
var journalFields = map[string]bool{
	"MESSAGE": true, "MESSAGE_ID": true, "PRIORITY": true, "CODE_FILE": true, "CODE_LINE": true, "CODE_FUNC": true,
	"ERRNO": true, "INVOCATION_ID": true, "USER_INVOCATION_ID": true, "SYSLOG_FACILITY": true, "SYSLOG_IDENTIFIER": true,
	"SYSLOG_PID": true, "SYSLOG_TIMESTAMP": true, "SYSLOG_RAW": true, "DOCUMENTATION": true, "TID": true, "UNIT": true,
	"USER_UNIT": true,
}

// maxFieldName is the longest field name journald accepts.
const maxFieldName = 64

// FieldName turns a slog attribute key into a journal field name that
// journald accepts (journal_field_valid in systemd: 1 to 64 characters out
// of A-Z, 0-9 and '_', not starting with a digit, nor with '_', which
// marks the fields journald sets itself): ASCII letters are upper-cased,
// other characters but digits and '_' become '_', leading underscores are
// dropped, "X_" goes before a leading digit, and the name is cut at 64
// characters. A name the journal gives a meaning to (MESSAGE, PRIORITY,
// …) gets "ATTR_" in front; an empty one is ATTR.
func FieldName(key string) string {
	b := make([]byte, 0, len(key))
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c >= 'a' && c <= 'z':
			c -= 'a' - 'A'
		case c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
		default:
			c = '_'
		}
		if c == '_' && len(b) == 0 {
			continue
		}
		b = append(b, c)
	}
	name := string(b)
	switch {
	case name == "":
		name = "ATTR"
	case name[0] >= '0' && name[0] <= '9':
		name = "X_" + name
	case journalFields[name]:
		name = "ATTR_" + name
	}
	if len(name) > maxFieldName {
		name = name[:maxFieldName]
	}
	return name
}
