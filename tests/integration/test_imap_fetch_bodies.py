"""IMAP FETCH of whole bodies over FETCH_BODIES: many messages, one request.

When a FETCH asks for whole messages (BODY[], BODY.PEEK[], RFC822) of more
than one message, sealmail-imapd asks sqlited for all their bodies in one
FETCH_BODIES request, answered as one body stream (docs/rpc.md). These
tests check what a client sees, byte for byte against what was appended:
small messages mixed with ones above the 256 KiB window and a 3 MB one,
with other items beside the body, over sequence sets with holes, across
FETCH_META chunks (SEALMAIL_IMAP_FETCH_CHUNK), and that sqlited served
them with a few requests, not one per message; then all of it again with
sqlited reached over TCP with TLS (its pieces then go out through
SSL_write, not in their own buffers: srv_send_data_buf's other path).

sqlited reads a stream ahead (a first piece of 256 KiB, then pieces of the
credit size, two slots) and the imapd keeps a 512 KiB window, granted in
halves: messages whose records end at, or whose 16-byte heads straddle,
piece bounds (EDGE_SIZES) come out byte for byte to a client that reads
slowly through
a small receive buffer (so that the imapd's output fills, its credit is
withheld, and sqlited's read-ahead waits on the window); a client that
drops the connection in the middle of a stream leaves sqlited and the
imapd serving the next one (and, in the ASan build, nothing leaked).

    SEALMAIL_BIN_DIR=build/bin python3 -m unittest tests/integration/test_imap_fetch_bodies.py
"""
import os
import re
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rpcclient  # noqa: E402
from imap_server import ImapServer, RawImap, skip_unless_built  # noqa: E402
from test_imap_fetch_pipeline import read_exact  # noqa: E402

ADDR = "bodies@example.org"
PW = "fetch bodies password 1"
CHUNK = 6
# Small ones between bodies around and above the window (256 KiB).
SIZES = [120, 33000, 256 * 1024 - 80, 256 * 1024 + 1, 5, 900 * 1024, 2000,
         3 * 1024 * 1024, 60, 70, 80, 300 * 1024, 10, 27000, 27000, 1]


K = 1024
HEAD = 16                    # a FETCH_BODIES record head (rpc_bodies.h)
# Whole message sizes laid on sqlited's pieces (256 KiB, then 128 KiB
# before any credit came, then 256 KiB): the second head ends the first
# piece, others end or straddle 128 KiB multiples, then bodies over many
# pieces.
EDGE_SIZES = [256 * K - 2 * HEAD, 128 * K - HEAD // 2, 128 * K,
              128 * K - 3 * HEAD // 2, 1, 3 * 128 * K + 5, 128 * K + 1,
              256 * K, 128 * K - HEAD]


def exact_message(i, total):
    """A message of exactly total bytes (CRLF lines of at most 100)."""
    head = (f"Subject: edge {i}\r\nMessage-ID: <e{i}@example.org>\r\n\r\n").encode()
    out = bytearray(head[:total])
    k = 0
    while len(out) < total:
        out += b"\r\n" if k % 100 == 98 else bytes([(i * 11 + k * 7) % 94 + 33])
        k += 1
    return bytes(out[:total])


def message(i, size):
    head = (f"From: sender{i}@example.org\r\nTo: {ADDR}\r\n"
            f"Subject: bodies {i}\r\nMessage-ID: <b{i}@example.org>\r\n\r\n").encode()
    body = bytes((i * 7 + k * 13) % 94 + 33 for k in range(size))
    # CRLF lines of at most 100 bytes, as a mail body has.
    lines = [body[k:k + 98] for k in range(0, len(body), 98)]
    return head + b"\r\n".join(lines) + b"\r\n"


def sqlited_requests(srv):
    """sqlited's count of requests so far (STATS; this call included)."""
    with srv.rpc() as rc:
        return rpcclient.stats(rc.call(rpcclient.OP_STATS))["requests"]


def read_fetch(raw, tag):
    """The responses up to the tagged OK: [(seq, line, literal)]; the rest
    of each response (after the literal) is checked to close it."""
    out = []
    while True:
        line = raw.line()
        if line.startswith(tag + b" "):
            if not line.startswith(tag + b" OK"):
                raise AssertionError("FETCH failed: %r" % line)
            return out
        m = re.match(rb"\* (\d+) FETCH \((.*)\{(\d+)\}$", line)
        if m is None:
            raise AssertionError("unexpected line %r" % line)
        data = read_exact(raw, int(m.group(3)))
        if raw.line() != b")":
            raise AssertionError("response not closed after the literal")
        out.append((int(m.group(1)), m.group(2), data))


