#!/bin/sh
# cordon-agent: after install or upgrade (deb: configure; rpm: 1 or 2).
# Enables the unit but never starts an agent: it starts once 'cordon-agent
# enroll' has configured it (ConditionPathExists=/etc/cordon/agent.yaml).
# An upgrade restarts a running agent on the new binary; Cordon's rules
# stay in the kernel meanwhile. Honours DPKG_ROOT (install into a root).
set -e
root="${DPKG_ROOT:-}"
case "$1" in
configure | 1 | 2) ;;
*) exit 0 ;;
esac
install -d -m 0700 "$root/var/lib/cordon-agent"
install -d -m 0755 "$root/etc/cordon"
if command -v systemctl >/dev/null 2>&1; then
	systemctl ${root:+--root="$root"} enable cordon-agent.service >/dev/null 2>&1 ||
		echo "cordon-agent: could not enable cordon-agent.service; run: systemctl enable cordon-agent" >&2
fi
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
	systemd-tmpfiles --create cordon-agent.conf || true
	systemctl daemon-reload || true
	systemctl try-restart cordon-agent.service || true
fi
if [ ! -e "$root/etc/cordon/agent.yaml" ]; then
	echo "cordon-agent: installed, not started. Enroll this host, then start the agent:"
	echo "  cordon-agent enroll --controller HOST:7443 --controller-fingerprint SHA256:... --token cdn-..."
	echo "  systemctl start cordon-agent"
fi
