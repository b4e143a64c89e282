#!/usr/bin/env bash
# The README's run command: installs what is missing, builds, prepares a
# data directory (once) and runs every service in the foreground.
#
#   ./self-hosting/run.sh                 data in ./data (at the repository root)
#   SEALMAIL_DATA=/srv/sealmail ./self-hosting/run.sh
#
# Ctrl-C (or SIGTERM) stops everything.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
data="${SEALMAIL_DATA:-$root/data}"

bash self-hosting/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"
build/bin/sealmail init --config "$data/sealmail.conf" --data-dir "$data"
exec build/bin/sealmail up --config "$data/sealmail.conf"
