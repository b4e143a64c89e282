"""Reliability tests of the real `sqlited`: crashes, dropped connections,
concurrent writers, hostile clients, timing, events and the login throttle.

A real redis-server (unix socket in a temp dir) and the real
$SEALMAIL_BIN_DIR/sqlited (`sealmail init` of a temp data dir, TCP on a random
loopback port), aliases made with the admin CLI, spoken to with rpcclient.py
(sqlited_ops.py adds the mailbox calls). Every process started here is stopped,
also on failure. The random seed of the crash test is printed; set
SEALMAIL_RELIABILITY_SEED to replay one.

Under the ASan build (SEALMAIL_BIN_DIR under build-asan / *asan*), counts are
scaled down so that the file stays under ~3 minutes on two cores.
"""
import hashlib
import json
import os
import random
import re
import signal
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import rpcclient  # noqa: E402
import sqlited_ops as ops  # noqa: E402
from rpcclient import get  # noqa: E402

ROOT = os.environ.get("SEALMAIL_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
BIN_DIR = os.environ.get("SEALMAIL_BIN_DIR", os.path.join(ROOT, "build", "bin"))
SEALMAIL = os.path.join(BIN_DIR, "sealmail")
SQLITED = os.path.join(BIN_DIR, "sqlited")
ASAN = "asan" in os.path.abspath(BIN_DIR).lower() or os.environ.get("SEALMAIL_ASAN") == "1"
PASSWORD = "reliability password 1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_key(conf, key, value):
    with open(conf) as f:
        text = f.read()
    text, n = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text)
    if n == 0:
        text += f"\n{key} = {value}\n"
    with open(conf, "w") as f:
        f.write(text)


