"""IMAP body FETCH written from sqlited's bytes where they arrived.

sealmail-imapd writes the records of a FETCH_BODIES stream (and FETCH_BODY
chunks) with imap_write_direct: on a plaintext connection the pending
output and the body bytes go to the socket in one writev from rpc_client's
read buffer (sm_net_write_direct), and only what the socket does not take
is copied onto the connection's queue; rpc_client hands a DATA frame
larger than one read over in pieces as they arrive. Under TLS the bytes go
through SSL_write as before, under COMPRESS=DEFLATE through the deflater.

These tests check, over plain, TLS and COMPRESS, byte for byte against
what was appended (message sizes around the 8 KiB of the direct path and
the 64 KiB of a read, up to 3 MB), with a client that first reads nothing
(a 4 KiB receive buffer: the socket takes part of a writev, the rest is
queued, the output fills, credit is withheld, sqlited waits) and then
reads slowly: meanwhile the imapd's resident memory grows by far less than
the mailbox (it never buffers what the client has not read); and that a
client gone in the middle of such a FETCH (TLS and plain) leaves the
imapd serving the next one (and, in the ASan build, nothing leaked).

    SEALMAIL_BIN_DIR=build/bin python3 -m unittest tests/integration/test_imap_fetch_direct.py
"""
import os
import socket
import struct
import sys
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from imap_server import (ImapServer, RawImap, rss_kib,  # noqa: E402
                         sanitized, skip_unless_built, unverified_context)
from test_imap_fetch_bodies import exact_message, read_fetch  # noqa: E402

ADDR = "direct@example.org"
PW = "fetch direct password 1"
K = 1024
# Around the direct write's 8 KiB (with the response's head before the
# body), a read's 64 KiB, sqlited's 256 KiB pieces; then the bulk.
SIZES = [100, 8 * K - 40, 8 * K + 1, 1, 1000, 27000, 64 * K - 16, 64 * K + 16,
         2 * K, 300 * K, 5, 1024 * K + 3, 9 * K] + [3 * 1024 * K] * 10
TOTAL = sum(SIZES)
# What the imapd may hold for a client that reads nothing: its output
# queue (256 KiB and a batch), the stream's window (512 KiB), allocator
# slack (well under 2 MB measured). Under AddressSanitizer, whose
# quarantine keeps what was freed resident (and OpenSSL allocates per
# record), up to twice as much (about 11 MB measured under TLS). Either
# is far below TOTAL (about 34 MB), what an imapd without backpressure
# would take in.
STALL_GROWTH_KIB = 8 * 1024
STALL_GROWTH_KIB_ASAN = 16 * 1024


class ZSock:
    """recv() of the inflated bytes of a COMPRESS=DEFLATE connection."""

    def __init__(self, s, z_in):
        self.s = s
        self.z_in = z_in

    def recv(self, n):
        while True:
            d = self.s.recv(n)
            if not d:
                return b""
            out = self.z_in.decompress(d)
            if out:
                return out

    def sendall(self, data):
        self.s.sendall(data)


class FetchDirectTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not skip_unless_built():
            raise unittest.SkipTest("binaries not built")
        cls.msgs = [exact_message(i, n) for i, n in enumerate(SIZES)]

        def fill(srv):
            c = srv.login(ADDR, PW)
            for raw in cls.msgs:
                typ, _ = c.append("INBOX", None, None, raw)
                assert typ == "OK"
            c.logout()
        cls.srv = ImapServer(config={"max_message_bytes": str(16 * 1024 * 1024)}
                             ).with_aliases([(ADDR, PW)], then=fill)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def tearDown(self):
        self.assertEqual(self.srv.sanitizer_reports(), [])

    def connect(self, tls, rcvbuf=None):
        """A logged-in connection with INBOX selected (rcvbuf: SO_RCVBUF
        set before the connect, so that the window stays small)."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(120)
        s.connect(("127.0.0.1", self.srv.imaps_port if tls else self.srv.imap_port))
        if tls:
            s = unverified_context().wrap_socket(s)
        raw = RawImap(s)
        raw.greeting = raw.line()
        lines = raw.cmd(b"l", f'LOGIN "{ADDR}" "{PW}"'.encode())
        self.assertTrue(lines[-1].startswith(b"l OK"), lines[-1])
        lines = raw.cmd(b"s", b"SELECT INBOX")
        self.assertTrue(lines[-1].startswith(b"s OK"), lines[-1])
        return raw

    def check_bodies(self, got):
        self.assertEqual(len(got), len(self.msgs))
        for (seq, _, body), want in zip(got, self.msgs):
            self.assertEqual(len(body), len(want), "message %d" % seq)
            self.assertEqual(body, want, "message %d" % seq)

    def stalled_then_slow(self, tls):
        raw = self.connect(tls, rcvbuf=4096)
        pid = self.srv.imapd_pid(0)
        before = rss_kib(pid)
        raw.send(b"f UID FETCH 1:* (BODY.PEEK[])\r\n")
        # Nothing read: the imapd fills the socket, then its queue, then
        # withholds sqlited's credit.
        time.sleep(1.5)
        grown = rss_kib(pid) - before
        self.assertLess(grown, STALL_GROWTH_KIB_ASAN if sanitized(pid)
                        else STALL_GROWTH_KIB,
                        f"imapd grew by {grown} KiB for a client that reads nothing")
        # Then slowly, in small bites with pauses.
        data = bytearray(raw.buf)
        raw.buf = b""
        n = 0
        while not data.endswith(b"\r\n") or b"\r\nf OK" not in data[-300:]:
            d = raw.s.recv(16384)
            if not d:
                raise EOFError("connection closed")
            data += d
            n += 1
            if n % 64 == 0:
                time.sleep(0.01)
        raw.buf = bytes(data)
        self.check_bodies(read_fetch(raw, b"f"))
        raw.close()

    def test_plain_stalled_then_slow_reader(self):
        self.stalled_then_slow(False)

    def test_tls_stalled_then_slow_reader(self):
        self.stalled_then_slow(True)

    def test_plain_and_tls_fast_reader(self):
        for tls in (False, True):
            raw = self.connect(tls)
            raw.send(b"f UID FETCH 1:* (BODY.PEEK[])\r\n")
            self.check_bodies(read_fetch(raw, b"f"))
            # The connection goes on: the bytes after the stream are whole.
            lines = raw.cmd(b"n", b"NOOP")
            self.assertTrue(lines[-1].startswith(b"n OK"), lines[-1])
            raw.close()

    def test_compress_deflate(self):
        raw = self.connect(False)
        raw.send(b"c COMPRESS DEFLATE\r\n")
        self.assertTrue(raw.line().startswith(b"c OK"))
        z_out = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        z_in = zlib.decompressobj(-15)
        zraw = RawImap(ZSock(raw.s, z_in))
        zraw.buf = z_in.decompress(raw.buf) if raw.buf else b""
        zraw.send(z_out.compress(b"f UID FETCH 1:* (BODY.PEEK[])\r\n") +
                  z_out.flush(zlib.Z_SYNC_FLUSH))
        self.check_bodies(read_fetch(zraw, b"f"))
        raw.close()

    def test_gone_mid_stream_then_served(self):
        for tls in (False, True, False):
            raw = self.connect(tls, rcvbuf=4096)
            raw.send(b"f UID FETCH 1:* (BODY.PEEK[])\r\n")
            raw.s.recv(4096)
            time.sleep(0.2)      # the imapd's output full, credit withheld
            raw.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack("ii", 1, 0))   # RST
            raw.s.close()
        raw = self.connect(False)
        raw.send(b"f UID FETCH 1:* (BODY.PEEK[])\r\n")
        self.check_bodies(read_fetch(raw, b"f"))
        raw.close()


if __name__ == "__main__":
    unittest.main()
