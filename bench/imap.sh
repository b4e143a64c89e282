#!/usr/bin/env bash
# IMAP side by side: Sealmail (sqlited + sealmail-imapd + redis) against
# Dovecot (Debian's dovecot-imapd) plain and with the mail-crypt plugin, and
# Dovecot with IDLE hibernation (dovecot-hib) for the memory figure, checked
# in its log to have hibernated the connections; the same users and
# passwords, the same messages (msggen.c) in each, the same load from
# bench-imap (bench/bench_imap.c), each load run against each server in
# turn. Prints a table of every figure with the ratios Sealmail/Dovecot and
# Sealmail/Dovecot+mail-crypt.
#
#   bench/imap.sh                      # BUILD_DIR=... (default build/)
#
# The mailboxes are filled by the timed APPEND loads (bench's INBOX, the
# mix users'), or, with SKIP=append, by an untimed fill. The BIG mailbox
# is always an untimed fill. A fill puts the same messages into each
# server by the fastest honest way it has, all servers at once: Sealmail
# through IMAP APPEND over FILL_CONNS connections; Dovecot by `doveadm
# import` of an mbox that bench-imap writes with the same messages (its own
# save path, as APPEND's, with mail_fsync=never for the fill only). On the
# 2 shared cores here (load 12-20) 100,000 messages took 9 min into
# Dovecot and 20 min into Sealmail (its APPEND rate is the limit).
#
# Environment (defaults in brackets): N [10000] messages in the big mailbox;
# BIG [0] also fill a second mailbox (user big) to BIG messages for the
# SELECT figure; FILL_CONNS [10] Sealmail's fill connections; T [15] seconds of the
# timed loads; NMIX [20] mixed-workload users (and connections); NMULTI
# [20] users (and connections) of the APPEND into many mailboxes, each
# client into its own user's INBOX, MULTI_EACH [500] messages each; NFIRST
# [20] users for the first-login figure; NIDLE [500] users the IDLE
# connections are spread over (20 each at 10,000); IDLE_N
# ["1000 10000"] IDLE connection counts; ONLY ["sealmail dovecot
# dovecot-crypt dovecot-hib"] the servers to measure (dovecot-hib: IDLE
# memory only; a Dovecot not named is not even started); HIB_TIMEOUT [2]
# Dovecot's imap_hibernate_timeout in seconds; IDLE_SETUP_LIMIT [50] IDLE
# connections being set up (LOGIN, SELECT) at once; SM_SETTLE [15] seconds
# Sealmail's IDLE connections idle before its memory is read (past
# sqlited's db_release_seconds), and then at least until sqlited's STATS say
# every open alias is released ($TMP/sm_at_rest; SM_SETTLE_MAX [60] s at most,
# RESULT settled_s= and settle_ok=); SKIP ["" or words of: append
# select fetch search mixed login idle] loads to leave out;
# RESULTS [/tmp/bench-imap-results.txt] raw RESULT lines are kept there;
# NO_BUILD [0] 1: use BUILD_DIR/bin as it is (a tree others are editing);
# KEEP [0] 1: the temporary directory (every server's data) is left.
#
# Builds what it needs (cmake RelWithDebInfo in BUILD_DIR), installs
# dovecot-imapd with apt-get if it is missing (root), and runs everything
# on 127.0.0.1 high ports under one temporary directory that is removed at
# the end (unless KEEP=1); every process started is stopped. Needs root for Dovecot's
# mail-user switch and for /proc/PID/smaps_rollup of Dovecot's processes;
# for the IDLE runs against Dovecot it raises fs.inotify.max_user_instances
# to 2 x the largest IDLE_N + 1024 (see lib_dovecot.sh: hibernation fails
# silently past the default 128) and restores it at the end.
#
# The memory table only, three-way:
#   ONLY="sealmail dovecot dovecot-hib" SKIP="append select fetch search mixed login" bench/imap.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
BIN=$BUILD_DIR/bin
N=${N:-10000}
BIG=${BIG:-0}
T=${T:-15}
NMIX=${NMIX:-20}
NMULTI=${NMULTI:-20}
MULTI_EACH=${MULTI_EACH:-500}
NFIRST=${NFIRST:-20}
NIDLE=${NIDLE:-500}
IDLE_N=${IDLE_N:-"1000 10000"}
HIB_TIMEOUT=${HIB_TIMEOUT:-2}
IDLE_SETUP_LIMIT=${IDLE_SETUP_LIMIT:-50}
SM_SETTLE=${SM_SETTLE:-15}
SM_SETTLE_MAX=${SM_SETTLE_MAX:-60}
SKIP=${SKIP:-}
FILL_CONNS=${FILL_CONNS:-10}
RESULTS=${RESULTS:-/tmp/bench-imap-results.txt}
PASSWORD='bench imap password'
DOMAIN=example.org
# shellcheck source=bench/lib_dovecot.sh
. "$ROOT/bench/lib_dovecot.sh"

