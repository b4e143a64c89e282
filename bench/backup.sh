#!/usr/bin/env bash
# bench/backup.sh [ALIASES=200] [MB=2048]: backup and restore throughput.
#
# Builds a throw-away installation (`sealmail init`, a private redis-server on
# a unix socket, sqlited on its unix socket and a free loopback port, every
# other port off), adds ALIASES aliases with the CLI and fills them with about
# MB MiB of generated mail (APPEND over sqlited's RPC from 4 processes, each
# on its own aliases). Then, with sqlited stopped (offline backups):
#
#   1. `sealmail backup --target DIR` (first run, everything uploaded);
#   2. the baselines on the same directory: `tar | openssl enc -aes-256-ctr
#      -pbkdf2` and `tar | zstd -1 | openssl enc ...`, each a GNU tar level-0
#      archive (--listed-incremental) so that step 4 has an incremental too;
#   3. sqlited started again, one message APPENDed to ceil(ALIASES/100)
#      aliases (~1%), sqlited stopped;
#   4. `sealmail backup` again (incremental) and the baselines' level-1 tars;
#   5. `sealmail restore` of the newest snapshot into a fresh data directory
#      (a copy of the secrets and the config, as an operator would), and
#      `openssl enc -d | tar -x` of the level-0 archive into another.
#
# Each timed write ends durable: Sealmail's local target and restore fsync
# what they write; the baselines' archive and extracted files are fsynced
# (`sync FILE...`) inside the timed part. Prints a table with the ratios
# Sealmail / baseline. Everything is under one temporary directory (TMPDIR,
# default /tmp; it needs about 4 x MB of free space), removed at the end with
# every process started here, also on an error or Ctrl-C.
#
# Build first:
#   cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
#   cmake --build build -j2
set -euo pipefail

ALIASES=${1:-200}
MB=${2:-2048}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN_DIR:-$ROOT/build/bin}
PASSWORD='bench backup password'
for exe in sealmail sqlited; do
	[ -x "$BIN/$exe" ] || { echo "backup.sh: no $BIN/$exe: build first (see the top of $0)" >&2; exit 1; }
