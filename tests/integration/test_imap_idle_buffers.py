#!/usr/bin/env python3
"""IMAP sessions after IDLE, and what idle connections cost.

An idle connection gives its buffers back (net*.c: the input, output and TLS
record buffers are freed when drained, one BIO per TLS connection;
imap_parser_trim when IDLE starts; imap_printf formats on the stack), so
everything after an IDLE allocates them again. These tests drive that over
implicit TLS, after STARTTLS and under COMPRESS=DEFLATE (whose inflated
input buffer is freed once parsed): events during IDLE, a STORE with many
arguments and a large FETCH right after DONE, many small commands one by
one and pipelined, IDLE and DONE in one write; and they bound the memory a
batch of idle TLS connections adds to sealmail-imapd (not under ASan).

    SEALMAIL_BIN_DIR=build/bin python3 -m unittest tests/integration/test_imap_idle_buffers.py
"""
import os
import socket
import sys
import time
import unittest
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from imap_server import ImapServer, RawImap, rss_kib, sanitized, unverified_context  # noqa: E402

USER, PASSWORD = "idler@example.org", "idle buffers password"
BIG_BODY = b"".join(b"line %06d of a large message body, to be fetched after IDLE\r\n" % i
                    for i in range(12000))                  # ~770 KB


def big_message():
    return b"Subject: big\r\nFrom: a@example.org\r\n\r\n" + BIG_BODY


class Deflated:
    """RawImap's interface over COMPRESS=DEFLATE (raw deflate both ways)."""

    def __init__(self, raw):
        self.s = raw.s
        self.z_out = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        self.z_in = zlib.decompressobj(-15)
        self.buf = self.z_in.decompress(raw.buf) if raw.buf else b""

    def send(self, data):
        self.s.sendall(self.z_out.compress(data) + self.z_out.flush(zlib.Z_SYNC_FLUSH))

    def more(self):
        d = self.s.recv(1 << 20)
        if not d:
            raise EOFError("connection closed")
        self.buf += self.z_in.decompress(d)

    def line(self):
        while b"\r\n" not in self.buf:
            self.more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    until_tagged = RawImap.until_tagged
    cmd = RawImap.cmd


def more(r):
    """Reads one more chunk into r.buf (RawImap or Deflated)."""
    if isinstance(r, Deflated):
        r.more()
        return
    d = r.s.recv(1 << 20)
    if not d:
        raise EOFError("closed inside a literal")
    r.buf += d



