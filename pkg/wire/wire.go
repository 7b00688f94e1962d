// Package wire is Cordon's protocol between agents, the controller and
// operator tools, carried in SSH channels (DESIGN.md §2).
//
// Every channel carries frames: a 4-byte big-endian length, then that many
// bytes of one JSON object. Frames are size-limited and decoded strictly:
// unknown fields, trailing data, a wrong protocol version or a value that
// fails its Validate method are errors. A bad frame fails only the channel it
// came on; the SSH connection stays usable.
package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"unicode/utf8"
)

// Version is the protocol version carried in every message's "v" field.
const Version = 1

// MaxFrame is the largest frame ReadFrame and WriteFrame accept, in bytes:
// orders, reports, hellos, acknowledgements and API requests are small.
// Evidence bundles are not framed: they follow their header frame as a raw
// byte stream. Larger frames (API listings) go through ReadFrameMax and
// WriteFrameMax.
const MaxFrame = 256 << 10

// SSH channel types and global requests. Channel types carry the protocol
// version so that a future version can run beside this one.
const (
	// ChanHello: agent → controller, once per connection, before anything
	// else: Hello, answered by HelloAck.
	ChanHello = "cordon-hello@v1"
	// ChanOrder: controller → agent: Order, answered by OrderAck.
	ChanOrder = "cordon-order@v1"
	// ChanReport: agent → controller: Report, answered by Ack.
	ChanReport = "cordon-report@v1"
	// ChanEvidence: agent → controller: EvidenceHeader, then exactly
	// Size bytes of bundle, then the agent half-closes; answered by Ack.
	ChanEvidence = "cordon-evidence@v1"
	// ChanAPI: operator → controller: one API request per channel.
	ChanAPI = "cordon-api@v1"

	// ReqKeepalive is sent both ways with want-reply to detect a dead peer.
	ReqKeepalive = "keepalive@openssh.com"
	// ReqTime asks the controller for its clock; the reply payload is the
	// controller's Unix time in nanoseconds, 8 bytes big-endian.
	ReqTime = "time@cordon"
)

// ErrFrameTooLarge is returned when a frame's length exceeds MaxFrame.
var ErrFrameTooLarge = errors.New("wire: frame too large")

// Validator is implemented by messages that check their own fields after
// decoding.
type Validator interface{ Validate() error }

// WriteFrame encodes v as one frame of at most MaxFrame bytes.
func WriteFrame(w io.Writer, v any) error { return WriteFrameMax(w, v, MaxFrame) }

// WriteFrameMax encodes v as one frame of at most max bytes.
func WriteFrameMax(w io.Writer, v any, max int) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("wire: encode %T: %w", v, err)
	}
	if len(b) > max {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrFrameTooLarge, len(b), max)
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err = w.Write(buf)
	return err
}

// ReadFrame reads one frame of at most MaxFrame bytes from r and decodes it
// strictly into v (a pointer). It returns io.EOF only when r ends before the
// first byte of a frame.
func ReadFrame(r io.Reader, v any) error { return ReadFrameMax(r, v, MaxFrame) }

// ReadFrameMax is ReadFrame for frames of at most max bytes.
func ReadFrameMax(r io.Reader, v any, max int) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("wire: truncated frame header")
		}
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if int64(n) > int64(max) {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrFrameTooLarge, n, max)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("wire: truncated frame: %w", err)
	}
	return Decode(b, v)
}

// Decode decodes one JSON object strictly into v and validates it.
func Decode(b []byte, v any) error {
	if !utf8.Valid(b) {
		return errors.New("wire: message is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("wire: decode %T: %w", v, err)
	}
	if dec.More() {
		return fmt.Errorf("wire: decode %T: trailing data after the object", v)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("wire: decode %T: trailing data after the object", v)
	}
	if val, ok := v.(Validator); ok {
		if err := val.Validate(); err != nil {
			return fmt.Errorf("wire: invalid %T: %w", v, err)
		}
	}
	return nil
}

// checkVersion is the first check of every Validate.
func checkVersion(v int) error {
	if v != Version {
		return fmt.Errorf("protocol version %d, this build speaks %d", v, Version)
	}
	return nil
}

var (
	idRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
)

// ValidID reports whether s is a valid order or snapshot id: 1 to 64
// letters, digits, '_' or '-', starting with a letter or digit.
func ValidID(s string) bool { return idRE.MatchString(s) }

// ValidHostName reports whether s is a valid Cordon host name: 1 to 63
// letters, digits, '.', '_' or '-', starting with a letter or digit. It is
// also used in evidence file names, so it never holds '/'.
func ValidHostName(s string) bool { return nameRE.MatchString(s) }

// checkText bounds a free-text field and requires it to be printable.
func checkText(field, s string, max int, required bool) error {
	if required && s == "" {
		return fmt.Errorf("%s is required", field)
	}
	if len(s) > max {
		return fmt.Errorf("%s is %d bytes, at most %d", field, len(s), max)
	}
	for _, r := range s {
		if IsControl(r) {
			return fmt.Errorf("%s holds a control character", field)
		}
	}
	return nil
}

// CleanText makes s fit a free-text field of at most max bytes: control
// characters, newlines included, become spaces, and a longer text is cut
// (on a character boundary) with "...". Senders use it on error messages,
// which may span lines, so that what they send always validates.
func CleanText(s string, max int) string {
	b := make([]byte, 0, len(s))
	for _, r := range s {
		if IsControl(r) || r == '\t' {
			r = ' '
		}
		b = utf8.AppendRune(b, r)
	}
	if len(b) <= max {
		return string(b)
	}
	cut := max - 3
	for cut > 0 && !utf8.RuneStart(b[cut]) {
		cut--
	}
	return string(b[:cut]) + "..."
}

// IsControl reports whether r is a character that must not reach an
// operator's terminal from untrusted text: C0 and C1 controls (escape
// sequences) but tab, and Unicode bidirectional overrides, which can make
// text read other than it is.
func IsControl(r rune) bool {
	switch {
	case r == '\t':
		return false
	case r < 0x20, r >= 0x7f && r < 0xa0:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f:
		return true
	}
	return false
}
