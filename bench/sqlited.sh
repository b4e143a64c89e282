#!/bin/sh
# bench/sqlited.sh [--seconds N]: benchmarks a real sqlited.
#
# Sets up a throw-away data directory (`sealmail init`, default Argon2id
# cost, db_idle_seconds = 0, every port but sqlited's TCP port turned off),
# a private redis-server on a unix socket, sqlited on that socket and on a
# free loopback TCP port, a domain and three aliases (open@, locked@ and
# unlock@bench.test), runs build/bin/bench-sqlited (or $BIN_DIR's),
# and stops and removes everything, also on Ctrl-C or an error.
#
# Build first:
#   cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
#   cmake --build build -j2
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BIN_DIR=${BIN_DIR:-$ROOT/build/bin}
for exe in sealmail sqlited bench-sqlited; do
	[ -x "$BIN_DIR/$exe" ] || { echo "no $BIN_DIR/$exe: build first (see the top of $0)" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }

TMP=$(mktemp -d /tmp/bench-sqlited.XXXXXX)
DATA=$TMP/d
CONF=$DATA/sealmail.conf
REDIS_PID=
SQLITED_PID=

# SIGTERM, 30 s to stop, then SIGKILL: only the processes started here.
stop() {
	kill -TERM "$1" 2>/dev/null || return 0
	i=0
	while kill -0 "$1" 2>/dev/null && [ $i -lt 300 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if kill -0 "$1" 2>/dev/null; then
		echo "$2 did not stop within 30 s of SIGTERM: killed" >&2
		kill -KILL "$1" 2>/dev/null || true
	fi
	wait "$1" 2>/dev/null || true
}

cleanup() {
	trap - EXIT INT TERM
	[ -z "$SQLITED_PID" ] || stop "$SQLITED_PID" sqlited
	[ -z "$REDIS_PID" ] || stop "$REDIS_PID" redis-server
	if [ "${BENCH_FAILED:-0}" = 1 ] && [ -f "$TMP/sqlited.log" ]; then
		echo "--- the last lines of sqlited's log:" >&2
		tail -n 20 "$TMP/sqlited.log" >&2
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for_socket() {
	i=0
	while [ ! -S "$1" ]; do
		i=$((i + 1))
		[ $i -lt 300 ] || { echo "$2 did not start" >&2; cat "$TMP"/*.log >&2; exit 1; }
		sleep 0.05
	done
}

"$BIN_DIR/sealmail" init --config "$CONF" --data-dir "$DATA" >/dev/null
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
set_key() {
	if grep -q "^$1 *=" "$CONF"; then
		sed -i "s|^$1 *=.*|$1 = $2|" "$CONF"
	else
		echo "$1 = $2" >> "$CONF"
	fi
}
for key in imaps_port imap_port pop3s_port pop3_port mx_port smtps_port \
	   submission_port caldav_port carddav_port api_port web_port; do
	set_key $key 0
done
set_key listen_address 127.0.0.1
set_key sqlited_port "$PORT"
set_key redis_url "unix://$TMP/redis.sock"
set_key db_idle_seconds 0

redis-server --port 0 --unixsocket "$TMP/redis.sock" --unixsocketperm 700 \
	--save "" --appendonly no --dir "$TMP" > "$TMP/redis.log" 2>&1 &
REDIS_PID=$!
wait_for_socket "$TMP/redis.sock" redis-server

"$BIN_DIR/sqlited" --config "$CONF" > "$TMP/sqlited.log" 2>&1 &
SQLITED_PID=$!
wait_for_socket "$DATA/sqlited.sock" sqlited

C="--config=$CONF"
"$BIN_DIR/sealmail" domain add bench.test "$C" >/dev/null
"$BIN_DIR/sealmail" alias add locked@bench.test "$C" >/dev/null
BENCH_PW_OPEN=$("$BIN_DIR/sealmail" alias add open@bench.test "$C" | tail -n 1)
BENCH_PW_UNLOCK=$("$BIN_DIR/sealmail" alias add unlock@bench.test "$C" | tail -n 1)
export BENCH_PW_OPEN BENCH_PW_UNLOCK

echo "sqlited $("$BIN_DIR/sealmail" version 2>/dev/null | head -n 1); $(nproc) CPUs; $(date -u +%Y-%m-%dT%H:%MZ)"
"$BIN_DIR/bench-sqlited" --unix "$DATA/sqlited.sock" --tcp-port "$PORT" \
	--secret "$DATA/secrets/rpc_secret" --sqlited-pid "$SQLITED_PID" \
	--open open@bench.test --locked locked@bench.test \
	--unlock unlock@bench.test "$@" || { BENCH_FAILED=1; exit 1; }
