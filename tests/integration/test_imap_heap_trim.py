#!/usr/bin/env python3
"""sealmail-imapd gives the heap back after the loads.

After concurrent APPENDs and body FETCHes over several connections, the
heap holds MBs of free memory between live blocks (output batches, literal
and RPC buffers, freed sessions), under the 30 s idle tick's 8 MiB trim
threshold: glibc kept it resident for good. imapd.c now trims the heap once
the process has been quiet (no command ended, no session closed) for
IMAP_QUIET_MS (2 s). This test loads an imapd, keeps one session open that
was made after the load (its blocks sit above the freed ones), closes the
others, and checks that imapd's anonymous PSS falls back near what it was
before the load within a few seconds, well before the idle tick, and that
the session left open still works. The memory checks are skipped under ASan
(its allocator keeps freed memory in quarantine); the load and the
correctness checks run there too.

    SEALMAIL_BIN_DIR=build/bin python3 -m unittest tests/integration/test_imap_heap_trim.py
"""
import os
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from imap_server import ImapServer, sanitized  # noqa: E402

USER, PASSWORD = "trim@example.org", "heap trim password"
N_CONNS = 8
N_MSGS = 4
BODY_LINES = 5000                       # ~300 KB per message


def message(conn, k):
    body = b"".join(b"conn %02d message %02d line %06d of a body to append and fetch\r\n"
                    % (conn, k, i) for i in range(BODY_LINES))
    return b"Subject: trim %d-%d\r\nFrom: a@example.org\r\n\r\n" % (conn, k) + body


def anon_pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss_Anon:"):
                return int(line.split()[1])
    raise RuntimeError("no Pss_Anon")



class HeapTrim(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = ImapServer()
        cls.srv.add_alias(USER, PASSWORD)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop_checked()

    def settle(self, pid, seconds=3.0):
        """imapd's anonymous PSS once it has been quiet for a while."""
        time.sleep(seconds)
        return anon_pss_kib(pid)

    def load(self, conns):
        """Every connection appends its messages and fetches every body in
        the mailbox, all at once (their buffers interleave in the heap)."""
        errors = []

        def one(i, c):
            try:
                for k in range(N_MSGS):
                    typ, _ = c.append("INBOX", None, None, message(i, k))
                    if typ != "OK":
                        errors.append(f"APPEND {i}/{k}: {typ}")
                c.select("INBOX")
                for _ in range(2):
                    typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
                    if typ != "OK":
                        errors.append(f"FETCH {i}: {typ}")
            except Exception as e:          # reported below, in the test's thread
                errors.append(f"connection {i}: {e!r}")

        threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        self.assertEqual(errors, [])

    def test_heap_given_back_when_quiet(self):
        pid = self.srv.imapd_pid()
        asan = sanitized(pid)
        conns = [self.srv.login(USER, PASSWORD, tls=(i % 2 == 0)) for i in range(N_CONNS)]
        base = self.settle(pid)
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.05):
                peak[0] = max(peak[0], anon_pss_kib(pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            self.load(conns)
        finally:
            stop.set()
            sampler.join()
        # A session made after the load: its blocks are above the freed ones,
        # so the heap's top cannot shrink past them.
        keeper = self.srv.login(USER, PASSWORD)
        typ, data = keeper.select("INBOX")
        self.assertEqual(typ, "OK")
        self.assertEqual(int(data[0]), N_CONNS * N_MSGS)
        for c in conns:
            c.logout()
        after = self.settle(pid, 4.0)       # IMAP_QUIET_MS is 2 s; the idle tick 30 s
        if not asan:
            # The load took MBs (else this test tests nothing) ...
            self.assertGreater(peak[0] - base, 2048, (base, peak[0], after))
            # ... and they went back once quiet (glibc alone kept them).
            self.assertLess(after - base, 1024, (base, peak[0], after))
        # The session left open works on the trimmed heap: a body comes back whole.
        typ, data = keeper.uid("FETCH", "1:*", "(BODY.PEEK[])")
        self.assertEqual(typ, "OK")
        bodies = sorted(part[1] for part in data if isinstance(part, tuple))
        want = sorted(message(i, k) for i in range(N_CONNS) for k in range(N_MSGS))
        self.assertEqual(len(bodies), len(want))
        self.assertTrue(bodies == want, "a body came back changed")
        keeper.logout()

    def test_busy_server_still_answers(self):
        """Commands that keep coming push the quiet timer back; a command
        that ends right when the trim runs, and the one after, are fine."""
        c = self.srv.login(USER, PASSWORD)
        c.select("INBOX")
        end = time.monotonic() + 5.0
        n = 0
        while time.monotonic() < end:
            typ, _ = c.noop()
            self.assertEqual(typ, "OK")
            n += 1
            time.sleep(0.45 if n % 5 else 2.2)     # now and then, quiet past 2 s
        typ, data = c.status("INBOX", "(MESSAGES)")
        self.assertEqual(typ, "OK")
        c.logout()


if __name__ == "__main__":
    unittest.main()
