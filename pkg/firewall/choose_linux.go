package firewall

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// ProbeHost reads what the packet filter of the caller's network namespace
// is (HostFirewall). It never loads a kernel module: nf_tables is asked
// over netlink only when it is built in (modules.builtin, or a kernel
// without modules) or its module is already loaded (/proc/modules), since
// a netlink request for it would load it. It runs `iptables -V` for the
// variant, with a 2 s bound.
func ProbeHost() HostFirewall {
	var h HostFirewall
	if why := nfTablesPresent(); why != "" {
		h.NFTablesWhyNot = why
	} else if tables, err := listNFTables(); err != nil {
		h.NFTablesWhyNot = "nf_tables does not answer: " + err.Error()
	} else {
		h.NFTables, h.Tables = true, tables
	}
	h.Iptables = iptablesVariant()
	for _, f := range []struct{ path, fam string }{{"/proc/net/ip_tables_names", "ip"}, {"/proc/net/ip6_tables_names", "ip6"}} {
		b, err := os.ReadFile(f.path)
		if err != nil {
			continue
		}
		for _, t := range strings.Fields(string(b)) {
			h.LegacyTables = append(h.LegacyTables, f.fam+" "+t)
		}
	}
	return h
}

// NFTablesPresent reports whether nf_tables can be asked (by nft(8),
// iptables-nft or netlink) without the kernel loading its module: it is
// built in, or its module is loaded; else why not.
func NFTablesPresent() (bool, string) {
	why := nfTablesPresent()
	return why == "", why
}

// IptablesVariant is the variant of the iptables(8) installed:
// "nf_tables", "legacy", or "" when none runs (`iptables -V`, 2 s at most).
func IptablesVariant() string { return iptablesVariant() }

// nfTablesPresent returns "" when nf_tables can be asked without loading
// a module, else why not.
func nfTablesPresent() string {
	mods, err := os.ReadFile("/proc/modules")
	if errors.Is(err, fs.ErrNotExist) {
		return "" // a kernel without loadable modules: nothing can be loaded
	}
	if err != nil {
		return "cannot read /proc/modules: " + err.Error()
	}
	sc := bufio.NewScanner(bytes.NewReader(mods))
	for sc.Scan() {
		if name, _, _ := strings.Cut(sc.Text(), " "); name == "nf_tables" {
			return ""
		}
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		builtin, err := os.ReadFile("/lib/modules/" + unix.ByteSliceToString(u.Release[:]) + "/modules.builtin")
		if err == nil && bytes.Contains(builtin, []byte("/nf_tables.ko\n")) {
			return ""
		}
	}
	return "the nf_tables module is not loaded, and Cordon does not load one the host does not use"
}

func listNFTables() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	tables, err := c.ListTables()
	if err != nil {
		return nil, err
	}
	names := map[nftables.TableFamily]string{
		nftables.TableFamilyINet: "inet", nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6",
		nftables.TableFamilyARP: "arp", nftables.TableFamilyNetdev: "netdev", nftables.TableFamilyBridge: "bridge",
	}
	var out []string
	for _, t := range tables {
		fam, ok := names[t.Family]
		if !ok {
			fam = "family-" + strconv.Itoa(int(t.Family))
		}
		out = append(out, fam+" "+t.Name)
	}
	return out, nil
}

// iptablesVariant runs `iptables -V`: "nf_tables", "legacy" (also for
// versions before 1.8, which had only that), or "" when iptables is not
// installed or does not run.
func iptablesVariant() string {
	path, err := exec.LookPath("iptables")
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "-V").Output()
	if err != nil {
		return ""
	}
	if bytes.Contains(out, []byte("(nf_tables)")) {
		return "nf_tables"
	}
	return "legacy"
}
