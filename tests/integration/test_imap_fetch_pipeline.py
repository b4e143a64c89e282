"""IMAP FETCH pipelining: bodies asked for ahead, chunks of FETCH_META asked ahead.

When a FETCH asks for one streamed body item and nothing else, sealmail-imapd
asks sqlited for the next messages' bodies while it writes the current one
(each holds at most one RPC window until its turn); FETCH_META chunks are
asked one ahead too. These tests check what a client sees: every body
byte for byte, in UID order, with bodies larger than the window mixed with
small ones, a reader slower than the server, a non-PEEK fetch (STORE \\Seen
on the way), and chunks crossed (SEALMAIL_IMAP_FETCH_CHUNK).

    SEALMAIL_BIN_DIR=build/bin python3 -m unittest tests/integration/test_imap_fetch_pipeline.py
"""
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from imap_server import ImapServer, skip_unless_built  # noqa: E402

ADDR = "pipe@example.org"
PW = "pipeline password 1"
# Sizes around and above the 256 KiB window, and small ones between.
SIZES = [900, 600 * 1024, 3000, 1300 * 1024, 40, 300 * 1024, 257 * 1024,
         5000, 2 * 1024 * 1024, 700, 100 * 1024, 64 * 1024]


def message(i, size):
    head = (f"From: sender{i}@example.org\r\nTo: {ADDR}\r\n"
            f"Subject: pipeline {i}\r\nMessage-ID: <p{i}@example.org>\r\n\r\n").encode()
    line = f"message {i} line ".encode()
    body = bytearray()
    n = 0
    while len(body) < size:
        body += line + str(n).encode() + b"\r\n"
        n += 1
    return head + bytes(body[:size]) + b"\r\n"


def read_exact(raw, n):
    """n bytes after the buffered line (a literal's bytes)."""
    while len(raw.buf) < n:
        d = raw.s.recv(65536)
        if not d:
            raise EOFError("connection closed")
        raw.buf += d
    data, raw.buf = raw.buf[:n], raw.buf[n:]
    return data


def read_fetch(raw, tag):
    """Reads a FETCH's responses to the tagged line: [(uid, literal)]."""
    out = []
    while True:
        line = raw.line()
        if line.startswith(tag + b" "):
            if not line.startswith(tag + b" OK"):
                raise AssertionError("FETCH failed: %r" % line)
            return out
        m = re.match(rb"\* \d+ FETCH \(.*UID (\d+).*\{(\d+)\}$", line)
        if m is None:
            continue
        n = int(m.group(2))
        data = read_exact(raw, n)
        out.append((int(m.group(1)), data))


class FetchPipelineTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not skip_unless_built():
            raise unittest.SkipTest("binaries not built")
        cls.msgs = [message(i, s) for i, s in enumerate(SIZES)]

        def fill(srv):
            c = srv.login(ADDR, PW)
            for raw in cls.msgs:
                typ, _ = c.append("INBOX", None, None, raw)
                assert typ == "OK"
            c.select("INBOX")
            typ, data = c.uid("SEARCH", None, "ALL")
            cls.uids = [int(x) for x in data[0].split()]
            c.logout()
            assert len(cls.uids) == len(cls.msgs)
        cls.srv = ImapServer(config={"max_message_bytes": str(16 * 1024 * 1024)},
                             fetch_chunk=5).with_aliases([(ADDR, PW)], then=fill)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def tearDown(self):
        self.assertEqual(self.srv.sanitizer_reports(), [])

    def login_raw(self, tls=True):
        raw = self.srv.raw(tls=tls, timeout=60)
        raw.cmd(b"l", f'LOGIN "{ADDR}" "{PW}"'.encode())
        lines = raw.cmd(b"s", b"SELECT INBOX")
        self.assertTrue(lines[-1].startswith(b"s OK"), lines[-1])
        return raw

    def check(self, got):
        self.assertEqual([u for u, _ in got], self.uids)
        for (uid, data), want in zip(got, self.msgs):
            self.assertEqual(len(data), len(want), "UID %d" % uid)
            self.assertEqual(data, want, "UID %d" % uid)

    def test_bodies_in_order_byte_for_byte(self):
        for tls in (True, False):
            raw = self.login_raw(tls)
            raw.send(b"f UID FETCH 1:* (UID BODY.PEEK[])\r\n")
            self.check(read_fetch(raw, b"f"))
            raw.close()

    def test_partial_and_part_bodies(self):
        raw = self.login_raw()
        raw.send(b"f UID FETCH 1:* (UID BODY.PEEK[TEXT]<100.300000>)\r\n")
        got = read_fetch(raw, b"f")
        self.assertEqual([u for u, _ in got], self.uids)
        for (uid, data), want in zip(got, self.msgs):
            text = want[want.index(b"\r\n\r\n") + 4:]
            self.assertEqual(data, text[100:100 + 300000], "UID %d" % uid)
        raw.close()

    def test_slow_reader(self):
        """The client reads slowly: held windows, same bytes."""
        raw = self.login_raw(tls=False)
        raw.s.setsockopt(__import__("socket").SOL_SOCKET,
                         __import__("socket").SO_RCVBUF, 32 * 1024)
        raw.send(b"f UID FETCH 1:* (UID BODY.PEEK[])\r\n")
        time.sleep(1.5)          # the server's output fills, bodies wait
        self.check(read_fetch(raw, b"f"))
        raw.close()

    def test_non_peek_sets_seen(self):
        raw = self.login_raw()
        raw.send(b"f UID FETCH 1:* (UID RFC822)\r\n")
        got = []
        while True:
            line = raw.line()
            if line.startswith(b"f "):
                self.assertTrue(line.startswith(b"f OK"), line)
                break
            m = re.match(rb"\* \d+ FETCH \(.*UID (\d+).*\{(\d+)\}$", line)
            if m:
                got.append((int(m.group(1)), read_exact(raw, int(m.group(2)))))
        self.check(got)
        lines = raw.cmd(b"g", b"UID FETCH 1:* (FLAGS)")
        seen = [ln for ln in lines if b"\\Seen" in ln]
        self.assertEqual(len(seen), len(self.uids))
        raw.cmd(b"h", b"UID STORE 1:* -FLAGS.SILENT (\\Seen)")
        raw.close()


if __name__ == "__main__":
    unittest.main()
