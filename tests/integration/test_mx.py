"""The MX frontend (sealmail-mx) with real clients on loopback: swaks, smtplib and
raw sockets against redis + sqlited + sealmail-mx (mx_server.py).

Covers: delivery with Received and Authentication-Results headers (in the
spool while the mailbox is locked, then in INBOX, also over POP3), plus
addressing and the catch-all, every SMTP smuggling variant of issue 5, the
relay matrix, RCPT TO:<Postmaster>, limits (SIZE, body size, recipients, line length, errors,
commands before MAIL, connections per IP), PIPELINING, BDAT, SMTPUTF8,
STARTTLS injection, rate limits in Redis (and in memory without it), a
forward queued with SRS, and DMARC p=reject with the DNS namespace of
dns_zone.py.
"""
import os
import poplib
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mx_server  # noqa: E402
from mx_server import MxServer, wait_for  # noqa: E402

PW = "alice's password"
MSG = (b"From: Bob <bob@example.net>\r\nTo: alice@example.org\r\n"
       b"Subject: hello\r\nMessage-ID: <m1@example.net>\r\n\r\nfirst line\r\n"
       b".leading dot\r\nlast line\r\n")
STUFFED = MSG.replace(b"\r\n.", b"\r\n..")   # as DATA carries it


def session(srv, sender=b"bob@example.net", rcpts=(b"alice@example.org",)):
    """A raw session after EHLO, MAIL and RCPT (each answered 250)."""
    r = srv.raw()
    code, _ = r.cmd(b"EHLO client.test")
    assert code == 250
    code, lines = r.cmd(b"MAIL FROM:<" + sender + b">")
    assert code == 250, lines
    for rc in rcpts:
        code, lines = r.cmd(b"RCPT TO:<" + rc + b">")
        assert code == 250, lines
    return r


class MxDeliveryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # db_idle_seconds 0: a mailbox is closed (locked) as soon as its last
        # session ends, so a delivery waits in the spool until the next login.
        cls.srv = MxServer(pop3=True, config={"db_idle_seconds": 0, "mx_max_errors": 100})
        cls.srv.add_alias("alice@example.org", PW)
        cls.srv.add_alias("carol@example.org", PW)   # never opened before the swaks test
        cls.srv.add_alias("@catchall.org", "catch-all password")
        cls.srv.add_alias("fwd@example.org", forwards=["someone@elsewhere.net"],
                          mailbox=False)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        assert cls.srv.sanitizer_reports() == [], cls.srv.sanitizer_reports()

    def tearDown(self):
        # Every test leaves alice's mailbox empty: read (and drain) it.
        self.srv.mailbox("alice@example.org", PW)

    def inbox(self, who="alice@example.org", pw=PW):
        return self.srv.mailbox(who, pw)

    def test_swaks_delivery_headers_spool_and_pop3(self):
        swaks = shutil.which("swaks")
        if swaks is None:
            self.skipTest("swaks is not installed")
        spooled = self.srv.spool_files()
        r = subprocess.run([swaks, "--server", "127.0.0.1", "--port", str(self.srv.mx_port),
                            "--helo", "client.test", "--from", "bob@example.net",
                            "--to", "carol@example.org", "--header", "Subject: via swaks",
                            "--body", "swaks body line"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("<-  250 2.0.0 Ok: queued as", r.stdout)
        # Durable before 250, and still sealed in the spool: nobody unlocked.
        self.assertEqual(self.srv.spool_files(), spooled + 1)
        if self.srv.want_pop3:
            p = poplib.POP3("127.0.0.1", self.srv.pop3_port, timeout=30)
            p.user("carol@example.org")
            p.pass_(PW)
            self.assertEqual(p.stat()[0], 1)
            raw = b"\r\n".join(p.retr(1)[1])
            p.quit()
        else:
            raw = self.inbox("carol@example.org")[0]
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"Received: from client.test ([127.0.0.1])"),
                        lines[0])
        self.assertIn(b"by mx.test (Sealmail) with ESMTP id ", head)
        self.assertIn(b"for <carol@example.org>;", head)
        self.assertIn(b"Authentication-Results: mx.test;", head)
        self.assertLess(head.index(b"Received:"), head.index(b"Authentication-Results:"))
        self.assertIn(b"Subject: via swaks", head)
        self.assertIn(b"swaks body line", body)

    def test_smtplib_message_intact_plus_and_catchall(self):
        with self.srv.smtp() as s:
            refused = s.sendmail("bob@example.net", ["alice+news@example.org",
                                                     "whoever@catchall.org"], MSG)
            self.assertEqual(refused, {})
        msgs = self.inbox()
        self.assertEqual(len(msgs), 1)
        self.assertTrue(msgs[0].endswith(MSG), msgs[0][-200:])  # dot unstuffed, intact
        self.assertIn(b"for <alice+news@example.org>", msgs[0])
        caught = self.inbox("@catchall.org", "catch-all password")
        self.assertEqual(len(caught), 1)
        self.assertIn(b"for <whoever@catchall.org>", caught[0])

    def test_duplicate_rcpt_gets_one_copy(self):
        r = session(self.srv, rcpts=(b"alice@example.org", b"ALICE@example.org"))
        self.assertEqual(r.cmd(b"DATA")[0], 354)
        r.send(STUFFED + b".\r\n")
        self.assertEqual(r.reply()[0], 250)
        r.close()
        self.assertEqual(len(self.inbox()), 1)

    def test_smuggling_variants_never_end_data(self):
        variants = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n",
                    b"\r\r\n.\r\r\n"]
        for v in variants:
            with self.subTest(variant=v):
                r = session(self.srv)
                self.assertEqual(r.cmd(b"DATA")[0], 354)
                smuggled = (b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<alice@example.org>"
                            b"\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n")
                r.send(b"Subject: outer\r\n\r\nouter" + v + smuggled + b".\r\n")
                code, lines = r.reply()
                self.assertEqual(code, 550, lines)
                self.assertIn(b"5.6.0", lines[0])
                # Nothing of the smuggled part was run as a command.
                self.assertTrue(r.no_reply(0.5), r.buf)
                self.assertEqual(r.cmd(b"QUIT")[0], 221)
                r.close()
                self.assertEqual(self.inbox(), [], v)

    def test_relay_matrix(self):
        refused = [
            b"bob%elsewhere.net@example.org",     # percent hack
            b"@example.org:bob@elsewhere.net",    # source route
            b"@mx.test:alice@example.org",        # source route, even to a local user
            b"elsewhere.net!bob@example.org",     # bang path
            b"\"alice\"@example.org",             # quoted local part
            b"\"bob@elsewhere.net\"@example.org",
            b"alice@[127.0.0.1]",                 # IP literal
            b"alice@example.org.",                # trailing dot
            b"bob@elsewhere.net",                 # domain not served
            b"alice@sub.example.org",
            b"alice@example.org@elsewhere.net",
        ]
        r = session(self.srv, rcpts=())
        for rc in refused:
            with self.subTest(rcpt=rc):
                code, lines = r.cmd(b"RCPT TO:<" + rc + b">")
                self.assertIn(code, (550, 501, 553), lines)
                if code == 550:
                    self.assertIn(b"5.7.1", lines[0])
            r.cmd(b"RSET")
            r.cmd(b"MAIL FROM:<bob@example.net>")
        code, lines = r.cmd(b"RCPT TO:<bob@elsewhere.net>")
        self.assertEqual((code, lines[0][:9]), (550, b"550 5.7.1"))
        code, lines = r.cmd(b"RCPT TO:<nobody@example.org>")
        self.assertEqual((code, lines[0][:9]), (550, b"550 5.1.1"))
        for ok in (b"alice+tag@example.org", b"ALICE@Example.ORG", b"x@catchall.org"):
            self.assertEqual(r.cmd(b"RCPT TO:<" + ok + b">")[0], 250, ok)
        # Nothing refused was accepted: DATA goes to the three accepted ones only.
        self.assertEqual(r.cmd(b"RSET")[0], 250)
        r.close()

    def test_pipelining_everything_in_one_write(self):
        r = self.srv.raw()
        r.send(b"EHLO client.test\r\nMAIL FROM:<bob@example.net>\r\n"
               b"RCPT TO:<alice@example.org>\r\nRCPT TO:<nobody@example.org>\r\n"
               b"DATA\r\n" + STUFFED + b".\r\nQUIT\r\n")
        self.assertEqual(r.reply()[0], 250)
        self.assertEqual([r.reply()[0] for _ in range(5)], [250, 250, 550, 354, 250])
        self.assertEqual(r.reply()[0], 221)
        r.close()
        msgs = self.inbox()
        self.assertEqual(len(msgs), 1)
        self.assertTrue(msgs[0].endswith(MSG))

    def test_bdat_chunks_and_bdat_zero_last(self):
        r = session(self.srv)
        part1, part2 = MSG[:30], MSG[30:]
        r.send(b"BDAT %d\r\n" % len(part1) + part1)
        code, lines = r.reply()
        self.assertEqual(code, 250, lines)
        # The second chunk and an empty LAST one pipelined in one write.
        r.send(b"BDAT %d\r\n" % len(part2) + part2 + b"BDAT 0 LAST\r\n")
        self.assertEqual(r.reply()[0], 250)
        code, lines = r.reply()
        self.assertEqual(code, 250, lines)
        self.assertIn(b"queued as", lines[0])
        # A single LAST chunk, with bytes that look like commands and a bare LF.
        r.cmd(b"MAIL FROM:<bob@example.net>")
        r.cmd(b"RCPT TO:<alice@example.org>")
        body = b"Subject: b\r\n\r\nQUIT\r\n.\r\nbare\nlf\r\n"
        r.send(b"BDAT %d LAST\r\n" % len(body) + body)
        self.assertEqual(r.reply()[0], 250)
        # DATA after BDAT in one transaction is refused; BDAT without MAIL too.
        r.send(b"BDAT 3\r\nabc")
        self.assertEqual(r.reply()[0], 503)
        self.assertEqual(r.cmd(b"QUIT")[0], 221)
        r.close()
        msgs = self.inbox()
        self.assertEqual(len(msgs), 2)
        self.assertTrue(msgs[0].endswith(MSG))
        self.assertTrue(msgs[1].endswith(body))

    def test_smtputf8(self):
        sender = "jöhn@exämple.net".encode()
        r = self.srv.raw()
        r.cmd(b"EHLO client.test")
        code, lines = r.cmd(b"MAIL FROM:<" + sender + b">")
        self.assertEqual(code, 553, lines)
        self.assertIn(b"5.6.7", lines[0])
        self.assertEqual(r.cmd(b"MAIL FROM:<" + sender + b"> SMTPUTF8")[0], 250)
        self.assertEqual(r.cmd(b"RCPT TO:<alice@example.org>")[0], 250)
        # A UTF-8 local part is refused by the directory (aliases are ASCII).
        code, lines = r.cmd("RCPT TO:<ålice@example.org>".encode())
        self.assertEqual(code, 550, lines)
        self.assertEqual(r.cmd(b"DATA")[0], 354)
        r.send("Subject: ünïcode\r\n\r\nbody\r\n.\r\n".encode())
        self.assertEqual(r.reply()[0], 250)
        r.cmd(b"MAIL FROM:<bob@example.net>")
        code, lines = r.cmd("RCPT TO:<ålice@example.org>".encode())
        self.assertEqual(code, 553, lines)
        r.close()
        msgs = self.inbox()
        self.assertEqual(len(msgs), 1)
        self.assertIn(b"with UTF8SMTP id", msgs[0])
        self.assertIn("Subject: ünïcode".encode(), msgs[0])

    def test_starttls_injection(self):
        r = self.srv.raw()
        code, lines = r.cmd(b"EHLO client.test")
        self.assertIn(b"250-STARTTLS", lines)
        r.send(b"STARTTLS\r\nRSET\r\n")
        code, lines = r.reply()
        self.assertEqual(code, 220, lines)
        r.starttls()
        self.assertTrue(r.no_reply(1.0), r.buf)        # RSET was not answered
        # The session was reset: EHLO again, and no STARTTLS offered now.
        self.assertEqual(r.cmd(b"MAIL FROM:<bob@example.net>")[0], 503)
        code, lines = r.cmd(b"EHLO client.test")
        self.assertEqual(code, 250)
        self.assertNotIn(b"250-STARTTLS", lines)
        self.assertEqual(r.cmd(b"MAIL FROM:<bob@example.net>")[0], 250)
        self.assertEqual(r.cmd(b"RCPT TO:<alice@example.org>")[0], 250)
        self.assertEqual(r.cmd(b"DATA")[0], 354)
        r.send(STUFFED + b".\r\n")
        self.assertEqual(r.reply()[0], 250)
        r.close()
        msgs = self.inbox()
        self.assertEqual(len(msgs), 1)
        self.assertIn(b"with ESMTPS id", msgs[0])
        # The Received header names the protocol and cipher (as a comment).
        received = msgs[0].split(b"\r\n\tby ", 1)[0]
        self.assertRegex(received, rb"\r\n\t\(using TLSv1\.[23] with cipher [A-Z0-9_-]+ "
                                   rb"\(\d+/\d+ bits\)\)$")

    def test_forward_queued_with_srs(self):
        # sqlited queues a forward (sealed outbound queue, SRS sender) before DELIVER
        # answers: 250 then, and `sealmail queue list` shows the entry.
        r = session(self.srv, sender=b"bob@orig.example",
                    rcpts=(b"fwd@example.org", b"alice@example.org"))
        self.assertEqual(r.cmd(b"DATA")[0], 354)
        r.send(STUFFED + b".\r\n")
        code, lines = r.reply()
        self.assertEqual(code, 250, lines)
        r.close()
        out = self.srv.cli("queue", "list").stdout
        rows = re.findall(r"^([0-9a-f]{32})  from <(.*?)>  to (.*?)  (\d+) bytes  for <(.*?)>",
                          out, re.M)
        self.assertEqual(len(rows), 1, out)
        qid, sender, targets, size, rcpt = rows[0]
        self.assertRegex(sender, r"^SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=orig\.example=bob@"
                                 r"example\.org$")
        self.assertIn("<someone@elsewhere.net>", targets)
        self.assertEqual(rcpt, "fwd@example.org")
        shown = subprocess.run([mx_server.SEALMAIL, "queue", "show", qid, "--config",
                                self.srv.conf], capture_output=True, timeout=60)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn(b"for <fwd@example.org>", shown.stdout)
        self.assertTrue(shown.stdout.endswith(MSG), shown.stdout[-200:])
        self.assertEqual(len(self.inbox()), 1)      # alice got her copy too

    def test_misc_commands(self):
        r = self.srv.raw()
        self.assertTrue(r.greeting.startswith(b"220 mx.test ESMTP"))
        self.assertEqual(r.cmd(b"HELO client.test")[0], 250)
        self.assertEqual(r.cmd(b"VRFY alice")[0], 252)
        self.assertEqual(r.cmd(b"EXPN list")[0], 502)
        self.assertEqual(r.cmd(b"HELP")[0], 214)
        self.assertEqual(r.cmd(b"NOOP")[0], 250)
        self.assertEqual(r.cmd(b"AUTH PLAIN AGFsaWNlAHg=")[0], 502)
        self.assertEqual(r.cmd(b"DATA")[0], 503)
        self.assertEqual(r.cmd(b"RCPT TO:<alice@example.org>")[0], 503)
        # HELO (not EHLO): no ESMTP parameters.
        self.assertEqual(r.cmd(b"MAIL FROM:<bob@example.net> SIZE=10")[0], 555)
        self.assertEqual(r.cmd(b"QUIT")[0], 221)
        self.assertTrue(r.closed())


class MxLimitsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = MxServer(config={"max_message_bytes": 20000, "mx_max_recipients": 3,
                                   "mx_max_line_bytes": 1000, "mx_max_errors": 6,
                                   "mx_max_commands_before_mail": 8,
                                   "mx_max_conns_per_ip": 4})
        for i in range(5):
            cls.srv.add_alias(f"u{i}@example.org", PW)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        assert cls.srv.sanitizer_reports() == [], cls.srv.sanitizer_reports()

    def test_size_parameter_too_big(self):
        r = self.srv.raw()
        r.cmd(b"EHLO client.test")
        code, lines = r.cmd(b"MAIL FROM:<bob@example.net> SIZE=20001")
        self.assertEqual((code, lines[0][:9]), (552, b"552 5.3.4"))
        self.assertEqual(r.cmd(b"MAIL FROM:<bob@example.net> SIZE=20000")[0], 250)
        r.close()

    def test_body_over_limit(self):
        r = session(self.srv, rcpts=(b"u0@example.org",))
        self.assertEqual(r.cmd(b"DATA")[0], 354)
        r.send(b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 300 + b".\r\n")
        code, lines = r.reply()
        self.assertEqual((code, lines[0][:9]), (552, b"552 5.3.4"))
        # The session is in sync: the next message goes through.
        self.assertEqual(r.cmd(b"MAIL FROM:<bob@example.net>")[0], 250)
        self.assertEqual(r.cmd(b"RCPT TO:<u0@example.org>")[0], 250)
        r.send(b"BDAT 30001 LAST\r\n" + b"y" * 30001)
        self.assertEqual(r.reply()[0], 552)
        r.close()
        self.assertEqual(self.srv.mailbox("u0@example.org", PW), [])

    def test_recipients_limit(self):
        r = session(self.srv, rcpts=(b"u0@example.org", b"u1@example.org",
                                     b"u2@example.org"))
        code, lines = r.cmd(b"RCPT TO:<u3@example.org>")
        self.assertEqual((code, lines[0][:9]), (452, b"452 4.5.3"))
        r.close()

    def test_line_length(self):
        r = self.srv.raw()
        r.cmd(b"EHLO client.test")
        code, lines = r.cmd(b"NOOP " + b"a" * 1200)
        self.assertEqual((code, lines[0][:9]), (500, b"500 5.5.2"))
        self.assertEqual(r.cmd(b"NOOP")[0], 250)     # still in sync
        # A DATA line over mx_max_line_bytes refuses the message.
        r.cmd(b"MAIL FROM:<bob@example.net>")
        r.cmd(b"RCPT TO:<u4@example.org>")
        r.cmd(b"DATA")
        r.send(b"Subject: long\r\n\r\n" + b"z" * 1500 + b"\r\n.\r\n")
        code, lines = r.reply()
        self.assertGreaterEqual(code, 500, lines)
        r.close()
        self.assertEqual(self.srv.mailbox("u4@example.org", PW), [])

    def test_errors_then_421(self):
        r = self.srv.raw()
        r.cmd(b"EHLO client.test")
        codes = [r.cmd(b"BOGUS")[0] for _ in range(5)]
        self.assertEqual(codes, [500] * 5)
        r.send(b"BOGUS\r\n")
        self.assertEqual(r.reply()[0], 500)
        code, lines = r.reply()
        self.assertEqual(code, 421, lines)
        self.assertTrue(r.closed())

    def test_commands_before_mail(self):
        r = self.srv.raw()
        codes = [r.cmd(b"NOOP")[0] for _ in range(8)]
        self.assertEqual(codes, [250] * 8)
        self.assertEqual(r.cmd(b"NOOP")[0], 421)
        self.assertTrue(r.closed())

    def test_connections_per_ip(self):
        held = [self.srv.raw() for _ in range(4)]
        s = socket.create_connection(("127.0.0.1", self.srv.mx_port), timeout=10)
        data = b""
        try:
            while True:
                chunk = s.recv(100)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        # Refused without a greeting, told why (net.h's limit_reply), closed.
        self.assertEqual(data, b"421 4.7.0 Too many connections from your address\r\n")
        s.close()
        for h in held:
            h.close()
        self.assertTrue(wait_for(lambda: self._greets(), 10))

    def _greets(self):
        try:
            r = self.srv.raw(timeout=2)
            r.close()
            return r.greeting.startswith(b"220")
        except (OSError, EOFError):
            return False


