# bench/lib_dovecot.sh: a private Dovecot instance for the benchmarks that
# compare Sealmail with it (sourced by bench/imap.sh). Everything lives in
# one directory given by the caller: dovecot.conf with its own base_dir, a
# passwd-file, maildirs, the log; loopback ports only, no system service.
#
#   dovecot_ensure_installed dovecot-imapd      # apt-get as root if missing
#   dovecot_mail_owner                          # sets DC_UID DC_GID DC_USER
#   dovecot_write_conf DIR PROTO PORT TLS_PORT  # base config in DIR/dovecot.conf
#   dovecot_passwd DIR PASSWORD USER...         # SHA512-CRYPT passwd-file
#   dovecot_start DIR PORT / dovecot_stop DIR / dovecot_master_pid DIR
#   dovecot_hibernate_conf DIR SECS             # IDLE hibernation in extra.conf
#   dovecot_inotify_room N / dovecot_inotify_restore
#   dovecot_log_size DIR / dovecot_idle_closes DIR OFFSET
#
# Extra settings go into DIR/extra.conf (included at the end), so a caller
# can switch plugins or hibernation on and restart.
#
# IDLE hibernation needs one inotify instance per hibernated connection: the
# imap process hands imap-hibernate the inotify fd that watches the maildir
# (mailbox_watch_extract_notify_fd), besides the one it holds itself, all
# charged to the mail user's uid (here every user is the same uid, as with
# the usual single "vmail" uid). Linux allows 128 per uid by default
# (fs.inotify.max_user_instances): past that Dovecot logs "Inotify instance
# limit for user ... exceeded" and the hibernation attempt fails without a
# word (imap-client-hibernate.c gives up, "don't bother retrying"), so the
# connection keeps its imap process. dovecot_inotify_room raises the limit.

dovecot_ensure_installed() {
	local pkg=$1
	if [ -x /usr/sbin/dovecot ] && dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null |
			grep -q "ok installed"; then
		return 0
	fi
	[ "$(id -u)" -eq 0 ] || { echo "$pkg missing; run as root to install it" >&2; return 1; }
	echo "installing $pkg" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends dovecot-core "$pkg" >/dev/null
	# The package starts a system-wide instance; the benchmarks run their own.
	systemctl stop dovecot 2>/dev/null || service dovecot stop 2>/dev/null || true
}

# Dovecot never serves mail as root: as root, mail belongs to nobody.
dovecot_mail_owner() {
	DC_USER=$(id -un)
	DC_UID=$(id -u)
	DC_GID=$(id -g)
	if [ "$DC_UID" -eq 0 ]; then
		DC_USER=nobody
		DC_UID=$(id -u nobody)
		DC_GID=$(id -g nobody)
	fi
}

# dovecot_passwd DIR PASSWORD USER...: every user with the same password,
# hashed as Debian hashes system passwords by default (SHA512-CRYPT).
dovecot_passwd() {
	local dir=$1 pw=$2 hash
	shift 2
	hash=$(doveadm pw -s SHA512-CRYPT -p "$pw")
	: > "$dir/passwd"
	for u in "$@"; do
		printf '%s:%s::::::\n' "$u" "$hash" >> "$dir/passwd"
	done
	chmod 644 "$dir/passwd"
}

