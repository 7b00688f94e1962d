//go:build !linux

package logging

import (
	"errors"
	"os"
)

// journalConn stands for the connection to journald, which runs on Linux
// only.
type journalConn struct{}

func dialJournal(string) (*journalConn, error) {
	return nil, errors.New("the systemd journal exists on Linux only")
}

func (*journalConn) send([]byte) error { return errors.New("no journal") }

// IsJournalStream reports whether f is the stream systemd connected to the
// journal (systemd.exec(5), JOURNAL_STREAM): never, off Linux.
func IsJournalStream(*os.File) bool { return false }