class IdleBuffers(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = ImapServer()
        cls.srv.add_alias(USER, PASSWORD)
        cls.srv.deliver(USER, big_message())
        cls.srv.deliver(USER, b"Subject: small\r\n\r\nsmall body\r\n")

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        reports = cls.srv.sanitizer_reports()
        if reports:
            raise AssertionError("sanitizer reports:\n" + "\n".join(reports))

    def login(self, r):
        lines = r.cmd(b"l", b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()))
        self.assertTrue(lines[-1].startswith(b"l OK"), lines)
        lines = r.cmd(b"s", b"SELECT INBOX")
        self.assertTrue(lines[-1].startswith(b"s OK"), lines)
        return int([ln for ln in lines if ln.endswith(b" EXISTS")][0].split()[1])

    def fetch_literal(self, r, tag, command):
        """The single literal of a FETCH answer, and its tagged line."""
        r.send(tag + b" " + command + b"\r\n")
        line = r.line()
        self.assertTrue(line.endswith(b"}"), line)
        size = int(line.rsplit(b"{", 1)[1][:-1])
        while len(r.buf) < size:
            more(r)
        body, r.buf = r.buf[:size], r.buf[size:]
        return body, r.until_tagged(tag)[-1]

    def after_idle_round(self, r, exists, k):
        """IDLE, an event, DONE; then everything that needs buffers again."""
        r.send(b"i%d IDLE\r\n" % k)
        self.assertEqual(r.line(), b"+ idling")
        time.sleep(0.3)                      # idle: the buffers are given back
        self.srv.deliver(USER, b"Subject: during idle %d\r\n\r\nhello\r\n" % k)
        exists += 1
        line = r.line()
        while line.startswith(b"* OK"):      # keepalives
            line = r.line()
        self.assertEqual(line, b"* %d EXISTS" % exists)
        r.send(b"DONE\r\n")
        self.assertTrue(r.until_tagged(b"i%d" % k)[-1].startswith(b"i%d OK" % k))
        # Many arguments: the parser's node and argument arrays regrow.
        names = b" ".join(b"X-Field-%02d" % j for j in range(60)) + b" SUBJECT"
        body, tagged = self.fetch_literal(
            r, b"fh", b"FETCH 2 (BODY.PEEK[HEADER.FIELDS (%s)])" % names)
        self.assertTrue(tagged.startswith(b"fh OK"), tagged)
        self.assertEqual(body, b"Subject: small\r\n\r\n")
        # A large answer through TLS right after idling.
        body, tagged = self.fetch_literal(r, b"fb", b"FETCH 1 (BODY.PEEK[TEXT])")
        self.assertTrue(tagged.startswith(b"fb OK"), tagged)
        self.assertEqual(body, BIG_BODY)
        # Small commands one by one, then 100 in one write.
        for j in range(30):
            self.assertEqual(r.cmd(b"n%d" % j, b"NOOP")[-1], b"n%d OK NOOP completed." % j)
        r.send(b"".join(b"p%d NOOP\r\n" % j for j in range(100)))
        for j in range(100):
            self.assertTrue(r.until_tagged(b"p%d" % j)[-1].startswith(b"p%d OK" % j))
        return exists

    def test_implicit_tls(self):
        r = self.srv.raw(tls=True)
        exists = self.login(r)
        for k in range(3):
            exists = self.after_idle_round(r, exists, k)
        self.assertTrue(r.cmd(b"z", b"LOGOUT")[-1].startswith(b"z OK"))
        r.close()

    def test_starttls(self):
        r = self.srv.raw(tls=False)
        self.assertTrue(r.cmd(b"t", b"STARTTLS")[-1].startswith(b"t OK"))
        r = RawImap(unverified_context().wrap_socket(r.s))
        exists = self.login(r)
        for k in range(10, 12):
            exists = self.after_idle_round(r, exists, k)
        r.close()

    def test_compress(self):
        r = self.srv.raw(tls=True)
        exists = self.login(r)
        r.send(b"c COMPRESS DEFLATE\r\n")
        self.assertEqual(r.line(), b"c OK DEFLATE active.")
        z = Deflated(r)
        for k in range(20, 22):
            exists = self.after_idle_round(z, exists, k)
        r.close()

    def test_idle_done_pipelined(self):
        r = self.srv.raw(tls=True)
        self.login(r)
        # The parser is trimmed at IDLE with DONE and more already buffered.
        r.send(b"a IDLE\r\nDONE\r\nb NOOP\r\nc IDLE\r\nDONE\r\nd UID FETCH 1:* (FLAGS)\r\n")
        self.assertEqual(r.line(), b"+ idling")
        self.assertTrue(r.until_tagged(b"a")[-1].startswith(b"a OK"))
        self.assertEqual(r.until_tagged(b"b")[-1], b"b OK NOOP completed.")
        self.assertEqual(r.line(), b"+ idling")
        self.assertTrue(r.until_tagged(b"c")[-1].startswith(b"c OK"))
        lines = r.until_tagged(b"d")
        self.assertTrue(lines[-1].startswith(b"d OK"), lines)
        self.assertGreaterEqual(len(lines), 3)
        # A line that is not DONE ends IDLE with BAD, the session goes on.
        r.send(b"e IDLE\r\n")
        self.assertEqual(r.line(), b"+ idling")
        r.send(b"NOT DONE\r\n")
        self.assertTrue(r.until_tagged(b"e")[-1].startswith(b"e BAD"))
        self.assertEqual(r.cmd(b"f", b"NOOP")[-1], b"f OK NOOP completed.")
        r.close()

    def test_idle_tls_connections_memory(self):
        pid = self.srv.imapd_pid()
        ctx = unverified_context()

        def idle_conn(i):
            s = socket.socket()
            s.bind(("127.0.%d.%d" % (10 + i // 4000, 2 + (i // 10) % 250), 0))
            s.settimeout(30)
            s.connect(("127.0.0.1", self.srv.imaps_port))
            r = RawImap(ctx.wrap_socket(s))
            r.greeting = r.line()
            self.login(r)
            r.send(b"i IDLE\r\n")
            self.assertEqual(r.line(), b"+ idling")
            return r

        warm = [idle_conn(1000 + i) for i in range(5)]
        time.sleep(0.5)
        base = rss_kib(pid)
        conns = [idle_conn(i) for i in range(100)]
        time.sleep(1.0)
        per_conn = (rss_kib(pid) - base) / len(conns)
        sys.stderr.write(f"\n[imap] {len(conns)} idle TLS connections: "
                         f"{per_conn:.1f} KiB each (sealmail-imapd RSS)\n")
        for r in conns + warm:
            r.send(b"DONE\r\n")
            self.assertTrue(r.until_tagged(b"i")[-1].startswith(b"i OK"))
            r.close()
        if sanitized(pid):
            return      # ASan's redzones and quarantine make RSS meaningless
        # OpenSSL's objects take ~14 KiB (bench/README.md); a record or
        # read buffer kept per connection would add 16-34 KiB.
        self.assertLess(per_conn, 24, f"{per_conn:.1f} KiB per idle TLS connection")


if __name__ == "__main__":
    unittest.main()
