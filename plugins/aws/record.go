package main

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// Tags Cordon writes. The instance's record of an isolation is its
// cordon:original-groups:<eni> tags (one per interface, the original group
// ids separated by spaces, continued in ...:<eni>:2 and on when they do
// not fit the 256 characters of a tag value), cordon:policy (the digest of
// the policy in place), cordon:isolated-at and cordon:order. Release
// removes them; it leaves cordon:incident, which Options.Tag sets, for the
// investigation.
const (
	tagOriginal = "cordon:original-groups:"
	tagPolicy   = "cordon:policy"
	tagSince    = "cordon:isolated-at"
	tagOrder    = "cordon:order"
	tagIncident = "cordon:incident"
	tagInstance = "cordon:instance" // on snapshots
	// tagManaged marks the groups Cordon owns: "untrack" or "isolation".
	tagManaged = "cordon:managed"

	maxTagValue = 256
)

// record is what an isolation left on an instance, read back from its tags.
type record struct {
	// originals maps each interface to the groups it had before Cordon.
	originals map[string][]string
	policy    string
	since     time.Time
	order     string
	// keys are the record's tag keys by interface, to delete them.
	keys map[string][]string
}

func (r record) empty() bool { return len(r.originals) == 0 && r.policy == "" }

func readRecord(tags []types.Tag) record {
	r := record{originals: map[string][]string{}, keys: map[string][]string{}}
	type chunk struct {
		n   int
		ids []string
	}
	chunks := map[string][]chunk{}
	for _, t := range tags {
		k, v := aws.ToString(t.Key), aws.ToString(t.Value)
		switch {
		case k == tagPolicy:
			r.policy = v
		case k == tagSince:
			r.since, _ = time.Parse(time.RFC3339, v)
		case k == tagOrder:
			r.order = v
		case strings.HasPrefix(k, tagOriginal):
			eni, n := strings.TrimPrefix(k, tagOriginal), 1
			if i := strings.IndexByte(eni, ':'); i >= 0 {
				var err error
				if n, err = strconv.Atoi(eni[i+1:]); err != nil {
					continue
				}
				eni = eni[:i]
			}
			chunks[eni] = append(chunks[eni], chunk{n, strings.Fields(v)})
			r.keys[eni] = append(r.keys[eni], k)
		}
	}
	for eni, cs := range chunks {
		slices.SortFunc(cs, func(a, b chunk) int { return cmp.Compare(a.n, b.n) })
		var ids []string
		for _, c := range cs {
			ids = append(ids, c.ids...)
		}
		r.originals[eni] = ids
	}
	return r
}

// originalTags are the tags that record an interface's original groups.
func originalTags(eni string, groups []string) []types.Tag {
	var tags []types.Tag
	var cur []string
	flush := func() {
		key := tagOriginal + eni
		if n := len(tags) + 1; n > 1 {
			key += ":" + strconv.Itoa(n)
		}
		tags = append(tags, types.Tag{Key: aws.String(key), Value: aws.String(strings.Join(cur, " "))})
		cur = nil
	}
	size := 0
	for _, g := range groups {
		if len(cur) > 0 && size+1+len(g) > maxTagValue {
			flush()
			size = 0
		}
		if len(cur) > 0 {
			size++
		}
		size += len(g)
		cur = append(cur, g)
	}
	flush()
	return tags
}

func tagValue(tags []types.Tag, key string) (string, bool) {
	for _, t := range tags {
		if aws.ToString(t.Key) == key {
			return aws.ToString(t.Value), true
		}
	}
	return "", false
}
