#!/bin/sh
# cordon-agent: before removal (deb: remove; rpm: 0; not on upgrade).
# Stops the agent. Stopping releases nothing: if Cordon's rules are in
# place the host stays isolated, and this says so; it asks the agent
# binary, still installed here, which reads the rules through the plugins
# without ever making the kernel load a module. On rpm it disables the
# unit; a deb keeps the enablement until purge, so that a package removed
# and installed again is enabled as before.
set -e
root="${DPKG_ROOT:-}"
case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac
if [ -z "$root" ]; then
	agent=$(command -v cordon-agent 2>/dev/null || echo /usr/bin/cordon-agent)
	config=""
	if [ -r /etc/cordon/agent.yaml ]; then config="--config /etc/cordon/agent.yaml"; fi
	# shellcheck disable=SC2086
	if "$agent" status --local $config -o json 2>/dev/null | grep -q '"rules_in_place": true'; then
		echo "cordon-agent: THIS HOST IS ISOLATED by Cordon. The removal goes on, and the host stays" >&2
		echo "cordon-agent: isolated: removing the agent releases nothing. To release it, reinstall" >&2
		echo "cordon-agent: cordon-agent and release it from the controller (cordon release host NAME)," >&2
		echo "cordon-agent: or on this console with a token (cordon-agent release --local --token FILE)." >&2
	fi
	if [ -d /run/systemd/system ]; then
		systemctl stop cordon-agent.service || true
	fi
fi
if [ "$1" = 0 ] && command -v systemctl >/dev/null 2>&1; then
	systemctl ${root:+--root="$root"} disable cordon-agent.service >/dev/null 2>&1 || true
fi
