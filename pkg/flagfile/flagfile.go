// Package flagfile sets a command's flags from a YAML configuration file,
// so that every flag of a daemon can be kept in /etc/cordon/*.yaml.
//
// A file is one YAML mapping. Each key is a flag's long name with '_' for
// '-' (controller_fingerprint: for --controller-fingerprint); a scalar
// value is given to the flag as if typed on the command line, a list sets
// a repeatable flag once per item (an empty list, [], empties it), and an
// empty value (key:) leaves the flag at its default. Flags set on the command line win over the file.
// An unknown key, a key given twice, or a value its flag refuses is an
// error that names the file, the line and the key; the file is applied
// all or nothing.
package flagfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// MaxSize is the largest configuration file read, in bytes.
const MaxSize = 1 << 20

// Error is a problem with a configuration file: at Line (1-based; 0 when
// the problem is the file as a whole) with Key ("" when none).
type Error struct {
	Path string
	Line int
	Key  string
	Err  error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Path)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Setting is one key of a file, as written.
type Setting struct {
	Key    string   // as in the file: drift_interval
	Flag   string   // the flag's name: drift-interval
	Line   int      // 1-based
	Values []string // one for a scalar, one per item for a list; none for key: or []
	// List is true for a list (also an empty one, which empties a
	// repeatable flag's default); false for a scalar or key:.
	List bool
}

// File is a parsed configuration file.
type File struct {
	Path     string
	Settings []Setting
}

// Read parses the file at path. It checks the file's shape (a mapping of
// keys to scalars or lists of scalars, no key twice), not the keys.
func Read(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxSize {
		return nil, &Error{Path: path, Err: fmt.Errorf("larger than %d bytes", MaxSize)}
	}
	return Parse(path, b)
}

// Parse parses a configuration file's content; path is used in errors.
func Parse(path string, b []byte) (*File, error) {
	cf := &File{Path: path}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return cf, nil // empty, or only comments
		}
		return nil, yamlError(path, err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, &Error{Path: path, Line: more.Line, Err: errors.New("a second YAML document: the file must be one mapping of keys to values")}
	}
	if len(doc.Content) == 0 {
		return cf, nil
	}
	m := doc.Content[0]
	if m.Kind == yaml.ScalarNode && m.Tag == "!!null" {
		return cf, nil
	}
	if m.Kind != yaml.MappingNode {
		return nil, &Error{Path: path, Line: m.Line, Err: errors.New("want a mapping of keys to values (key: value)")}
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nil, &Error{Path: path, Line: k.Line, Err: errors.New("a key must be a plain name")}
		}
		if first, ok := seen[k.Value]; ok {
			return nil, &Error{Path: path, Line: k.Line, Key: k.Value, Err: fmt.Errorf("given twice (first on line %d)", first)}
		}
		seen[k.Value] = k.Line
		s := Setting{Key: k.Value, Flag: strings.ReplaceAll(k.Value, "_", "-"), Line: k.Line}
		switch {
		case v.Kind == yaml.AliasNode:
			return nil, &Error{Path: path, Line: v.Line, Key: k.Value, Err: errors.New("YAML aliases are not accepted here")}
		case v.Style&yaml.TaggedStyle != 0:
			return nil, &Error{Path: path, Line: v.Line, Key: k.Value, Err: fmt.Errorf("YAML tags (%s) are not accepted here", v.Tag)}
		case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
			// key: with no value keeps the default.
		case v.Kind == yaml.ScalarNode:
			s.Values = []string{v.Value}
		case v.Kind == yaml.SequenceNode:
			s.List = true
			for _, it := range v.Content {
				if it.Kind != yaml.ScalarNode || it.Tag == "!!null" || it.Style&yaml.TaggedStyle != 0 {
					return nil, &Error{Path: path, Line: it.Line, Key: k.Value, Err: errors.New("a list item must be a single value")}
				}
				s.Values = append(s.Values, it.Value)
			}
		default:
			return nil, &Error{Path: path, Line: v.Line, Key: k.Value, Err: errors.New("want a value or a list of values, not a mapping")}
		}
		cf.Settings = append(cf.Settings, s)
	}
	return cf, nil
}

// Apply sets the flags of target from the file, skipping any flag set on
// target's command line (pflag's Changed) and any flag target does not
// have. Every key must name a flag of schema that is not in exclude
// (--config itself, say): schema is the daemon's whole flag set, so a
// subcommand that takes only some of the daemon's flags (target) can read
// the daemon's file. schema may be target. schema's values are set too,
// which checks each value: give a throwaway flag set when target is not
// schema. On any error no flag of target is changed.
func (cf *File) Apply(target, schema *pflag.FlagSet, exclude ...string) error {
	type pending struct {
		flag   *pflag.Flag
		values []string
	}
	var todo []pending
	for _, s := range cf.Settings {
		sf := schema.Lookup(s.Flag)
		if sf == nil || contains(exclude, s.Flag) || strings.Contains(s.Key, "-") {
			return &Error{Path: cf.Path, Line: s.Line, Key: s.Key, Err: errors.New("unknown key" + suggest(schema, s.Key, exclude))}
		}
		if s.List && !repeatable(sf) {
			return &Error{Path: cf.Path, Line: s.Line, Key: s.Key, Err: errors.New("takes one value, not a list")}
		}
		if sf.Value.Type() == "bool" && len(s.Values) == 1 {
			if v := strings.ToLower(s.Values[0]); v != "true" && v != "false" {
				return &Error{Path: cf.Path, Line: s.Line, Key: s.Key, Err: fmt.Errorf("%q: want true or false", s.Values[0])}
			}
		}
		if schema != target {
			if err := check(sf, s.Values); err != nil {
				return &Error{Path: cf.Path, Line: s.Line, Key: s.Key, Err: err}
			}
		}
		tf := target.Lookup(s.Flag)
		if tf == nil || tf.Changed || (len(s.Values) == 0 && !s.List) {
			continue
		}
		if err := check(tf, s.Values); err != nil {
			return &Error{Path: cf.Path, Line: s.Line, Key: s.Key, Err: err}
		}
		todo = append(todo, pending{tf, s.Values})
	}
	for _, p := range todo {
		if len(p.values) == 0 {
			// An empty list empties the flag's default.
			if err := p.flag.Value.(pflag.SliceValue).Replace(nil); err != nil {
				return &Error{Path: cf.Path, Key: strings.ReplaceAll(p.flag.Name, "-", "_"), Err: err}
			}
			continue
		}
		for _, v := range p.values {
			// Value.Set, not FlagSet.Set: the flag stays "not changed on
			// the command line", and a repeatable flag's first Set
			// replaces its default.
			if err := p.flag.Value.Set(v); err != nil {
				// Only a flag type that check does not know can refuse
				// here, after the checks above.
				return &Error{Path: cf.Path, Key: strings.ReplaceAll(p.flag.Name, "-", "_"), Err: fmt.Errorf("%q: %w", v, err)}
			}
		}
	}
	return nil
}

