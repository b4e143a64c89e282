#!/usr/bin/env bash
# POP3 side by side: Sealmail (sealmail-pop3d under `sealmail up`) and Dovecot
# (dovecot-pop3d, installed with apt-get if missing), on loopback high ports,
# the same user and the same N messages, the same client load:
#   - RETR throughput: one session RETRs all N messages (MB/s of message bytes);
#   - logins per second: connect, USER, PASS, QUIT, one after another for T seconds.
# Prints each figure for both and the ratio Sealmail / Dovecot.
#
#   bench/pop3.sh [N=500] [SIZE_KB=100] [T=10]
#
# Needs build/bin/sealmail and build/bin/sealmail-pop3d (a RelWithDebInfo
# build: cmake -S . -B build && cmake --build build -j), redis-server, python3.
# Installing Dovecot needs root. Everything runs under a temporary directory
# that is removed at the end, and every process started is stopped.
set -euo pipefail

N=${1:-500}
SIZE_KB=${2:-100}
T=${3:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SEALMAIL_BIN_DIR:-$ROOT/build/bin}
USER_ADDR=bench@example.org
PASSWORD='bench pop3 password'

for exe in "$BIN/sealmail" "$BIN/sealmail-pop3d"; do
	[ -x "$exe" ] || { echo "pop3.sh: $exe is not built" >&2; exit 1; }
done
# shellcheck source=bench/lib_dovecot.sh
. "$ROOT/bench/lib_dovecot.sh"
dovecot_ensure_installed dovecot-pop3d

TMP=$(mktemp -d /tmp/bench-pop3.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	[ -f "$TMP/dovecot/run/master.pid" ] && kill -TERM "$(cat "$TMP/dovecot/run/master.pid")" 2>/dev/null || true
	sleep 0.5
	rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
SM_PORT=$(free_port)
DC_PORT=$(free_port)

# ---- the messages: the same N files for both ----
mkdir -p "$TMP/msgs"
python3 - "$TMP/msgs" "$N" "$SIZE_KB" <<'EOF'
import os, random, sys
out, n, kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(1)
words = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"zeta", b"eta", b"theta", b"."]
for i in range(n):
    head = (b"From: sender%d@remote.example\r\nTo: bench@example.org\r\n"
            b"Subject: bench message %d\r\nMessage-ID: <b%d@remote.example>\r\n"
            b"Date: Tue, 25 Nov 2025 12:00:00 +0000\r\n\r\n" % (i % 50, i, i))
    body = bytearray()
    while len(body) < kb * 1024:
        line = b" ".join(rnd.choice(words) for _ in range(12))
        body += line + b"\r\n"
    with open(os.path.join(out, "%06d.eml" % i), "wb") as f:
        f.write(head + bytes(body))
EOF

# ---- Sealmail ----
SM="$TMP/sealmail"
"$BIN/sealmail" init --config "$SM/sealmail.conf" --data-dir "$SM" >/dev/null
python3 - "$SM/sealmail.conf" "$SM_PORT" "$(free_port)" <<'EOF'
import sys
path, port, sqlited_port = sys.argv[1], sys.argv[2], sys.argv[3]
out = []
for line in open(path).read().splitlines():
    key = line.split("=", 1)[0].strip() if "=" in line and not line.startswith("#") else None
    if key == "pop3_port":
        line = "pop3_port = " + port
    elif key == "sqlited_port":
        # a port of 0 turns a service off: sqlited needs one
        line = "sqlited_port = " + sqlited_port
    elif key is not None and key.endswith("_port"):
        line = key + " = 0"
    elif key == "listen_address":
        line = "listen_address = 127.0.0.1"
    out.append(line)
open(path, "w").write("\n".join(out) + "\n")
EOF
"$BIN/sealmail" up --config "$SM/sealmail.conf" >"$TMP/up.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do
	[ -S "$SM/sqlited.sock" ] && python3 -c "import socket; socket.create_connection(('127.0.0.1', $SM_PORT), 1)" 2>/dev/null && break
	sleep 0.1
done
"$BIN/sealmail" domain add example.org --config "$SM/sealmail.conf" >/dev/null
printf '%s\n' "$PASSWORD" | "$BIN/sealmail" alias add "$USER_ADDR" --password-stdin \
	--config "$SM/sealmail.conf" >/dev/null
