#!/bin/sh
# cordon-agent: after install or upgrade (deb: configure [old-version];
# rpm: 1 on install, 2 on upgrade). On the first install it enables the
# unit but never starts an agent: the agent starts once 'cordon-agent
# enroll' has configured it (ConditionPathExists=/etc/cordon/agent.yaml).
# An upgrade leaves the enablement as the administrator set it and
# restarts a running agent on the new binary; Cordon's rules stay in the
# kernel meanwhile. Honours DPKG_ROOT (install into a root).
set -e
root="${DPKG_ROOT:-}"
case "$1" in
configure) first=$([ -z "${2:-}" ] && echo yes || echo no) ;;
1) first=yes ;;
2) first=no ;;
*) exit 0 ;;
esac
install -d -m 0700 "$root/var/lib/cordon-agent"
install -d -m 0755 "$root/etc/cordon"
if [ "$first" = yes ] && command -v systemctl >/dev/null 2>&1; then
	systemctl ${root:+--root="$root"} enable cordon-agent.service >/dev/null 2>&1 ||
		echo "cordon-agent: could not enable cordon-agent.service; run: systemctl enable cordon-agent" >&2
fi
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
	systemd-tmpfiles --create cordon-agent.conf || true
	systemctl daemon-reload || true
	if [ "$first" = no ]; then
		systemctl try-restart cordon-agent.service || true
	fi
fi
if [ ! -e "$root/etc/cordon/agent.yaml" ]; then
	echo "cordon-agent: installed, not started. Enroll this host, then start the agent:"
	echo "  cordon-agent enroll --controller HOST:7443 --controller-fingerprint SHA256:... --token-file FILE"
	echo "  systemctl start cordon-agent"
fi
