#!/usr/bin/env bash
# Installs, with apt-get, every Debian package Sealmail builds, runs and tests
# with, and nothing that is already there. Safe to run again and again.
#
#   self-hosting/deps.sh           build and run dependencies
#   self-hosting/deps.sh --test    also what the test suite needs
set -euo pipefail

pkgs=(
	build-essential cmake pkg-config clang libclang-rt-14-dev
	libsqlcipher-dev sqlcipher libsodium-dev libssl-dev openssl
	libuv1-dev libhiredis-dev libmongoc-dev libzstd-dev zlib1g-dev
	libcurl4-openssl-dev libxml2-dev
	libspf2-dev libopendkim-dev libopendmarc-dev publicsuffix
	redis-server
)
if [ "${1:-}" = "--test" ]; then
	pkgs+=(libcmocka-dev python3 libpython3.11-testsuite util-linux fetchmail curl awscli
		isync swaks dnsmasq-base opendkim-tools iproute2 postfix postsrsd)
fi
if [ "${1:-}" = "--bench" ]; then
	pkgs+=(dovecot-imapd dovecot-lmtpd postfix isync)
fi

missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing+=("$p")
	fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "deps.sh: missing packages (${missing[*]}); run as root to install them" >&2
	exit 1
fi
echo "deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# postsrsd (tests) cross-checks sqlited's SRS addresses (test_forward_queue.py).
# postfix is installed for its smtp-source load generator (tests) and as
# the comparison in bench/: it must not configure itself as this machine's
# mailer, and neither it nor dovecot may start as a system service here.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
policy_rc=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy_rc" ]; then
	printf '#!/bin/sh\nexit 101\n' > "$policy_rc" && chmod 755 "$policy_rc" && made_policy=1
fi
trap '[ $made_policy = 1 ] && rm -f "$policy_rc"' EXIT
apt-get update -qq >/dev/null || apt-get update
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