class MxPostmasterTest(unittest.TestCase):
    """RCPT TO:<Postmaster> (RFC 5321 4.5.1, no domain, any case) goes to
    postmaster@<hostname>, else postmaster@<hostname minus its first label>."""

    def rcpt(self, srv, path):
        r = srv.raw()
        r.cmd(b"EHLO client.test")
        self.assertEqual(r.cmd(b"MAIL FROM:<bob@example.net>")[0], 250)
        return r, r.cmd(b"RCPT TO:<" + path + b">")

    def send(self, srv, path, subject):
        r, (code, lines) = self.rcpt(srv, path)
        self.assertEqual(code, 250, lines)
        self.assertEqual(r.cmd(b"DATA")[0], 354)
        code, lines = r.cmd(b"Subject: " + subject + b"\r\n\r\nto the postmaster\r\n.")
        self.assertEqual(code, 250, lines)
        r.cmd(b"QUIT")
        r.close()

    def test_postmaster_without_domain(self):
        with MxServer(config={"hostname": "mx.example.org"}) as srv:
            srv.add_alias("alice@example.org", PW)
            # No postmaster alias anywhere: 550 5.1.1, and the log says what to do.
            r, (code, lines) = self.rcpt(srv, b"Postmaster")
            self.assertEqual((code, lines[0][:9]), (550, b"550 5.1.1"))
            r.close()
            self.assertTrue(wait_for(lambda: "postmaster@example.org; create one"
                                     in srv.log_text(), 10), srv.log_text()[-2000:])
            self.assertIn("no alias postmaster@mx.example.org or postmaster@example.org",
                          srv.log_text())
            # With a domain it is an ordinary address (unknown here).
            r, (code, _) = self.rcpt(srv, b"postmaster@example.org")
            self.assertEqual(code, 550)
            r.close()
            # postmaster@<parent of the hostname>, in any case of "Postmaster".
            srv.add_alias("postmaster@example.org", "postmaster password")
            self.send(srv, b"POSTMASTER", b"pm1")
            self.send(srv, b"postMaster", b"pm2")
            got = srv.mailbox("postmaster@example.org", "postmaster password")
            self.assertEqual([re.search(rb"Subject: (\S+)", m).group(1) for m in got],
                             [b"pm1", b"pm2"])
            self.assertIn(b"for <postmaster@example.org>;", got[0])
            # postmaster@<hostname> comes first once it exists.
            srv.add_alias("postmaster@mx.example.org", "host postmaster password")
            self.send(srv, b"Postmaster", b"pm3")
            self.assertEqual(srv.mailbox("postmaster@example.org", "postmaster password"),
                             [])
            got = srv.mailbox("postmaster@mx.example.org", "host postmaster password")
            self.assertEqual(len(got), 1)
            self.assertIn(b"Subject: pm3", got[0])
            # Still refused: a route, a quoted or empty domain form.
            for path in (b"@relay.example:Postmaster", b"\"Postmaster\"", b"Postmaster@"):
                r, (code, _) = self.rcpt(srv, path)
                self.assertIn(code, (501, 550, 553), path)
                r.close()
            srv.stop()
            self.assertEqual(srv.sanitizer_reports(), [])