done
for c in redis-server openssl zstd tar python3; do
	command -v $c >/dev/null || { echo "backup.sh: $c is not installed" >&2; exit 1; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-backup.XXXXXX")
DATA=$TMP/d
CONF=$DATA/sealmail.conf
TARGET=$TMP/target
REDIS_PID=
SQLITED_PID=

stop() {   # PID NAME: SIGTERM, 30 s, then SIGKILL
	kill -TERM "$1" 2>/dev/null || return 0
	local i=0
	while kill -0 "$1" 2>/dev/null && [ $i -lt 300 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if kill -0 "$1" 2>/dev/null; then
		echo "backup.sh: $2 did not stop within 30 s of SIGTERM: killed" >&2
		kill -KILL "$1" 2>/dev/null || true
	fi
	wait "$1" 2>/dev/null || true
}
cleanup() {
	trap - EXIT INT TERM
	[ -z "$SQLITED_PID" ] || stop "$SQLITED_PID" sqlited
	[ -z "$REDIS_PID" ] || stop "$REDIS_PID" redis-server
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for_socket() {
	local i=0
	while [ ! -S "$1" ]; do
		i=$((i + 1))
		[ $i -lt 600 ] || { echo "backup.sh: $2 did not start" >&2; tail -n 20 "$TMP"/*.log >&2; exit 1; }
		sleep 0.05
	done
}
now() { date +%s.%N; }
secs() { python3 -c "import sys; print('%.2f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }
mib() { du -sb "$1" | awk '{ printf "%.1f", $1 / 1048576 }'; }

"$BIN/sealmail" init --config "$CONF" --data-dir "$DATA" >/dev/null
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
set_key sqlited_port "$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
set_key redis_url "unix://$TMP/redis.sock"
# The password hash's cost changes nothing that is backed up (the keyring's
# size is the same); the default (64 MiB, 3 passes) would only make adding
# and unlocking 200 aliases slower.
set_key argon2_opslimit 1
set_key argon2_memlimit_mib 8

redis-server --port 0 --unixsocket "$TMP/redis.sock" --unixsocketperm 700 \
	--save "" --appendonly no --dir "$TMP" > "$TMP/redis.log" 2>&1 &
REDIS_PID=$!
wait_for_socket "$TMP/redis.sock" redis-server

start_sqlited() {
	"$BIN/sqlited" --config "$CONF" >> "$TMP/sqlited.log" 2>&1 &
	SQLITED_PID=$!
	wait_for_socket "$DATA/sqlited.sock" sqlited
}
stop_sqlited() {
	stop "$SQLITED_PID" sqlited
	SQLITED_PID=
}

start_sqlited
echo "sealmail $("$BIN/sealmail" version 2>/dev/null | head -n 1); $(nproc) CPUs; $(date -u +%Y-%m-%dT%H:%MZ); $ALIASES aliases, $MB MiB of mail"
T0=$(now)
"$BIN/sealmail" domain add bench.test --config "$CONF" >/dev/null
for i in $(seq 1 "$ALIASES"); do
	printf '%s\n' "$PASSWORD" | "$BIN/sealmail" alias add "u$i@bench.test" \
		--password-stdin --config "$CONF" >/dev/null
done
T1=$(now)
echo "added $ALIASES aliases in $(secs "$T0" "$T1") s"

# gen.py ALIAS_FROM ALIAS_TO MIB [PROCS] [SEED]: APPEND about MIB MiB of mail
# to INBOX of u<ALIAS_FROM>..u<ALIAS_TO>@bench.test, PROCS processes.
cat > "$TMP/gen.py" <<'EOF'
import base64, multiprocessing, os, random, sys
sys.path.insert(0, sys.argv[1])
import rpcclient
import sqlited_ops as ops

data, pw = sys.argv[2], sys.argv[3].encode()
lo, hi, mib = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
procs, seed = int(sys.argv[7]), int(sys.argv[8])
WORDS = ("the of and to in is was for on that with as by at from it his an were are "
         "which this be has had or not first one their its new after who they have two "
         "her she been other when there all during into school time may years more most "
         "only over city some world would where later up such used many can state about "
         "national out known university united then made").split()

def message(rnd, i, alias, size):
    head = (f"Return-Path: <s{i % 97}@remote{i % 7}.example>\r\n"
            f"From: Sender {i % 97} <s{i % 97}@remote{i % 7}.example>\r\n"
            f"To: <{alias}>\r\nSubject: bench {i} {' '.join(rnd.choices(WORDS, k=5))}\r\n"
            f"Date: Wed, 25 Nov 2026 12:{i % 60:02d}:00 +0000\r\n"
            f"Message-ID: <b{seed}.{i}.{alias}>\r\nMIME-Version: 1.0\r\n")
    text_len = min(size, rnd.randint(2000, 12000))
    text = []
    n = 0
    while n < text_len:
        line = " ".join(rnd.choices(WORDS, k=12))
        text.append(line)
        n += len(line) + 2
    text = "\r\n".join(text) + "\r\n"
    if size <= 12000:
        return (head + "Content-Type: text/plain\r\n\r\n" + text).encode()
    # An attachment of random bytes, base64: it hardly compresses (real mail).
    att = base64.encodebytes(os.urandom(max(0, size - len(text)) * 3 // 4)).replace(b"\n", b"\r\n")
    return ((head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
             "Content-Type: text/plain\r\n\r\n" + text +
             "--b\r\nContent-Type: application/octet-stream\r\n"
             "Content-Transfer-Encoding: base64\r\n\r\n").encode() + att + b"\r\n--b--\r\n")

def size(rnd):   # 4 KB to ~1 MB, most of them 10-100 KB; mean about 90 KB
    r = rnd.random()
    if r < 0.35:
        return rnd.randint(4000, 15000)
    if r < 0.80:
        return rnd.randint(15000, 100000)
    if r < 0.97:
        return rnd.randint(100000, 400000)
    return rnd.randint(400000, 1000000)

def work(k):
    rnd = random.Random(seed * 1000 + k)
    secret = rpcclient.read_secret(os.path.join(data, "secrets", "rpc_secret"))
    mine = [a for a in range(lo, hi + 1) if a % procs == k]
    per_alias = mib * 1048576 / (hi - lo + 1)
    total = count = 0
    with rpcclient.connect_unix(os.path.join(data, "sqlited.sock"), secret, timeout=120) as c:
        for a in mine:
            alias = f"u{a}@bench.test"
            s = ops.unlock(c, alias, pw)
            want = per_alias * rnd.uniform(0.5, 1.5)   # some mailboxes bigger
            put = 0
            while put < want:
                m = message(rnd, count, alias, size(rnd))
                ops.append(c, s, "INBOX", m)
                put += len(m)
                count += 1
            total += put
            c.call(ops.OP_LOCK, [(ops.T_SESSION, s)])
    return count, total

if __name__ == "__main__":
    with multiprocessing.Pool(procs) as p:
        r = p.map(work, range(procs))
    print(sum(x[0] for x in r), sum(x[1] for x in r))
EOF
gen() {
	python3 "$TMP/gen.py" "$ROOT/tests/integration" "$DATA" "$PASSWORD" "$@"
}
T0=$(now)
read -r NMSG RAW < <(gen 1 "$ALIASES" "$MB" 4 1)
T1=$(now)
stop_sqlited
GEN_S=$(secs "$T0" "$T1")
echo "generated $NMSG messages, $(python3 -c "print('%.1f' % ($RAW / 1048576))" ) MiB of mail, in $GEN_S s ($(python3 -c "print('%.1f' % ($RAW / 1048576 / $GEN_S))") MiB/s)"
rm -rf "$DATA/tmp"/* 2>/dev/null || true
DIR_MB=$(mib "$DATA")
echo "data directory: $DIR_MB MiB ($(find "$DATA" -type f | wc -l) files; mailboxes $(mib "$DATA/mailboxes" 2>/dev/null || echo ?) MiB)"

# ---- 1. Sealmail, first backup ----
backup() {   # prints "seconds files objects_uploaded bytes_uploaded"
	local t0 t1 out
	t0=$(now)
	out=$("$BIN/sealmail" backup --target "$TARGET" --config "$CONF" | tail -n 1)
	t1=$(now)
	echo "  $out" >&2
	echo "$(secs "$t0" "$t1") $(echo "$out" | sed -E 's/.*: ([0-9]+) files, ([0-9]+) objects uploaded \(([0-9]+) bytes\).*/\1 \2 \3/')"
}
sync
read -r SM1_S SM1_FILES SM1_OBJ SM1_BYTES < <(backup)
echo "sealmail backup (first): $SM1_S s"

# ---- 2. the baselines, level 0 ----
openssl rand -hex 32 > "$TMP/pass"
baseline() {   # NAME SNAR OUT [zstd]: tar (incremental by SNAR) | [zstd -1 |] openssl > OUT
	local t0 t1
	t0=$(now)
	if [ "${4:-}" = zstd ]; then
		tar -C "$DATA" --listed-incremental="$2" -cf - . | zstd -1 -q -T0 |
			openssl enc -aes-256-ctr -pbkdf2 -pass "file:$TMP/pass" -out "$3"
	else
		tar -C "$DATA" --listed-incremental="$2" -cf - . |
			openssl enc -aes-256-ctr -pbkdf2 -pass "file:$TMP/pass" -out "$3"
	fi
	sync "$3"
	t1=$(now)
	echo "$(secs "$t0" "$t1") $(stat -c %s "$3")"
}
read -r TO1_S TO1_BYTES < <(baseline tar "$TMP/snar-o" "$TMP/full-o.tar.enc")
read -r TZ1_S TZ1_BYTES < <(baseline tar "$TMP/snar-z" "$TMP/full-z.tar.zst.enc" zstd)
echo "tar|openssl (level 0): $TO1_S s; tar|zstd|openssl: $TZ1_S s"

# ---- 3. change ~1% of the aliases ----
NCHG=$(( (ALIASES + 99) / 100 ))
start_sqlited
read -r _ _ < <(gen 1 "$NCHG" 0.000001 1 2)   # one small message each
stop_sqlited
rm -rf "$DATA/tmp"/* 2>/dev/null || true

# ---- 4. incremental runs ----
sync
read -r SM2_S SM2_FILES SM2_OBJ SM2_BYTES < <(backup)
read -r TO2_S TO2_BYTES < <(baseline tar "$TMP/snar-o" "$TMP/inc-o.tar.enc")
read -r TZ2_S TZ2_BYTES < <(baseline tar "$TMP/snar-z" "$TMP/inc-z.tar.zst.enc" zstd)

# ---- 5. restores into fresh directories ----
FRESH=$TMP/fresh
mkdir -p "$FRESH/secrets"
chmod 700 "$FRESH" "$FRESH/secrets"
cp -p "$DATA/secrets/rpc_secret" "$DATA/secrets/backup_key" "$FRESH/secrets/"
cp -rp "$DATA/tls" "$FRESH/tls" 2>/dev/null || true
sed "s|^data_dir *=.*|data_dir = $FRESH|" "$CONF" > "$TMP/fresh.conf"
T0=$(now)
"$BIN/sealmail" restore --target "$TARGET" --config "$TMP/fresh.conf" | tail -n 1 | sed 's/^/  /' >&2
T1=$(now)
SMR_S=$(secs "$T0" "$T1")
RESTORED_MB=$(mib "$FRESH")
rm -rf "$FRESH"

mkdir "$TMP/untar"
T0=$(now)
openssl enc -d -aes-256-ctr -pbkdf2 -pass "file:$TMP/pass" -in "$TMP/full-o.tar.enc" |
	tar -C "$TMP/untar" --listed-incremental=/dev/null -xf -
find "$TMP/untar" -type f -print0 | xargs -0 -r sync
T1=$(now)
TOR_S=$(secs "$T0" "$T1")
rm -rf "$TMP/untar"
mkdir "$TMP/untar"
T0=$(now)
openssl enc -d -aes-256-ctr -pbkdf2 -pass "file:$TMP/pass" -in "$TMP/full-z.tar.zst.enc" |
	zstd -d -q | tar -C "$TMP/untar" --listed-incremental=/dev/null -xf -
find "$TMP/untar" -type f -print0 | xargs -0 -r sync
T1=$(now)
TZR_S=$(secs "$T0" "$T1")
rm -rf "$TMP/untar"

# ---- the table ----
python3 - <<EOF
d = $DIR_MB
M = 1048576
rows = [
  ("first backup, MiB/s of data dir", d / $SM1_S, d / $TO1_S, d / $TZ1_S),
  ("first backup, s", $SM1_S, $TO1_S, $TZ1_S),
  ("first backup, MiB stored", $SM1_BYTES / M, $TO1_BYTES / M, $TZ1_BYTES / M),
  ("incremental ($NCHG aliases changed), s", $SM2_S, $TO2_S, $TZ2_S),
  ("incremental, MiB uploaded", $SM2_BYTES / M, $TO2_BYTES / M, $TZ2_BYTES / M),
  ("restore (full), MiB/s of data dir", d / $SMR_S, d / $TOR_S, d / $TZR_S),
  ("restore (full), s", $SMR_S, $TOR_S, $TZR_S),
]
print()
print(f"data dir {d:.1f} MiB, $ALIASES aliases, $NMSG messages; restored by Sealmail: $RESTORED_MB MiB")
print(f"Sealmail incremental: $SM2_OBJ of $SM2_FILES files uploaded")
print()
print("| | Sealmail | tar \\\\| openssl | ratio | tar \\\\| zstd -1 \\\\| openssl | ratio |")
print("|---|---:|---:|---:|---:|---:|")
for name, s, o, z in rows:
    print(f"| {name} | {s:.1f} | {o:.1f} | {s / o:.2f} | {z:.1f} | {s / z:.2f} |")
EOF
