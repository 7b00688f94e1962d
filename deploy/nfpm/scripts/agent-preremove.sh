#!/bin/sh
# cordon-agent: before removal (deb: remove; rpm: 0; not on upgrade).
# Stops and disables the agent. Stopping releases nothing: if Cordon's
# rules are in place the host stays isolated, and this says so. It reads
# the rules only where their tables are already in the kernel, so that it
# never makes the kernel load a firewall module the host does not use.
set -e
root="${DPKG_ROOT:-}"
case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac
# nf_tables is there without loading anything: no loadable modules at all,
# the module loaded, or built in (as the agent's own probe decides).
nft_ready() {
	[ ! -e /proc/modules ] && return 0
	grep -q '^nf_tables ' /proc/modules && return 0
	grep -qs '/nf_tables.ko' "/lib/modules/$(uname -r)/modules.builtin"
}
isolated() {
	if command -v nft >/dev/null 2>&1 && nft_ready; then
		nft list ruleset 2>/dev/null | grep -Eq 'table inet cordon|chain CORDON-' && return 0
	fi
	for v in "" 6; do
		if [ -s "/proc/net/ip${v}_tables_names" ] && command -v "ip${v}tables-legacy" >/dev/null 2>&1; then
			"ip${v}tables-legacy" -S 2>/dev/null | grep -q -- '^-N CORDON-' && return 0
		fi
	done
	return 1
}
if [ -z "$root" ]; then
	if isolated; then
		echo "cordon-agent: THIS HOST IS ISOLATED by Cordon. The removal goes on, and the host stays" >&2
		echo "cordon-agent: isolated: removing the agent releases nothing. To release it, reinstall" >&2
		echo "cordon-agent: cordon-agent and release it from the controller (cordon release host NAME)," >&2
		echo "cordon-agent: or on this console with a token (cordon-agent release --local --token FILE)." >&2
	fi
	if [ -d /run/systemd/system ]; then
		systemctl stop cordon-agent.service || true
	fi
fi
if command -v systemctl >/dev/null 2>&1; then
	systemctl ${root:+--root="$root"} disable cordon-agent.service >/dev/null 2>&1 || true
fi
