#!/bin/bash
# IMAP SELECT of big mailboxes, two builds alternated (both daemons swapped):
# CPU per SELECT of sqlited and of sealmail-imapd (from /proc, over REP
# repeated SELECTs on one connection) and the wall time; then the first
# SELECT after one APPEND / one STORE made by a second connection (R rounds,
# median ms). Aliases, filled by `bench-view --fill` (engine direct, ~1-2 min
# per 100,000): big (N), mid (N/10), scat (N, 10% unseen and 5% \Answered at
# random: ~N/3 flag runs). Each DIR holds sqlited and sealmail-imapd.
# BUILD_DIR's sealmail and bench-view make the data: take the older build,
# its store schema must be one every DIR's sqlited reads.
#
#   BUILD_DIR=build-rel [N=100000] [ROUNDS=3] [REP=1000] [R=30] \
#       bench/imap_select_ab.sh DIR_A DIR_B
set -e
N=${N:-100000}; ROUNDS=${ROUNDS:-3}; REP=${REP:-1000}; R=${R:-30}
BIN=$(realpath "${BUILD_DIR:-build}")/bin
[ $# -ge 1 ] || { echo "usage: $0 DIR..." >&2; exit 2; }
TMP=$(mktemp -d /tmp/imap-select-ab-XXXXXX); SM=$TMP/sm; PASSWORD=bench-view-pw-1234
trap 'kill $SQ $IMAPD $REDIS 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"' EXIT
cat > $TMP/sel.py <<'PYSEL'
import socket, ssl, sys, time, statistics, random
port, user, pw, rep, rounds = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
pids = [int(p) for p in sys.argv[6].split(',')]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def cpu(p):
    f = open('/proc/%d/stat' % p).read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) * 1e3 / 100.0      # ms (USER_HZ 100)
class C:
    def __init__(s):
        raw = socket.create_connection(('127.0.0.1', port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = raw.makefile('rb'); f.readline(); raw.sendall(b'a STARTTLS\r\n')
        while not f.readline().startswith(b'a '): pass
        s.s = ctx.wrap_socket(raw); s.f = s.s.makefile('rb'); s.n = 0
        s.cmd('LOGIN %s %s' % (user, pw))
    def cmd(s, c, lit=None):
        s.n += 1; tag = b'b%d' % s.n
        s.s.sendall(tag + b' ' + c.encode() + (b' {%d+}\r\n' % len(lit) + lit if lit else b'') + b'\r\n')
        out = []
        while True:
            l = s.f.readline()
            if not l: raise SystemExit('connection closed')
            if l.startswith(tag + b' '):
                if not l.startswith(tag + b' OK'): raise SystemExit(l)
                return out
            out.append(l)
a, b = C(), C()
def sel():
    t = time.perf_counter(); a.cmd('SELECT INBOX'); return (time.perf_counter() - t) * 1e3
for _ in range(3): sel()
c0 = [cpu(p) for p in pids]; t0 = time.perf_counter()
for _ in range(rep): sel()
wall = (time.perf_counter() - t0) * 1e3 / rep
c = [(cpu(p) - c0[i]) / rep for i, p in enumerate(pids)]
app, sto = [], []
n = len(b.cmd('SELECT INBOX')) and None
for r in range(rounds):
    b.cmd('APPEND INBOX', b'Subject: x\r\n\r\nx\r\n'); app.append(sel())
    b.cmd('SELECT INBOX')
    b.cmd('UID STORE %d %sFLAGS.SILENT (\\Flagged)' % (random.randint(1, 1000) + 1000, '+' if r % 2 == 0 else '-'))
    b.cmd('UNSELECT'); sto.append(sel())
print("repeated %.3f ms wall, CPU sqlited %.3f imapd %.3f ms | after APPEND %.2f ms | after STORE %.2f ms" % (
    wall, c[0], c[1], statistics.median(app), statistics.median(sto)))
PYSEL
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
start() {
  rm -f $SM/sqlited.sock; "$1/sqlited" --config $SM/sealmail.conf >>$TMP/sqlited.log 2>&1 & SQ=$!
  for _ in $(seq 200); do [ -S $SM/sqlited.sock ] && break; sleep 0.1; done
  "$1/sealmail-imapd" --config $SM/sealmail.conf >>$TMP/imapd.log 2>&1 & IMAPD=$!
  for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT))" 2>/dev/null && break; sleep 0.1; done
}
stop() { kill $SQ $IMAPD; wait $SQ $IMAPD 2>/dev/null || true; }
start $BIN
$BIN/sealmail domain add example.org --config $SM/sealmail.conf >/dev/null
for a in big:$N mid:$((N / 10)) scat:$N; do
  printf '%s\n' "$PASSWORD" | $BIN/sealmail alias add ${a%%:*}@example.org --password-stdin --config $SM/sealmail.conf >/dev/null
  BENCH_VIEW_PASSWORD=$PASSWORD $BIN/bench-view --fill $SM ${a%%:*}@example.org ${a#*:}
done
python3 - $PORT $PASSWORD $N <<'PY'
import imaplib, ssl, sys, random
port, pw, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
c = imaplib.IMAP4('127.0.0.1', port); c.starttls(ctx); c.login('scat@example.org', pw); c.select('INBOX')
rnd = random.Random(1)
for k, op, fl in ((n // 10, '-FLAGS.SILENT', '(\\Seen)'), (n // 20, '+FLAGS.SILENT', '(\\Answered)')):
    uids = sorted(rnd.sample(range(1, n + 1), k))
    for i in range(0, len(uids), 2000):
        assert c.uid('STORE', ','.join(map(str, uids[i:i + 2000])), op, fl)[0] == 'OK'
c.logout()
PY
stop
for i in $(seq $ROUNDS); do
  for v in "$@"; do
    start "$v"; sleep 1
    for u in big mid scat; do
      echo "$(basename $v) $u $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg): $(python3 $TMP/sel.py $PORT $u@example.org $PASSWORD $REP $R $SQ,$IMAPD)"
    done
    stop
  done
done
