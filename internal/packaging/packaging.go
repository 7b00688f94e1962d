// Package packaging builds Cordon's Linux packages, cordon-agent and
// cordon-controller, as .deb and .rpm with nfpm (github.com/goreleaser/nfpm),
// from the configurations in deploy/nfpm. 'make package' runs it through
// deploy/package; the install tests use it to build what they install.
package packaging

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
)

// Packages are the package names, each with deploy/nfpm/NAME.yaml.
var Packages = []string{"cordon-agent", "cordon-controller"}

// Formats are the package formats built.
var Formats = []string{"deb", "rpm"}

// Binaries maps each executable the packages carry to its Go package.
var Binaries = map[string]string{
	"cordon":                 "./controller/cmd/cordon",
	"cordon-agent":           "./agent/cmd/cordon-agent",
	"cordon-plugin-iptables": "./plugins/iptables",
	"cordon-plugin-nftables": "./plugins/nftables",
	"cordon-plugin-aws":      "./plugins/aws",
	"cordon-plugin-azure":    "./plugins/azure",
	"cordon-plugin-gcp":      "./plugins/gcp",
}

// Options say what to build.
type Options struct {
	Root     string   // the repository
	Out      string   // where the packages go
	Version  string   // package version, such as 0.1.0~git.3282a9d (Debian and RPM order ~ first)
	Arch     string   // a GOARCH: amd64, arm64
	Formats  []string // default: Formats
	Packages []string // default: Packages
	// Progress, if set, gets a line per step.
	Progress io.Writer
}

// Built is one package written.
type Built struct {
	Path    string `json:"path"`
	Package string `json:"package"`
	Format  string `json:"format"`
	Arch    string `json:"arch"`
	Size    int64  `json:"size"`   // bytes
	SHA256  string `json:"sha256"` // hex
}

// BuildBinaries builds Binaries for linux/o.Arch into dir: static
// (CGO_ENABLED=0), -trimpath, with o.Version as the agent's and
// controller's version.
func BuildBinaries(o Options, dir string) error {
	ldflags := fmt.Sprintf("-X github.com/cordon-ir/cordon/controller/server.Version=%s -X github.com/cordon-ir/cordon/agent.Version=%s", o.Version, o.Version)
	for name, pkg := range Binaries {
		o.progress("build %s (linux/%s)", name, o.Arch)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ldflags, "-o", filepath.Join(dir, name), pkg)
		cmd.Dir = o.Root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.Arch)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s for %s: %w\n%s", name, o.Arch, err, out)
		}
	}
	return nil
}

// Package writes each of o.Packages in each of o.Formats for o.Arch into
// o.Out, from the binaries in bin (BuildBinaries), and returns them.
func Package(o Options, bin string) ([]Built, error) {
	if o.Version == "" || strings.ContainsAny(o.Version, "-/ ") || o.Version[0] < '0' || o.Version[0] > '9' {
		return nil, fmt.Errorf("package version %q: want digits first and no '-', '/' or spaces (0.1.0~git.abc1234)", o.Version)
	}
	if len(o.Formats) == 0 {
		o.Formats = Formats
	}
	if len(o.Packages) == 0 {
		o.Packages = Packages
	}
	root, err := filepath.Abs(o.Root)
	if err != nil {
		return nil, err
	}
	bin, err = filepath.Abs(bin)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	env := map[string]string{"ROOT": root, "BIN": bin, "ARCH": o.Arch, "VERSION": o.Version}
	var built []Built
	for _, name := range o.Packages {
		// ${VAR} is expanded in the whole file: nfpm itself expands it in
		// some fields only (not script paths).
		text, err := os.ReadFile(filepath.Join(root, "deploy", "nfpm", name+".yaml"))
		if err != nil {
			return built, err
		}
		cfg, err := nfpm.Parse(strings.NewReader(os.Expand(string(text), func(k string) string { return env[k] })))
		if err != nil {
			return built, fmt.Errorf("%s: %w", name, err)
		}
		for _, format := range o.Formats {
			b, err := write(cfg, name, format, o)
			if err != nil {
				return built, fmt.Errorf("%s (%s, %s): %w", name, format, o.Arch, err)
			}
			o.progress("wrote %s (%d bytes)", b.Path, b.Size)
			built = append(built, b)
		}
	}
	return built, nil
}

func write(cfg nfpm.Config, name, format string, o Options) (Built, error) {
	info, err := cfg.Get(format)
	if err != nil {
		return Built{}, err
	}
	info = nfpm.WithDefaults(info)
	p, err := nfpm.Get(format)
	if err != nil {
		return Built{}, err
	}
	path := filepath.Join(o.Out, p.ConventionalFileName(info))
	info.Target = path
	f, err := os.Create(path)
	if err != nil {
		return Built{}, err
	}
	h := sha256.New()
	if err := p.Package(info, io.MultiWriter(f, h)); err != nil {
		f.Close()
		os.Remove(path)
		return Built{}, err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return Built{}, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return Built{}, err
	}
	return Built{Path: path, Package: name, Format: format, Arch: o.Arch, Size: st.Size(), SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func (o Options) progress(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

// NativeArch is the GOARCH of this machine's packages.
func NativeArch() string { return runtime.GOARCH }
