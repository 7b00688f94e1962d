// Command package builds Cordon's .deb and .rpm packages (cordon-agent,
// cordon-controller) for each architecture asked, into --out: 'make
// package' runs it.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cordon-ir/cordon/internal/packaging"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "package:", err)
		os.Exit(1)
	}
}

func run() error {
	out := flag.String("out", "dist", "`directory` the packages are written to")
	version := flag.String("version", "", "package `version`, such as 0.1.0~git.3282a9d")
	arches := flag.String("arch", "amd64,arm64", "comma-separated `GOARCH`es")
	formats := flag.String("format", "deb,rpm", "comma-separated package `formats`")
	output := flag.String("o", "text", "output: text, or json (one object per package)")
	flag.Parse()
	if *output != "text" && *output != "json" {
		fmt.Fprintf(os.Stderr, "package: -o %q: want text or json\n", *output)
		os.Exit(2)
	}
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "cordon-package-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	var all []packaging.Built
	for _, arch := range strings.Split(*arches, ",") {
		o := packaging.Options{Root: root, Out: *out, Version: *version, Arch: arch, Formats: strings.Split(*formats, ","), Progress: os.Stderr}
		bin := filepath.Join(work, arch)
		if err := packaging.BuildBinaries(o, bin); err != nil {
			return err
		}
		built, err := packaging.Package(o, bin)
		if err != nil {
			return err
		}
		all = append(all, built...)
	}
	if *output == "json" {
		enc := json.NewEncoder(os.Stdout)
		for _, b := range all {
			if err := enc.Encode(b); err != nil {
				return err
			}
		}
		return nil
	}
	for _, b := range all {
		fmt.Printf("%s  %s  %d bytes\n", b.SHA256, b.Path, b.Size)
	}
	return nil
}