class Resp:
    """A raw RESP connection to redis-server (stdlib only)."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(5)
        try:
            self.s.connect(path)
        except OSError:
            self.s.close()
            raise
        self.buf = b""

    def close(self):
        self.s.close()

    def send(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)

    def _line(self):
        while b"\r\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise EOFError("redis closed")
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t in (b"+", b"-"):
            return rest.decode()
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                d = self.s.recv(65536)
                if not d:
                    raise EOFError("redis closed")
                self.buf += d
            v, self.buf = self.buf[:n], self.buf[n + 2:]
            return v
        if t == b"*":
            return [self.read() for _ in range(int(rest))]
        raise ValueError(f"bad RESP {line!r}")

    def cmd(self, *args):
        self.send(*args)
        return self.read()


def message(seed, seq, big=False):
    """A message that carries its sequence number and the SHA-256 of its text."""
    rnd = random.Random(f"{seed}/{seq}")
    n = 300 * 1024 if big else rnd.randrange(200, 6000)
    raw = bytes(rnd.getrandbits(8) for _ in range(min(n, 4096)))
    text = (raw * (n // len(raw) + 1))[:n].hex()  # hex: 7-bit, deterministic
    lines = "\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    sha = hashlib.sha256(lines.encode()).hexdigest()
    return (f"From: load@example.org\r\nTo: alice@example.org\r\n"
            f"Subject: load {seq}\r\nMessage-ID: <load-{seq}-{seed}@test>\r\n"
            f"X-Seq: {seq}\r\nX-Sha256: {sha}\r\n\r\n{lines}\r\n").encode()


def check_message(body):
    """(seq, ok): the sequence number and whether the text matches its SHA-256."""
    head, _, text = body.partition(b"\r\n\r\n")
    seq = int(re.search(rb"X-Seq: (\d+)", head).group(1))
    sha = re.search(rb"X-Sha256: ([0-9a-f]{64})", head).group(1).decode()
    return seq, hashlib.sha256(text[:-2]).hexdigest() == sha


class Base(unittest.TestCase):
    argon2 = ("1", "8")   # opslimit, memlimit MiB: the cheapest realistic cost

    def setUp(self):
        for exe in (SEALMAIL, SQLITED):
            if not os.access(exe, os.X_OK):
                self.skipTest(f"no executable {exe}")
        if shutil.which("redis-server") is None:
            self.skipTest("redis-server is not installed")
        self._tmp = tempfile.TemporaryDirectory(prefix="sm-rel-")
        self.addCleanup(self._tmp.cleanup)
        self.tmp = self._tmp.name
        self.procs = []
        self.addCleanup(self.stop_all)
        self.data = os.path.join(self.tmp, "d")
        self.conf = os.path.join(self.data, "sealmail.conf")
        r = subprocess.run([SEALMAIL, "init", "--config", self.conf, "--data-dir", self.data],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, "sealmail init failed: " + r.stderr)
        with open(self.conf) as f:
            conf_lines = f.read().splitlines()
        for line in conf_lines:
            m = re.match(r"^(\w+_port)\s*=", line)
            if m:
                set_key(self.conf, m.group(1), 0)
        self.port = free_port()
        set_key(self.conf, "sqlited_port", self.port)
        set_key(self.conf, "listen_address", "127.0.0.1")
        self.redis_sock = os.path.join(self.tmp, "redis.sock")
        set_key(self.conf, "redis_url", "unix:" + self.redis_sock)
        if self.argon2 is not None:
            set_key(self.conf, "argon2_opslimit", self.argon2[0])
            set_key(self.conf, "argon2_memlimit_mib", self.argon2[1])
        self.secret_file = os.path.join(self.data, "secrets", "rpc_secret")
        self.secret = rpcclient.read_secret(self.secret_file)
        self.sock = os.path.join(self.data, "sqlited.sock")
        self.log = os.path.join(self.tmp, "sqlited.log")
        self.sqlited = None
        self.start_redis()
        self.start_sqlited()
        self.cli("domain", "add", "example.org")

    # ---- processes ----

    def spawn(self, args, log):
        with open(log, "ab") as out:
            p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def start_redis(self):
        self.spawn(["redis-server", "--port", "0", "--unixsocket", self.redis_sock,
                    "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                    "--dir", self.tmp], os.path.join(self.tmp, "redis.log"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = None
            try:
                r = Resp(self.redis_sock)
                if r.cmd("PING") == "PONG":
                    return
            except (OSError, EOFError):
                pass
            finally:
                if r is not None:
                    r.close()
            time.sleep(0.05)
        self.fail("redis-server did not start")

    def start_sqlited(self):
        self.sqlited = self.spawn([SQLITED, "--config", self.conf], self.log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.sqlited.poll() is not None:
                self.fail("sqlited exited at start: " + self.read_log()[-2000:])
            try:
                with self.connect(timeout=5) as c:
                    c.call(rpcclient.OP_PING)
                return
            except (OSError, rpcclient.Closed, rpcclient.RpcError):
                time.sleep(0.02)
        self.fail("sqlited did not start")

    def stop_sqlited(self):
        p = self.sqlited
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            self.fail("sqlited did not stop on SIGTERM")
        self.assertEqual(rc, 0, "sqlited did not exit cleanly: " + self.read_log()[-3000:])

    def read_log(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def connect(self, timeout=10.0, peer="test@localhost"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:  # rpcclient.connect_unix leaks the socket when connect() fails
            s.settimeout(timeout)
            s.connect(self.sock)
            c = rpcclient.Client(s, timeout)
            c.handshake(self.secret, peer)
        except BaseException:
            s.close()
            raise
        return c

    def cli(self, *args, stdin=None):
        r = subprocess.run([SEALMAIL, *args, "--config", self.conf], input=stdin,
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, f"sealmail {' '.join(args)} failed: {r.stderr}")
        return r

    def add_alias(self, address, password=PASSWORD):
        self.cli("alias", "add", address, "--password-stdin", stdin=password + "\n")

    def alias_id(self, address):
        """The directory's hex id of an alias (docs/rpc.md, Events)."""
        import sqlite3
        db = sqlite3.connect(os.path.join(self.data, "directory.db"))
        try:
            row = db.execute("SELECT id FROM alias WHERE address = ?", (address,)).fetchone()
        finally:
            db.close()
        self.assertIsNotNone(row, f"{address} not in the directory")
        return row[0]

    def redis_clear_throttle(self):
        r = Resp(self.redis_sock)
        try:
            keys = r.cmd("KEYS", "sealmail:authfail:*")
            if keys:
                r.cmd("DEL", *keys)
        finally:
            r.close()


# ---------------------------------------------------------------------------
# 1. kill -9 under load

