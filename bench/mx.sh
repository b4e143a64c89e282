#!/usr/bin/env bash
# MX side by side: Sealmail (redis + sqlited + sealmail-mx, tests/integration/
# mx_server.py) and Postfix delivering over LMTP into Dovecot, both on loopback
# high ports, under the same load from Postfix's smtp-source:
#   N messages of SIZE bytes from S parallel sessions to one recipient.
# Figures:
#   - accepted messages/s: N / the wall time of smtp-source (every 250 means
#     the message is durable: sqlited's fsynced spool, Postfix's fsynced queue);
#   - end-to-end: from the first connection until the N-th message is in the
#     mailbox store (Sealmail: visible in INBOX, with the mailbox closed during
#     the load so the spool is drained at the next login, and with it open;
#     Postfix+Dovecot: N files in the Maildir).
# Sealmail verifies SPF, DKIM and DMARC for every message (DNS answered by a
# dnsmasq in a network namespace); this Postfix does no such checks.
# Printed as a table with the ratio Sealmail / Postfix. Not a test.
#
#   bench/mx.sh [N=10000] [S=10] [SIZE=10240]
#
# Needs root (Postfix and Dovecot run as their users from a temporary
# configuration: `postfix -c DIR`, `dovecot -c FILE`; no system service is
# touched), the Debian packages postfix, dovecot-lmtpd, redis-server, and
# build/bin (a RelWithDebInfo build; SEALMAIL_BIN_DIR to choose another).
set -euo pipefail

N=${1:-10000}
S=${2:-10}
SIZE=${3:-10240}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export SEALMAIL_BIN_DIR=${SEALMAIL_BIN_DIR:-$ROOT/build/bin}
export SEALMAIL_SOURCE_DIR=$ROOT
SMTP_SOURCE=/usr/sbin/smtp-source

[ "$(id -u)" -eq 0 ] || { echo "mx.sh: run as root (Postfix, Dovecot)" >&2; exit 1; }
for exe in "$SEALMAIL_BIN_DIR/sealmail-mx" "$SMTP_SOURCE" /usr/sbin/postfix /usr/sbin/dovecot; do
	[ -x "$exe" ] || { echo "mx.sh: $exe is missing" >&2; exit 1; }
done
[ -x /usr/lib/dovecot/lmtp ] || { echo "mx.sh: dovecot-lmtpd is not installed" >&2; exit 1; }

