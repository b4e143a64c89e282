"""A Sealmail MX installation for integration tests (imported by test_mx*.py and
bench/mx.sh's helpers).

    from mx_server import MxServer

    with MxServer() as srv:                        # redis + sqlited + sealmail-mx
        srv.add_alias("alice@example.org", "alice's password")
        with srv.smtp() as s:                      # smtplib.SMTP, after EHLO
            s.sendmail("bob@example.net", ["alice@example.org"], b"Subject: hi\\r\\n\\r\\nx\\r\\n")
        msgs = srv.mailbox("alice@example.org", "alice's password")   # [bytes]

What it starts, in a temporary directory (removed by stop()):

- `sealmail init` of a data directory; the configuration is rewritten: every
  port 0 (sqlited on its unix socket only) except mx_port (a free loopback
  port; and pop3_port with pop3=True), listen_address 127.0.0.1, the
  cheapest Argon2id cost, redis_url on the private redis-server's socket,
  hostname mx.test; `config` adds or overrides keys;
- redis-server (unix socket only, no persistence), sqlited, sealmail-mx
  (and sealmail-pop3d with pop3=True; sealmail-imapd with imap=True, on free
  imaps_port and imap_port), each logging to a file (log_text()).

Binaries come from SEALMAIL_BIN_DIR (default build/bin); a missing
sealmail-mx or redis-server raises unittest.SkipTest (so does imap=True
without sealmail-imapd).

Methods: add_alias(address, password=None, forwards=(), mailbox=True);
smtp(ehlo=True) -> smtplib.SMTP; raw() -> RawSmtp after the greeting;
mailbox(address, password, take=True) -> the messages of INBOX as bytes, read
through sqlited (UNLOCK drains the spool; FETCH_META, FETCH_BODY; with take
they are then expunged; LOCK);
spool_files() -> the sealed spool entries waiting (before any UNLOCK);
kill_sqlited()/start_sqlited(), kill_mx()/start_mx(), stop_redis();
with imap=True, imap_server.ImapdMixin's IMAP clients: connect(tls=True),
login(address, password, tls=True) -> imaplib (certificate not verified);
sanitizer_reports() -> log lines where ASan/LSan/UBSan reported (tests assert none).
"""
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import rpcclient  # noqa: E402
import sqlited_ops  # noqa: E402
# Helpers shared with the IMAP harness.
from imap_server import (IMAPD, ImapdMixin, Installation, RawImap, free_port, port_open,  # noqa: E402,F401
                         unverified_context, wait_for)

