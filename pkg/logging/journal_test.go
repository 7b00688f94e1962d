//go:build linux

package logging

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeJournal is a Unix datagram socket standing in for journald's: what
// the handler sends arrives here as journald would receive it.
type fakeJournal struct {
	t    *testing.T
	path string
	conn *net.UnixConn
	// memfd says whether the last entry came in a memfd.
	memfd bool
}

func newFakeJournal(t *testing.T) *fakeJournal {
	t.Helper()
	path := filepath.Join(t.TempDir(), "socket")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &fakeJournal{t: t, path: path, conn: conn}
}

// entry receives one entry, from a datagram or from the memfd a datagram
// carries, and parses its fields (a field may come more than once).
func (j *fakeJournal) entry() map[string][]string {
	j.t.Helper()
	buf := make([]byte, 1<<20)
	oob := make([]byte, syscall.CmsgSpace(4))
	j.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, oobn, _, _, err := j.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		j.t.Fatalf("no journal entry received: %v", err)
	}
	data := buf[:n]
	j.memfd = oobn > 0
	if oobn > 0 {
		if n != 0 {
			j.t.Fatalf("datagram with both a payload (%d bytes) and a file descriptor", n)
		}
		data = j.readMemfd(oob[:oobn])
	}
	fields, err := parseEntry(data)
	if err != nil {
		j.t.Fatalf("entry %q: %v", data, err)
	}
	return fields
}

// readMemfd reads the entry from the sealed memfd passed in oob.
func (j *fakeJournal) readMemfd(oob []byte) []byte {
	j.t.Helper()
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil || len(msgs) != 1 {
		j.t.Fatalf("control message: %v (%d)", err, len(msgs))
	}
	fds, err := syscall.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		j.t.Fatalf("rights: %v (%d)", err, len(fds))
	}
	f := os.NewFile(uintptr(fds[0]), "entry")
	defer f.Close()
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil || seals&unix.F_SEAL_WRITE == 0 {
		j.t.Fatalf("memfd not sealed against writes (seals %#x, %v): journald refuses it", seals, err)
	}
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<30))
	if err != nil {
		j.t.Fatal(err)
	}
	return b
}

// none checks that no entry arrives for a moment.
func (j *fakeJournal) none() {
	j.t.Helper()
	j.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 1<<16)
	if n, _, _, _, err := j.conn.ReadMsgUnix(buf, nil); err == nil {
		j.t.Fatalf("unexpected journal entry %q", buf[:n])
	}
}

// parseEntry parses the native protocol's serialization: NAME=value lines,
// or NAME, newline, 64-bit little-endian length, value, newline.
func parseEntry(b []byte) (map[string][]string, error) {
	fields := map[string][]string{}
	for len(b) > 0 {
		i := bytes.IndexAny(b, "=\n")
		if i <= 0 {
			return nil, fmt.Errorf("no field name at %q", b)
		}
		name := string(b[:i])
		if b[i] == '=' {
			end := bytes.IndexByte(b[i+1:], '\n')
			if end < 0 {
				return nil, fmt.Errorf("field %s not ended by a newline", name)
			}
			fields[name] = append(fields[name], string(b[i+1:i+1+end]))
			b = b[i+1+end+1:]
			continue
		}
		b = b[i+1:]
		if len(b) < 8 {
			return nil, fmt.Errorf("field %s: no length", name)
		}
		n := binary.LittleEndian.Uint64(b)
		b = b[8:]
		if uint64(len(b)) < n+1 || b[n] != '\n' {
			return nil, fmt.Errorf("field %s: %d bytes announced, not followed by a newline", name, n)
		}
		fields[name] = append(fields[name], string(b[:n]))
		b = b[n+1:]
	}
	return fields, nil
}

// want checks that fields has name once, with value.
func want(t *testing.T, fields map[string][]string, name, value string) {
	t.Helper()
	if got, ok := fields[name]; !ok || len(got) != 1 || got[0] != value {
		t.Errorf("%s = %q (present: %v), want exactly %q\nentry: %q", name, got, ok, value, fields)
	}
}

// validField is journald's rule for the fields a client sends
// (journal_field_valid in systemd).
var validField = regexp.MustCompile(`^[A-Z][A-Z0-9_]{0,63}$`)

type secret string

