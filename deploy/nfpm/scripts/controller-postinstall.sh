#!/bin/sh
# cordon-controller: after install or upgrade (deb: configure; rpm: 1 or
# 2). Creates the user cordon and its data directory, enables the unit but
# does not start it: it starts once 'cordon controller init' made the data
# directory (ConditionPathExists=/var/lib/cordon/host_ed25519). An upgrade
# restarts a running controller. Honours DPKG_ROOT (install into a root).
set -e
root="${DPKG_ROOT:-}"
case "$1" in
configure | 1 | 2) ;;
*) exit 0 ;;
esac
if ! grep -q '^cordon:' "$root/etc/passwd" 2>/dev/null; then
	if command -v systemd-sysusers >/dev/null 2>&1; then
		systemd-sysusers ${root:+--root="$root"} cordon-controller.conf
	else
		useradd ${root:+--prefix "$root"} --system --user-group --home-dir /var/lib/cordon \
			--no-create-home --shell /usr/sbin/nologin --comment "Cordon controller" cordon
	fi
fi
uid=$(awk -F: '$1 == "cordon" { print $3 }' "$root/etc/passwd")
gid=$(awk -F: '$1 == "cordon" { print $3 }' "$root/etc/group")
install -d -m 0700 "$root/var/lib/cordon"
chown "$uid:$gid" "$root/var/lib/cordon"
if command -v systemctl >/dev/null 2>&1; then
	systemctl ${root:+--root="$root"} enable cordon-controller.service >/dev/null 2>&1 ||
		echo "cordon-controller: could not enable cordon-controller.service; run: systemctl enable cordon-controller" >&2
fi
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	systemctl try-restart cordon-controller.service || true
fi
if [ ! -e "$root/var/lib/cordon/host_ed25519" ]; then
	echo "cordon-controller: installed, not started. Initialize it, then start it:"
	echo "  runuser -u cordon -- cordon controller init --data-dir /var/lib/cordon"
	echo "  systemctl start cordon-controller"
fi
