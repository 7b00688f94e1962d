#!/bin/sh
# cordon-agent: before removal (deb: remove; rpm: 0; not on upgrade).
# Stops and disables the agent. Stopping releases nothing: if Cordon's
# rules are in place the host stays isolated, and this says so.
set -e
root="${DPKG_ROOT:-}"
case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac
if [ -z "$root" ]; then
	if nft list table inet cordon >/dev/null 2>&1 ||
		iptables -S 2>/dev/null | grep -q -- '^-N CORDON-' ||
		ip6tables -S 2>/dev/null | grep -q -- '^-N CORDON-'; then
		echo "cordon-agent: THIS HOST IS ISOLATED by Cordon, and stays isolated once the agent is removed." >&2
		echo "cordon-agent: release it first (cordon release host NAME), or with a release token" >&2
		echo "cordon-agent: (cordon-agent release --local --token FILE) before removing the package." >&2
	fi
	if [ -d /run/systemd/system ]; then
		systemctl stop cordon-agent.service || true
	fi
fi
if command -v systemctl >/dev/null 2>&1; then
	systemctl ${root:+--root="$root"} disable cordon-agent.service >/dev/null 2>&1 || true
fi