func (secret) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// TestJournalEntry logs through the journal format to a socket of the
// test's and checks the fields that arrive: an order's ORDER_ID, HOST and
// INCIDENT (also when empty), PRIORITY for each level, MESSAGE, groups,
// values with newlines, names made valid.
func TestJournalEntry(t *testing.T) {
	j := newFakeJournal(t)
	var out bytes.Buffer
	log, err := newLogger(&out, "journal", "debug", j.path)
	if err != nil {
		t.Fatal(err)
	}
	l := log.With("component", "agent", "host", "pay-db-01").With("order_id", "ord-20261129t101530-9f2ab1c3", "incident", "INC-7")

	l.Info("host isolated and verified", "digest", "sha256:ab", "took", 1500*time.Millisecond, "key", secret("hunter2"))
	e := j.entry()
	want(t, e, "MESSAGE", "host isolated and verified")
	want(t, e, "PRIORITY", "6")
	want(t, e, "ORDER_ID", "ord-20261129t101530-9f2ab1c3")
	want(t, e, "HOST", "pay-db-01")
	want(t, e, "INCIDENT", "INC-7")
	want(t, e, "COMPONENT", "agent")
	want(t, e, "DIGEST", "sha256:ab")
	want(t, e, "TOOK", "1.5s")
	want(t, e, "KEY", "REDACTED")
	want(t, e, "SYSLOG_IDENTIFIER", filepath.Base(os.Args[0]))
	if j.memfd {
		t.Error("small entry sent in a memfd")
	}
	for name := range e {
		if !validField.MatchString(name) {
			t.Errorf("field %q is not a name journald accepts", name)
		}
	}

	for _, c := range []struct {
		log  func(string, ...any)
		prio string
	}{{l.Debug, "7"}, {l.Warn, "4"}, {l.Error, "3"}} {
		c.log("order failed", "err", errors.New("plugin crashed\nsecond line"))
		e := j.entry()
		want(t, e, "PRIORITY", c.prio)
		want(t, e, "ERR", "plugin crashed\nsecond line")
		want(t, e, "ORDER_ID", "ord-20261129t101530-9f2ab1c3")
	}

	// An order without an incident still has the field, empty: a search
	// by field finds every line of an order either way.
	log.With("order_id", "ord-2", "host", "pay-db-01", "incident", "").Info("order received")
	e = j.entry()
	want(t, e, "INCIDENT", "")
	want(t, e, "ORDER_ID", "ord-2")

	// Groups, by attribute and by handler; names journald would refuse;
	// attributes that would forge the journal's own fields.
	log.WithGroup("cloud").With("provider", "aws").Info("cloud layer done",
		slog.Group("instance", "id", "i-0abc", "zone", "eu-west-1a"), slog.Group("empty"),
		"message", "forged", "priority", "0", "_SYSTEMD_UNIT", "forged.service", "2fa", true, "x.y-z", 1)
	e = j.entry()
	want(t, e, "MESSAGE", "cloud layer done")
	want(t, e, "PRIORITY", "6")
	want(t, e, "CLOUD_PROVIDER", "aws")
	want(t, e, "CLOUD_INSTANCE_ID", "i-0abc")
	want(t, e, "CLOUD_INSTANCE_ZONE", "eu-west-1a")
	want(t, e, "CLOUD_MESSAGE", "forged")
	want(t, e, "CLOUD_PRIORITY", "0")
	want(t, e, "CLOUD__SYSTEMD_UNIT", "forged.service")
	want(t, e, "CLOUD_2FA", "true")
	want(t, e, "CLOUD_X_Y_Z", "1")
	log.Info("no group", "message", "forged", "_SYSTEMD_UNIT", "forged.service", "2fa", true)
	e = j.entry()
	want(t, e, "MESSAGE", "no group")
	want(t, e, "ATTR_MESSAGE", "forged")
	want(t, e, "SYSTEMD_UNIT", "forged.service")
	want(t, e, "X_2FA", "true")

	// Below the level: nothing sent.
	info, err := newLogger(&out, "journal", "info", j.path)
	if err != nil {
		t.Fatal(err)
	}
	info.Debug("not sent")
	j.none()

	if out.Len() != 0 {
		t.Errorf("records went to the fallback although the journal took them:\n%s", &out)
	}
}

// TestJournalLargeEntry: an entry too large for a datagram goes in a sealed
// memfd, whole.
func TestJournalLargeEntry(t *testing.T) {
	j := newFakeJournal(t)
	var out bytes.Buffer
	log, err := newLogger(&out, "journal", "info", j.path)
	if err != nil {
		t.Fatal(err)
	}
	// A send buffer of a few kB, as a host whose net.core.wmem_max is
	// small has: a datagram cannot hold the entry.
	log.Handler().(*JournalHandler).j.conn.SetWriteBuffer(4096)
	big := strings.Repeat("process table line\n", 4000) // 76 kB
	log.Info("snapshot taken", "order_id", "ord-1", "raw", big)
	e := j.entry()
	want(t, e, "MESSAGE", "snapshot taken")
	if !j.memfd {
		t.Error("large entry not sent in a memfd")
	}
	want(t, e, "ORDER_ID", "ord-1")
	if got := e["RAW"]; len(got) != 1 || got[0] != big {
		t.Errorf("large field did not arrive whole (%d values)", len(got))
	}
	if out.Len() != 0 {
		t.Errorf("large entry went to the fallback:\n%.500s", &out)
	}
}

