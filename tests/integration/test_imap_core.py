"""Integration tests of sealmail-imapd's core: the daemon, the session layer and the
commands of logging in (imap_cmd_auth.c), with real clients.

ImapServer (imap_server.py) starts redis-server, sqlited and sealmail-imapd on free
loopback ports. Python's imaplib where it can, raw sockets where it hides what is
tested (pipelining, SASL-IR, STARTTLS injection, COMPRESS, limits), `openssl
s_client` for the TLS policy. Mail is put in with sqlited's DELIVER, as the MX would.

LOGINDISABLED: there is no configuration switch that makes loopback count as
insecure, so the rule is tested on the machine's own non-loopback address
(a second imapd listening there) when it has one, and skipped otherwise.

Skipped when sealmail-imapd (or redis-server) is not built/installed. Passwords
never appear in assertion messages.
"""
import base64
import imaplib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import unittest
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from imap_server import ImapServer, RawImap, rss_kib, sanitized, unverified_context, wait_for  # noqa: E402
import rpcclient  # noqa: E402

ALICE, ALICE_PW = "alice@example.org", "alice's imap password"
BOB, BOB_PW = "bob@example.org", "bob's imap password"

# Every extension the issue lists (CAPABILITY must announce each).
EXTENSIONS = ("IMAP4rev1 IMAP4rev2 SASL-IR LITERAL+ ENABLE ID IDLE NAMESPACE UNSELECT "
              "CHILDREN UIDPLUS MOVE SPECIAL-USE LIST-EXTENDED LIST-STATUS CONDSTORE "
              "QRESYNC ESEARCH SEARCHRES SORT ESORT THREAD=REFERENCES THREAD=ORDEREDSUBJECT "
              "COMPRESS=DEFLATE QUOTA QUOTA=RES-STORAGE STATUS=SIZE UTF8=ACCEPT "
              "MULTIAPPEND BINARY WITHIN SAVEDATE OBJECTID PREVIEW").split()


def message(i):
    return (b"From: sender@remote.example\r\nTo: alice@example.org\r\n"
            b"Subject: message %d\r\nMessage-ID: <m%d@remote.example>\r\n\r\n"
            b"Hello number %d.\r\n" % (i, i, i))


def caps_of(line):
    m = re.search(rb"\[CAPABILITY ([^\]]*)\]", line)
    return m.group(1).decode().split() if m else None



