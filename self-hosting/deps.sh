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
	redis-server
)
if [ "${1:-}" = "--test" ]; then
	pkgs+=(libcmocka-dev python3 libpython3.11-testsuite util-linux fetchmail curl awscli)
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
apt-get update -qq >/dev/null || apt-get update
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
