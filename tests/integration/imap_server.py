"""A Sealmail IMAP installation for integration tests (imported by test_imap_*.py).

    from imap_server import ImapServer, skip_unless_built

    with ImapServer() as srv:                      # redis + sqlited + one imapd
        srv.add_alias("alice@example.org", "alice's password")
        srv.deliver("alice@example.org", b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        c = srv.login("alice@example.org", "alice's password")   # imaplib, TLS
        c.select("INBOX")
        ...
        port_tls, port_plain = srv.start_imapd()  # a second imapd, same sqlited

What it starts, in a temporary directory (removed by stop()):

- `sealmail init` of a data directory; the configuration is rewritten: every
  port 0 (sqlited on its unix socket only) except imaps_port and imap_port
  (free loopback ports), listen_address 127.0.0.1, the cheapest Argon2id
  cost, redis_url on the private redis-server's unix socket;
- redis-server (unix socket only, no persistence), sqlited, sealmail-imapd,
  each with its output in a log file (srv.log_text() returns every log).

Binaries come from SEALMAIL_BIN_DIR (default build/bin). ImapServer() raises
unittest.SkipTest when sealmail-imapd (or redis-server) is missing, so a test
class may simply create it in setUp / setUpClass; skip_unless_built() is the
same check as a boolean.

Attributes and methods:

- imaps_port, imap_port: the first imapd's implicit-TLS and plain (STARTTLS)
  ports; imapd (Popen) and imapd_pid(i) for the i-th imapd (0 = the first);
  sqlited (Popen); data_dir, conf, socket (sqlited's unix socket), cert.
- config: extra configuration keys for the constructor, e.g.
  ImapServer(config={"max_message_bytes": "1048576"}).
- add_alias(address, password): `sealmail domain add` (once per domain) and
  `sealmail alias add --password-stdin`.
- with_aliases(aliases, prepare=None, then=None) -> self: the usual setUpClass after the
  constructor: prepare(srv) if given (e.g. another daemon), then add_alias()
  of each (address, password), then then(srv) if given (e.g. APPENDs that
  fill the mailboxes); on any failure stop() and re-raise (a tearDownClass
  does not run when setUpClass fails).
- connect(tls=True, port=None): an imaplib.IMAP4_SSL (certificate not
  verified) on imaps_port, or imaplib.IMAP4 (plaintext, loopback, so LOGIN is
  allowed) on imap_port; not logged in.
- login(address, password, tls=True, port=None): the same, logged in.
- raw(tls=True, port=None): a RawImap (a socket with line helpers) after the
  greeting was read (raw.greeting holds it).
- start_imapd(config=None) -> (imaps_port, imap_port): another sealmail-imapd
  process against the same sqlited and Redis, with its own configuration
  file (same data directory) and its own free ports.
- deliver(address, raw_bytes): DELIVER through sqlited, as the MX would
  (returns the aliases delivered to). rpc(): an authenticated rpcclient
  connection to sqlited (use as a context manager).
- kill_sqlited() (SIGKILL), start_sqlited(): to test an unreachable sqlited.
- stop(): SIGTERM to every process (SIGKILL after 20 s), temp dir removed.
- Module helpers: RawImap (send, line, cmd(tag, command) -> lines up to the
  tagged one, until_tagged, closed), rss_kib(pid), unverified_context(),
  free_port(), wait_for(pred).
- secrets_in_log(): the passwords given to add_alias that appear in a log
  (a test asserts this is empty); sanitizer_reports() after stop(): ASan,
  LSan and UBSan report lines of every process (empty for a clean run);
  stop_checked(): stop() and assert both are empty (a tearDownClass).
"""
import imaplib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import rpcclient  # noqa: E402
import sqlited_ops  # noqa: E402

