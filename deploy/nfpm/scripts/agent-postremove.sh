#!/bin/sh
# cordon-agent: after removal. On purge (deb only) the configuration, the
# agent key and the unit's enablement go too; the host's firewall is left
# as it is.
set -e
root="${DPKG_ROOT:-}"
if [ "$1" = purge ]; then
	rm -f "$root/etc/cordon/agent.yaml"
	rm -rf "$root/var/lib/cordon-agent"
	rmdir "$root/etc/cordon" 2>/dev/null || true
	# The unit file is gone: remove its enablement by hand.
	rm -f "$root/etc/systemd/system/multi-user.target.wants/cordon-agent.service"
fi
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