class FetchBodiesTest(unittest.TestCase):
    @classmethod
    def server_config(cls):
        return {"max_message_bytes": str(16 * 1024 * 1024)}

    @classmethod
    def setUpClass(cls):
        if not skip_unless_built():
            raise unittest.SkipTest("binaries not built")
        cls.msgs = [message(i, s) for i, s in enumerate(SIZES)]
        cls.edges = [exact_message(i, n) for i, n in enumerate(EDGE_SIZES)]

        def fill(srv):
            c = srv.login(ADDR, PW)
            for raw in cls.msgs:
                typ, _ = c.append("INBOX", None, None, raw)
                assert typ == "OK"
            c.create("Edges")
            for raw in cls.edges:
                typ, _ = c.append("Edges", None, None, raw)
                assert typ == "OK"
            c.logout()
        cls.srv = ImapServer(config=cls.server_config(), fetch_chunk=CHUNK
                             ).with_aliases([(ADDR, PW)], then=fill)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def tearDown(self):
        self.assertEqual(self.srv.sanitizer_reports(), [])

    def login_raw(self, tls, mailbox=b"INBOX", raw=None):
        raw = raw or self.srv.raw(tls=tls, timeout=60)
        raw.cmd(b"l", f'LOGIN "{ADDR}" "{PW}"'.encode())
        lines = raw.cmd(b"s", b"SELECT " + mailbox)
        self.assertTrue(lines[-1].startswith(b"s OK"), lines[-1])
        return raw

    def slow_raw(self, mailbox):
        """A plain connection with a 4 KiB receive buffer, logged in."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(60)
        s.connect(("127.0.0.1", self.srv.imap_port))
        raw = RawImap(s)
        raw.greeting = raw.line()
        return self.login_raw(False, mailbox, raw)

    def test_piece_edges_slow_reader(self):
        # Read in small bites with pauses: the imapd's output fills, its
        # credit is withheld, sqlited waits with pieces read ahead.
        raw = self.slow_raw(b"Edges")
        raw.send(b"f UID FETCH 1:* (BODY.PEEK[])\r\n")
        data = bytearray(raw.buf)
        raw.buf = b""
        n = 0
        while not re.search(rb"\r\nf (OK|NO|BAD)[^\r]*\r\n$", bytes(data[-200:])):
            d = raw.s.recv(4096)
            if not d:
                raise EOFError("connection closed")
            data += d
            n += 1
            if n % 16 == 0:
                time.sleep(0.02)
        raw.buf = bytes(data)
        got = read_fetch(raw, b"f")
        self.assertEqual(len(got), len(EDGE_SIZES))
        for (seq, _, body), want in zip(got, self.edges):
            self.assertEqual(len(body), len(want), "message %d" % seq)
            self.assertEqual(body, want, "message %d" % seq)
        raw.close()

    def test_dropped_mid_stream(self):
        # Clients that go away with streams in the middle (credit withheld,
        # pieces read ahead); then the whole mailbox, byte for byte.
        for _ in range(3):
            raw = self.slow_raw(b"INBOX")
            raw.send(b"f UID FETCH 1:* (BODY.PEEK[])\r\n")
            raw.s.recv(4096)
            raw.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack("ii", 1, 0))   # RST
            raw.s.close()
        raw = self.login_raw(False)
        raw.send(b"f UID FETCH 1:* (BODY.PEEK[])\r\n")
        got = read_fetch(raw, b"f")
        self.assertEqual([d for _, _, d in got], self.msgs)
        raw.close()
        raw = self.login_raw(False, b"Edges")
        raw.send(b"f UID FETCH 1:* (BODY.PEEK[])\r\n")
        got = read_fetch(raw, b"f")
        self.assertEqual([d for _, _, d in got], self.edges)
        raw.close()

    def test_all_bodies_byte_for_byte(self):
        for tls in (False, True):
            raw = self.login_raw(tls)
            before = sqlited_requests(self.srv)
            raw.send(b"f UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[])\r\n")
            got = read_fetch(raw, b"f")
            used = sqlited_requests(self.srv) - before - 1
            self.assertEqual([s for s, _, _ in got], list(range(1, len(SIZES) + 1)))
            for (seq, items, data), want in zip(got, self.msgs):
                self.assertEqual(len(data), len(want), "message %d" % seq)
                self.assertEqual(data, want, "message %d" % seq)
                self.assertIn(b"UID %d " % seq, items)
                self.assertIn(b"RFC822.SIZE %d " % len(want), items)
                self.assertTrue(items.endswith(b"BODY[] "), items)
            # Per chunk of CHUNK messages one FETCH_META and one
            # FETCH_BODIES (a lone last message: one FETCH_BODY), not a
            # request per message.
            chunks = -(-len(SIZES) // CHUNK)
            self.assertLessEqual(used, 2 * chunks + 1, "%d requests" % used)
            raw.close()

    def test_sequence_set_with_holes(self):
        raw = self.login_raw(False)
        raw.send(b"f FETCH 2,4:6,8,11:13 (BODY.PEEK[])\r\n")
        got = read_fetch(raw, b"f")
        want = [2, 4, 5, 6, 8, 11, 12, 13]
        self.assertEqual([s for s, _, _ in got], want)
        for seq, _, data in got:
            self.assertEqual(data, self.msgs[seq - 1], "message %d" % seq)
        raw.close()

    def test_rfc822_sets_seen(self):
        raw = self.login_raw(False)
        raw.send(b"f FETCH 1:4 RFC822\r\n")
        got = read_fetch(raw, b"f")
        self.assertEqual([s for s, _, _ in got], [1, 2, 3, 4])
        for seq, items, data in got:
            self.assertEqual(data, self.msgs[seq - 1], "message %d" % seq)
            self.assertIn(b"\\Seen", items)
        lines = raw.cmd(b"g", b"FETCH 1:5 (FLAGS)")
        seen = [ln for ln in lines if b"\\Seen" in ln]
        self.assertEqual(len(seen), 4)
        raw.cmd(b"h", b"STORE 1:* -FLAGS.SILENT (\\Seen)")
        raw.close()


class FetchBodiesSqlitedTlsTest(FetchBodiesTest):
    """The same tests with the imapd reaching sqlited over TCP with TLS."""

    @classmethod
    def server_config(cls):
        from imap_server import free_port
        conf = super().server_config()
        conf.update({"sqlited_port": free_port(), "sqlited_host": "127.0.0.1",
                     "sqlited_tls": "always"})
        return conf


if __name__ == "__main__":
    unittest.main()
