"""Integration tests of the POP3 frontend (sealmail-pop3d) with real clients.

`sealmail init` of a temporary data directory; `sealmail up` starts the
private redis-server, sqlited and sealmail-pop3d with pop3s_port and
pop3_port on free loopback ports (every other port 0, the cheapest
Argon2id cost). Mail is put in with sqlited's DELIVER (rpcclient.py), as
the MX would. Then Python's poplib over implicit TLS and STLS, raw sockets
for what poplib hides (pipelining, AUTH PLAIN, byte-exact RETR), fetchmail
and curl.

Skipped when build/bin/sealmail-pop3d is not built. Passwords never appear
in assertion messages.
"""
import base64
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import poplib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import rpcclient  # noqa: E402

ROOT = os.environ.get("SEALMAIL_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
BIN_DIR = os.environ.get("SEALMAIL_BIN_DIR", os.path.join(ROOT, "build", "bin"))
SEALMAIL = os.path.join(BIN_DIR, "sealmail")
POP3D = os.path.join(BIN_DIR, "sealmail-pop3d")
OP_DELIVER, T_SIZE, T_ADDRESS = 64, 35, 80

USER = "alice@example.org"
PASSWORD = "alice's pop3 password"
BOB = "bob@example.org"
BOB_PASSWORD = "bob's pop3 password"


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


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def message(i, body=None, extra=b""):
    body = body if body is not None else b"Hello number %d.\r\nSecond line.\r\n" % i
    return (b"From: sender@remote.example\r\nTo: alice@example.org\r\n"
            b"Subject: message %d\r\nMessage-ID: <m%d@remote.example>\r\n" % (i, i) +
            extra + b"\r\n" + body)


class Raw:
    """A line-oriented POP3 client on a raw (TLS) socket, for what poplib hides."""

    def __init__(self, sock):
        self.s = sock
        self.buf = b""

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

    def multi(self):
        """A multi-line body, still dot-stuffed, with its CRLFs, without the terminator."""
        out = []
        while True:
            line = self.line()
            if line == b".":
                return b"".join(out)
            out.append(line + b"\r\n")

    def cmd(self, c):
        self.send(c + b"\r\n")
        return self.line()

    def closed(self, timeout=15.0):
        """True if the server closes the connection (reading whatever comes first)."""
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def unstuff(wire):
    out = []
    for line in wire.split(b"\r\n")[:-1]:
        out.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
    return b"".join(out)


class Pop3(unittest.TestCase):
    def setUp(self):
        for exe in (SEALMAIL, POP3D):
            if not os.access(exe, os.X_OK):
                self.skipTest(f"{exe} is not built")
        if shutil.which("redis-server") is None:
            self.skipTest("redis-server is not installed")
        self._tmp = tempfile.TemporaryDirectory(prefix="smpop-")
        self.tmp = self._tmp.name
        self.data = os.path.join(self.tmp, "d")
        self.conf = os.path.join(self.data, "sealmail.conf")
        self.up = None
        r = subprocess.run([SEALMAIL, "init", "--config", self.conf, "--data-dir", self.data],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, "init failed: " + r.stderr)
        self.pop3s_port, self.pop3_port = free_port(), free_port()
        self.rewrite_conf()
        for attempt in range(3):
            try:
                self.start_up()
                break
            except BaseException as e:
                self.stop_up()   # tearDown does not run after a failed setUp
                # free_port() gives a port back before pop3d binds it:
                # another test run (CI runs the plain and the ASan suites
                # at once) may take it meanwhile. New ports, once more, as
                # imap_server.py does for the imapd.
                if attempt == 2 or "address already in use" not in str(e):
                    self._tmp.cleanup()
                    raise
                self.pop3s_port, self.pop3_port = free_port(), free_port()
                self.rewrite_conf()
        self.cli("domain", "add", "example.org")
        self.cli("alias", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
        self.cli("alias", "add", BOB, "--password-stdin", stdin=BOB_PASSWORD + "\n")
        self.ctx = ssl.create_default_context(cafile=self.cert)
        self.ctx.check_hostname = False   # the name is checked by curl and fetchmail below

    def tearDown(self):
        try:
            self.stop_up()
            log = self.read_log()
            for s in (PASSWORD, BOB_PASSWORD):
                self.assertFalse(s in log, "a password appears in the log")
        finally:
            self._tmp.cleanup()

    # ---- set-up ----

    def rewrite_conf(self):
        with open(self.conf) as f:
            lines = f.read().splitlines()
        out, seen = [], set()
        for line in lines:
            key = line.split("=", 1)[0].strip() if "=" in line and not line.startswith("#") else None
            value = line.split("=", 1)[1].strip() if key is not None else None
            if key == "pop3s_port":
                line = f"pop3s_port = {self.pop3s_port}"
            elif key == "pop3_port":
                line = f"pop3_port = {self.pop3_port}"
            elif key == "sqlited_port":   # `sealmail up` starts sqlited only with a port
                line = f"sqlited_port = {free_port()}"
            elif key is not None and key.endswith("_port"):
                line = f"{key} = 0"
            elif key == "listen_address":
                line = "listen_address = 127.0.0.1"
            elif key == "argon2_opslimit":
                line = "argon2_opslimit = 1"
            elif key == "argon2_memlimit_mib":
                line = "argon2_memlimit_mib = 1"
            elif key == "hostname":
                self.hostname = value
            elif key == "tls_cert":
                self.cert = value if os.path.isabs(value) else os.path.join(self.data, value)
            if key is not None:
                seen.add(key)
            out.append(line)
        with open(self.conf, "w") as f:
            f.write("\n".join(out) + "\n")
        self.socket = os.path.join(self.data, "sqlited.sock")
        self.secret = rpcclient.read_secret(os.path.join(self.data, "secrets", "rpc_secret"))

    def start_up(self):
        self.log = os.path.join(self.tmp, "up.log")
        out = open(self.log, "wb")
        self.up = subprocess.Popen([SEALMAIL, "up", "--config", self.conf], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        ok = wait_for(lambda: (port_open(self.pop3s_port) and port_open(self.pop3_port) and
                               os.path.exists(self.socket)) or self.up.poll() is not None)
        self.assertTrue(ok and self.up.poll() is None,
                        "sealmail up did not start pop3d: " + self.read_log()[-2000:])

    def stop_up(self):
        if self.up is not None and self.up.poll() is None:
            self.up.send_signal(signal.SIGTERM)
            try:
                self.up.wait(30)
            except subprocess.TimeoutExpired:
                self.up.kill()
                self.up.wait()
                self.fail("sealmail up did not stop on SIGTERM")

    def read_log(self):
        text = ""
        for root, _, files in os.walk(self.tmp):
            for name in files:
                if name.endswith(".log"):
                    with open(os.path.join(root, name), errors="replace") as f:
                        text += f.read()
        return text

    def cli(self, *args, stdin=None):
        r = subprocess.run([SEALMAIL, *args, "--config", self.conf], input=stdin,
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, f"sealmail {args[0]} {args[1]} failed")
        return r

    def deliver(self, msgs, to=USER):
        with rpcclient.connect_unix(self.socket, self.secret, "mx@localhost") as c:
            for m in msgs:
                c.call(OP_DELIVER, [(T_ADDRESS, to.encode()), (T_SIZE, len(m))], body=m)

    # ---- clients ----

    def pop_ssl(self):
        return poplib.POP3_SSL("127.0.0.1", self.pop3s_port, context=self.ctx, timeout=30)

    def login_ssl(self, user=USER, password=PASSWORD):
        p = self.pop_ssl()
        p.user(user)
        p.pass_(password)
        return p

    def raw_ssl(self, login=True):
        s = socket.create_connection(("127.0.0.1", self.pop3s_port), timeout=30)
        r = Raw(self.ctx.wrap_socket(s))
        self.assertTrue(r.line().startswith(b"+OK"))
        if login:
            self.assertTrue(r.cmd(b"USER " + USER.encode()).startswith(b"+OK"))
            self.assertTrue(r.cmd(b"PASS " + PASSWORD.encode()).startswith(b"+OK"),
                            "login refused")
        return r

    def raw_plain(self):
        r = Raw(socket.create_connection(("127.0.0.1", self.pop3_port), timeout=30))
        self.assertTrue(r.line().startswith(b"+OK"))
        return r

    def count(self):
        p = self.login_ssl()
        n = p.stat()[0]
        p.quit()
        return n

    # ---- tests ----

    def test_capa(self):
        p = self.pop_ssl()
        caps = p.capa()
        for c in ("TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                  "IMPLEMENTATION"):
            self.assertIn(c, caps)
        self.assertIn("PLAIN", caps["SASL"])
        self.assertNotIn("STLS", caps, "STLS offered inside TLS")
        p.quit()
        # The plain port offers STLS; after it, not any more.
        p = poplib.POP3("127.0.0.1", self.pop3_port, timeout=30)
        self.assertIn("STLS", p.capa())
        p.stls(self.ctx)
        caps = p.capa()
        self.assertNotIn("STLS", caps)
        self.assertIn("USER", caps)
        self.assertIn("PLAIN", caps["SASL"])
        p.quit()

    def test_every_command_over_tls(self):
        msgs = [message(1), message(2, b".leading dot\r\n..two dots\r\n.\r\nend\r\n"),
                message(3, b"no final line end")]
        self.deliver(msgs)
        p = self.login_ssl()
        self.assertEqual(p.stat(), (3, sum(len(m) for m in msgs)))
        resp, listing, _ = p.list()
        self.assertTrue(resp.startswith(b"+OK"))
        self.assertEqual(listing, [b"%d %d" % (i + 1, len(m)) for i, m in enumerate(msgs)])
        self.assertEqual(p.list(2), b"+OK 2 %d" % len(msgs[1]))
        for i, m in enumerate(msgs):
            resp, lines, octets = p.retr(i + 1)
            self.assertTrue(resp.startswith(b"+OK"))
            want = m if m.endswith(b"\r\n") else m + b"\r\n"
            self.assertEqual(b"".join(l + b"\r\n" for l in lines), want)
        header = msgs[1].split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        _, lines, _ = p.top(2, 0)
        self.assertEqual(b"".join(l + b"\r\n" for l in lines), header)
        _, lines, _ = p.top(2, 2)
        self.assertEqual(b"".join(l + b"\r\n" for l in lines),
                         header + b".leading dot\r\n..two dots\r\n")
        resp, uidls, _ = p.uidl()
        self.assertEqual(len(uidls), 3)
        uids = [u.split(b" ", 1)[1] for u in uidls]
        self.assertEqual(len(set(uids)), 3)
        for u in uids:
            self.assertTrue(re.fullmatch(rb"[\x21-\x7e]{1,70}", u))
        self.assertEqual(p.uidl(3), b"+OK 3 " + uids[2])
        self.assertTrue(p.noop().startswith(b"+OK"))
        self.assertTrue(p.dele(1).startswith(b"+OK"))
        self.assertEqual(p.stat(), (2, len(msgs[1]) + len(msgs[2])))
        with self.assertRaises(poplib.error_proto):
            p.retr(1)
        with self.assertRaises(poplib.error_proto):
            p.dele(1)
        self.assertTrue(p.rset().startswith(b"+OK"))
        self.assertEqual(p.stat()[0], 3)
        self.assertTrue(p.dele(3).startswith(b"+OK"))
        self.assertTrue(p.quit().startswith(b"+OK"))
        # Deleted at QUIT; the others keep their UIDLs.
        p = self.login_ssl()
        self.assertEqual(p.stat()[0], 2)
        self.assertEqual([u.split(b" ", 1)[1] for u in p.uidl()[1]], uids[:2])
        p.quit()

    def test_retr_bytes_exact(self):
        big = b"".join(b"line %07d: " % i + b"x" * 60 + b"\r\n" for i in range(70000))
        msgs = [message(1, b".\r\n.\r\n..\r\n.x\r\n"), message(2, big),
                message(3, b"bare\nline feeds\n.dot\n")]
        self.deliver(msgs)
        r = self.raw_ssl()
        for i, m in enumerate(msgs):
            resp = r.cmd(b"RETR %d" % (i + 1))
            self.assertTrue(resp.startswith(b"+OK"), resp)
            wire = r.multi()
            for line in wire.split(b"\r\n")[:-1]:
                self.assertFalse(line == b".", "unstuffed terminator")
                self.assertNotIn(b"\n", line)
            want = m.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            self.assertEqual(unstuff(wire), want)
        r.cmd(b"QUIT")
        r.close()

    def test_stls_and_auth_plain(self):
        self.deliver([message(1)])
        p = poplib.POP3("127.0.0.1", self.pop3_port, timeout=30)
        p.stls(self.ctx)
        p.user(USER)
        p.pass_(PASSWORD)
        self.assertEqual(p.stat()[0], 1)
        p.quit()
        # AUTH PLAIN with an initial response, and as a continuation.
        token = base64.b64encode(b"\0" + USER.encode() + b"\0" + PASSWORD.encode())
        r = self.raw_ssl(login=False)
        self.assertTrue(r.cmd(b"AUTH PLAIN " + token).startswith(b"+OK"), "AUTH PLAIN refused")
        self.assertTrue(r.cmd(b"STAT").startswith(b"+OK 1 "))
        r.cmd(b"QUIT")
        r.close()
        r = self.raw_ssl(login=False)
        self.assertTrue(r.cmd(b"AUTH PLAIN").startswith(b"+"))
        self.assertTrue(r.cmd(token).startswith(b"+OK"), "AUTH PLAIN continuation refused")
        r.cmd(b"QUIT")
        r.close()
        r = self.raw_ssl(login=False)
        self.assertTrue(r.cmd(b"AUTH PLAIN").startswith(b"+"))
        self.assertTrue(r.cmd(b"*").startswith(b"-ERR"))
        self.assertIn(r.cmd(b"NOOP")[:1], (b"+", b"-"))  # the session is still alive
        self.assertTrue(r.cmd(b"CAPA").startswith(b"+OK"))
        r.multi()
        r.close()

    def test_stls_discards_pipelined_plaintext(self):
        r = self.raw_plain()
        r.send(b"STLS\r\nUSER " + USER.encode() + b"\r\n")
        self.assertTrue(r.line().startswith(b"+OK"))
        r.s = self.ctx.wrap_socket(r.s)
        r.buf = b""
        # The USER sent in clear before the handshake was dropped: PASS alone fails.
        self.assertTrue(r.cmd(b"PASS " + PASSWORD.encode()).startswith(b"-ERR"))
        r.cmd(b"QUIT")
        r.close()

    def test_plain_login_on_loopback(self):
        # The issue allows USER/PASS and AUTH before TLS on loopback only; the
        # test runs on loopback, so CAPA offers USER there and login works.
        p = poplib.POP3("127.0.0.1", self.pop3_port, timeout=30)
        caps = p.capa()
        self.assertIn("USER", caps)
        p.user(USER)
        p.pass_(PASSWORD)
        self.assertEqual(p.stat()[0], 0)
        p.quit()

    def test_uidl_stable_and_never_reused(self):
        self.deliver([message(i) for i in range(3)])
        p = self.login_ssl()
        first = p.uidl()[1]
        p.quit()
        p = self.login_ssl()
        self.assertEqual(p.uidl()[1], first)
        p.dele(3)
        p.quit()
        self.deliver([message(9)])
        p = self.login_ssl()
        now = [u.split(b" ", 1)[1] for u in p.uidl()[1]]
        p.quit()
        old = [u.split(b" ", 1)[1] for u in first]
        self.assertEqual(now[:2], old[:2])
        self.assertNotIn(now[2], old, "a deleted message's UIDL was reused")

    def test_dropped_connection_deletes_nothing(self):
        self.deliver([message(i) for i in range(4)])
        r = self.raw_ssl()
        for i in (1, 2, 3):
            self.assertTrue(r.cmd(b"DELE %d" % i).startswith(b"+OK"))
        r.close()   # no QUIT
        self.assertTrue(wait_for(lambda: self._can_login(), 15), "mailbox stayed in use")
        self.assertEqual(self.count(), 4)

    def _can_login(self):
        try:
            p = self.login_ssl()
        except poplib.error_proto:
            return False
        p.quit()
        return True

    def test_pipelining(self):
        self.deliver([message(1), message(2)])
        r = self.raw_ssl(login=False)
        r.send(b"USER " + USER.encode() + b"\r\nPASS " + PASSWORD.encode() +
               b"\r\nSTAT\r\nLIST\r\nUIDL 2\r\nBOGUS\r\nRETR 1\r\nNOOP\r\nQUIT\r\n")
        self.assertTrue(r.line().startswith(b"+OK"))
        self.assertTrue(r.line().startswith(b"+OK"), "pipelined PASS refused")
        self.assertTrue(r.line().startswith(b"+OK 2 "))
        self.assertTrue(r.line().startswith(b"+OK"))
        self.assertEqual(len(r.multi().split(b"\r\n")), 3)
        self.assertTrue(r.line().startswith(b"+OK 2 "))
        self.assertTrue(r.line().startswith(b"-ERR"))
        self.assertTrue(r.line().startswith(b"+OK"))
        self.assertEqual(unstuff(r.multi()), message(1))
        self.assertTrue(r.line().startswith(b"+OK"))
        self.assertTrue(r.line().startswith(b"+OK"))
        self.assertTrue(r.closed())
        r.close()

    def test_errors_keep_session_usable(self):
        self.deliver([message(1)])
        r = self.raw_ssl(login=False)
        self.assertTrue(r.cmd(b"STAT").startswith(b"-ERR"))     # not yet
        self.assertTrue(r.cmd(b"XYZZY").startswith(b"-ERR"))
        r.send(b"USER " + b"a" * 100000 + b"\r\n")                # too long
        self.assertTrue(r.line().startswith(b"-ERR"))
        self.assertTrue(r.cmd(b"USER " + USER.encode()).startswith(b"+OK"))
        self.assertTrue(r.cmd(b"PASS " + PASSWORD.encode()).startswith(b"+OK"))
        for bad in (b"RETR", b"RETR x", b"RETR 0", b"RETR 2", b"TOP 1", b"DELE 99",
                    b"LIST 5", b"UIDL 7", b"STAT 1", b"RETR 1\x00", b"USER again"):
            self.assertTrue(r.cmd(bad).startswith(b"-ERR"), bad)
        self.assertTrue(r.cmd(b"NOOP").startswith(b"+OK"))
        self.assertTrue(r.cmd(b"STAT").startswith(b"+OK 1 "))
        r.cmd(b"QUIT")
        r.close()

    def test_flood_is_disconnected(self):
        r = self.raw_ssl(login=False)
        try:
            r.send(b"BOGUS\r\n" * 20000)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        self.assertTrue(r.closed(30), "a flood of bad commands was not disconnected")
        r.close()

    def test_in_use(self):
        a = self.login_ssl()
        b = self.pop_ssl()
        b.user(USER)
        with self.assertRaises(poplib.error_proto) as e:
            b.pass_(PASSWORD)
        self.assertIn(b"[IN-USE]", e.exception.args[0])
        b.quit()
        a.quit()
        self.assertTrue(wait_for(self._can_login, 10))

    def test_auth_failures_look_alike(self):
        def fail(user, password):
            p = self.pop_ssl()
            p.user(user)
            with self.assertRaises(poplib.error_proto) as e:
                p.pass_(password)
            p.quit()
            return e.exception.args[0]

        wrong = fail(USER, "not the password")
        unknown = fail("nobody@example.org", "not the password")
        other_domain = fail("nobody@elsewhere.example", "not the password")
        self.assertTrue(wrong.startswith(b"-ERR [AUTH]"))
        self.assertEqual(wrong, unknown)
        self.assertEqual(wrong, other_domain)
        def fail_plain(user):
            r = self.raw_ssl(login=False)
            line = r.cmd(b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0wrong pw"))
            r.close()
            return line
        self.assertEqual(fail_plain(USER.encode()), fail_plain(b"nobody@example.org"))

    def test_mail_delivered_while_locked_appears_once(self):
        self.deliver([message(1)])
        p = self.login_ssl()
        self.assertEqual(p.stat()[0], 1)
        self.deliver([message(2, b"arrived during the session\r\n")])
        self.assertEqual(p.stat()[0], 1)   # the maildrop is a snapshot
        p.quit()
        p = self.login_ssl()
        self.assertEqual(p.stat()[0], 2)
        bodies = [b"".join(l + b"\r\n" for l in p.retr(i)[1]) for i in (1, 2)]
        p.quit()
        self.assertEqual(sum(b"arrived during the session" in b for b in bodies), 1)
        self.assertEqual(self.count(), 2)

    def test_curl_pop3s(self):
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        self.deliver([message(1), message(2, b".dot line\r\n")])
        base = [
            "curl", "-sS", "--cacert", self.cert, "--max-time", "30",
            "--resolve", f"{self.hostname}:{self.pop3s_port}:127.0.0.1",
            "-u", f"{USER}:{PASSWORD}",
        ]
        url = f"pop3s://{self.hostname}:{self.pop3s_port}/"
        r = subprocess.run(base + [url], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        self.assertEqual(r.stdout.split(b"\r\n")[:2],
                         [b"1 %d" % len(message(1)), b"2 %d" % len(message(2, b".dot line\r\n"))])
        r = subprocess.run(base + [url + "2"], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        self.assertEqual(r.stdout, message(2, b".dot line\r\n"))

    def test_fetchmail_500(self):
        if shutil.which("fetchmail") is None:
            self.skipTest("fetchmail is not installed (self-hosting/deps.sh --test)")
        n = 500
        self.deliver([message(i, extra=b"X-Seq: %d\r\n" % i) for i in range(n)])
        self.assertEqual(self.count(), n)
        out = os.path.join(self.tmp, "out")
        os.mkdir(out)
        save = os.path.join(self.tmp, "save.sh")
        with open(save, "w") as f:
            f.write('#!/bin/sh\nexec cat > "$(mktemp -p %s msg.XXXXXXXX)"\n' % out)
        os.chmod(save, 0o755)
        rc = os.path.join(self.tmp, "fetchmailrc")
        with open(rc, "w") as f:
            f.write(f'set no bouncemail\n'
                    f'poll {self.hostname} via 127.0.0.1 with proto POP3 port {self.pop3s_port}\n'
                    f'  user "{USER}" there with password "{PASSWORD}" is "me" here\n'
                    f'  options ssl sslcertfile "{self.cert}" sslcertck sslcommonname "{self.hostname}"\n'
                    f'  fetchall nokeep\n'
                    f'  mda "{save}"\n')
        os.chmod(rc, 0o600)
        env = dict(os.environ, HOME=self.tmp, FETCHMAILHOME=self.tmp)
        r = subprocess.run(["fetchmail", "-f", rc, "--nodetach", "-v"], capture_output=True,
                           timeout=600, env=env)
        self.assertIn(r.returncode, (0,), "fetchmail failed: " +
                      r.stderr.decode(errors="replace").replace(PASSWORD, "***")[-2000:])
        seqs = []
        for name in os.listdir(out):
            with open(os.path.join(out, name), "rb") as f:
                m = re.search(rb"^X-Seq: (\d+)", f.read(), re.M)
                self.assertIsNotNone(m)
                seqs.append(int(m.group(1)))
        self.assertEqual(sorted(seqs), list(range(n)))
        self.assertEqual(self.count(), 0)


if __name__ == "__main__":
    unittest.main()