class MxRateLimitTest(unittest.TestCase):
    def test_rates_in_redis_and_in_memory(self):
        with MxServer(config={"mx_rate_conns_per_ip_minute": 6,
                              "mx_rate_msgs_per_domain_day": 2,
                              "mx_rate_rcpts_per_sender_hour": 2}) as srv:
            for i in range(3):
                srv.add_alias(f"r{i}@example.org", PW)
            r = srv.raw()                                               # connection 1
            r.cmd(b"EHLO client.test")
            self.assertEqual(r.cmd(b"MAIL FROM:<a@one.example>")[0], 250)
            self.assertEqual(r.cmd(b"RCPT TO:<r0@example.org>")[0], 250)
            self.assertEqual(r.cmd(b"RCPT TO:<r1@example.org>")[0], 250)
            code, lines = r.cmd(b"RCPT TO:<r2@example.org>")
            self.assertEqual((code, lines[0][:9]), (451, b"451 4.7.1"))
            r.cmd(b"RSET")
            self.assertEqual(r.cmd(b"MAIL FROM:<b@one.example>")[0], 250)
            r.cmd(b"RSET")
            code, lines = r.cmd(b"MAIL FROM:<c@ONE.example>")
            self.assertEqual((code, lines[0][:9]), (451, b"451 4.7.1"))
            self.assertEqual(r.cmd(b"MAIL FROM:<c@two.example>")[0], 250)
            r.close()
            keys = subprocess.run(["redis-cli", "-s", srv.redis_sock, "--scan",
                                   "--pattern", "sealmail:mx:rate:*"],
                                  capture_output=True, text=True).stdout.split()
            self.assertTrue(any(k.startswith("sealmail:mx:rate:msg:") for k in keys), keys)
            self.assertFalse(any("one.example" in k or "127.0.0.1" in k for k in keys))
            for _ in range(5):                                          # 2..6
                srv.raw().close()
            r = socket.create_connection(("127.0.0.1", srv.mx_port), timeout=10)
            self.assertTrue(r.recv(100).startswith(b"421 4.7.0"))
            r.close()
            # Without Redis the process counts in memory, from zero.
            srv.stop_redis()
            time.sleep(0.5)
            for _ in range(6):
                c = srv.raw()
                self.assertTrue(c.greeting.startswith(b"220"))
                c.close()
            r = socket.create_connection(("127.0.0.1", srv.mx_port), timeout=10)
            self.assertTrue(r.recv(100).startswith(b"421"))
            r.close()
        self.assertEqual(srv.sanitizer_reports(), [])


