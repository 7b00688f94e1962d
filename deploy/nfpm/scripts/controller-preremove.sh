#!/bin/sh
# cordon-controller: before removal (deb: remove; rpm: 0; not on upgrade).
# Stops the controller; its data stays. On rpm it disables the unit; a deb
# keeps the enablement until purge, so that a package removed and
# installed again is enabled as before.
set -e
root="${DPKG_ROOT:-}"
case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
	systemctl stop cordon-controller.service || true
fi
if [ "$1" = 0 ] && command -v systemctl >/dev/null 2>&1; then
	systemctl ${root:+--root="$root"} disable cordon-controller.service >/dev/null 2>&1 || true
fi
