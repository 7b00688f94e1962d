package main

import (
	"maps"
	"strconv"
	"strings"
	"time"
)

// Labels Cordon writes on an instance, its record of an isolation:
// cordon-isolated (the order, as a label value), cordon-policy (the short
// digest of the policy in place), cordon-since (when, in Unix seconds) and
// cordon-had-tag ("true" when the instance had the cordon-quarantine tag
// before Cordon, so that Release leaves it). Release removes them; it
// leaves cordon-incident, which Options.Tag sets, for the investigation.
//
// Labels, unlike metadata, are not served to the instance by the metadata
// server, so the host does not learn its record from there.
const (
	labelIsolated = "cordon-isolated"
	labelPolicy   = "cordon-policy"
	labelSince    = "cordon-since"
	labelHadTag   = "cordon-had-tag"
	labelIncident = "cordon-incident"

	maxLabelValue = 63
)

var recordLabels = []string{labelIsolated, labelPolicy, labelSince, labelHadTag}

// record is what an isolation left on an instance, read from its labels.
type record struct {
	present bool
	order   string
	policy  string
	since   time.Time
	hadTag  bool
}

func (r record) empty() bool { return !r.present }

func readRecord(labels map[string]string) record {
	var r record
	for _, k := range recordLabels {
		if _, ok := labels[k]; ok {
			r.present = true
		}
	}
	r.order = labels[labelIsolated]
	r.policy = labels[labelPolicy]
	if s, err := strconv.ParseInt(labels[labelSince], 10, 64); err == nil {
		r.since = time.Unix(s, 0).UTC()
	}
	r.hadTag = labels[labelHadTag] == "true"
	return r
}

// withRecord returns labels with the record of a new isolation added, or
// the policy of an existing one changed; the other labels are kept.
func withRecord(labels map[string]string, rec record, d12, orderID string, hadTag bool, now time.Time) map[string]string {
	out := maps.Clone(labels)
	if out == nil {
		out = map[string]string{}
	}
	out[labelPolicy] = d12
	if rec.empty() {
		out[labelIsolated] = labelValue(orderID)
		out[labelSince] = strconv.FormatInt(now.Unix(), 10)
		if hadTag {
			out[labelHadTag] = "true"
		}
	}
	return out
}

// withoutRecord returns labels without Cordon's record.
func withoutRecord(labels map[string]string) map[string]string {
	out := maps.Clone(labels)
	for _, k := range recordLabels {
		delete(out, k)
	}
	return out
}

// labelValue turns s into a label value: lowercase letters, digits, "_"
// and "-", at most 63 characters; "none" for an empty s.
func labelValue(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if b.Len() >= maxLabelValue {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}