ROOT = os.environ.get("SEALMAIL_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
BIN_DIR = os.environ.get("SEALMAIL_BIN_DIR", os.path.join(ROOT, "build", "bin"))
SEALMAIL = os.path.join(BIN_DIR, "sealmail")
SQLITED = os.path.join(BIN_DIR, "sqlited")
MX = os.path.join(BIN_DIR, "sealmail-mx")
POP3D = os.path.join(BIN_DIR, "sealmail-pop3d")
OP_LOCK = 17


def built():
    return (all(os.access(e, os.X_OK) for e in (SEALMAIL, SQLITED, MX)) and
            shutil.which("redis-server") is not None)


class RawSmtp(RawImap):
    """SMTP on a raw socket, for what smtplib will not send (line reading,
    closed() and close() are RawImap's)."""

    def reply(self):
        """(code, [lines]) of one possibly multi-line reply."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return int(lines[-1][:3]), lines

    def cmd(self, line):
        self.send(line + b"\r\n")
        return self.reply()

    def starttls(self):
        self.s = unverified_context().wrap_socket(self.s)
        self.buf = b""

    def no_reply(self, timeout=1.0):
        """True if nothing arrives within timeout (the connection may stay open)."""
        self.s.settimeout(timeout)
        try:
            d = self.s.recv(65536)
            self.buf += d
            return False if d else True
        except socket.timeout:
            return True
        finally:
            self.s.settimeout(30)


class MxServer(Installation, ImapdMixin):
    def __init__(self, config=None, pop3=False, start=True, data_dir=None, imap=False):
        if not built():
            raise unittest.SkipTest("sealmail-mx, sqlited, sealmail or redis-server is missing")
        if imap and not os.access(IMAPD, os.X_OK):
            raise unittest.SkipTest("sealmail-imapd is missing")
        self.extra = dict(config or {})
        self.want_pop3 = pop3 and os.access(POP3D, os.X_OK)
        self.want_imap = imap
        self.imapds = []
        self.procs = []
        self.domains = set()
        self.secrets = []
        self.sqlited = self.mx = self.redis = None
        self._tmp = None
        if start:
            try:
                self.start(data_dir)
            except BaseException:
                self.stop()
                raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    # ---- start and stop ----

    def start(self, data_dir=None):
        self._tmp = tempfile.TemporaryDirectory(prefix="smmx-")
        self.tmp = self._tmp.name
        self.data_dir = data_dir or os.path.join(self.tmp, "d")
        self.conf = os.path.join(self.tmp, "sealmail.conf")
        self.redis_sock = os.path.join(self.tmp, "redis.sock")
        r = subprocess.run([SEALMAIL, "init", "--config", self.conf, "--data-dir",
                            self.data_dir], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("sealmail init failed: " + r.stderr)
        self.mx_port = free_port()
        self.pop3_port = free_port() if self.want_pop3 else 0
        self.imaps_port = free_port() if self.want_imap else 0
        self.imap_port = free_port() if self.want_imap else 0
        self._write_conf()
        self.socket = os.path.join(self.data_dir, "sqlited.sock")
        self.secret = rpcclient.read_secret(os.path.join(self.data_dir, "secrets",
                                                         "rpc_secret"))
        self._start_redis()
        self.start_sqlited()
        self.start_mx()
        if self.want_pop3:
            self.pop3d = self._spawn([POP3D, "--config", self.conf], "pop3d")
            if not wait_for(lambda: port_open(self.pop3_port)):
                raise RuntimeError("pop3d did not start: " + self.log_text()[-2000:])
        if self.want_imap:
            self._start_imapd(self.conf, self.imaps_port, self.imap_port, "imapd")

    def _write_conf(self):
        with open(self.conf) as f:
            lines = f.read().splitlines()
        want = {"mx_port": str(self.mx_port), "pop3_port": str(self.pop3_port),
                "imaps_port": str(self.imaps_port), "imap_port": str(self.imap_port),
                "listen_address": "127.0.0.1", "hostname": "mx.test",
                "argon2_opslimit": "1", "argon2_memlimit_mib": "1",
                "redis_url": "unix:" + self.redis_sock}
        want.update({k: str(v) for k, v in self.extra.items()})
        out, seen = [], set()
        for line in lines:
            key = (line.split("=", 1)[0].strip()
                   if "=" in line and not line.lstrip().startswith("#") else None)
            if key is None:
                out.append(line)
                continue
            if key in want:
                line = f"{key} = {want[key]}"
            elif key.endswith("_port"):
                line = f"{key} = 0"
            seen.add(key)
            out.append(line)
        for key, value in want.items():
            if key not in seen:
                out.append(f"{key} = {value}")
        with open(self.conf, "w") as f:
            f.write("\n".join(out) + "\n")

    def stop_redis(self):
        if self.redis is not None and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait()

    def start_sqlited(self):
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        self.sqlited = self._spawn([SQLITED, "--config", self.conf], "sqlited")
        ok = wait_for(lambda: os.path.exists(self.socket) or self.sqlited.poll() is not None)
        if not ok or self.sqlited.poll() is not None:
            raise RuntimeError("sqlited did not start: " + self.log_text()[-2000:])

    def kill_sqlited(self):
        if self.sqlited is not None and self.sqlited.poll() is None:
            self.sqlited.kill()
            self.sqlited.wait()

    def start_mx(self):
        self.mx = self._spawn([MX, "--config", self.conf], "mx")
        ok = wait_for(lambda: port_open(self.mx_port) or self.mx.poll() is not None)
        if not ok or self.mx.poll() is not None:
            raise RuntimeError("sealmail-mx did not start: " + self.log_text()[-3000:])

    def kill_mx(self):
        if self.mx is not None and self.mx.poll() is None:
            self.mx.kill()
            self.mx.wait()

    # ---- administration and mailboxes ----

    def cli(self, *args, stdin=None):
        r = subprocess.run([SEALMAIL, *args, "--config", self.conf], input=stdin,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"sealmail {' '.join(args[:2])} failed: {r.stderr[-500:]}")
        return r

    def add_domain(self, domain):
        if domain not in self.domains:
            self.cli("domain", "add", domain)
            self.domains.add(domain)

    def add_alias(self, address, password=None, forwards=(), mailbox=True):
        self.add_domain(address.rsplit("@", 1)[1])
        args = ["alias", "add", address]
        for f in forwards:
            args += ["--forward", f]
        if not mailbox:
            args.append("--no-mailbox")
        if password is not None:
            self.secrets.append(password)
            self.cli(*args, "--password-stdin", stdin=password + "\n")
        else:
            self.cli(*args)

    def rpc(self):
        return rpcclient.connect_unix(self.socket, self.secret, "test@localhost", timeout=60)

    def mailbox(self, address, password, take=True):
        """INBOX's messages (bytes), in UID order; take: then expunged, so the
        next call sees only what arrived since."""
        with self.rpc() as c:
            session = sqlited_ops.unlock(c, address.encode(), password.encode())
            try:
                meta = sqlited_ops.fetch_meta(c, session, b"INBOX")
                out = [sqlited_ops.fetch_body(c, session, b"INBOX", m["uid"])
                       for m in meta]
                if take and meta:
                    for m in meta:
                        sqlited_ops.store(c, session, b"INBOX", m["uid"], 1,
                                          flags=sqlited_ops.F_DELETED)
                    sqlited_ops.expunge(c, session, b"INBOX",
                                        [m["uid"] for m in meta])
                return out
            finally:
                c.call(OP_LOCK, [(sqlited_ops.T_SESSION, session)])

    def spool_files(self):
        spool = os.path.join(self.data_dir, "spool")
        n = 0
        for root, _dirs, files in os.walk(spool):
            n += sum(1 for f in files if not f.startswith("."))
        return n

    # ---- clients ----

    def smtp(self, ehlo=True, timeout=60):
        s = smtplib.SMTP("127.0.0.1", self.mx_port, local_hostname="client.test",
                         timeout=timeout)
        if ehlo:
            s.ehlo()
        return s

    def raw(self, timeout=30):
        s = socket.create_connection(("127.0.0.1", self.mx_port), timeout=timeout)
        r = RawSmtp(s)
        r.greeting = r.line()
        return r