def own_address():
    """A non-loopback address of this machine, or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


class Deflate:
    """COMPRESS=DEFLATE on a raw socket (imaplib has no COMPRESS)."""

    def __init__(self, raw):
        self.raw = raw
        self.z_out = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        self.z_in = zlib.decompressobj(-15)
        self.buf = raw.buf and self.z_in.decompress(raw.buf) or b""
        raw.buf = b""

    def send(self, data):
        self.raw.s.sendall(self.z_out.compress(data) + self.z_out.flush(zlib.Z_SYNC_FLUSH))

    def line(self):
        while b"\r\n" not in self.buf:
            d = self.raw.s.recv(65536)
            if not d:
                raise EOFError("connection closed")
            self.buf += self.z_in.decompress(d)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def until_tagged(self, tag):
        out = []
        while True:
            out.append(self.line())
            if out[-1].startswith(tag + b" "):
                return out


class ImapCore(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = ImapServer().with_aliases([(ALICE, ALICE_PW), (BOB, BOB_PW)])

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop_checked()

    def raw_login(self, tls=True, user=ALICE, pw=ALICE_PW):
        r = self.srv.raw(tls=tls)
        lines = r.cmd(b"l", b'LOGIN "%s" "%s"' % (user.encode(), pw.encode()))
        self.assertTrue(lines[-1].startswith(b"l OK"), "login refused")
        return r

    # ---- greeting, CAPABILITY ----

    def test_capability_before_and_after_tls_and_login(self):
        r = self.srv.raw(tls=True)
        caps = caps_of(r.greeting)
        self.assertIsNotNone(caps, r.greeting)
        self.assertTrue(r.greeting.startswith(b"* OK [CAPABILITY "))
        for ext in EXTENSIONS + ["AUTH=PLAIN", "AUTH=LOGIN"]:
            self.assertIn(ext, caps)
        self.assertIn("APPENDLIMIT=52428800", caps)
        self.assertNotIn("STARTTLS", caps)
        self.assertNotIn("LOGINDISABLED", caps)
        self.assertEqual(r.cmd(b"a", b"CAPABILITY")[0], b"* CAPABILITY " + " ".join(caps).encode())
        r.close()
        # Plain loopback: STARTTLS offered, login allowed (loopback).
        p = self.srv.connect(tls=False)
        caps = list(p.capabilities)
        self.assertIn("STARTTLS", caps)
        self.assertIn("AUTH=PLAIN", caps)
        p.starttls(ssl_context=unverified_context())
        caps = list(p.capabilities)
        self.assertNotIn("STARTTLS", caps)
        self.assertIn("AUTH=PLAIN", caps)
        typ, data = p.login(ALICE, ALICE_PW)
        self.assertEqual(typ, "OK")
        after = caps_of(b"[" + data[0].split(b"[", 1)[1]) if b"[" in data[0] else None
        self.assertIsNotNone(after, "no CAPABILITY code in the LOGIN answer")
        for c in after:
            self.assertFalse(c.startswith("AUTH=") or c in ("STARTTLS", "LOGINDISABLED"), c)
        self.assertEqual(set(after), set(EXTENSIONS + ["APPENDLIMIT=52428800"]) - {"SASL-IR"})
        p.logout()

    # ---- logging in ----

    def test_login_and_authenticate_mechanisms(self):
        c = self.srv.login(ALICE, ALICE_PW)
        self.assertEqual(c.noop()[0], "OK")
        c.logout()
        blob = base64.b64encode(b"\0" + ALICE.encode() + b"\0" + ALICE_PW.encode())
        # AUTHENTICATE PLAIN with SASL-IR.
        r = self.srv.raw()
        self.assertTrue(r.cmd(b"a", b"AUTHENTICATE PLAIN " + blob)[-1].startswith(b"a OK"))
        self.assertTrue(r.cmd(b"b", b"NAMESPACE")[-1].startswith(b"b OK"))
        r.close()
        # AUTHENTICATE PLAIN without SASL-IR: "+ " then the response.
        r = self.srv.raw()
        r.send(b"a AUTHENTICATE PLAIN\r\n")
        self.assertEqual(r.line(), b"+ ")
        r.send(blob + b"\r\n")
        self.assertTrue(r.until_tagged(b"a")[-1].startswith(b"a OK [CAPABILITY "))
        r.close()
        # imaplib's AUTHENTICATE (no SASL-IR) with PLAIN and LOGIN.
        c = self.srv.connect()
        self.assertEqual(c.authenticate("PLAIN", lambda _: b"\0" + ALICE.encode() + b"\0" +
                                        ALICE_PW.encode())[0], "OK")
        c.logout()
        c = self.srv.connect()
        answers = iter([ALICE.encode(), ALICE_PW.encode()])
        self.assertEqual(c.authenticate("LOGIN", lambda _: next(answers))[0], "OK")
        c.logout()
        # AUTH=LOGIN with the user name as initial response.
        r = self.srv.raw()
        r.send(b"a AUTHENTICATE LOGIN " + base64.b64encode(ALICE.encode()) + b"\r\n")
        self.assertEqual(r.line(), b"+ UGFzc3dvcmQ6")
        r.send(base64.b64encode(ALICE_PW.encode()) + b"\r\n")
        self.assertTrue(r.until_tagged(b"a")[-1].startswith(b"a OK"))
        r.close()
        # "*" cancels; an authzid naming someone else fails.
        r = self.srv.raw()
        r.send(b"a AUTHENTICATE PLAIN\r\n")
        self.assertEqual(r.line(), b"+ ")
        r.send(b"*\r\n")
        self.assertTrue(r.until_tagged(b"a")[-1].startswith(b"a BAD"))
        other = base64.b64encode(BOB.encode() + b"\0" + ALICE.encode() + b"\0" +
                                 ALICE_PW.encode())
        self.assertTrue(r.cmd(b"b", b"AUTHENTICATE PLAIN " + other)[-1]
                        .startswith(b"b NO [AUTHENTICATIONFAILED]"))
        self.assertTrue(r.cmd(b"c", b"AUTHENTICATE CRAM-MD5")[-1].startswith(b"c NO"))
        self.assertTrue(r.cmd(b"d", b"NOOP")[-1].startswith(b"d OK"))
        r.close()

    def test_failures_reveal_nothing_and_disconnect_after_three(self):
        r = self.srv.raw()
        wrong = r.cmd(b"a", b'LOGIN "%s" "not the password"' % ALICE.encode())
        unknown = r.cmd(b"a", b'LOGIN "nobody@example.org" "not the password"')
        nodomain = r.cmd(b"a", b'LOGIN "nobody@unknown.example" "not the password"')
        self.assertEqual(wrong, [b"a NO [AUTHENTICATIONFAILED] Authentication failed."])
        self.assertEqual(unknown, wrong)
        self.assertEqual(nodomain, wrong)
        self.assertTrue(r.closed(), "no disconnect after three failures")
        self.assertIn(b"* BYE", r.buf)
        # AUTHENTICATE answers the same way.
        r = self.srv.raw()
        for user in (ALICE, "nobody@example.org"):
            blob = base64.b64encode(b"\0" + user.encode() + b"\0wrong password")
            self.assertEqual(r.cmd(b"x", b"AUTHENTICATE PLAIN " + blob),
                             [b"x NO [AUTHENTICATIONFAILED] Authentication failed."])
        r.close()

    def test_logindisabled_before_tls_off_loopback(self):
        addr = own_address()
        if addr is None:
            self.skipTest("no non-loopback address on this machine")
        ports = self.srv.start_imapd(config={"listen_address": addr})
        s = socket.create_connection((addr, ports[1]), timeout=30)
        r = RawImap(s)
        r.greeting = r.line()
        caps = caps_of(r.greeting)
        self.assertIn("LOGINDISABLED", caps)
        self.assertIn("STARTTLS", caps)
        self.assertFalse([c for c in caps if c.startswith("AUTH=")])
        self.assertTrue(r.cmd(b"a", b'LOGIN "%s" "%s"' % (ALICE.encode(), ALICE_PW.encode()))
                        [-1].startswith(b"a NO [PRIVACYREQUIRED]"))
        blob = base64.b64encode(b"\0" + ALICE.encode() + b"\0" + ALICE_PW.encode())
        self.assertTrue(r.cmd(b"b", b"AUTHENTICATE PLAIN " + blob)[-1].startswith(b"b NO"))
        r.send(b"c STARTTLS\r\n")
        self.assertTrue(r.line().startswith(b"c OK"))
        r.s = unverified_context().wrap_socket(r.s)
        lines = r.cmd(b"d", b"CAPABILITY")
        self.assertNotIn("LOGINDISABLED", lines[0].decode().split())
        self.assertTrue(r.cmd(b"e", b'LOGIN "%s" "%s"' % (ALICE.encode(), ALICE_PW.encode()))
                        [-1].startswith(b"e OK"))
        r.close()

    # ---- STARTTLS and TLS ----

    def test_starttls_discards_pipelined_plaintext(self):
        r = self.srv.raw(tls=False)
        r.send(b"a STARTTLS\r\nb CAPABILITY\r\n")
        self.assertEqual(r.line(), b"a OK Begin TLS negotiation now.")
        self.assertEqual(r.buf, b"", "an answer to the injected command came in plaintext")
        r.s = unverified_context().wrap_socket(r.s)
        lines = r.cmd(b"c", b"NOOP")
        self.assertEqual(lines, [b"c OK NOOP completed."],
                         "the command injected before the handshake was executed")
        self.assertTrue(r.cmd(b"d", b"STARTTLS")[-1].startswith(b"d BAD"))
        r.close()
        self.assertTrue(wait_for(lambda: "sent after STARTTLS discarded" in self.srv.log_text(),
                                 5))

    def s_client(self, *args, tls=True):
        cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{self.srv.imaps_port}",
               "-servername", "localhost", "-ign_eof", *args]
        if not tls:
            cmd = cmd[:4] + ["-starttls", "imap"] + cmd[4:]
        return subprocess.run(cmd, input=b"a LOGOUT\r\n", capture_output=True, timeout=30)

    def test_tls_protocols_and_ciphers(self):
        if shutil.which("openssl") is None:
            self.skipTest("openssl is not installed")
        ok = self.s_client("-tls1_3")
        self.assertEqual(ok.returncode, 0, ok.stderr[-500:])
        self.assertIn(b"* OK [CAPABILITY", ok.stdout)
        self.assertIn(b"TLSv1.3", ok.stdout)
        ok = self.s_client("-tls1_2")
        self.assertEqual(ok.returncode, 0, ok.stderr[-500:])
        # The client side allows old protocols (SECLEVEL=0): a refusal is the server's.
        for proto in ("-tls1", "-tls1_1"):
            r = self.s_client(proto, "-cipher", "DEFAULT@SECLEVEL=0")
            self.assertNotEqual(r.returncode, 0, proto + " was accepted")
            self.assertIn(b"alert protocol version", r.stderr)    # the server refused
            self.assertNotIn(b"* OK", r.stdout)
        for cipher in ("AES128-SHA", "ECDHE-RSA-AES128-SHA", "AES256-SHA256"):
            r = self.s_client("-tls1_2", "-cipher", cipher + ":@SECLEVEL=0")
            self.assertNotEqual(r.returncode, 0, cipher + " (CBC) was accepted")
            self.assertIn(b"alert handshake failure", r.stderr)
        # STARTTLS on the plain port gets the same policy.
        cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{self.srv.imap_port}",
               "-starttls", "imap", "-ign_eof", "-tls1_3"]
        r = subprocess.run(cmd, input=b"a LOGOUT\r\n", capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr[-500:])
        self.assertIn(b"TLSv1.3", r.stdout)

    # ---- ENABLE, ID, NAMESPACE, NOOP ----

    def test_enable_id_namespace_noop(self):
        r = self.raw_login()
        self.assertEqual(r.cmd(b"a", b"ENABLE CONDSTORE"),
                         [b"* ENABLED CONDSTORE", b"a OK Enabled."])
        self.assertEqual(r.cmd(b"b", b"ENABLE QRESYNC CONDSTORE X-UNKNOWN"),
                         [b"* ENABLED QRESYNC", b"b OK Enabled."])
        self.assertEqual(r.cmd(b"c", b"ENABLE UTF8=ACCEPT IMAP4rev2"),
                         [b"* ENABLED UTF8=ACCEPT IMAP4rev2", b"c OK Enabled."])
        self.assertTrue(r.cmd(b"d", b"ENABLE")[-1].startswith(b"d BAD"))
        lines = r.cmd(b"e", b'ID ("name" "test" "version" "1.0")')
        self.assertTrue(lines[0].startswith(b'* ID ("name" "Sealmail"'), lines)
        self.assertTrue(lines[-1].startswith(b"e OK"))
        self.assertTrue(r.cmd(b"f", b"ID NIL")[-1].startswith(b"f OK"))
        self.assertTrue(r.cmd(b"g", b'ID ("name")')[-1].startswith(b"g BAD"))
        self.assertTrue(r.cmd(b"h", b'ID ("' + b"x" * 40 + b'" "v")')[-1].startswith(b"h BAD"))
        self.assertEqual(r.cmd(b"i", b"NAMESPACE"),
                         [b'* NAMESPACE (("" "/")) NIL NIL', b"i OK Namespace completed."])
        self.assertEqual(r.cmd(b"j", b"NOOP"), [b"j OK NOOP completed."])
        self.assertTrue(r.cmd(b"k", b"NOOP extra")[-1].startswith(b"k BAD"))
        self.assertTrue(r.cmd(b"l", b"LOGIN a b")[-1].startswith(b"l BAD"))
        r.send(b"m LOGOUT\r\n")
        self.assertEqual(r.line(), b"* BYE Logging out")
        self.assertEqual(r.line(), b"m OK Logout completed.")
        self.assertTrue(r.closed())
        # Before login: ENABLE/NAMESPACE are not allowed; ID is.
        r = self.srv.raw()
        self.assertTrue(r.cmd(b"a", b"ENABLE CONDSTORE")[-1].startswith(b"a BAD"))
        self.assertTrue(r.cmd(b"b", b"NAMESPACE")[-1].startswith(b"b BAD"))
        self.assertTrue(r.cmd(b"c", b"ID NIL")[-1].startswith(b"c OK"))
        self.assertTrue(r.cmd(b"d", b"SELECT INBOX")[-1].startswith(b"d BAD"))
        r.close()

    # ---- pipelining, limits ----

    def test_pipelined_commands_answered_in_order(self):
        r = self.srv.raw()
        r.send(b'a LOGIN "%s" "%s"\r\nb NOOP\r\nc CAPABILITY\r\nd NAMESPACE\r\n'
               b"e ID NIL\r\nf NOOP\r\n" % (ALICE.encode(), ALICE_PW.encode()))
        tags = []
        while len(tags) < 6:
            line = r.line()
            if not line.startswith(b"* ") and not line.startswith(b"+"):
                tags.append(line.split(b" ", 2)[:2])
        self.assertEqual(tags, [[b"a", b"OK"], [b"b", b"OK"], [b"c", b"OK"], [b"d", b"OK"],
                                [b"e", b"OK"], [b"f", b"OK"]])
        r.close()

    def test_line_limit_nul_and_bad_commands(self):
        r = self.srv.raw()
        big_id = b"ID (" + b" ".join(b'"f%d" "%s"' % (i, b"v" * 1000) for i in range(20)) + b")"
        # A line over 8 KiB before login: BAD, the connection stays usable.
        self.assertTrue(r.cmd(b"z", big_id)[-1].startswith(b"z BAD"))
        r.send(b"a NOOP " + b"x" * 9000 + b"\r\n")
        self.assertTrue(r.line().startswith(b"a BAD"))
        self.assertEqual(r.cmd(b"b", b"NOOP"), [b"b OK NOOP completed."])
        r.send(b"c NO\0OP\r\n")
        self.assertTrue(r.line().startswith(b"c BAD"))
        self.assertEqual(r.cmd(b"d", b"NOOP"), [b"d OK NOOP completed."])
        self.assertTrue(r.cmd(b"e", b"FROBNICATE")[-1].startswith(b"e BAD"))
        self.assertTrue(r.cmd(b"f", b"UID NOOP")[-1].startswith(b"f BAD"))
        # After login the limit is 64 KiB: a 20 KiB line is parsed.
        self.assertTrue(r.cmd(b"g", b'LOGIN "%s" "%s"' % (ALICE.encode(), ALICE_PW.encode()))
                        [-1].startswith(b"g OK"))
        lines = r.cmd(b"h", big_id)
        self.assertTrue(lines[-1].startswith(b"h OK"), lines[-1])
        lines = r.cmd(b"i", b'ID ("name" "x"' + b' "a" "b"' * 40 + b")")
        self.assertTrue(lines[-1].startswith(b"i BAD"), lines[-1])   # over 30 pairs
        self.assertEqual(r.cmd(b"j", b"NOOP"), [b"j OK NOOP completed."])
        # A client that keeps sending garbage is disconnected.
        r.send(b"garbage\r\n" * 30)
        self.assertTrue(r.closed(), "a flood of bad commands was not disconnected")
        self.assertIn(b"* BYE", r.buf)

    def test_announced_huge_literals_cost_no_memory(self):
        pid = self.srv.imapd_pid()
        conns = []
        # Warm up: one full login and a connection, so that lazily allocated
        # state (TLS, sqlited client buffers) is not counted below.
        warm = self.raw_login()
        base = rss_kib(pid)
        for i in range(10):
            r = self.srv.raw()
            r.send(b"a LOGIN {4000000000}\r\n")
            conns.append(r)
            r = self.srv.raw(tls=False)     # (the per-IP limit counts per listener)
            r.send(b"a LOGIN {1000000}\r\n")          # within 1 MiB: "+ OK", then nothing
            self.assertTrue(r.line().startswith(b"+"))
            r.send(b"x" * 1000)
            conns.append(r)
        for r in conns[::2]:
            self.assertTrue(r.line().startswith(b"a BAD"))   # over 1 MiB: refused at once
        time.sleep(0.5)
        grown = rss_kib(pid) - base
        per_conn = grown / len(conns)
        sys.stderr.write(f"\n[imap] RSS growth for {len(conns)} connections announcing "
                         f"huge literals: {grown} KiB ({per_conn:.1f} KiB each)\n")
        if sanitized(pid):
            return    # ASan's shadow memory and quarantine make RSS meaningless
        self.assertLess(per_conn, 64, f"{per_conn:.1f} KiB per connection")
        for r in conns:
            r.close()
        warm.close()

    # ---- COMPRESS ----

    def test_compress_deflate(self):
        r = self.raw_login()
        self.assertTrue(r.cmd(b"a", b"COMPRESS FOO")[-1].startswith(b"a BAD"))
        r.send(b"b COMPRESS DEFLATE\r\n")
        self.assertEqual(r.line(), b"b OK DEFLATE active.")
        z = Deflate(r)
        z.send(b"c NOOP\r\n")
        self.assertEqual(z.until_tagged(b"c"), [b"c OK NOOP completed."])
        z.send(b"d COMPRESS DEFLATE\r\n")
        self.assertEqual(z.until_tagged(b"d"), [b"d NO [COMPRESSIONACTIVE] DEFLATE is already "
                                                 b"active."])
        # Pipelined and larger than one inflate chunk.
        z.send(b"".join(b"e%d ID (\"name\" \"%s\")\r\n" % (i, b"z" * 900) for i in range(40)))
        for i in range(40):
            lines = z.until_tagged(b"e%d" % i)
            self.assertTrue(lines[-1].startswith(b"e%d OK" % i))
        z.send(b"f CAPABILITY\r\n")
        lines = z.until_tagged(b"f")
        self.assertIn(b"COMPRESS=DEFLATE", lines[0])
        z.send(b"g LOGOUT\r\n")
        self.assertEqual(z.until_tagged(b"g")[0], b"* BYE Logging out")
        r.close()
        # Before login COMPRESS is not allowed.
        r = self.srv.raw()
        self.assertTrue(r.cmd(b"a", b"COMPRESS DEFLATE")[-1].startswith(b"a BAD"))
        r.close()

    # ---- IDLE and events ----

    def select_inbox(self, r, tag=b"s"):
        lines = r.cmd(tag, b"SELECT INBOX")
        if not lines[-1].startswith(tag + b" OK"):
            self.skipTest("SELECT does not work yet: " + lines[-1].decode(errors="replace"))
        return int([ln for ln in lines if ln.endswith(b" EXISTS")][0].split()[1])

    def idle_sees_delivery(self, r, deliver, first_exists):
        r.send(b"i IDLE\r\n")
        self.assertEqual(r.line(), b"+ idling")
        t0 = time.monotonic()
        deliver()
        r.s.settimeout(5)
        line = r.line()
        elapsed = time.monotonic() - t0
        self.assertEqual(line, b"* %d EXISTS" % (first_exists + 1))
        self.assertLess(elapsed, 1.0, f"IDLE heard of the delivery after {elapsed:.2f} s")
        r.send(b"DONE\r\n")
        self.assertEqual(r.until_tagged(b"i")[-1], b"i OK Idle completed.")

    def test_idle_reports_a_delivery_within_a_second(self):
        r = self.raw_login(user=BOB, pw=BOB_PW)
        n = self.select_inbox(r)
        self.idle_sees_delivery(r, lambda: self.srv.deliver(BOB, message(1)), n)
        # NOOP after another delivery reports it too.
        self.srv.deliver(BOB, message(2))
        time.sleep(0.2)
        self.assertEqual(r.cmd(b"n", b"NOOP"), [b"* %d EXISTS" % (n + 2), b"n OK NOOP completed."])
        # Anything but DONE ends IDLE with BAD.
        r.send(b"j IDLE\r\n")
        self.assertEqual(r.line(), b"+ idling")
        r.send(b"NOT DONE\r\n")
        self.assertTrue(r.until_tagged(b"j")[-1].startswith(b"j BAD"))
        r.close()

    def test_idle_on_another_process_sees_the_change(self):
        ports = self.srv.start_imapd()
        other = self.srv.raw(port=ports[0])
        self.assertTrue(other.cmd(b"l", b'LOGIN "%s" "%s"' % (BOB.encode(), BOB_PW.encode()))
                        [-1].startswith(b"l OK"))
        n = self.select_inbox(other)
        first = self.srv.login(BOB, BOB_PW)

        def append_through_first():
            typ, data = first.append("INBOX", None, None, message(3))
            if typ != "OK":       # APPEND not there yet: DELIVER instead
                self.srv.deliver(BOB, message(3))
        self.idle_sees_delivery(other, append_through_first, n)
        first.logout()
        other.close()

    def test_updates_from_other_sessions(self):
        user, pw = "dave@example.org", "dave's imap password"
        self.srv.add_alias(user, pw)
        for i in range(4):
            self.srv.deliver(user, message(i))
        a = self.raw_login(user=user, pw=pw)
        b = self.raw_login(user=user, pw=pw)
        self.assertEqual(self.select_inbox(a), 4)
        self.select_inbox(b)

        def settle(r, tag, cmd):
            time.sleep(0.2)           # the other session's event reaches this one
            return r.cmd(tag, cmd)
        self.assertTrue(b.cmd(b"x", b"STORE 2 +FLAGS.SILENT (\\Deleted)")[-1].startswith(b"x OK"))
        self.assertTrue(b.cmd(b"y", b"EXPUNGE")[-1].startswith(b"y OK"))
        # FETCH by sequence number: no EXPUNGE (RFC 3501 7.4.1); NOOP then reports it.
        lines = settle(a, b"f", b"FETCH 1:* (FLAGS)")
        self.assertTrue(lines[-1].startswith(b"f OK"))
        self.assertFalse([ln for ln in lines if ln.endswith(b"EXPUNGE")], lines)
        self.assertEqual(a.cmd(b"n", b"NOOP"), [b"* 2 EXPUNGE", b"n OK NOOP completed."])
        self.assertEqual(a.cmd(b"n", b"NOOP"), [b"n OK NOOP completed."])
        # Another session's flags: an untagged FETCH with the UID.
        self.assertTrue(b.cmd(b"z", b"STORE 1 +FLAGS.SILENT (\\Seen $Junk)")[-1].startswith(b"z OK"))
        self.assertEqual(settle(a, b"n", b"NOOP"), [b"* 1 FETCH (UID 1 FLAGS (\\Seen $Junk))",
                                                    b"n OK NOOP completed."])
        # CONDSTORE adds MODSEQ; QRESYNC reports VANISHED (after a UID command too).
        a.cmd(b"e", b"ENABLE QRESYNC")
        self.assertTrue(b.cmd(b"z", b"STORE 3 +FLAGS.SILENT (\\Flagged)")[-1].startswith(b"z OK"))
        lines = settle(a, b"n", b"NOOP")
        self.assertRegex(lines[0], rb"^\* 3 FETCH \(UID 4 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)$")
        b.cmd(b"x", b"STORE 1:2 +FLAGS.SILENT (\\Deleted)")
        self.assertTrue(b.cmd(b"y", b"EXPUNGE")[-1].startswith(b"y OK"))
        lines = settle(a, b"u", b"UID FETCH 4 (FLAGS)")
        self.assertIn(b"* VANISHED 1,3", lines)
        self.assertTrue(lines[-1].startswith(b"u OK"))
        # A new message through the other session: EXISTS.
        self.assertTrue(b.cmd(b"p", b"APPEND INBOX {12+}\r\nSubject: x\r\n")[-1].startswith(b"p OK"))
        self.assertEqual(settle(a, b"n", b"NOOP"), [b"* 2 EXISTS", b"n OK NOOP completed."])
        a.close()
        b.close()

    # ---- the e2e flow ----

    def test_delivery_while_locked_appears_once_at_login(self):
        user, pw = "carol@example.org", "carol's imap password"
        self.srv.add_alias(user, pw)
        body = message(42)
        self.assertEqual(self.srv.deliver(user, body), [user.encode()])
        c = self.srv.login(user, pw)
        typ, data = c.select("INBOX")
        if typ != "OK":
            self.skipTest("SELECT does not work yet")
        self.assertEqual(int(data[0]), 1)
        typ, data = c.fetch("1", "(BODY.PEEK[])")
        if typ == "OK" and data and isinstance(data[0], tuple):
            self.assertEqual(data[0][1], body)
        c.logout()
        c = self.srv.login(user, pw)
        self.assertEqual(int(c.select("INBOX")[1][0]), 1, "the message appeared twice")
        c.logout()


class ImapSharedWork(unittest.TestCase):
    """One imapd serving many connections of one user: one CHANGES per event
    for all the IDLE sessions of a mailbox, one sqlited session per alias."""

    IDLERS = 300

    @classmethod
    def setUpClass(cls):
        cls.srv = ImapServer(config={"imap_max_conns_per_ip": str(cls.IDLERS + 20)})

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop_checked()

    def stats(self):
        with self.srv.rpc() as c:
            return rpcclient.stats(c.call(rpcclient.OP_STATS))

    def login(self, user, pw):
        r = self.srv.raw(tls=False)
        lines = r.cmd(b"l", b'LOGIN "%s" "%s"' % (user.encode(), pw.encode()))
        self.assertTrue(lines[-1].startswith(b"l OK"), lines[-1])
        return r

    def append(self, r, i):
        msg = message(i)
        lines = r.cmd(b"a", b"APPEND INBOX {%d+}\r\n%s" % (len(msg), msg))
        self.assertTrue(lines[-1].startswith(b"a OK"), lines[-1])

    def test_idlers_of_a_mailbox_share_one_changes_per_event(self):
        user, pw = "erin@example.org", "erin's imap password"
        self.srv.add_alias(user, pw)
        appender = self.login(user, pw)
        # The requests an APPEND costs sqlited with nobody watching.
        before = self.stats()["requests"]
        for i in range(10):
            self.append(appender, i)
        per_append = (self.stats()["requests"] - before) / 10
        idlers = []
        before = self.stats()["requests"]
        for _ in range(self.IDLERS):
            r = self.login(user, pw)
            lines = r.cmd(b"s", b"SELECT INBOX")
            self.assertIn(b"* 10 EXISTS", lines)
            r.send(b"i IDLE\r\n")
            self.assertEqual(r.line(), b"+ idling")
            idlers.append(r)
        time.sleep(1.0)              # IDLE's first syncs are over
        setup = self.stats()["requests"] - before
        sys.stderr.write(f"\n[imap] {self.IDLERS} LOGIN+SELECT+IDLE: {setup} sqlited requests\n")
        # A SELECT that changes nothing is no event: the sessions already in
        # IDLE do not sync for each newcomer (that would be ~45,000).
        self.assertLessEqual(setup, self.IDLERS * 8)
        before = self.stats()["requests"]
        events = 50
        for i in range(events):
            self.append(appender, 100 + i)
        for r in idlers:
            r.s.settimeout(60)
            last = 10
            while last < 10 + events:
                line = r.line()
                m = re.match(rb"^\* (\d+) EXISTS$", line)
                self.assertIsNotNone(m, line)
                self.assertGreater(int(m.group(1)), last, line)
                last = int(m.group(1))
            self.assertEqual(last, 10 + events)
        spent = self.stats()["requests"] - before
        sys.stderr.write(f"\n[imap] {events} APPENDs with {self.IDLERS} IDLE sessions: "
                         f"{spent} sqlited requests (an APPEND alone: {per_append:.1f})\n")
        # One CHANGES per event for this imapd (fewer when events coalesce),
        # not one per session: 300 per event would be 15,000.
        self.assertLessEqual(spent, events * (per_append + 1) + 10)
        for r in idlers:
            r.send(b"DONE\r\n")
            self.assertEqual(r.until_tagged(b"i")[-1], b"i OK Idle completed.")
            r.close()
        appender.close()

    def test_logins_share_one_sqlited_session_that_ends_with_the_last(self):
        user, pw = "frank@example.org", "frank's imap password"
        self.srv.add_alias(user, pw)
        wait_for(lambda: self.stats()["sessions"] == 0, timeout=20)
        base = self.stats()["sessions"]
        keeper = self.login(user, pw)
        self.assertEqual(self.stats()["sessions"], base + 1)
        for _ in range(20):
            r = self.login(user, pw)
            self.assertTrue(r.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK"))
            self.assertEqual(r.cmd(b"o", b"LOGOUT")[-1], b"o OK Logout completed.")
            r.close()
        # The keeper's session is the shared one: still there and working.
        self.assertTrue(wait_for(lambda: self.stats()["sessions"] == base + 1, timeout=10),
                        self.stats()["sessions"])
        self.assertTrue(keeper.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK"))
        # A wrong password is still refused while the session is held.
        r = self.srv.raw(tls=False)
        self.assertTrue(r.cmd(b"l", b'LOGIN "%s" "wrong password"' % user.encode())[-1]
                        .startswith(b"l NO [AUTHENTICATIONFAILED]"))
        r.close()
        self.assertEqual(keeper.cmd(b"o", b"LOGOUT")[-1], b"o OK Logout completed.")
        keeper.close()
        # The last user gone, the session ends at once (no idle timeout).
        self.assertTrue(wait_for(lambda: self.stats()["sessions"] == base, timeout=10),
                        self.stats()["sessions"])
        # 20 LOGIN/LOGOUT cycles alone leave nothing behind either.
        for _ in range(20):
            r = self.login(user, pw)
            self.assertEqual(r.cmd(b"o", b"LOGOUT")[-1], b"o OK Logout completed.")
            r.close()
        self.assertTrue(wait_for(lambda: self.stats()["sessions"] == base, timeout=10),
                        self.stats()["sessions"])


class ImapDaemonLifecycle(unittest.TestCase):
    """Tests that kill or stop processes: each has its own installation."""

    def setUp(self):
        self.srv = ImapServer()
        self.srv.add_alias(ALICE, ALICE_PW)

    def tearDown(self):
        self.srv.stop()
        reports = self.srv.sanitizer_reports()
        self.assertFalse(reports, "\n".join(reports[:20]))

    def test_sqlited_unreachable_gives_unavailable_never_ok(self):
        r = self.srv.raw()
        self.assertTrue(r.cmd(b"a", b'LOGIN "%s" "%s"' % (ALICE.encode(), ALICE_PW.encode()))
                        [-1].startswith(b"a OK"))
        selected = r.cmd(b"b", b"SELECT INBOX")[-1].startswith(b"b OK")
        self.srv.kill_sqlited()
        time.sleep(0.3)
        if selected:
            self.assertEqual(r.cmd(b"c", b"NOOP")[-1],
                             b"c NO [UNAVAILABLE] NOOP failed: temporary server failure, "
                             b"try again later.")
            lines = r.cmd(b"d", b"STATUS INBOX (MESSAGES)")
            self.assertTrue(lines[-1].startswith(b"d NO"), lines[-1])
        lines = r.cmd(b"e", b"SELECT INBOX")
        self.assertTrue(lines[-1].startswith(b"e NO"), lines[-1])
        r2 = self.srv.raw()
        lines = r2.cmd(b"f", b'LOGIN "%s" "%s"' % (ALICE.encode(), ALICE_PW.encode()))
        self.assertEqual(lines, [b"f NO [UNAVAILABLE] Temporary server failure, try again "
                                 b"later."])
        # Back: it works again.
        self.srv.start_sqlited()
        ok = wait_for(lambda: r2.cmd(b"g", b'LOGIN "%s" "%s"' % (
            ALICE.encode(), ALICE_PW.encode()))[-1].startswith(b"g OK"), 15)
        self.assertTrue(ok, "login did not work after sqlited came back")
        r.close()
        r2.close()

    def test_sigterm_says_bye_and_exits(self):
        r = self.srv.raw()
        self.assertTrue(r.cmd(b"a", b'LOGIN "%s" "%s"' % (ALICE.encode(), ALICE_PW.encode()))
                        [-1].startswith(b"a OK"))
        idle = self.srv.raw(tls=False)
        p = self.srv.imapd
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(20), 0)
        self.assertTrue(r.closed())
        self.assertIn(b"* BYE", r.buf)
        self.assertTrue(idle.closed())
        self.assertIn(b"* BYE", idle.buf)

    def test_idle_without_redis_syncs_every_30_seconds(self):
        srv = ImapServer(config={"redis_url": "unix:" + os.path.join(self.srv.tmp, "none.sock")})
        try:
            srv.add_alias(BOB, BOB_PW)
            r = srv.raw()
            self.assertTrue(r.cmd(b"a", b'LOGIN "%s" "%s"' % (BOB.encode(), BOB_PW.encode()))
                            [-1].startswith(b"a OK"))
            if not r.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK"):
                self.skipTest("SELECT does not work yet")
            r.send(b"i IDLE\r\n")
            self.assertEqual(r.line(), b"+ idling")
            t0 = time.monotonic()
            srv.deliver(BOB, message(1))
            r.s.settimeout(40)
            line = r.line()
            while line == b"* OK Still here":
                line = r.line()
            self.assertEqual(line, b"* 1 EXISTS")
            self.assertLess(time.monotonic() - t0, 32)
            r.send(b"DONE\r\n")
            self.assertTrue(r.until_tagged(b"i")[-1].startswith(b"i OK"))
            r.close()
        finally:
            srv.stop()

    def test_redis_restart_resubscribes(self):
        r = self.srv.raw()
        self.assertTrue(r.cmd(b"a", b'LOGIN "%s" "%s"' % (ALICE.encode(), ALICE_PW.encode()))
                        [-1].startswith(b"a OK"))
        lines = r.cmd(b"s", b"SELECT INBOX")
        if not lines[-1].startswith(b"s OK"):
            self.skipTest("SELECT does not work yet")
        srv = self.srv
        srv.redis.kill()
        srv.redis.wait()
        srv.procs.remove(srv.redis)
        srv._start_redis()
        # Both sqlited and imapd reconnect (backoff up to a few seconds).
        self.assertTrue(wait_for(lambda: srv.log_text().count("imapd: connected to Redis") >= 2
                                 and srv.log_text().count("sqlited: connected to Redis") >= 2,
                                 30), srv.log_text()[-1500:])
        r.send(b"i IDLE\r\n")
        self.assertEqual(r.line(), b"+ idling")
        t0 = time.monotonic()
        srv.deliver(ALICE, message(7))
        r.s.settimeout(5)
        self.assertEqual(r.line(), b"* 1 EXISTS")
        self.assertLess(time.monotonic() - t0, 1.0)
        r.send(b"DONE\r\n")
        self.assertTrue(r.until_tagged(b"i")[-1].startswith(b"i OK"))
        r.close()


class ImapUp(unittest.TestCase):
    """`sealmail up` starts sealmail-imapd and says how to connect (the README's run command)."""

    def test_up_starts_imapd_and_prints_how_to_connect(self):
        ImapServer(start=False)      # skips when something is not built
        from imap_server import SEALMAIL, free_port
        import tempfile
        with tempfile.TemporaryDirectory(prefix="smimapup-") as tmp:
            data, conf = os.path.join(tmp, "d"), os.path.join(tmp, "d", "sealmail.conf")
            r = subprocess.run([SEALMAIL, "init", "--config", conf, "--data-dir", data],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            imaps, alt, imap = free_port(), free_port(), free_port()
            out = []
            for line in open(conf).read().splitlines():
                key = line.split("=", 1)[0].strip() if "=" in line and not line.startswith("#") else ""
                if key == "imaps_port":
                    line = f"imaps_port = {imaps}"
                elif key == "imaps_alt_port":
                    line = f"imaps_alt_port = {alt}"
                elif key == "imap_port":
                    line = f"imap_port = {imap}"
                elif key == "sqlited_port":
                    line = f"sqlited_port = {free_port()}"
                elif key.endswith("_port"):
                    line = f"{key} = 0"
                elif key == "listen_address":
                    line = "listen_address = 127.0.0.1"
                out.append(line)
            with open(conf, "w") as f:
                f.write("\n".join(out) + "\n")
            p = subprocess.Popen([SEALMAIL, "up", "--config", conf], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
            try:
                lines = []
                for line in p.stdout:
                    lines.append(line)
                    if "ready" in line or len(lines) > 50:
                        break
                text = "".join(lines)
                self.assertRegex(text, rf"(?m)^imapd\s+127\.0\.0\.1:{imaps} \(imaps\), "
                                       rf"127\.0\.0\.1:{alt} \(imaps\), "
                                       rf"127\.0\.0\.1:{imap} \(imap\)$")
                self.assertIn(f"connect: a mail client to 127.0.0.1 port {imaps} (IMAP, SSL/TLS",
                              text)
                self.assertIn(f"openssl s_client -quiet -connect 127.0.0.1:{imaps}", text)
                # ... and that command gets the greeting.
                r = subprocess.run(["openssl", "s_client", "-quiet", "-connect",
                                    f"127.0.0.1:{imaps}"], input=b"a LOGOUT\r\n",
                                   capture_output=True, timeout=30)
                self.assertIn(b"* OK [CAPABILITY IMAP4rev1", r.stdout)
                self.assertIn(b"a OK Logout completed.", r.stdout)
                # The second implicit-TLS port (2993 in a default install) too.
                r = subprocess.run(["openssl", "s_client", "-quiet", "-connect",
                                    f"127.0.0.1:{alt}"], input=b"a LOGOUT\r\n",
                                   capture_output=True, timeout=30)
                self.assertIn(b"* OK [CAPABILITY IMAP4rev1", r.stdout)
            finally:
                p.send_signal(signal.SIGTERM)
                self.assertEqual(p.wait(30), 0)


class RemoteSqlited(unittest.TestCase):
    """imapd reaches sqlited over TCP with TLS (sqlited_host, sqlited_tls =
    always), verifying its certificate against sqlited_ca."""

    def test_tls_to_sqlited(self):
        from imap_server import free_port
        conf = {"sqlited_port": free_port(), "sqlited_host": "127.0.0.1",
                "sqlited_tls": "always"}
        with ImapServer(config=conf) as srv:
            srv.add_alias("tls@example.org", "tls password 1")
            c = srv.login("tls@example.org", "tls password 1")
            self.assertEqual(c.append("INBOX", None, None, b"Subject: t\r\n\r\nbody\r\n")[0],
                             "OK")
            self.assertEqual(c.select("INBOX")[0], "OK")
            c.logout()

    def test_wrong_ca_is_refused(self):
        from imap_server import free_port
        import tempfile
        with tempfile.TemporaryDirectory(prefix="smca-") as tmp:
            other = os.path.join(tmp, "other.pem")
            r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                                os.path.join(tmp, "k.pem"), "-out", other, "-days", "1",
                                "-subj", "/CN=127.0.0.1", "-addext",
                                "subjectAltName=IP:127.0.0.1"],
                               capture_output=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            conf = {"sqlited_port": free_port(), "sqlited_host": "127.0.0.1",
                    "sqlited_tls": "always"}
            with ImapServer(config=conf) as srv:
                srv.add_alias("tls@example.org", "tls password 1")
                # A second imapd that trusts another certificate only.
                imaps, _ = srv.start_imapd(config={"sqlited_ca": other})
                c = imaplib.IMAP4_SSL("127.0.0.1", imaps,
                                      ssl_context=ssl._create_unverified_context())
                typ, data = "NO", [b""]
                try:
                    typ, data = c.login("tls@example.org", "tls password 1")
                except c.error as e:
                    data = [str(e).encode()]
                self.assertNotEqual(typ, "OK")
                self.assertIn(b"UNAVAILABLE", data[0])


if __name__ == "__main__":
    unittest.main()