// check reports whether the flag takes values, on a copy of its value so
// that nothing is changed.
func check(f *pflag.Flag, values []string) error {
	probe := pflag.NewFlagSet("probe", pflag.ContinueOnError)
	probe.SetOutput(io.Discard)
	probe.AddFlag(&pflag.Flag{Name: f.Name, Value: fresh(f), DefValue: f.DefValue})
	for _, v := range values {
		if err := probe.Set(f.Name, v); err != nil {
			msg := err.Error()
			// pflag says: invalid argument "x" for "--name" flag: why
			if _, why, ok := strings.Cut(msg, " flag: "); ok {
				msg = why
			}
			return fmt.Errorf("%q: %s", v, msg)
		}
	}
	return nil
}

// fresh returns a value of f's type to try values on: f's own value is
// never touched by check. Types not known here are tried on a string.
func fresh(f *pflag.Flag) pflag.Value {
	fs := pflag.NewFlagSet("fresh", pflag.ContinueOnError)
	switch f.Value.Type() {
	case "bool":
		fs.Bool("x", false, "")
	case "duration":
		fs.Duration("x", 0, "")
	case "int":
		fs.Int("x", 0, "")
	case "int64":
		fs.Int64("x", 0, "")
	case "uint16":
		fs.Uint16("x", 0, "")
	case "stringArray":
		fs.StringArray("x", nil, "")
	case "stringSlice":
		fs.StringSlice("x", nil, "")
	default:
		fs.String("x", "", "")
	}
	return fs.Lookup("x").Value
}

func repeatable(f *pflag.Flag) bool {
	_, ok := f.Value.(pflag.SliceValue)
	return ok
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// suggest names a key the operator may have meant: the flag name written
// with '-' instead of '_', or a known key that differs by a plural 's'.
func suggest(schema *pflag.FlagSet, key string, exclude []string) string {
	var hint string
	schema.VisitAll(func(f *pflag.Flag) {
		if hint != "" || contains(exclude, f.Name) || f.Hidden {
			return
		}
		k := strings.ReplaceAll(f.Name, "-", "_")
		if key == f.Name && strings.Contains(key, "-") || key == k+"s" || key+"s" == k {
			hint = " (did you mean " + k + "?)"
		}
	})
	return hint
}

// yamlError turns the YAML decoder's message into an Error with its line.
func yamlError(path string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, after, ok := strings.Cut(rest, ": "); ok {
			if _, e := fmt.Sscanf(n, "%d", &line); e == nil {
				msg = after
			}
		}
	}
	return &Error{Path: path, Line: line, Err: errors.New(msg)}
}

// Keys returns the keys a file may hold for fs: every flag but those in
// exclude and hidden ones, in snake_case, sorted as fs sorts flags.
func Keys(fs *pflag.FlagSet, exclude ...string) []string {
	var keys []string
	fs.VisitAll(func(f *pflag.Flag) {
		if !f.Hidden && !contains(exclude, f.Name) {
			keys = append(keys, strings.ReplaceAll(f.Name, "-", "_"))
		}
	})
	return keys
}

// Explain returns err as an *Error at the file's line when err is about a
// setting that came from the file: when its message starts with a flag
// ("--listen \"7443\": want host:port", as the daemons' checks word them),
// that flag was not set on target's command line, and the file sets it.
// Otherwise it returns err unchanged.
func (cf *File) Explain(err error, target *pflag.FlagSet) error {
	if cf == nil || err == nil {
		return err
	}
	rest, ok := strings.CutPrefix(err.Error(), "--")
	if !ok {
		return err
	}
	name, msg, _ := strings.Cut(rest, " ")
	name = strings.TrimSuffix(name, ":")
	if f := target.Lookup(name); f != nil && f.Changed {
		return err
	}
	for _, s := range cf.Settings {
		if s.Flag == name {
			return &Error{Path: cf.Path, Line: s.Line, Key: s.Key, Err: errors.New(strings.TrimPrefix(msg, ": "))}
		}
	}
	return err
}

// Values returns each key's value in fs as Keys names them, for people and
// scripts to read: a repeatable flag's as a list of strings, any other's as
// its string.
func Values(fs *pflag.FlagSet, exclude ...string) map[string]any {
	m := map[string]any{}
	for _, k := range Keys(fs, exclude...) {
		f := fs.Lookup(strings.ReplaceAll(k, "_", "-"))
		var v any = f.Value.String()
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			v = sv.GetSlice()
		}
		m[k] = v
	}
	return m
}
