#!/usr/bin/env bash
# s3rver (the npm package, 3.x), a local S3-compatible server for the S3
# backup tests. Installed with npm into a cache directory on first use, so a
# fresh CI machine needs only node and npm.
#
#   s3rver.sh path                      install if needed, print the s3rver script
#   s3rver.sh run PORT DIR BUCKET...    exec s3rver on 127.0.0.1:PORT, data in DIR,
#                                       access key / secret "S3RVER" / "S3RVER"
#
# Cache: $SEALMAIL_S3RVER_DIR, default <source>/build/s3rver. Concurrent
# callers (ctest -j, two builds) wait on a lock; the install is all or nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${SEALMAIL_S3RVER_DIR:-$root/build/s3rver}"
version="3.7.1"
script="$cache/node_modules/s3rver/bin/s3rver.js"

install() {
	command -v node >/dev/null && command -v npm >/dev/null || {
		echo "s3rver.sh: node and npm are needed (apt-get install nodejs npm)" >&2
		exit 2
	}
	[ -f "$script" ] && return 0
	mkdir -p "$cache"
	# The lock is held in a subshell only: s3rver itself must not inherit it.
	(
		flock 9
		[ -f "$script" ] && exit 0
		tmp="$(mktemp -d "$cache/.install.XXXXXX")"
		if ! npm install --prefix "$tmp" --no-audit --no-fund --loglevel=error \
			"s3rver@$version" >&2; then
			rm -rf "$tmp"
			echo "s3rver.sh: npm install s3rver@$version failed" >&2
			exit 1
		fi
		rm -rf "$cache/node_modules"
		mv "$tmp/node_modules" "$cache/node_modules"
		rm -rf "$tmp"
	) 9>"$cache/.lock"
	[ -f "$script" ] || { echo "s3rver.sh: no $script after install" >&2; exit 1; }
}

case "${1:-}" in
path)
	install
	echo "$script"
	;;
run)
	[ $# -ge 4 ] || { echo "usage: s3rver.sh run PORT DIR BUCKET..." >&2; exit 2; }
	install
	port="$2" dir="$3"
	shift 3
	buckets=()
	for b in "$@"; do buckets+=(--configure-bucket "$b"); done
	# s3rver makes ListObjectsV2 continuation tokens with DES, which
	# OpenSSL 3 keeps in its legacy provider.
	exec node --openssl-legacy-provider "$script" --silent --address 127.0.0.1 --port "$port" \
		--directory "$dir" --no-vhost-buckets "${buckets[@]}"
	;;
*)
	echo "usage: s3rver.sh path | run PORT DIR BUCKET..." >&2
	exit 2
	;;
esac
