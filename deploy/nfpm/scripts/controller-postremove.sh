#!/bin/sh
# cordon-controller: after removal. The data directory (database, evidence,
# host key) is kept even on purge: evidence is never deleted by a package
# manager. Remove /var/lib/cordon by hand once it is archived.
set -e
root="${DPKG_ROOT:-}"
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