skip() { [[ " $SKIP " == *" $1 "* ]]; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- build (NO_BUILD=1: the binaries in BUILD_DIR/bin as they are) ----
if [ "${NO_BUILD:-0}" = 1 ]; then
	for b in sealmail sqlited sealmail-imapd bench-imap; do
		[ -x "$BIN/$b" ] || { echo "imap.sh: $BIN/$b is missing" >&2; exit 1; }
	done
else
	if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
		cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	fi
	cmake --build "$BUILD_DIR" -j2 --target sealmail sqlited sealmail-imapd bench-imap >/dev/null
fi
dovecot_ensure_installed dovecot-imapd
command -v redis-server >/dev/null || { echo "imap.sh: redis-server is missing" >&2; exit 1; }
# Dovecot's processes inherit this limit (10,000 connections: 20,000 fds in
# imap-login, 2 per hibernated connection in imap-hibernate, see
# lib_dovecot.sh): the hard limit is raised where root may (not in every
# container).
if [ "$(id -u)" -eq 0 ] && [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt 65536 ]; then
	ulimit -Hn 65536 2>/dev/null || true
fi
ulimit -n "$(ulimit -Hn)"

TMP=$(mktemp -d /tmp/bench-imap.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for d in dc dcc dch; do dovecot_stop "$TMP/$d" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	dovecot_inotify_restore
	if [ "${KEEP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

read -ra SERVERS <<< "${ONLY:-sealmail dovecot dovecot-crypt dovecot-hib}"
want() { [[ " ${SERVERS[*]} " == *" $1 "* ]]; }
# the loads other than IDLE run against these (dovecot-hib: IDLE only)
LOAD_SERVERS=()
for s in "${SERVERS[@]}"; do [ "$s" = dovecot-hib ] || LOAD_SERVERS+=("$s"); done

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

USERS=(bench)
for i in $(seq -f %02g 1 "$NMIX"); do USERS+=("mix$i"); done
if ! skip append; then
	for i in $(seq -f %02g 1 "$NMULTI"); do USERS+=("multi$i"); done
fi
for i in $(seq -f %02g 1 "$NFIRST"); do USERS+=("first$i"); done
if ! skip idle; then
	for i in $(seq -f %03g 1 "$NIDLE"); do USERS+=("idle$i"); done
fi
[ "$BIG" -gt 0 ] && USERS+=(big)

# ---- Sealmail: sealmail init, redis, sqlited, sealmail-imapd ----
SM=$TMP/sm
SM_PORT=$(free_port)
SM_TLS=$(free_port)
"$BIN/sealmail" init --config "$SM/sealmail.conf" --data-dir "$SM" >/dev/null
python3 - "$SM/sealmail.conf" "$SM_PORT" "$SM_TLS" "$TMP/redis.sock" <<'EOF'
import sys
path, port, tls_port, redis = sys.argv[1:]
want = {"imap_port": port, "imaps_port": tls_port, "listen_address": "127.0.0.1",
        "redis_url": "unix:" + redis}
out, seen = [], set()
for line in open(path).read().splitlines():
    key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
    if key in want:
        line = f"{key} = {want[key]}"
    elif key is not None and key.endswith("_port"):
        line = key + " = 0"          # sqlited stays on its unix socket
    if key:
        seen.add(key)
    out.append(line)
out += [f"{k} = {v}" for k, v in want.items() if k not in seen]
open(path, "w").write("\n".join(out) + "\n")
EOF
redis-server --port 0 --unixsocket "$TMP/redis.sock" --unixsocketperm 700 --save "" \
	--appendonly no --dir "$TMP" >"$TMP/redis.log" 2>&1 &
PIDS+=($!); REDIS_PID=$!
for _ in $(seq 100); do [ -S "$TMP/redis.sock" ] && break; sleep 0.1; done
"$BIN/sqlited" --config "$SM/sealmail.conf" >"$TMP/sqlited.log" 2>&1 &
PIDS+=($!); SQLITED_PID=$!
for _ in $(seq 200); do [ -S "$SM/sqlited.sock" ] && break; sleep 0.1; done
"$BIN/sealmail-imapd" --config "$SM/sealmail.conf" >"$TMP/imapd.log" 2>&1 &
PIDS+=($!); IMAPD_PID=$!
wait_port "$SM_PORT"
"$BIN/sealmail" domain add "$DOMAIN" --config "$SM/sealmail.conf" >/dev/null
log "sealmail: adding ${#USERS[@]} aliases (Argon2id at the default cost)"
export BIN SM PASSWORD DOMAIN
printf '%s\n' "${USERS[@]}" | xargs -P 4 -I{} sh -c 'printf "%s\n" "$PASSWORD" |
	"$BIN/sealmail" alias add "{}@$DOMAIN" --password-stdin --config "$SM/sealmail.conf" >/dev/null'

SM_PIDS="$SQLITED_PID,$IMAPD_PID,$REDIS_PID"
SM_CERT=$(sed -n 's/^tls_cert *= *//p' "$SM/sealmail.conf")
SM_KEY=$(sed -n 's/^tls_key *= *//p' "$SM/sealmail.conf")
case $SM_CERT in /*) ;; *) SM_CERT=$SM/$SM_CERT ;; esac
case $SM_KEY in /*) ;; *) SM_KEY=$SM/$SM_KEY ;; esac

# ---- Dovecot, plain (dc) and with mail-crypt (dcc) ----
ADDRS=()
for u in "${USERS[@]}"; do ADDRS+=("$u@$DOMAIN"); done
dovecot_imap() {   # DIR PORT TLS_PORT
	local dir=$1
	mkdir -p "$dir"
	cp "$SM_CERT" "$dir/cert.pem"
	cp "$SM_KEY" "$dir/key.pem"
	dovecot_write_conf "$dir" imap "$2" "$3" "$dir/cert.pem" "$dir/key.pem"
	dovecot_passwd "$dir" "$PASSWORD" "${ADDRS[@]}"
	# Room for 10,000 connections: Dovecot's "high-performance" login mode
	# (a few long-lived imap-login processes) and one imap process per
	# connection (its default), as many as needed.
	sed -i '/^!include_try/d' "$dir/dovecot.conf"
	cat >> "$dir/dovecot.conf" <<EOF
default_process_limit = 12000
default_client_limit = 15000
default_vsz_limit = 1G
protocol imap {
  mail_max_userip_connections = 100000
}
service imap-login {
  service_count = 0
  process_min_avail = 4
  process_limit = 8
  client_limit = 5000
  vsz_limit = 2G
}
service imap {
  process_limit = 12000
}
service anvil {
  client_limit = 15000
}
!include_try $dir/extra.conf
EOF
}
if ! skip idle && { want dovecot || want dovecot-hib; }; then
	max_idle=0
	for n in $IDLE_N; do [ "$n" -gt "$max_idle" ] && max_idle=$n; done
	dovecot_inotify_room $((2 * max_idle + 1024))
fi
DC=$TMP/dc; DC_PORT=$(free_port); DC_TLS=$(free_port)
DCC=$TMP/dcc; DCC_PORT=$(free_port); DCC_TLS=$(free_port)
if want dovecot; then dovecot_imap "$DC" "$DC_PORT" "$DC_TLS"; fi
if want dovecot-crypt; then
dovecot_imap "$DCC" "$DCC_PORT" "$DCC_TLS"
# mail-crypt: per-user EC key pairs, the private key encrypted with the
# user's password (given to the plugin at login from the passdb), every
# message encrypted on save (folder keys, save version 2).
cat > "$DCC/extra.conf" <<EOF
mail_plugins = \$mail_plugins mail_crypt
mail_attribute_dict = file:%h/dovecot-attributes
plugin {
  mail_crypt_curve = prime256v1
  mail_crypt_save_version = 2
  mail_crypt_require_encrypted_user_key = yes
}
passdb {
  driver = passwd-file
  args = $DCC/passwd
  override_fields = userdb_mail_crypt_private_password=%w
}
EOF
# the passdb block of dovecot.conf goes: extra.conf has the one with the password field
awk '/^passdb \{/ && !done { skip = 1 } skip && /^\}/ { skip = 0; done = 1; next } !skip' \
	"$DCC/dovecot.conf" > "$DCC/dovecot.conf.new" && mv "$DCC/dovecot.conf.new" "$DCC/dovecot.conf"
dovecot_start "$DCC" "$DCC_PORT"
log "dovecot+mail-crypt: generating the users' password-protected keys"
for a in "${ADDRS[@]}"; do
	[[ $a == idle* ]] && continue      # the IDLE users only log in to plain Dovecot
	doveadm -c "$DCC/dovecot.conf" -o "plugin/mail_crypt_private_password=$PASSWORD" \
		mailbox cryptokey generate -u "$a" -U >/dev/null
done
fi
if want dovecot; then dovecot_start "$DC" "$DC_PORT"; fi
dc_pids() { dovecot_master_pid "$1"; }

# ---- running the loads ----
: > "$RESULTS"
port_of() { case $1 in sealmail) echo "$SM_PORT" ;; dovecot) echo "$DC_PORT" ;; dovecot-crypt) echo "$DCC_PORT" ;; esac; }
tls_port_of() { case $1 in sealmail) echo "$SM_TLS" ;; dovecot) echo "$DC_TLS" ;; dovecot-crypt) echo "$DCC_TLS" ;; esac; }
pids_of() {
	case $1 in
	sealmail) echo "$SM_PIDS" ;;
	dovecot) dc_pids "$DC" ;;
	dovecot-hib) dc_pids "$DCH" ;;
	dovecot-crypt) dc_pids "$DCC" ;;
	esac
}
# run LOAD SERVER bench-imap-args...: one RESULT line into $RESULTS (with
# --tls among the args: to the server's implicit-TLS port)
run() {
	local load=$1 srv=$2 out port
	shift 2
	if [[ " $* " == *" --tls "* ]]; then port=$(tls_port_of "$srv"); else port=$(port_of "$srv"); fi
	out=$("$BIN/bench-imap" "$@" --port "$port" --pass "$PASSWORD" \
		--pids "$(pids_of "$srv")") || { log "$load on $srv FAILED"; return 0; }
	out=$(grep '^RESULT' <<<"$out" | tail -1)
	echo "$load $srv $out" >> "$RESULTS"
	log "$load $srv: $out"
}
each() {   # LOAD args...: the load against every server, in turn
	local load=$1
	shift
	for s in "${LOAD_SERVERS[@]}"; do run "$load" "$s" "$@"; done
}

U_BENCH="bench@$DOMAIN"
# fill SERVER USER FIRST COUNT: msggen's messages FIRST..FIRST+COUNT-1 into
# USER's INBOX, untimed (see the header).
fill() {
	local srv=$1 user=$2 first=$3 count=$4 t0=$SECONDS
	case $srv in
	sealmail)
		"$BIN/bench-imap" append --user "$user" --conns "$FILL_CONNS" --first "$first" \
			--count "$count" --port "$SM_PORT" --pass "$PASSWORD" >/dev/null ||
			{ log "fill of $user on sealmail FAILED"; return 1; } ;;
	dovecot) dovecot_fill "$DC" "$user" "$first" "$count" ;;
	dovecot-crypt) dovecot_fill "$DCC" "$user" "$first" "$count" \
		-o "plugin/mail_crypt_private_password=$PASSWORD" ;;
	esac
	log "fill $srv $user: $count messages in $((SECONDS - t0)) s"
}
# dovecot_fill DIR USER FIRST COUNT [doveadm options]: doveadm import from
# the mbox of those messages (fill_mbox).
dovecot_fill() {
	local dir=$1 user=$2 first=$3 count=$4
	shift 4
	doveadm -c "$dir/dovecot.conf" -o mail_fsync=never "$@" import -u "$user" \
		"mbox:$TMP/fill/root:INBOX=$TMP/fill/$first-$count.mbox:INDEX=MEMORY" "" \
		mailbox INBOX all
}
fill_mbox() {   # FIRST COUNT: the mbox dovecot_fill reads, written once
	local src=$TMP/fill/$1-$2.mbox
	mkdir -p "$TMP/fill/root"
	chmod 755 "$TMP/fill" "$TMP/fill/root"
	[ -f "$src" ] || "$BIN/bench-imap" mbox --first "$1" --count "$2" --out "$src"
	chmod 644 "$src"
}
# fill_each USER FIRST COUNT: into every server, all at once (untimed).
fill_each() {
	local pids=() s
	if want dovecot || want dovecot-crypt; then fill_mbox "$2" "$3"; fi
	for s in "${LOAD_SERVERS[@]}"; do
		fill "$s" "$@" &
		pids+=($!)
	done
	for s in "${pids[@]}"; do wait "$s"; done
	rm -f "$TMP/fill/$2-$3.mbox"
}
if ! skip append; then
	each append_1 append --user "$U_BENCH" --conns 1 --count 1000
	each append_10 append --user "$U_BENCH" --conns 10 --first 1000 --count $((N - 1000))
	# the mixed workload's mailboxes: 100 messages each (not a figure)
	each fill_mix append --user "mix%02d@$DOMAIN" --users "$NMIX" --conns "$NMIX" \
		--first "$N" --count $((NMIX * 100))
	# APPEND into many mailboxes (a database each in Sealmail): long
	# enough to be steady (the 100 each of fill_mix, 1-2 s, moved the
	# ratio 0.93-2.29 between runs: bench/README.md, session 10)
	each append_multi append --user "multi%02d@$DOMAIN" --users "$NMULTI" \
		--conns "$NMULTI" --first $((N + NMIX * 100)) --count $((NMULTI * MULTI_EACH))
else
	if ! skip select || ! skip fetch || ! skip search; then
		fill_each "$U_BENCH" 0 "$N"
	fi
	if ! skip mixed; then
		for i in $(seq 1 "$NMIX"); do
			fill_each "$(printf "mix%02d@%s" "$i" "$DOMAIN")" $((N + (i - 1) * 100)) 100
		done
	fi
fi
if [ "$BIG" -gt 0 ]; then
	fill_each "big@$DOMAIN" 0 "$BIG"
fi
if ! skip select; then
	each select_10k select --user "$U_BENCH" --repeat 5
	if [ "$BIG" -gt 0 ]; then each select_big select --user "big@$DOMAIN" --repeat 5; fi
fi
if ! skip fetch; then
	each fetch_headers fetchhdr --user "$U_BENCH" --repeat 3
	# Five runs (one when a run takes more than 10 s: Dovecot+mail-crypt):
	# a single FETCH of the bodies moved 2x between runs with other
	# work on the machine (bench/README.md, ninth run).
	each fetch_bodies fetchbody --user "$U_BENCH" --repeat 5 --max-seconds 10
	# The same over TLS (implicit, TLS 1.3 from both): what mail clients
	# do; both servers then also encrypt every byte they send.
	each fetch_bodies_tls fetchbody --tls --user "$U_BENCH" --repeat 5 --max-seconds 10
fi
if ! skip search; then
	each search_header search --user "$U_BENCH" --query 'FROM "Kowalski"' --repeat 5
	each search_body search --user "$U_BENCH" --query 'BODY "zeppelin"' --repeat 5
fi
if ! skip mixed; then
	each mixed mixed --user "mix%02d@$DOMAIN" --users "$NMIX" --conns "$NMIX" --seconds "$T"
fi
if ! skip login; then
	each login_first login --user "first%02d@$DOMAIN" --users "$NFIRST" --count "$NFIRST"
	each login_repeat login --user "mix01@$DOMAIN" --conns 4 --hold --count 0 --seconds "$T"
fi

# ---- memory per IDLE connection ----
if ! skip idle; then
	# idle_closes SERVER OFFSET N: wait (up to 2 min) until Dovecot's log
	# says all N connections closed, then print "hibernated=H
	# imap_closed=I inotify_warnings=W" (see dovecot_idle_closes): H is
	# how many were hibernated when bench-imap measured and closed them.
	idle_closes() {
		local dir=$DC c=(0 0 0)
		[ "$1" = dovecot-hib ] && dir=$DCH
		for _ in $(seq 240); do
			read -ra c <<< "$(dovecot_idle_closes "$dir" "$2")"
			[ $((c[0] + c[1])) -ge "$3" ] && break
			sleep 0.5
		done
		echo "hibernated=${c[0]} imap_closed=${c[1]} inotify_warnings=${c[2]}"
	}
	# sm_stat NAME...: those STATS values of sqlited, in that order
	sm_stat() {
		"$BIN/sealmail" status --config "$SM/sealmail.conf" 2>/dev/null |
			awk -v want="$*" 'BEGIN { n = split(want, w, " ") }
				{ v[$1] = $2 } END { for (i = 1; i <= n; i++) printf "%s ", v[w[i]] + 0 }'
	}
	SM_UNLOCK_STATS="unlocks_kdf unlocks_without_kdf unlocks_joined"
	# $TMP/sm_at_rest exits 0 in the state Sealmail's memory is read in
	# (bench-imap --settle-cmd runs it every 0.5 s): no login waits for or
	# runs Argon2id and every unlocked alias has its database released;
	# the trim comes on sqlited's next 1 s tick, hence the 1.2 s. Session 4
	# saw sqlited at 262 MB until T+12..14 s on a loaded machine, read at
	# T+15: this makes the moment independent of the machine's load
	# (bench/README.md, "Trailing Argon2id runs"). A file, since bench-imap
	# runs it through sh.
	cat > "$TMP/sm_at_rest" <<EOF
#!/usr/bin/env bash
"$BIN/sealmail" status --config "$SM/sealmail.conf" 2>/dev/null | awk '{ v[\$1] = \$2 }
	END { exit !(v["aliases_open"] != "" && v["aliases_released"] == v["aliases_open"] &&
		     v["unlocks_running"] + v["unlocks_waiting"] == 0) }' && sleep 1.2
EOF
	chmod 755 "$TMP/sm_at_rest"
	idle_run() {   # NAME SERVER PORT TLS? CONNS SETTLE
		local out off=0 settle_cmd=() st0=() st1=()
		want "$2" || return 0
		# the previous run's connections must be gone (Dovecot: their
		# processes exit one by one) before the PSS baseline is read
		for _ in $(seq 240); do
			[ "$(pgrep -c -P "$(pids_of "$2" | cut -d, -f1)")" -lt 30 ] && break
			sleep 0.5
		done
		case $2 in dovecot) off=$(dovecot_log_size "$DC") ;;
			dovecot-hib) off=$(dovecot_log_size "$DCH") ;; esac
		if [ "$2" = sealmail ]; then
			settle_cmd=(--settle-cmd "$TMP/sm_at_rest" --settle-max "$SM_SETTLE_MAX")
			read -ra st0 <<< "$(sm_stat $SM_UNLOCK_STATS)"
		fi
		out=$("$BIN/bench-imap" idle --user "idle%03d@$DOMAIN" --users "$NIDLE" \
			--conns "$5" --port "$3" $4 --pass "$PASSWORD" --pids "$(pids_of "$2")" \
			--settle "$6" --setup-limit "$IDLE_SETUP_LIMIT" "${settle_cmd[@]}") ||
			{ log "$1 on $2 FAILED"; return 0; }
		out=$(grep '^RESULT' <<<"$out" | tail -1)
		[ "$2" = sealmail ] || out="$out $(idle_closes "$2" "$off" "$5")"
		if [ "$2" = sealmail ]; then
			# the run's logins: with Argon2id, without (fast path), joined
			read -ra st1 <<< "$(sm_stat $SM_UNLOCK_STATS)"
			out="$out unlocks_kdf=$((st1[0] - st0[0])) unlocks_without_kdf=$((st1[1] - st0[1]))"
			out="$out unlocks_joined=$((st1[2] - st0[2]))"
		fi
		echo "$1 $2 $out" >> "$RESULTS"
		log "$1 $2: $out"
	}
	# Sealmail is measured SM_SETTLE s after the last connection idles:
	# past sqlited's db_release_seconds (10), when an idle alias has
	# closed its database, as Dovecot+hib is measured after hibernating.
	for n in $IDLE_N; do
		idle_run "idle_${n}" sealmail "$SM_PORT" "" "$n" "$SM_SETTLE"
		idle_run "idle_${n}_tls" sealmail "$SM_TLS" --tls "$n" "$SM_SETTLE"
		idle_run "idle_${n}" dovecot "$DC_PORT" "" "$n" 3
		idle_run "idle_${n}_tls" dovecot "$DC_TLS" --tls "$n" 3
	done
	# Dovecot with IDLE hibernation: a third instance, the plain one's
	# settings plus imap_hibernate_timeout (an IDLE connection's imap
	# process hands it to imap-hibernate after HIB_TIMEOUT s and exits).
	# Measured HIB_TIMEOUT + 8 s after the last connection idles; the log
	# then tells how many connections imap-hibernate held (imap_table.py
	# marks the figure invalid below 99%).
	if want dovecot-hib; then
		if want dovecot; then dovecot_stop "$DC"; fi
		DCH=$TMP/dch; DCH_PORT=$(free_port); DCH_TLS=$(free_port)
		dovecot_imap "$DCH" "$DCH_PORT" "$DCH_TLS"
		dovecot_hibernate_conf "$DCH" "$HIB_TIMEOUT"
		dovecot_start "$DCH" "$DCH_PORT"
		for n in $IDLE_N; do
			idle_run "idle_${n}" dovecot-hib "$DCH_PORT" "" "$n" $((HIB_TIMEOUT + 8))
			idle_run "idle_${n}_tls" dovecot-hib "$DCH_TLS" --tls "$n" \
				$((HIB_TIMEOUT + 8))
		done
	fi
fi

# ---- the table ----
python3 "$ROOT/bench/imap_table.py" "$RESULTS"