// TestJournalFallback: with no journal listening, the journal format
// writes text to stderr, saying why; a journal that goes away after the
// start loses no record either.
func TestJournalFallback(t *testing.T) {
	var out bytes.Buffer
	log, err := newLogger(&out, "journal", "info", filepath.Join(t.TempDir(), "missing"))
	if err != nil {
		t.Fatal(err)
	}
	log.Info("order received", "order_id", "ord-1", "host", "pay-db-01", "incident", "INC-7")
	got := out.String()
	if !strings.Contains(got, "cannot log to the systemd journal") || !strings.Contains(got, "no such file") ||
		!strings.Contains(got, `msg="order received" order_id=ord-1 host=pay-db-01 incident=INC-7`) {
		t.Errorf("no text fallback with its reason:\n%s", got)
	}

	j := newFakeJournal(t)
	out.Reset()
	log, err = newLogger(&out, "journal", "info", j.path)
	if err != nil {
		t.Fatal(err)
	}
	l := log.With("order_id", "ord-2", "host", "pay-db-01").WithGroup("g").With("incident", "INC-8")
	l.Info("first")
	want(t, j.entry(), "MESSAGE", "first")
	j.conn.Close() // journald stops: its socket is gone
	os.Remove(j.path)
	l.Warn("second", "k", "v")
	l.Info("third")
	got = out.String()
	if !strings.Contains(got, `level=WARN msg=second order_id=ord-2 host=pay-db-01 g.incident=INC-8 g.k=v`) ||
		!strings.Contains(got, "msg=third") {
		t.Errorf("records not written as text once the journal was gone:\n%s", got)
	}
	if strings.Contains(got, "first") {
		t.Errorf("a record the journal took was written to stderr too:\n%s", got)
	}
}

// TestAutoFormat: auto sends to the journal only when the output is the
// stream JOURNAL_STREAM names (systemd.exec(5)), and writes text
// otherwise.
func TestAutoFormat(t *testing.T) {
	j := newFakeJournal(t)
	stderr, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	other, err := os.Create(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	devIno := func(f *os.File) string {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	}

	for _, c := range []struct {
		name, env string
		journal   bool
	}{
		{"no JOURNAL_STREAM", "", false},
		{"JOURNAL_STREAM of another stream", devIno(other), false},
		{"malformed JOURNAL_STREAM", "x:y", false},
		{"JOURNAL_STREAM of this stream", devIno(stderr), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("JOURNAL_STREAM", c.env)
			if got := IsJournalStream(stderr); got != c.journal {
				t.Errorf("IsJournalStream = %v, want %v", got, c.journal)
			}
			stderr.Truncate(0)
			stderr.Seek(0, io.SeekStart)
			log, err := newLogger(stderr, "auto", "info", j.path)
			if err != nil {
				t.Fatal(err)
			}
			log.Info("order received", "order_id", "ord-1", "host", "pay-db-01", "incident", "INC-7")
			text, _ := os.ReadFile(stderr.Name())
			if c.journal {
				want(t, j.entry(), "ORDER_ID", "ord-1")
				if len(text) != 0 {
					t.Errorf("auto with the journal stream wrote text too:\n%s", text)
				}
				return
			}
			j.none()
			if !strings.Contains(string(text), "msg=\"order received\" order_id=ord-1 host=pay-db-01 incident=INC-7") {
				t.Errorf("auto did not write text:\n%s", text)
			}
		})
	}

	// Not a file (a buffer, a pipe wrapper): text, whatever the variable.
	t.Setenv("JOURNAL_STREAM", devIno(stderr))
	var buf bytes.Buffer
	log, err := newLogger(&buf, "auto", "info", j.path)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hello")
	j.none()
	if !strings.Contains(buf.String(), "msg=hello") {
		t.Errorf("auto to a buffer did not write text: %q", buf.String())
	}
}

func TestFormatsAndLevels(t *testing.T) {
	var buf bytes.Buffer
	for _, f := range []string{"text", "json", "auto"} {
		if _, err := New(&buf, f, "warn"); err != nil {
			t.Errorf("format %s: %v", f, err)
		}
	}
	if _, err := New(&buf, "xml", "info"); err == nil || !strings.Contains(err.Error(), "text, json, journal or auto") {
		t.Errorf("format xml: %v", err)
	}
	if _, err := New(&buf, "text", "loud"); err == nil {
		t.Error("level loud accepted")
	}
	log, _ := New(&buf, "json", "info")
	log.Info("m", "order_id", "o", "host", "h", "incident", "")
	if !strings.Contains(buf.String(), `"order_id":"o","host":"h","incident":""`) {
		t.Errorf("json: %s", &buf)
	}
}

func TestFieldName(t *testing.T) {
	for key, name := range map[string]string{
		"order_id": "ORDER_ID", "host": "HOST", "incident": "INCIDENT", "flows_cut": "FLOWS_CUT",
		"x.y-z": "X_Y_Z", "_private": "PRIVATE", "__": "ATTR", "": "ATTR", "2fa": "X_2FA", "é": "ATTR",
		"message": "ATTR_MESSAGE", "PRIORITY": "ATTR_PRIORITY", "syslog_identifier": "ATTR_SYSLOG_IDENTIFIER",
		strings.Repeat("a", 70): strings.Repeat("A", 64),
	} {
		if got := FieldName(key); got != name {
			t.Errorf("FieldName(%q) = %q, want %q", key, got, name)
		}
	}
}
