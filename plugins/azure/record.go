package main

import (
	"maps"
	"strconv"
	"strings"
	"time"
)

// Tags Cordon writes. A NIC's record of an isolation is its
// cordon:original-nsg tag (the id of the NSG it had, or "none"; continued
// in cordon:original-nsg:2 when the id does not fit the 256 characters of
// a tag value), cordon:policy (the digest of the policy in place),
// cordon:isolated-at and cordon:order. It is written in the same request
// that moves the NIC to the quarantine NSG, so a NIC is never in it
// without its record. Release removes them; it leaves cordon:incident,
// which Options.Tag sets on the VM, for the investigation.
const (
	tagOriginal = "cordon:original-nsg"
	tagPolicy   = "cordon:policy"
	tagSince    = "cordon:isolated-at"
	tagOrder    = "cordon:order"
	tagIncident = "cordon:incident"
	// tagManaged marks the NSGs Cordon owns, with the value "quarantine".
	tagManaged = "cordon:managed"

	// noNSG is the recorded original of a NIC that had no NSG.
	noNSG = "none"

	maxTagValue = 256
)

// record is what an isolation left on a NIC, read back from its tags.
type record struct {
	// recorded is true when the NIC has a record; original is then the
	// id of its original NSG, or "" when it had none.
	recorded bool
	original string
	policy   string
	since    time.Time
	order    string
}

// isRecordKey reports whether k is one of the record's tag keys (Azure
// tag names are case-insensitive).
func isRecordKey(k string) bool {
	k = strings.ToLower(k)
	return k == tagPolicy || k == tagSince || k == tagOrder ||
		k == tagOriginal || strings.HasPrefix(k, tagOriginal+":")
}

func readRecord(tags map[string]*string) record {
	var r record
	chunks := map[int]string{}
	for k, v := range tags {
		if v == nil {
			continue
		}
		switch lk := strings.ToLower(k); {
		case lk == tagPolicy:
			r.policy = *v
		case lk == tagSince:
			r.since, _ = time.Parse(time.RFC3339, *v)
		case lk == tagOrder:
			r.order = *v
		case lk == tagOriginal:
			chunks[1] = *v
			r.recorded = true
		case strings.HasPrefix(lk, tagOriginal+":"):
			if n, err := strconv.Atoi(lk[len(tagOriginal)+1:]); err == nil && n > 1 {
				chunks[n] = *v
			}
		}
	}
	if r.recorded {
		var b strings.Builder
		for n := 1; ; n++ {
			c, ok := chunks[n]
			if !ok {
				break
			}
			b.WriteString(c)
		}
		if r.original = b.String(); r.original == noNSG {
			r.original = ""
		}
	}
	return r
}

// withoutRecord returns a copy of tags without the record's keys.
func withoutRecord(tags map[string]*string) map[string]*string {
	out := make(map[string]*string, len(tags))
	for k, v := range tags {
		if !isRecordKey(k) {
			out[k] = v
		}
	}
	return out
}

// withRecord returns a copy of tags holding the record r, in place of any
// record they held.
func withRecord(tags map[string]*string, r record) map[string]*string {
	out := withoutRecord(tags)
	orig := r.original
	if orig == "" {
		orig = noNSG
	}
	for i := 0; len(orig) > 0; i++ {
		n := min(len(orig), maxTagValue)
		k := tagOriginal
		if i > 0 {
			k += ":" + strconv.Itoa(i+1)
		}
		out[k] = ptr(orig[:n])
		orig = orig[n:]
	}
	out[tagPolicy] = ptr(r.policy)
	out[tagSince] = ptr(r.since.UTC().Format(time.RFC3339))
	if r.order != "" {
		out[tagOrder] = ptr(r.order)
	}
	return out
}

// sameTags reports whether a and b hold the same tags.
func sameTags(a, b map[string]*string) bool {
	return maps.EqualFunc(a, b, func(x, y *string) bool {
		return (x == nil) == (y == nil) && (x == nil || *x == *y)
	})
}

func ptr[T any](v T) *T { return &v }