class MxDmarcTest(unittest.TestCase):
    """DMARC p=reject decided on DNS served by dnsmasq in a network namespace."""

    @classmethod
    def setUpClass(cls):
        try:
            import dns_zone
        except ImportError:
            raise unittest.SkipTest("tests/integration/dns_zone.py is missing")
        dns_zone.skip_unless_root()
        zone = dns_zone.Zone()
        zone.txt("strict.example", "v=spf1 ip4:192.0.2.1 -all")
        zone.txt("_dmarc.strict.example", "v=DMARC1; p=reject; aspf=r")
        zone.servfail("broken.example")
        cls.ips = dns_zone.SENDER_IPS
        cls.ns = dns_zone.DnsNamespace(zone)
        cls.ns.start()
        try:
            cls.ns.enter()
            cls.srv = MxServer()
            cls.srv.add_alias("alice@example.org", PW)
        except BaseException:
            cls.ns.leave()
            cls.ns.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.ns.leave()
        cls.ns.stop()

    def send(self, source_ip, sender, from_header):
        msg = (f"From: <{from_header}>\r\nTo: alice@example.org\r\nSubject: d\r\n\r\n"
               "body\r\n").encode()
        s = smtplib.SMTP("127.0.0.1", self.srv.mx_port, local_hostname="client.test",
                         source_address=(source_ip, 0), timeout=60)
        try:
            s.sendmail(sender, ["alice@example.org"], msg)
            return 250, b""
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error
        finally:
            s.close()

    def test_dmarc(self):
        code, text = self.send(self.ips[1], "x@strict.example", "x@strict.example")
        self.assertEqual(code, 550, text)
        self.assertTrue(text.startswith(b"5.7.1"), text)
        self.assertEqual(self.srv.mailbox("alice@example.org", PW), [])
        code, text = self.send(self.ips[0], "x@strict.example", "x@strict.example")
        self.assertEqual(code, 250, text)
        msgs = self.srv.mailbox("alice@example.org", PW)
        self.assertEqual(len(msgs), 1)
        self.assertIn(b"spf=pass", msgs[0])
        self.assertIn(b"dmarc=pass", msgs[0])
        code, text = self.send(self.ips[1], "x@broken.example", "x@broken.example")
        self.assertEqual(code, 451, text)
        self.assertTrue(text.startswith(b"4.7.0"), text)


if __name__ == "__main__":
    unittest.main()
