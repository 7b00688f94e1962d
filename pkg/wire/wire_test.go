package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/pkg/policy"
)

func validOrder() *Order {
	return &Order{V: Version, ID: "ord-20261129t101530-9f2ab1c3", Kind: KindIsolate, Host: "pay-db-01",
		Reason: "card data seen leaving", Incident: "INC-7", Operator: "admin (SHA256:x)",
		IssuedAt: time.Date(2026, 11, 29, 10, 15, 30, 0, time.UTC),
		Policy: &policy.Policy{Controllers: []policy.Endpoint{{Addr: netip.MustParseAddr("198.18.0.1"), Port: 7443}},
			Allow: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/16")}}}
}

func TestOrderRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteFrame(&buf, validOrder()); err != nil {
		t.Fatal(err)
	}
	var got Order
	if err := ReadFrame(&buf, &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != validOrder().ID || got.Policy.Controllers[0].Port != 7443 || !got.IssuedAt.Equal(validOrder().IssuedAt) {
		t.Fatalf("round trip: %+v", got)
	}
}

// frame wraps raw JSON in a frame header.
func frame(s string) *bytes.Reader {
	b := make([]byte, 4+len(s))
	binary.BigEndian.PutUint32(b, uint32(len(s)))
	copy(b[4:], s)
	return bytes.NewReader(b)
}

func TestStrictDecoding(t *testing.T) {
	good := `{"v":1,"id":"o1","kind":"isolate","host":"h","reason":"r","operator":"a","issued_at":"2026-11-29T10:15:30Z","policy":{"controllers":[{"addr":"198.18.0.1","port":7443}]}}`
	var o Order
	if err := ReadFrame(frame(good), &o); err != nil {
		t.Fatalf("good order refused: %v", err)
	}
	for name, tc := range map[string]struct{ in, want string }{
		"unknown field":          {strings.Replace(good, `"v":1`, `"v":1,"shell":"rm -rf /"`, 1), "unknown field"},
		"unknown policy field":   {strings.Replace(good, `"port":7443`, `"port":7443,"proto":"udp"`, 1), "unknown field"},
		"trailing data":          {good + `{}`, "trailing data"},
		"wrong version":          {strings.Replace(good, `"v":1`, `"v":2`, 1), "protocol version 2"},
		"unknown kind":           {strings.Replace(good, `"isolate"`, `"wipe"`, 1), "kind"},
		"no reason":              {strings.Replace(good, `"reason":"r"`, `"reason":""`, 1), "reason is required"},
		"control char":           {strings.Replace(good, `"reason":"r"`, `"reason":"a\u001b[2J"`, 1), "control character"},
		"isolate without policy": {strings.Replace(good, `,"policy":{"controllers":[{"addr":"198.18.0.1","port":7443}]}`, ``, 1), "needs a policy"},
		"no controller":          {strings.Replace(good, `[{"addr":"198.18.0.1","port":7443}]`, `[]`, 1), "no controller endpoint"},
		"name not ip":            {strings.Replace(good, `198.18.0.1`, `ctl.example`, 1), "ParseAddr"},
		"bad id":                 {strings.Replace(good, `"id":"o1"`, `"id":"../etc"`, 1), "order id"},
		"bad host":               {strings.Replace(good, `"host":"h"`, `"host":"a/b"`, 1), "host name"},
		"not json":               {`{"v":1,`, "decode"},
		"not utf8":               {"{\"v\":1,\"id\":\"\xff\"}", "UTF-8"},
	} {
		t.Run(name, func(t *testing.T) {
			var o Order
			err := ReadFrame(frame(tc.in), &o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestFrameLimits(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], MaxFrame+1)
	var o Order
	if err := ReadFrame(bytes.NewReader(hdr[:]), &o); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized frame: got %v", err)
	}
	big := validOrder()
	big.Reason = strings.Repeat("x", MaxFrame)
	if err := WriteFrame(&bytes.Buffer{}, big); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("writing an oversized frame: got %v", err)
	}
	if err := ReadFrame(bytes.NewReader([]byte{0, 0}), &o); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated header: got %v", err)
	}
	if err := ReadFrame(bytes.NewReader([]byte{0, 0, 0, 10, '{'}), &o); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated body: got %v", err)
	}
}

// FuzzDecodeOrder feeds arbitrary frames to the decoders an agent and the
// controller run on what the other side sends: they must return an error or
// a value that passes its own validation, never panic.
func FuzzDecodeOrder(f *testing.F) {
	var buf bytes.Buffer
	WriteFrame(&buf, validOrder())
	f.Add(buf.Bytes())
	buf.Reset()
	WriteFrame(&buf, &Report{V: Version, OrderID: "o1", Stage: StageSnapshot, At: time.Now(), Snapshot: &SnapshotRef{ID: "s1", SHA256: strings.Repeat("a", 64), Size: 1}})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, v := range []Validator{&Order{}, &Report{}, &Hello{}, &EvidenceHeader{}, &OrderAck{}, &Ack{}, &HelloAck{}} {
			if err := ReadFrame(bytes.NewReader(b), v); err == nil {
				if err := v.Validate(); err != nil {
					t.Fatalf("%T decoded but does not validate: %v", v, err)
				}
			}
		}
	})
}

func TestCleanText(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"one\ntwo\x1b[2J", 100, "one two [2J"},
		{"tab\there", 100, "tab here"},
		{"écrit", 100, "écrit"},
		{strings.Repeat("é", 10), 7, "éé..."},
	} {
		got := CleanText(tc.in, tc.max)
		if got != tc.want {
			t.Errorf("CleanText(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
		if err := checkText("f", got, tc.max, false); err != nil {
			t.Errorf("CleanText(%q) = %q does not validate: %v", tc.in, got, err)
		}
	}
}
