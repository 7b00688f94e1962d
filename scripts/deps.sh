#!/bin/sh
# Installs the Debian packages Cordon's tests and demo run on, when missing:
# iptables and nftables (the firewalls isolated hosts use), iproute2 (network
# namespaces), conntrack (flow tables), iputils-ping (ping, the ICMP probe of
# the firewall test matrix), openssh-client (ssh-keygen, to check
# evidence signatures with stock OpenSSH), strace (a test watches the
# snapshot code for any write to disk), and for the package tests dpkg,
# systemd (systemd-analyze verify, systemctl, systemd-sysusers), rpm (to
# read the .rpm packages) and setpriv (util-linux: the agent under its
# unit's capabilities).
set -eu
missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need iptables iptables
need ip6tables iptables
need nft nftables
need ip iproute2
need conntrack conntrack
need ping iputils-ping
need ssh-keygen openssh-client
need strace strace
need dpkg dpkg
need systemd-analyze systemd
need systemd-sysusers systemd
need rpm rpm
need setpriv util-linux
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "missing packages:$missing (install them as root with apt-get)" >&2
	exit 1
fi
echo "installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
