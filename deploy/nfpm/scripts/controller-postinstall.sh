#!/bin/sh
# cordon-controller: after install or upgrade (deb: configure
# [old-version]; rpm: 1 on install, 2 on upgrade). Creates the user cordon
# and its data directory; on the first install it enables the unit but
# does not start it: it starts once 'cordon controller init' made the data
# directory (ConditionPathExists=/var/lib/cordon/host_ed25519). An upgrade
# leaves the enablement as it was and restarts a running controller.
# Honours DPKG_ROOT (install into a root).
set -e
root="${DPKG_ROOT:-}"
case "$1" in
configure) first=$([ -z "${2:-}" ] && echo yes || echo no) ;;
1) first=yes ;;
2) first=no ;;
*) exit 0 ;;
esac
if ! grep -q '^cordon:' "$root/etc/passwd" 2>/dev/null && { [ -n "$root" ] || ! id cordon >/dev/null 2>&1; }; then
	if command -v systemd-sysusers >/dev/null 2>&1; then
		systemd-sysusers ${root:+--root="$root"} cordon-controller.conf
	else
		if grep -q '^cordon:' "$root/etc/group" 2>/dev/null; then group="--gid cordon"; else group="--user-group"; fi
		# shellcheck disable=SC2086
		useradd ${root:+--prefix "$root"} --system $group --home-dir /var/lib/cordon \
			--no-create-home --shell /usr/sbin/nologin --comment "Cordon controller" cordon
	fi
fi
install -d -m 0700 "$root/var/lib/cordon"
if [ -z "$root" ]; then
	chown cordon:cordon /var/lib/cordon
else
	# Inside a root: its own accounts, by number.
	uid=$(awk -F: '$1 == "cordon" { print $3 }' "$root/etc/passwd")
	gid=$(awk -F: '$1 == "cordon" { print $4 }' "$root/etc/passwd")
	chown "$uid:$gid" "$root/var/lib/cordon"
fi
if [ "$first" = yes ] && command -v systemctl >/dev/null 2>&1; then
	systemctl ${root:+--root="$root"} enable cordon-controller.service >/dev/null 2>&1 ||
		echo "cordon-controller: could not enable cordon-controller.service; run: systemctl enable cordon-controller" >&2
fi
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	if [ "$first" = no ]; then
		systemctl try-restart cordon-controller.service || true
	fi
fi
if [ ! -e "$root/var/lib/cordon/host_ed25519" ]; then
	echo "cordon-controller: installed, not started. Initialize it, then start it:"
	echo "  runuser -u cordon -- cordon controller init --data-dir /var/lib/cordon"
	echo "  systemctl start cordon-controller"
fi