class CrashUnderLoad(Base):
    CLIENTS = 20
    TOTAL = 600 if ASAN else 2000
    KILLS = 10

    def test_kill9_under_load_every_ack_stored_once(self):
        seed = int(os.environ.get("SEALMAIL_RELIABILITY_SEED", random.randrange(1 << 32)))
        print(f"\n[crash test] seed {seed} (SEALMAIL_RELIABILITY_SEED={seed} to replay), "
              f"{self.TOTAL} messages, {self.CLIENTS} clients, {self.KILLS} kills", flush=True)
        rnd = random.Random(seed)
        self.add_alias("alice@example.org")
        with self.connect() as c:
            s = ops.unlock(c, "alice@example.org", PASSWORD)
            c.call(ops.OP_MAILBOX_CREATE, [(ops.T_SESSION, s), (ops.T_MAILBOX, "Load")])
            c.call(ops.OP_LOCK, [(ops.T_SESSION, s)])

        big = set(rnd.sample(range(self.TOTAL), max(2, self.TOTAL // 100)))
        kind = {seq: ("deliver" if (seq // self.CLIENTS) % 2 == 0 else "append")
                for seq in range(self.TOTAL)}
        acked = {}               # seq -> kind, written once by its client
        attempts = {}            # seq -> sends (1 = no retry)
        retries_after_error = [0]
        lock = threading.Lock()
        stop = threading.Event()
        errors = []

        def client(i):
            conn, session = None, None
            try:
                for seq in range(i, self.TOTAL, self.CLIENTS):
                    body = message(seed, seq, seq in big)
                    key = f"load-{seed}-{seq}".encode()
                    n = 0
                    while not stop.is_set():
                        n += 1
                        try:
                            if conn is None:
                                conn = self.connect(timeout=30)
                            if kind[seq] == "deliver":
                                got = ops.deliver(conn, "alice@example.org", body, key=key)
                                if got != [b"alice@example.org"]:
                                    raise AssertionError(f"DELIVERED {got!r}")
                            else:
                                if session is None:
                                    session = ops.unlock(conn, "alice@example.org", PASSWORD)
                                ops.append(conn, session, "Load", body, key=key)
                            with lock:
                                acked[seq] = kind[seq]
                                attempts[seq] = n
                            break
                        except rpcclient.RpcError as e:
                            if e.code == ops.ENOSESSION:
                                session = None
                            elif e.code not in (ops.EUNAVAILABLE, 5, 6, 13, 119):
                                raise
                            if e.request_id == 0 and conn is not None:
                                conn.close()
                                conn = None
                        except (OSError, rpcclient.Closed, ValueError):
                            # sqlited died under us: reconnect, re-UNLOCK, same key
                            if conn is not None:
                                conn.close()
                            conn, session = None, None
                            time.sleep(0.02)
                        with lock:
                            retries_after_error[0] += 1
            except BaseException as e:  # noqa: BLE001 (reported below)
                errors.append(f"client {i}: {e!r}")
                stop.set()
            finally:
                if conn is not None:
                    conn.close()

        thresholds = sorted(rnd.sample(range(self.TOTAL // 12, self.TOTAL * 11 // 12),
                                       self.KILLS))
        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(self.CLIENTS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        kills = []
        try:
            for th in thresholds:
                while not stop.is_set():
                    with lock:
                        n = len(acked)
                    if n >= th:
                        break
                    time.sleep(0.005)
                if stop.is_set():
                    break
                time.sleep(rnd.uniform(0, 0.05))   # somewhere inside a write
                with lock:
                    at = len(acked)
                self.sqlited.kill()
                self.sqlited.wait()
                kills.append(at)
                time.sleep(rnd.uniform(0, 0.2))
                self.start_sqlited()
            deadline = time.monotonic() + (900 if ASAN else 600)
            for t in threads:
                t.join(max(1, deadline - time.monotonic()))
        finally:
            stop.set()
        self.assertFalse(any(t.is_alive() for t in threads), "clients did not finish")
        self.assertEqual(errors, [])
        load_s = time.monotonic() - t0
        self.assertEqual(len(kills), self.KILLS, "not every kill happened")
        self.assertEqual(len(acked), self.TOTAL, "some messages were never acknowledged")

        # Read everything back: delivered mail reaches INBOX at unlock.
        found = {"INBOX": {}, "Load": {}}
        bad = []
        with self.connect(timeout=60) as c:
            s = ops.unlock(c, "alice@example.org", PASSWORD)
            for mbox in found:
                meta = ops.fetch_meta(c, s, mbox)
                for m in meta:
                    body = ops.fetch_body(c, s, mbox, m["uid"])
                    seq, ok = check_message(body)
                    if not ok or body != message(seed, seq, seq in big):
                        bad.append((mbox, m["uid"], seq))
                    found[mbox].setdefault(seq, []).append(m["uid"])
                info = ops.status(c, s, mbox)
                self.assertEqual(info[ops.T_MESSAGES], len(meta), f"{mbox}: MESSAGES")
        self.assertEqual(bad, [], "messages not byte-identical to what was acknowledged")

        want_app = {q for q, k in acked.items() if k == "append"}
        want_del = {q for q, k in acked.items() if k == "deliver"}
        dup_app = {q: u for q, u in found["Load"].items() if len(u) > 1}
        dup_del = {q: u for q, u in found["INBOX"].items() if len(u) > 1}
        retried = sum(1 for n in attempts.values() if n > 1)
        print(f"[crash test] {load_s:.1f} s of load, kills after {kills} acks, "
              f"{retries_after_error[0]} failed sends retried ({retried} messages needed a "
              f"retry); Load: {sum(map(len, found['Load'].values()))} stored for "
              f"{len(want_app)} appends, INBOX: {sum(map(len, found['INBOX'].values()))} "
              f"stored for {len(want_del)} deliveries; duplicates: appends {len(dup_app)}, "
              f"deliveries {len(dup_del)}", flush=True)
        # Exactly once for APPEND.
        self.assertEqual(set(found["Load"]), want_app, "an acknowledged APPEND is missing "
                         "or an unknown one appeared")
        self.assertEqual(dup_app, {}, "an APPEND was stored twice")
        # Exactly once for DELIVER too: a keyed delivery's spool entry is named
        # from its key, so a crash between the spool commit and the idempotency
        # record no longer lets a retry store it twice (srv_ops_deliver.c).
        self.assertEqual(set(found["INBOX"]), want_del, "an acknowledged DELIVER is missing "
                         "or an unknown one appeared")
        self.assertEqual(dup_del, {}, "a DELIVER retry was stored twice")
        self.stop_sqlited()


# ---------------------------------------------------------------------------
# 2. a streamed APPEND dropped midway

class DroppedAppend(Base):
    def test_partial_append_is_invisible_and_retry_stores_once(self):
        self.add_alias("alice@example.org")
        body = message(7, 1, big=True)              # 300 KiB+: more than one window
        key = b"dropped-append-1"
        with self.connect() as c:
            s = ops.unlock(c, "alice@example.org", PASSWORD)
            before = ops.status(c, s, "INBOX")
            meta_before = ops.fetch_meta(c, s, "INBOX")
        for cut in (1000, 200 * 1024, len(body) - 1):
            raw = self.connect()
            rid = 1
            raw.send(rpcclient.K_REQUEST, rpcclient.F_BODY, ops.OP_APPEND, rid,
                     rpcclient.encode([(ops.T_SESSION, s), (ops.T_MAILBOX, "INBOX"),
                                       (ops.T_SIZE, len(body)), (ops.T_IDEMPOTENCY_KEY, key)]))
            off, window = 0, rpcclient.INITIAL_WINDOW
            while off < cut:
                if window == 0:
                    kind, _, _, frid, payload = raw.recv()
                    if kind == rpcclient.K_WINDOW and frid == rid:
                        window += get(rpcclient.decode(payload), rpcclient.T_CREDIT, 0)
                    continue
                n = min(window, cut - off, 64 * 1024)
                raw.send(rpcclient.K_DATA, 0, 0, rid, body[off:off + n])
                off += n
                window -= n
            raw.close()                             # mid-stream, no END
            time.sleep(0.3)
            with self.connect() as c:
                self.assertEqual(ops.status(c, s, "INBOX"), before, f"cut at {cut}: status")
                self.assertEqual(ops.fetch_meta(c, s, "INBOX"), meta_before,
                                 f"cut at {cut}: a partial message became visible")
        with self.connect() as c:
            uid, modseq = ops.append(c, s, "INBOX", body, key=key)
            uid2, _ = ops.append(c, s, "INBOX", body, key=key)      # a resend: stored once
            self.assertEqual(uid2, uid)
            after = ops.status(c, s, "INBOX")
            self.assertEqual(after[ops.T_MESSAGES], before[ops.T_MESSAGES] + 1)
            self.assertEqual(after[ops.T_UIDNEXT], before[ops.T_UIDNEXT] + 1)
            self.assertEqual(ops.fetch_body(c, s, "INBOX", uid), body)
        # no sealed upload left behind
        deadline = time.monotonic() + 5
        while os.listdir(os.path.join(self.data, "tmp")) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(os.listdir(os.path.join(self.data, "tmp")), [])
        self.stop_sqlited()


# ---------------------------------------------------------------------------
# 3. two client processes on one alias

class ConcurrentProcesses(Base):
    ROUNDS = 60 if ASAN else 150

    def test_two_processes_append_and_store(self):
        self.add_alias("alice@example.org")
        worker = os.path.join(HERE, "sqlited_ops.py")
        procs, outs = [], []
        for name, seed in (("p1", 1), ("p2", 2)):
            out = open(os.path.join(self.tmp, f"{name}.out"), "w+")
            self.addCleanup(out.close)
            p = subprocess.Popen([sys.executable, worker, "worker", self.sock, self.secret_file,
                                  "alice@example.org", PASSWORD, name, str(self.ROUNDS),
                                  str(seed)], stdout=out, stderr=subprocess.STDOUT)
            self.procs.append(p)
            procs.append(p)
            outs.append(out)
        for p in procs:
            self.assertEqual(p.wait(170), 0, "a worker failed")
        events = {}
        for name, out in zip(("p1", "p2"), outs):
            out.seek(0)
            lines = [json.loads(ln) for ln in out if ln.startswith("{")]
            self.assertEqual(lines[-1], {"op": "done"}, f"{name} did not finish")
            events[name] = lines[:-1]
        appends = [e for v in events.values() for e in v if e["op"] == "append"]
        stores = [e for v in events.values() for e in v if e["op"] == "store"]
        self.assertEqual(len(appends), 2 * self.ROUNDS)
        uids = [e["uid"] for e in appends]
        self.assertEqual(len(set(uids)), len(uids), "two APPENDs got the same UID")
        self.assertEqual(sorted(uids), list(range(1, len(uids) + 1)), "gaps in the UIDs")
        # every change got its own MODSEQ, increasing in each process's order
        modseqs = [e["modseq"] for e in appends + stores]
        self.assertNotIn(None, modseqs, "a STORE that adds a new keyword changed nothing")
        self.assertEqual(len(set(modseqs)), len(modseqs), "two changes share a MODSEQ")
        for name, v in events.items():
            ms = [e["modseq"] for e in v]
            self.assertEqual(ms, sorted(ms), f"{name}: MODSEQ went backwards")
        with self.connect() as c:
            s = ops.unlock(c, "alice@example.org", PASSWORD)
            meta = {m["uid"]: m for m in ops.fetch_meta(c, s, "INBOX")}
            info = ops.status(c, s, "INBOX")
        self.assertEqual(sorted(meta), sorted(uids))
        self.assertEqual(info[ops.T_UIDNEXT], len(uids) + 1)
        self.assertEqual(info[ops.T_HIGHESTMODSEQ], max(modseqs))
        lost = [e for e in stores if e["keyword"] not in meta[e["uid"]]["keywords"]
                or not meta[e["uid"]]["flags"] & e["flags"]]
        self.assertEqual(lost, [], "acknowledged flag changes were lost")
        last = {}
        for e in appends + stores:
            last[e["uid"]] = max(last.get(e["uid"], 0), e["modseq"])
        for uid, m in meta.items():
            self.assertEqual(m["modseq"], last[uid], f"UID {uid}: MODSEQ is not its last change")
        self.stop_sqlited()


# ---------------------------------------------------------------------------
# 4. hostile and confused clients, while another client keeps PINGing

class Pinger(threading.Thread):
    def __init__(self, conn):
        super().__init__(daemon=True)
        self.conn, self.stop, self.times, self.error = conn, threading.Event(), [], None

    def run(self):
        try:
            while not self.stop.is_set():
                t = time.monotonic()
                self.conn.call(rpcclient.OP_PING, [(rpcclient.T_ECHO, b"p")])
                self.times.append(time.monotonic() - t)
                time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001
            self.error = e


class HostileClients(Base):
    def expect_error_and_close(self, raw_bytes, codes):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(self.sock)
        c = rpcclient.Client(s, 10)
        try:
            c.handshake(self.secret)
            s.sendall(raw_bytes)
            kind, _, _, rid, payload = c.recv()
            self.assertEqual((kind, rid), (rpcclient.K_ERROR, 0))
            self.assertIn(get(rpcclient.decode(payload), rpcclient.T_CODE), codes)
            with self.assertRaises((rpcclient.Closed, ConnectionResetError)):
                c.recv()
        finally:
            c.close()

    def test_auth_errors_bad_frames_and_slow_loris(self):
        self.add_alias("alice@example.org")
        pinger = Pinger(self.connect())
        pinger.start()
        try:
            with self.connect() as c:
                # unknown alias and wrong password: the same EAUTH, the same text
                errs = []
                for i, (alias, pw) in enumerate((("nobody@example.org", PASSWORD),
                                                 ("alice@example.org", "wrong password"))):
                    with self.assertRaises(rpcclient.RpcError) as cm:
                        ops.unlock(c, alias, pw, client_addr=f"192.0.2.{i + 1}")
                    errs.append((cm.exception.code, cm.exception.text))
                self.assertEqual(errs[0], errs[1])
                self.assertEqual(errs[0][0], ops.EAUTH)
                # a locked session and a made-up one: ENOSESSION
                s = ops.unlock(c, "alice@example.org", PASSWORD, client_addr="192.0.2.9")
                ops.status(c, s, "INBOX")
                c.call(ops.OP_LOCK, [(ops.T_SESSION, s)])
                for handle in (s, os.urandom(32)):
                    with self.assertRaises(rpcclient.RpcError) as cm:
                        ops.status(c, handle, "INBOX")
                    self.assertEqual(cm.exception.code, ops.ENOSESSION)
            # oversized frame: ERROR EFRAMESIZE (id 0), close
            big = struct.pack(">IBBBBHHI", 12 + 2 * 1024 * 1024, 1, rpcclient.K_REQUEST, 0, 0,
                              1, 0, 1)
            self.expect_error_and_close(big, {103})
            # garbage after the handshake: an ERROR for the connection, close
            self.expect_error_and_close(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", {100, 101, 103, 111,
                                                                              112})
            self.expect_error_and_close(struct.pack(">I", 20) + b"\x07" * 20, {101})
            # pre-auth garbage: closed (an ERROR first is allowed)
            with socket.socket(socket.AF_UNIX) as g:
                g.settimeout(10)
                g.connect(self.sock)
                g.sendall(os.urandom(64) + b"\xff" * 64)
                data = b""
                while True:
                    d = g.recv(4096)
                    if not d:
                        break
                    data += d
                self.assertTrue(len(data) >= 16, "no HELLO")
            # slow loris: half a frame, then silence; closed without an ERROR
            # after the 30 s frame timeout, while PINGs on the other connection go on
            with self.connect() as sl:
                frame = rpcclient.frame(rpcclient.K_REQUEST, 0, rpcclient.OP_PING, 5,
                                        rpcclient.encode([(rpcclient.T_ECHO, b"x" * 40)]))
                sl.sock.sendall(frame[:len(frame) // 2])
                sl.sock.settimeout(45)
                t0 = time.monotonic()
                with self.assertRaises((rpcclient.Closed, ConnectionResetError)):
                    sl.recv()
                took = time.monotonic() - t0
                self.assertGreater(took, 25)
                self.assertLess(took, 40)
        finally:
            pinger.stop.set()
            pinger.join(10)
            pinger.conn.close()
        self.assertIsNone(pinger.error)
        self.assertGreater(len(pinger.times), 100)
        worst = max(pinger.times)
        print(f"\n[hostile] {len(pinger.times)} PINGs meanwhile, median "
              f"{statistics.median(pinger.times) * 1000:.2f} ms, worst {worst * 1000:.1f} ms",
              flush=True)
        # A server stalled by a hostile client would hold PINGs for seconds
        # (the slow loris for 30 s); a loaded CI machine adds spikes of a few
        # hundred ms, which say nothing about the server.
        self.assertLess(statistics.median(pinger.times), 0.05, "PINGs were slow")
        self.assertLess(worst, 2.0, "a PING waited 2 s or more")
        self.stop_sqlited()


# ---------------------------------------------------------------------------
# 5. UNLOCK timing: unknown alias vs wrong password

class UnlockTiming(Base):
    # The configured default Argon2id cost (opslimit 3, 64 MiB): what the
    # timing must hide is exactly that work.
    argon2 = None
    TRIES = 200

    def test_unknown_alias_and_wrong_password_take_the_same_time(self):
        self.add_alias("alice@example.org")
        # The throttle would add 1 s, 2 s… after 3 failures per address and per
        # alias. Each try uses its own CLIENT_ADDR and (unknown) alias name, and
        # the counters of the real alias are deleted from Redis between tries
        # (the documented keys sealmail:authfail:*), so no try is delayed.
        known, unknown = [], []
        with self.connect(timeout=60) as c:
            for i in range(self.TRIES):
                for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                    addr = f"198.51.{i % 250}.{which * 100 + i % 100}"
                    alias = ("alice@example.org" if which == 0
                             else f"nobody{i}@example.org")
                    t = time.perf_counter()
                    with self.assertRaises(rpcclient.RpcError) as cm:
                        ops.unlock(c, alias, "wrong password", client_addr=addr)
                    dt = time.perf_counter() - t
                    self.assertEqual(cm.exception.code, ops.EAUTH)
                    (known if which == 0 else unknown).append(dt)
                self.redis_clear_throttle()
        mk, mu = statistics.median(known), statistics.median(unknown)
        print(f"\n[timing] {self.TRIES} each: wrong password median {mk * 1000:.2f} ms, "
              f"unknown alias median {mu * 1000:.2f} ms, difference "
              f"{abs(mk - mu) * 1000:.2f} ms", flush=True)
        # No try was throttled (the throttle adds 1 s from the 4th failure):
        # each used its own address and alias and the real alias's counters
        # were cleared, which the medians show (an outlier on a loaded
        # machine is not a throttle). Skipping Argon2id for an unknown alias
        # would halve the time or less; the bound tolerates scheduling noise
        # (5 ms or 10 %).
        self.assertLess(max(mk, mu), min(mk, mu) + 0.9, "tries were throttled")
        self.assertLess(abs(mk - mu), max(0.005, 0.1 * min(mk, mu)))
        self.stop_sqlited()


# ---------------------------------------------------------------------------
# 6. events on Redis

class Events(Base):
    def next_event(self, sub, timeout=1.0):
        sub.s.settimeout(timeout)
        t = time.monotonic()
        msg = sub.read()
        self.assertLess(time.monotonic() - t, timeout)
        self.assertEqual(msg[0], b"message")
        return msg[1].decode(), msg[2].decode()

    def test_append_deliver_store_expunge_publish(self):
        self.add_alias("alice@example.org")
        aid = self.alias_id("alice@example.org")
        self.assertRegex(aid, r"^[0-9a-f]+$")
        channel = f"sealmail:alias:{aid}"
        # sqlited connects to Redis asynchronously: wait for it
        with self.connect(peer="cli@localhost") as c:
            deadline = time.monotonic() + 10
            while rpcclient.stats(c.call(rpcclient.OP_SERVER_STATUS))["redis_connected"] != 1:
                self.assertLess(time.monotonic(), deadline, "sqlited never reached Redis")
                time.sleep(0.05)
        sub = Resp(self.redis_sock)
        self.addCleanup(sub.close)
        self.assertEqual(sub.cmd("SUBSCRIBE", channel), [b"subscribe", channel.encode(), 1])
        with self.connect() as c:
            s = ops.unlock(c, "alice@example.org", PASSWORD)
            uid, modseq = ops.append(c, s, "INBOX", message(1, 1))
            self.assertEqual(self.next_event(sub), (channel, f"exists INBOX {uid} {modseq}"))
            self.assertEqual(ops.deliver(c, "alice@example.org", message(1, 2)),
                             [b"alice@example.org"])
            ch, ev = self.next_event(sub)
            self.assertEqual(ch, channel)
            m = re.fullmatch(r"exists INBOX (\d+) (\d+)", ev)
            self.assertIsNotNone(m, ev)
            duid, dmodseq = int(m.group(1)), int(m.group(2))
            self.assertEqual(duid, uid + 1)
            self.assertGreater(dmodseq, modseq)
            smodseq = ops.store(c, s, "INBOX", uid, 1, flags=ops.F_DELETED)
            self.assertEqual(self.next_event(sub), (channel, f"flags INBOX {uid} {smodseq}"))
            self.assertEqual(ops.expunge(c, s, "INBOX"), [uid])
            ch, ev = self.next_event(sub)
            m = re.fullmatch(r"expunge INBOX (\d+) (\d+)", ev)
            self.assertIsNotNone(m, ev)
            self.assertEqual(int(m.group(1)), uid)
            self.assertGreater(int(m.group(2)), smodseq)
            # a mailbox name with a space: parse from the right
            c.call(ops.OP_MAILBOX_CREATE, [(ops.T_SESSION, s), (ops.T_MAILBOX, "My Box")])
            ch, ev = self.next_event(sub)
            self.assertTrue(ev.startswith("mailbox My Box "), ev)
        self.stop_sqlited()


# ---------------------------------------------------------------------------
# 7. the login throttle

class Throttle(Base):
    def timed_unlock(self, c, alias, pw, addr):
        t = time.monotonic()
        try:
            ops.unlock(c, alias, pw, client_addr=addr)
            ok = True
        except rpcclient.RpcError as e:
            self.assertEqual(e.code, ops.EAUTH)
            ok = False
        return ok, time.monotonic() - t

    def test_delay_after_three_failures_doubles_and_is_per_alias_and_address(self):
        self.add_alias("alice@example.org")
        self.add_alias("bob@example.org")
        with self.connect(timeout=60) as c:
            base = [self.timed_unlock(c, "alice@example.org", "wrong pw", "203.0.113.1")[1]
                    for _ in range(3)]
            b = max(base)
            d4 = self.timed_unlock(c, "alice@example.org", "wrong pw", "203.0.113.1")[1]
            d5 = self.timed_unlock(c, "alice@example.org", "wrong pw", "203.0.113.1")[1]
            # bob from another address: not delayed, even while alice waits 4 s
            slow = {}

            def sixth():
                with self.connect(timeout=60) as c2:
                    slow["t"] = self.timed_unlock(c2, "alice@example.org", "wrong pw",
                                                  "203.0.113.1")
            th = threading.Thread(target=sixth)
            th.start()
            time.sleep(0.2)
            ok, dbob = self.timed_unlock(c, "bob@example.org", PASSWORD, "203.0.113.2")
            th.join(30)
            self.assertTrue(ok)
            # and the right password after failures is delayed too, then clears
            ok, dgood = self.timed_unlock(c, "alice@example.org", PASSWORD, "203.0.113.1")
            self.assertTrue(ok)
            ok, dafter = self.timed_unlock(c, "alice@example.org", "wrong pw", "203.0.113.1")
        print(f"\n[throttle] first 3 failures {[round(x, 3) for x in base]} s, 4th {d4:.3f} s, "
              f"5th {d5:.3f} s, 6th {slow['t'][1]:.3f} s, bob meanwhile {dbob:.3f} s, "
              f"right password {dgood:.3f} s, next failure {dafter:.3f} s", flush=True)
        self.assertLess(b, 0.8)
        self.assertGreater(d4, 0.9)
        self.assertLess(d4, 1.0 + b + 0.5)
        self.assertGreater(d5, 1.9)
        self.assertLess(d5, 2.0 + b + 0.5)
        self.assertGreater(slow["t"][1], 3.9)
        self.assertLess(dbob, b + 0.5, "another alias from another address was delayed")
        self.assertGreater(dgood, 7.9, "the 7th try is not delayed 8 s")
        self.assertLess(dafter, b + 0.5, "a successful unlock did not clear the counters")
        self.stop_sqlited()


if __name__ == "__main__":
    unittest.main()
