#!/bin/sh
# cordon-controller: after removal. The data directory (database, evidence,
# host key) is kept even on purge: evidence is never deleted by a package
# manager. Remove /var/lib/cordon by hand once it is archived. Purge (deb)
# removes the unit's enablement.
set -e
root="${DPKG_ROOT:-}"
if [ "$1" = purge ]; then
	rm -f "$root/etc/systemd/system/multi-user.target.wants/cordon-controller.service"
fi
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
