package flagfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

type opts struct {
	addr    string
	allow   []string
	every   time.Duration
	verbose bool
}

func flags() (*pflag.FlagSet, *opts) {
	o := &opts{}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.StringVar(&o.addr, "listen-addr", ":7443", "")
	fs.StringArrayVar(&o.allow, "allow", []string{"default"}, "")
	fs.DurationVar(&o.every, "every", time.Second, "")
	fs.BoolVar(&o.verbose, "verbose", false, "")
	fs.String("config", "", "")
	return fs, o
}

func TestApply(t *testing.T) {
	cf, err := Parse("f.yaml", []byte("# comment\nlisten_addr: 127.0.0.1:1\nallow: [a, b]\nevery: 2s\nverbose: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	fs, o := flags()
	if err := cf.Apply(fs, fs, "config"); err != nil {
		t.Fatal(err)
	}
	if o.addr != "127.0.0.1:1" || strings.Join(o.allow, ",") != "a,b" || o.every != 2*time.Second || !o.verbose {
		t.Errorf("applied: %+v", o)
	}
	if fs.Lookup("listen-addr").Changed {
		t.Error("a file value marked the flag as set on the command line")
	}
}

func TestEmptyListEmpties(t *testing.T) {
	cf, err := Parse("f.yaml", []byte("allow: []\nverbose: True\n"))
	if err != nil {
		t.Fatal(err)
	}
	fs, o := flags()
	if err := cf.Apply(fs, fs); err != nil {
		t.Fatal(err)
	}
	if len(o.allow) != 0 || !o.verbose {
		t.Errorf("allow: [] left %q; verbose %v", o.allow, o.verbose)
	}
}

func TestCommandLineWins(t *testing.T) {
	cf, err := Parse("f.yaml", []byte("listen_addr: from-file:1\nallow: [file]\n"))
	if err != nil {
		t.Fatal(err)
	}
	fs, o := flags()
	if err := fs.Parse([]string{"--listen-addr", "flag:2"}); err != nil {
		t.Fatal(err)
	}
	if err := cf.Apply(fs, fs); err != nil {
		t.Fatal(err)
	}
	if o.addr != "flag:2" || strings.Join(o.allow, ",") != "file" {
		t.Errorf("applied: %+v", o)
	}
}

func TestEmptyFileAndEmptyValue(t *testing.T) {
	for _, text := range []string{"", "# only a comment\n", "---\n", "every:\n"} {
		cf, err := Parse("f.yaml", []byte(text))
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		fs, o := flags()
		if err := cf.Apply(fs, fs); err != nil || o.every != time.Second {
			t.Errorf("%q: %v, every %v", text, err, o.every)
		}
	}
}

func TestErrors(t *testing.T) {
	for name, tc := range map[string]struct{ text, want string }{
		"unknown":            {"listen_addr: x:1\nallw: a\n", "f.yaml:2: allw: unknown key"},
		"dashed":             {"listen-addr: x:1\n", "f.yaml:1: listen-addr: unknown key (did you mean listen_addr?)"},
		"plural":             {"allows: [a]\n", "f.yaml:1: allows: unknown key (did you mean allow?)"},
		"excluded":           {"config: other.yaml\n", "f.yaml:1: config: unknown key"},
		"twice":              {"every: 1s\n\nevery: 2s\n", "f.yaml:3: every: given twice (first on line 1)"},
		"bad duration":       {"every: soon\n", `f.yaml:1: every: "soon": time: invalid duration "soon"`},
		"bad bool":           {"verbose: yes\n", `f.yaml:1: verbose: "yes": want true or false`},
		"list for one":       {"every: [1s, 2s]\n", "f.yaml:1: every: takes one value, not a list"},
		"mapping":            {"allow: {a: b}\n", "f.yaml:1: allow: want a value or a list of values, not a mapping"},
		"nested list":        {"allow: [[a]]\n", "f.yaml:1: allow: a list item must be a single value"},
		"top list":           {"- a\n", "f.yaml:1: want a mapping"},
		"two documents":      {"every: 1s\n---\nevery: 2s\n", "f.yaml:2: a second YAML document"},
		"alias":              {"listen_addr: &x a:1\nallow: *x\n", "f.yaml:2: allow: YAML aliases are not accepted here"},
		"tag":                {"listen_addr: !!binary aGVsbG8=\n", "f.yaml:1: listen_addr: YAML tags (!!binary) are not accepted here"},
		"merge key":          {"<<: {every: 1s}\n", "f.yaml:1: <<: want a value or a list of values, not a mapping"},
		"empty list for one": {"every: []\n", "f.yaml:1: every: takes one value, not a list"},
		"syntax":             {"every: 1s\n  allow: x\n", "f.yaml:2: mapping values are not allowed"},
		"late bad value":     {"listen_addr: ok:1\nevery: never\n", `f.yaml:2: every:`},
	} {
		t.Run(name, func(t *testing.T) {
			fs, o := flags()
			cf, err := Parse("f.yaml", []byte(tc.text))
			if err == nil {
				err = cf.Apply(fs, fs, "config")
			}
			var fe *Error
			if err == nil || !errors.As(err, &fe) || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("got %v, want an *Error starting %q", err, tc.want)
			}
			if o.addr != ":7443" {
				t.Errorf("a refused file was applied in part: listen_addr %q", o.addr)
			}
		})
	}
}

// TestSchemaWiderThanTarget: a subcommand with some of the daemon's flags
// reads the daemon's file; keys it lacks are checked, then skipped.
func TestSchemaWiderThanTarget(t *testing.T) {
	schema, _ := flags()
	var addr string
	target := pflag.NewFlagSet("sub", pflag.ContinueOnError)
	target.StringVar(&addr, "listen-addr", "", "")
	cf, _ := Parse("f.yaml", []byte("listen_addr: a:1\nevery: 5s\n"))
	if err := cf.Apply(target, schema); err != nil || addr != "a:1" {
		t.Fatalf("%v, addr %q", err, addr)
	}
	cf, _ = Parse("f.yaml", []byte("listen_addr: a:1\nevery: later\n"))
	addr = ""
	if err := cf.Apply(target, schema); err == nil || addr != "" {
		t.Fatalf("a bad value of a key the target lacks was not refused: %v, addr %q", err, addr)
	}
}

func TestRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte(strings.Repeat("#", MaxSize+1)), 0o600)
	if _, err := Read(p); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v", err)
	}
	if _, err := Read(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"listen_addr: a:1\nallow: [a, b]\n", "every:\n", "- x\n", "a: &x 1\nb: *x\n", "a: {b: c}\n", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cf, err := Parse("f.yaml", b)
		if err != nil {
			var fe *Error
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not an *Error", err)
			}
			return
		}
		fs, o := flags()
		before := *o
		if err := cf.Apply(fs, fs, "config"); err != nil {
			if o.addr != before.addr || o.every != before.every || o.verbose != before.verbose {
				t.Fatalf("refused file %q applied in part", b)
			}
		}
	})
}
