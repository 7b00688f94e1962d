// Package logging builds the structured loggers (log/slog) of Cordon's
// daemons from their --log-format and --log-level settings.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
)

// Formats of --log-format.
const (
	// FormatText is slog's key=value text, one line per record.
	FormatText = "text"
	// FormatJSON is one JSON object per line.
	FormatJSON = "json"
	// FormatJournal sends each record to the systemd journal as an entry
	// whose fields are the record's attributes (JournalHandler).
	FormatJournal = "journal"
	// FormatAuto is FormatJournal when the output is the stream systemd
	// connected to the journal (IsJournalStream: the daemon runs as a
	// systemd service), FormatText otherwise.
	FormatAuto = "auto"
)

// New returns a logger writing to w, normally os.Stderr. format is text
// (key=value), json, journal or auto; level is debug, info, warn or
// error.
//
// journal sends each record to the systemd journal over its native
// protocol, each attribute a field (order_id is ORDER_ID, see
// JournalHandler). auto does so when w is the stream systemd connected to
// the journal (systemd sets JOURNAL_STREAM for a service, systemd.exec(5)),
// and writes text otherwise. When the journal socket cannot be used, both
// write text to w instead, after a warning that says why: logs are never
// lost for want of a journal.
func New(w io.Writer, format, level string) (*slog.Logger, error) {
	return newLogger(w, format, level, JournalSocket)
}

// newLogger is New with the journal socket at socket.
func newLogger(w io.Writer, format, level, socket string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case FormatText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case FormatJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case FormatAuto:
		if f, ok := w.(*os.File); !ok || !IsJournalStream(f) {
			return slog.New(slog.NewTextHandler(w, opts)), nil
		}
		fallthrough
	case FormatJournal:
		text := slog.NewTextHandler(w, opts)
		h, err := NewJournalHandler(socket, lv, text)
		if err != nil {
			log := slog.New(text)
			log.Warn("cannot log to the systemd journal; logging text to stderr instead", "log_format", format, "err", err)
			return log, nil
		}
		return slog.New(h), nil
	}
	return nil, fmt.Errorf("log format %q: want text, json, journal or auto", format)
}
