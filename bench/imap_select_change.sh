#!/bin/bash
# IMAP SELECT of a big INBOX (N messages, default 100,000): repeated, and the
# first after one APPEND / one STORE made on a second connection; R rounds,
# median (min-max) ms. A real sqlited + sealmail-imapd + redis on a fresh data
# directory; the alias is filled by `bench-view --fill` (engine direct, about a
# minute) instead of 20 minutes of IMAP APPEND. With BEFORE=path/to/another/sqlited
# the two sqlited builds are alternated on the same data (imapd kept):
#
#   BUILD_DIR=build-rel [BEFORE=/tmp/old/bin/sqlited] [N=100000] [R=9] \
#       bench/imap_select_change.sh
set -e
N=${N:-100000}; R=${R:-9}
BIN=$(realpath "${BUILD_DIR:-build}")/bin
BEFORE=${BEFORE:-}
TMP=$(mktemp -d /tmp/imap-select-change-XXXXXX); SM=$TMP/sm
trap 'kill $SQ $IMAPD $REDIS 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"' EXIT
cat > $TMP/imapsel.py <<'PYSEL'
import imaplib, ssl, time, sys, statistics
port, user, pw, rounds, mid = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def conn():
    c = imaplib.IMAP4('127.0.0.1', port); c.starttls(ctx); c.login(user, pw); return c
a, b = conn(), conn()
def sel():
    t = time.perf_counter(); typ, d = a.select('INBOX'); dt = (time.perf_counter() - t) * 1e3
    assert typ == 'OK', d
    return dt, int(d[0])
first, n = sel()
rep, app, sto = [], [], []
for r in range(rounds):
    rep.append(sel()[0])
    assert b.append('INBOX', None, None, b'Subject: x\r\n\r\nx\r\n')[0] == 'OK'
    dt, n2 = sel(); app.append(dt); assert n2 == n + 1; n = n2
    b.select('INBOX')
    assert b.uid('STORE', str(mid + r // 2), '+FLAGS' if r % 2 == 0 else '-FLAGS', '(\\Flagged)')[0] == 'OK'
    b.close()
    sto.append(sel()[0])
med = lambda v: "%.2f (%.2f-%.2f)" % (statistics.median(v), min(v), max(v))
print("first %.1f ms | repeated %s | after APPEND %s | after STORE %s" % (first, med(rep), med(app), med(sto)))
a.logout(); b.logout()
PYSEL
PASSWORD=bench-view-pw-1234
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); TLS=$(free_port)
$BIN/sealmail init --config $SM/sealmail.conf --data-dir $SM >/dev/null
python3 - "$SM/sealmail.conf" "$PORT" "$TLS" "$TMP/redis.sock" <<'PY'
import sys
path, port, tls_port, redis = sys.argv[1:]
want = {"imap_port": port, "imaps_port": tls_port, "listen_address": "127.0.0.1", "redis_url": "unix:" + redis}
out, seen = [], set()
for line in open(path).read().splitlines():
    key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
    if key in want: line = f"{key} = {want[key]}"
    elif key is not None and key.endswith("_port"): line = key + " = 0"
    if key: seen.add(key)
    out.append(line)
out += [f"{k} = {v}" for k, v in want.items() if k not in seen]
open(path, "w").write("\n".join(out) + "\n")
PY
redis-server --port 0 --unixsocket $TMP/redis.sock --unixsocketperm 700 --save "" --appendonly no --dir $TMP >$TMP/redis.log 2>&1 &
REDIS=$!
for _ in $(seq 100); do [ -S $TMP/redis.sock ] && break; sleep 0.1; done
start_sqlited() { rm -f $SM/sqlited.sock; "$1" --config $SM/sealmail.conf >>$TMP/sqlited.log 2>&1 & SQ=$!; for _ in $(seq 200); do [ -S $SM/sqlited.sock ] && break; sleep 0.1; done; }
start_sqlited $BIN/sqlited
$BIN/sealmail-imapd --config $SM/sealmail.conf >$TMP/imapd.log 2>&1 & IMAPD=$!
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT))" 2>/dev/null && break; sleep 0.1; done
$BIN/sealmail domain add example.org --config $SM/sealmail.conf >/dev/null
printf '%s\n' "$PASSWORD" | $BIN/sealmail alias add big@example.org --password-stdin --config $SM/sealmail.conf >/dev/null
BENCH_VIEW_PASSWORD=$PASSWORD $BIN/bench-view --fill $SM big@example.org $N
for i in 1 2; do
  for v in ${BEFORE:+before} after; do
    kill $SQ; wait $SQ 2>/dev/null || true
    if [ $v = before ]; then start_sqlited "$BEFORE"; else start_sqlited $BIN/sqlited; fi
    sleep 1
    echo "$v $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg): $(python3 $TMP/imapsel.py $PORT big@example.org $PASSWORD $R $((N / 2 + 2)))"
  done
done