ROOT = os.environ.get("SEALMAIL_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
BIN_DIR = os.environ.get("SEALMAIL_BIN_DIR", os.path.join(ROOT, "build", "bin"))
SEALMAIL = os.path.join(BIN_DIR, "sealmail")
SQLITED = os.path.join(BIN_DIR, "sqlited")
IMAPD = os.path.join(BIN_DIR, "sealmail-imapd")


def skip_unless_built():
    """True when every binary and redis-server are there."""
    return (all(os.access(e, os.X_OK) for e in (SEALMAIL, SQLITED, IMAPD)) and
            shutil.which("redis-server") is not None)


def wait_for(pred, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def rss_kib(pid):
    """The resident memory of a process (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def sanitized(pid):
    """True if the process runs with AddressSanitizer."""
    with open(f"/proc/{pid}/maps") as f:
        return "libasan" in f.read()


def unverified_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawImap:
    """A line-oriented IMAP client on a raw (TLS) socket, for what imaplib hides."""

    def __init__(self, sock):
        self.s = sock
        self.buf = b""
        self.greeting = None

    def send(self, data):
        self.s.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise EOFError("connection closed")
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def until_tagged(self, tag):
        """Lines up to and including the one starting with tag + ' '."""
        out = []
        while True:
            line = self.line()
            out.append(line)
            if line.startswith(tag + b" "):
                return out

    def cmd(self, tag, command):
        """Sends 'tag command' and returns every line up to the tagged one."""
        self.send(tag + b" " + command + b"\r\n")
        return self.until_tagged(tag)

    def closed(self, timeout=15.0):
        """True if the server closes the connection (reading whatever comes first)."""
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
                self.buf += d
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


class Installation:
    """Daemons started from a temporary directory, each logging to a .log
    file there: stop() (SIGTERM in reverse start order, the frontends
    before sqlited and redis; kill after 20 s), log_text() (every log, also
    after stop()), sanitizer_reports(). The subclass sets self.procs,
    self._tmp (a TemporaryDirectory) and self.tmp. Shared by ImapServer and
    mx_server.MxServer. _start_redis also needs self.redis_sock."""

    def _spawn(self, args, name, env=None):
        log = os.path.join(self.tmp, name + ".log")
        out = open(log, "ab")
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env)
        out.close()
        self.procs.append(p)
        return p

    def _start_redis(self):
        self.redis = self._spawn(["redis-server", "--port", "0", "--unixsocket",
                                  self.redis_sock, "--unixsocketperm", "700", "--save", "",
                                  "--appendonly", "no", "--dir", self.tmp], "redis")
        if not wait_for(lambda: os.path.exists(self.redis_sock)):
            raise RuntimeError("redis-server did not start")

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []
        if self._tmp is not None:
            self.final_log = self.log_text()
            self._tmp.cleanup()
            self._tmp = None

    def log_text(self):
        if self._tmp is None:
            return getattr(self, "final_log", "")
        text = ""
        for name in sorted(os.listdir(self.tmp)):
            if name.endswith(".log"):
                with open(os.path.join(self.tmp, name), errors="replace") as f:
                    text += f"--- {name}\n" + f.read()
        return text

    def sanitizer_reports(self):
        """ASan/LSan/UBSan reports in the logs (call after stop(): leaks are
        reported at exit)."""
        return [ln for ln in self.log_text().splitlines()
                if "AddressSanitizer" in ln or "LeakSanitizer" in ln or "runtime error:" in ln]


class ImapdMixin:
    """What an installation with sealmail-imapd needs besides its own
    start/stop: starting an imapd and IMAP clients. Used by ImapServer and by
    mx_server.MxServer(imap=True). The class provides _spawn(args, name),
    log_text(), imapds = [] and imaps_port/imap_port (the first imapd's)."""

    def _start_imapd(self, conf, imaps_port, imap_port, name, host="127.0.0.1"):
        env = None
        if getattr(self, "fetch_chunk", None):
            # Test hook: FETCH_META asks this many messages at a time
            # (4,096 otherwise), so that small tests cross chunks.
            env = dict(os.environ, SEALMAIL_IMAP_FETCH_CHUNK=str(self.fetch_chunk))
        p = self._spawn([IMAPD, "--config", conf], name, env)
        ok = wait_for(lambda: (port_open(imaps_port, host) and port_open(imap_port, host))
                      or p.poll() is not None)
        if not ok or p.poll() is not None:
            raise RuntimeError(name + " did not start: " + self.log_text()[-2000:])
        self.imapds.append((p, imaps_port, imap_port))
        return p

    def imapd_pid(self, i=0):
        return self.imapds[i][0].pid

    # ---- clients ----

    def connect(self, tls=True, port=None, timeout=30):
        if tls:
            return imaplib.IMAP4_SSL("127.0.0.1", port or self.imaps_port,
                                     ssl_context=unverified_context(), timeout=timeout)
        return imaplib.IMAP4("127.0.0.1", port or self.imap_port, timeout=timeout)

    def login(self, address, password, tls=True, port=None):
        c = self.connect(tls=tls, port=port)
        c.login(address, password)
        return c

    def raw(self, tls=True, port=None, timeout=30):
        s = socket.create_connection(("127.0.0.1", port or (self.imaps_port if tls
                                                            else self.imap_port)),
                                     timeout=timeout)
        if tls:
            s = unverified_context().wrap_socket(s)
        r = RawImap(s)
        r.greeting = r.line()
        return r


class ImapServer(Installation, ImapdMixin):
    def __init__(self, config=None, start=True, fetch_chunk=None):
        if not skip_unless_built():
            raise unittest.SkipTest("sealmail-imapd, sqlited, sealmail or redis-server "
                                    "is missing")
        self.extra = dict(config or {})
        self.fetch_chunk = fetch_chunk
        self.procs = []
        self.imapds = []        # [(Popen, imaps_port, imap_port)]
        self.domains = set()
        self.secrets = []
        self.sqlited = None
        self._tmp = None
        if start:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise

    # ---- context manager ----

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    # ---- start and stop ----

    def start(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="smimap-")
        self.tmp = self._tmp.name
        self.data_dir = os.path.join(self.tmp, "d")
        self.conf = os.path.join(self.data_dir, "sealmail.conf")
        self.redis_sock = os.path.join(self.tmp, "redis.sock")
        r = subprocess.run([SEALMAIL, "init", "--config", self.conf, "--data-dir",
                            self.data_dir], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("sealmail init failed: " + r.stderr)
        self.imaps_port, self.imap_port = free_port(), free_port()
        self._write_conf(self.conf, self.imaps_port, self.imap_port, self.extra)
        self.socket = os.path.join(self.data_dir, "sqlited.sock")
        self.secret = rpcclient.read_secret(os.path.join(self.data_dir, "secrets",
                                                         "rpc_secret"))
        self._start_redis()
        self.start_sqlited()
        for attempt in range(3):
            try:
                self.imapd = self._start_imapd(self.conf, self.imaps_port,
                                               self.imap_port, "imapd")
                break
            except RuntimeError as e:
                # free_port() gives a port back before the imapd binds it:
                # another test run (CI runs the plain and the ASan suites
                # at once) may take it meanwhile. New ports, once more.
                if attempt == 2 or "address already in use" not in str(e):
                    raise
                self.imaps_port, self.imap_port = free_port(), free_port()
                self._write_conf(self.conf, self.imaps_port, self.imap_port,
                                 self.extra)

    def _write_conf(self, path, imaps_port, imap_port, extra):
        with open(self.conf) as f:
            lines = f.read().splitlines()
        want = {"imaps_port": str(imaps_port), "imap_port": str(imap_port),
                "listen_address": "127.0.0.1", "argon2_opslimit": "1",
                "argon2_memlimit_mib": "1", "redis_url": "unix:" + self.redis_sock}
        want.update({k: str(v) for k, v in extra.items()})
        out, seen = [], set()
        for line in lines:
            key = (line.split("=", 1)[0].strip()
                   if "=" in line and not line.lstrip().startswith("#") else None)
            if key is None:
                out.append(line)
                continue
            value = line.split("=", 1)[1].strip()
            if key in want:
                line = f"{key} = {want[key]}"
            elif key.endswith("_port"):
                line = f"{key} = 0"
            elif key == "tls_cert":
                self.cert = value if os.path.isabs(value) else os.path.join(self.data_dir,
                                                                             value)
            seen.add(key)
            out.append(line)
        for key, value in want.items():
            if key not in seen:
                out.append(f"{key} = {value}")
        with open(path, "w") as f:
            f.write("\n".join(out) + "\n")

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

    def start_imapd(self, config=None):
        """Another imapd against the same sqlited: returns (imaps_port, imap_port)."""
        n = len(self.imapds)
        ports = free_port(), free_port()
        conf = os.path.join(self.data_dir, f"imapd-{n}.conf")
        extra = dict(self.extra)
        extra.update(config or {})
        self._write_conf(conf, ports[0], ports[1], extra)
        self._start_imapd(conf, ports[0], ports[1], f"imapd-{n}",
                          extra.get("listen_address", "127.0.0.1"))
        return ports

    def secrets_in_log(self):
        log = self.log_text()
        return [s for s in self.secrets if s in log]

    def stop_checked(self):
        """stop(), then fail if a password reached a log or a sanitizer
        reported anything (the usual tearDownClass)."""
        self.stop()
        assert not self.secrets_in_log(), "a password appears in a log"
        reports = self.sanitizer_reports()
        assert not reports, "sanitizer reports:\n" + "\n".join(reports[:20])

    # ---- administration and delivery ----

    def cli(self, *args, stdin=None):
        r = subprocess.run([SEALMAIL, *args, "--config", self.conf], input=stdin,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"sealmail {args[0]} {args[1]} failed: {r.stderr[-500:]}")
        return r

    def add_alias(self, address, password):
        domain = address.rsplit("@", 1)[1]
        if domain not in self.domains:
            self.cli("domain", "add", domain)
            self.domains.add(domain)
        self.secrets.append(password)
        self.cli("alias", "add", address, "--password-stdin", stdin=password + "\n")

    def with_aliases(self, aliases, prepare=None, then=None):
        """prepare(self) if given, then add_alias() of each (address,
        password), then then(self) if given (filling the mailboxes); on
        failure stop() and re-raise, since tearDownClass does not run when
        setUpClass fails. Returns self, for
        cls.srv = ImapServer(...).with_aliases([...])."""
        try:
            if prepare is not None:
                prepare(self)
            for address, password in aliases:
                self.add_alias(address, password)
            if then is not None:
                then(self)
        except BaseException:
            self.stop()
            raise
        return self

    def rpc(self, peer_name="mx@localhost"):
        return rpcclient.connect_unix(self.socket, self.secret, peer_name)

    def deliver(self, address, raw_bytes):
        with self.rpc() as c:
            return sqlited_ops.deliver(c, address.encode(), raw_bytes)