TMP=$(mktemp -d /tmp/bench-mx.XXXXXX)
chmod 755 "$TMP"
cleanup() {
	postfix -c "$TMP/pf" stop >/dev/null 2>&1 || true
	dovecot -c "$TMP/dc/dovecot.conf" stop >/dev/null 2>&1 || true
	sleep 1
	rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
now() { date +%s.%N; }

# ---- Sealmail ----
python3 - "$N" "$S" "$SIZE" "$TMP/sealmail.txt" <<'EOF'
import os, subprocess, sys, time
sys.path.insert(0, os.path.join(os.environ.get("SEALMAIL_SOURCE_DIR", os.getcwd()),
                                "tests", "integration"))
from mx_server import MxServer
import rpcclient
import sqlited_ops

n, s, size, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
PW = "bench mx password"


def count(srv, session, c):
    try:
        return sqlited_ops.status(c, session, b"INBOX").get(sqlited_ops.T_MESSAGES, 0)
    except rpcclient.RpcError as e:
        if e.code == 13:     # EBUSY: the spool is being drained into INBOX
            return 0
        raise


def run(open_mailbox):
    cfg = {"mx_rate_conns_per_ip_minute": 0, "mx_rate_msgs_per_domain_day": 0,
           "mx_rate_rcpts_per_sender_hour": 0, "mx_max_conns_per_ip": 1000}
    with MxServer(config=cfg) as srv:
        srv.add_alias("bench@bench.test", PW)
        # UNLOCK drains the whole spool into INBOX before it answers: minutes for 10,000.
        c = rpcclient.connect_unix(srv.socket, srv.secret, "bench@localhost", timeout=3600)
        session = None
        if open_mailbox:
            session = sqlited_ops.unlock(c, b"bench@bench.test", PW.encode())
        t0 = time.monotonic()
        r = subprocess.run(["/usr/sbin/smtp-source", "-s", s, "-m", str(n), "-l", size,
                            "-f", "sender@example.net", "-t", "bench@bench.test",
                            "127.0.0.1:%d" % srv.mx_port], capture_output=True, text=True)
        t_accept = time.monotonic() - t0
        if r.returncode != 0:
            sys.exit("smtp-source against Sealmail failed: " + r.stderr[-300:])
        if session is None:
            session = sqlited_ops.unlock(c, b"bench@bench.test", PW.encode())
        while count(srv, session, c) < n:
            time.sleep(0.05)
        t_e2e = time.monotonic() - t0
        c.close()
        return t_accept, t_e2e


# Sender authentication makes SPF and DMARC queries for every message. Serve
# them from dnsmasq in a network namespace (tests/integration/dns_zone.py), as
# a local caching resolver would, rather than from whatever resolver this
# machine has: the figure is Sealmail's, not the resolver's latency.
import dns_zone
zone = dns_zone.Zone()
zone.txt("example.net", "v=spf1 ip4:127.0.0.1 -all")
zone.txt("_dmarc.example.net", "v=DMARC1; p=none")
ns = dns_zone.DnsNamespace(zone)
ns.start()
ns.enter()
try:
    a1, e1 = run(False)
    a2, e2 = run(True)
finally:
    ns.leave()
    ns.stop()
with open(out, "w") as f:
    f.write(f"{a1} {e1} {a2} {e2}\n")
EOF
read -r SM_ACC SM_E2E SM_ACC_OPEN SM_E2E_OPEN < "$TMP/sealmail.txt"

# ---- Postfix -> LMTP -> Dovecot ----
PF_PORT=$(free_port)
LMTP_PORT=$(free_port)
mkdir -p "$TMP/pf/queue" "$TMP/pf/data" "$TMP/dc/run" "$TMP/dc/state" "$TMP/mail"
chown postfix "$TMP/pf/data"
chown nobody:nogroup "$TMP/mail"
cat > "$TMP/pf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $TMP/pf/queue
data_directory = $TMP/pf/data
mail_owner = postfix
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = pf.bench.test
mydestination =
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = bench.test
virtual_transport = lmtp:inet:127.0.0.1:$LMTP_PORT
smtpd_recipient_restrictions = reject_unauth_destination
maillog_file = $TMP/pf/maillog
maillog_file_prefixes = $TMP
biff = no
default_process_limit = 100
EOF
# Debian's master.cf with smtpd on our port and no chroot (the queue is ours).
grep -v '^#' /etc/postfix/master.cf |
	awk -v port="127.0.0.1:$PF_PORT" 'BEGIN { OFS = "  " }
		/^smtp +inet/ { $1 = port }
		/^[a-z0-9]/ && NF >= 8 { $5 = "n" }
		{ print }' > "$TMP/pf/master.cf"
cat > "$TMP/dc/dovecot.conf" <<EOF
base_dir = $TMP/dc/run
state_dir = $TMP/dc/state
log_path = $TMP/dc/dovecot.log
protocols = lmtp
ssl = no
listen = 127.0.0.1
mail_location = maildir:$TMP/mail/%n
first_valid_uid = 1
passdb {
  driver = static
  args = nopassword=y
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$TMP/mail/%n
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $LMTP_PORT
  }
}
service anvil {
  chroot =
}
default_internal_user = dovecot
default_login_user = dovenull
EOF
dovecot -c "$TMP/dc/dovecot.conf"
postfix -c "$TMP/pf" start >/dev/null 2>&1
for _ in $(seq 100); do
	(echo > "/dev/tcp/127.0.0.1/$PF_PORT") 2>/dev/null && break
	sleep 0.1
done
delivered() {
	find "$TMP/mail/bench/new" "$TMP/mail/bench/cur" -type f 2>/dev/null | wc -l
}
T0=$(now)
"$SMTP_SOURCE" -s "$S" -m "$N" -l "$SIZE" -f sender@example.net -t bench@bench.test \
	"127.0.0.1:$PF_PORT"
T1=$(now)
while [ "$(delivered)" -lt "$N" ]; do
	sleep 0.1
done
T2=$(now)
PF_ACC=$(echo "$T1 - $T0" | bc -l)
PF_E2E=$(echo "$T2 - $T0" | bc -l)

# ---- the table ----
python3 - "$N" "$S" "$SIZE" "$SM_ACC" "$SM_E2E" "$SM_ACC_OPEN" "$SM_E2E_OPEN" "$PF_ACC" "$PF_E2E" <<'EOF'
import sys
n, s, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sa, se, sao, seo, pa, pe = (float(x) for x in sys.argv[4:10])
print(f"\n{n} messages of {size} bytes, {s} parallel sessions (smtp-source), loopback\n")
print(f"| | Sealmail (mailbox closed) | Sealmail (mailbox open) | Postfix -> LMTP -> Dovecot | ratio (closed) |")
print(f"|---|---|---|---|---|")
print(f"| accepted messages/s | {n / sa:.0f} | {n / sao:.0f} | {n / pa:.0f} | {(n / sa) / (n / pa):.2f} |")
print(f"| time to accept all | {sa:.1f} s | {sao:.1f} s | {pa:.1f} s | |")
print(f"| end-to-end (all in the mailbox) | {se:.1f} s | {seo:.1f} s | {pe:.1f} s | {pe / se:.2f} (speed) |")
EOF