# dovecot_write_conf DIR PROTO PORT TLS_PORT [CERT KEY]: TLS_PORT 0 = no TLS.
dovecot_write_conf() {
	local dir=$1 proto=$2 port=$3 tls_port=$4 cert=${5:-} key=${6:-}
	dovecot_mail_owner
	mkdir -p "$dir/run" "$dir/home"
	chmod 755 "$dir"
	chown "$DC_UID:$DC_GID" "$dir/home"
	: > "$dir/extra.conf"
	{
		echo "base_dir = $dir/run"
		echo "state_dir = $dir/run"
		echo "log_path = $dir/dovecot.log"
		echo "protocols = $proto"
		echo "listen = 127.0.0.1"
		if [ "$tls_port" -ne 0 ]; then
			echo "ssl = yes"
			echo "ssl_cert = <$cert"
			echo "ssl_key = <$key"
		else
			echo "ssl = no"
		fi
		cat <<EOF
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = 0
passdb {
  driver = passwd-file
  args = $dir/passwd
}
userdb {
  driver = static
  args = uid=$DC_UID gid=$DC_GID home=$dir/home/%u
}
service ${proto}-login {
  inet_listener $proto {
    port = $port
  }
  inet_listener ${proto}s {
    port = $tls_port
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
		if [ "$DC_UID" -ne 0 ] && [ "$(id -u)" -ne 0 ]; then
			echo "default_login_user = $DC_USER"
			echo "default_internal_user = $DC_USER"
		fi
		echo "!include_try $dir/extra.conf"
	} > "$dir/dovecot.conf"
}

dovecot_master_pid() {
	cat "$1/run/master.pid" 2>/dev/null
}

wait_port() {
	local port=$1
	for _ in $(seq 200); do
		python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" \
			2>/dev/null && return 0
		sleep 0.1
	done
	echo "nothing listens on 127.0.0.1:$port" >&2
	return 1
}

dovecot_start() {
	/usr/sbin/dovecot -c "$1/dovecot.conf"
	wait_port "$2"
}

dovecot_stop() {
	local pid
	pid=$(dovecot_master_pid "$1")
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 300); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

# dovecot_hibernate_conf DIR SECS: IDLE connections move to imap-hibernate
# after SECS. imap-hibernate gets the client fds over its socket (the imap
# processes run as the mail user: mode 0666 here, the docs' way is the
# dovecot group) and, to wake a client, connects to imap-master (as the
# internal user: 0666 too). Every hibernated connection is a client of an
# imap-hibernate process and holds 2 fds there (the client's and its inotify
# fd): 5,000 per process keeps each under a 20,000 fd limit (here the hard
# limit, which the harness cannot raise), more processes as needed
# (Dovecot's default is 1,000 per process, default_client_limit).
dovecot_hibernate_conf() {
	cat >> "$1/extra.conf" <<EOF
imap_hibernate_timeout = ${2}s
service imap-hibernate {
  client_limit = 5000
  process_limit = 16
  unix_listener imap-hibernate {
    mode = 0666
  }
}
service imap {
  unix_listener imap-master {
    mode = 0666
  }
}
EOF
}

# dovecot_inotify_room N: at least N inotify instances per uid (see the
# header); root only. The old value is restored by dovecot_inotify_restore
# unless someone changed it again meanwhile.
DC_INOTIFY_OLD=
DC_INOTIFY_SET=
dovecot_inotify_room() {
	local f=/proc/sys/fs/inotify/max_user_instances cur
	cur=$(cat "$f")
	[ "$cur" -ge "$1" ] && return 0
	if [ "$(id -u)" -ne 0 ] || ! echo "$1" > "$f" 2>/dev/null; then
		echo "fs.inotify.max_user_instances is $cur (< $1): Dovecot's IDLE" \
			"hibernation will fail past ~$((cur / 2)) connections" >&2
		return 0
	fi
	echo "fs.inotify.max_user_instances: $cur -> $1 (restored at the end)" >&2
	DC_INOTIFY_OLD=$cur
	DC_INOTIFY_SET=$1
}
dovecot_inotify_restore() {
	local f=/proc/sys/fs/inotify/max_user_instances
	[ -n "$DC_INOTIFY_OLD" ] || return 0
	[ "$(cat "$f")" = "$DC_INOTIFY_SET" ] && echo "$DC_INOTIFY_OLD" > "$f"
	DC_INOTIFY_OLD=
}

dovecot_log_size() {
	stat -c %s "$1/dovecot.log" 2>/dev/null || echo 0
}

# dovecot_idle_closes DIR OFFSET: "H I W" for the log written since OFFSET:
# H connections closed while hibernated (logged by imap-hibernate), I closed
# by their own imap process (never hibernated, or woken), W inotify-limit
# warnings.
dovecot_idle_closes() {
	tail -c +"$(($2 + 1))" "$1/dovecot.log" | awk '
		/: Info: Disconnected/ { if ($0 ~ / imap-hibernate\(/) h++; else if ($0 ~ / imap\(/) i++ }
		/Inotify instance limit/ { w++ }
		END { printf "%d %d %d\n", h, i, w }'
}