python3 - "$ROOT/tests/integration" "$SM" "$USER_ADDR" "$TMP/msgs" <<'EOF'
import os, sys
sys.path.insert(0, sys.argv[1])
import rpcclient
data, addr, msgs = sys.argv[2], sys.argv[3].encode(), sys.argv[4]
secret = rpcclient.read_secret(os.path.join(data, "secrets", "rpc_secret"))
with rpcclient.connect_unix(os.path.join(data, "sqlited.sock"), secret, "mx@localhost") as c:
    for name in sorted(os.listdir(msgs)):
        m = open(os.path.join(msgs, name), "rb").read()
        c.call(64, [(80, addr), (35, len(m))], body=m)   # DELIVER ADDRESS SIZE
EOF

# ---- Dovecot: its own config, maildir, passwd-file, plain POP3 on loopback ----
DC="$TMP/dovecot"
# Dovecot's auth and mail processes run as other users: they need to get in.
chmod 755 "$TMP"
mkdir -p "$DC/run" "$DC/home/Maildir/new" "$DC/home/Maildir/cur" "$DC/home/Maildir/tmp"
i=0
for f in "$TMP/msgs"/*.eml; do
	cp "$f" "$DC/home/Maildir/new/$((1700000000 + i)).M$i.bench"
	i=$((i + 1))
done
dovecot_mail_owner
MAIL_USER=$DC_USER
MAIL_UID=$DC_UID
MAIL_GID=$DC_GID
if [ "$(id -u)" -eq 0 ]; then chown -R "$MAIL_UID:$MAIL_GID" "$DC/home"; fi
printf '%s:{PLAIN}%s::::::\n' "$USER_ADDR" "$PASSWORD" > "$DC/passwd"
chmod 644 "$DC/passwd"
cat > "$DC/dovecot.conf" <<EOF
base_dir = $DC/run
state_dir = $DC/run
log_path = $DC/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:$DC/home/Maildir
first_valid_uid = 0
pop3_uidl_format = %08Xu%08Xv
passdb {
  driver = passwd-file
  args = scheme=PLAIN $DC/passwd
}
userdb {
  driver = static
  args = uid=$MAIL_UID gid=$MAIL_GID home=$DC/home
}
service pop3-login {
  inet_listener pop3 {
    port = $DC_PORT
  }
  inet_listener pop3s {
    port = 0
  }
}
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = 0
  }
}
service stats {
  unix_listener stats-reader {
    mode = 0666
  }
  unix_listener stats-writer {
    mode = 0666
  }
}
EOF
[ "$MAIL_UID" -ne 0 ] && [ "$(id -u)" -ne 0 ] && {
	echo "default_login_user = $MAIL_USER" >> "$DC/dovecot.conf"
	echo "default_internal_user = $MAIL_USER" >> "$DC/dovecot.conf"
}
/usr/sbin/dovecot -c "$DC/dovecot.conf"
for _ in $(seq 100); do
	python3 -c "import socket; socket.create_connection(('127.0.0.1', $DC_PORT), 1)" 2>/dev/null && break
	sleep 0.1
done

# ---- the load: the same driver against both ----
python3 - "$SM_PORT" "$DC_PORT" "$USER_ADDR" "$PASSWORD" "$N" "$T" <<'EOF'
import poplib, sys, time
sm_port, dc_port, user, pw, n, secs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])

def login(port):
    p = poplib.POP3("127.0.0.1", int(port), timeout=60)
    p.user(user)
    p.pass_(pw)
    return p

def retr_mbps(port):
    p = login(port)
    count, _ = p.stat()
    assert count == n, f"{count} messages on port {port}, want {n}"
    total, t0 = 0, time.perf_counter()
    for i in range(1, n + 1):
        _, lines, octets = p.retr(i)
        total += octets
    dt = time.perf_counter() - t0
    p.quit()
    return total / dt / 1e6

def logins_per_s(port):
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < secs:
        login(port).quit()
        done += 1
    return done / (time.perf_counter() - t0)

rows = []
for name, fn in (("RETR MB/s (%d msgs, best of 3)" % n, lambda p: max(retr_mbps(p) for _ in range(3))),
                 ("logins/s (sequential, %gs)" % secs, logins_per_s)):
    a, b = fn(sm_port), fn(dc_port)
    rows.append((name, a, b))
print("| | Sealmail | Dovecot | ratio |")
print("|---|---:|---:|---:|")
for name, a, b in rows:
    print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
EOF
