"""Repeated IMAP logins of aliases held in IDLE and released: no Argon2id.

What bench/imap.sh's memory harness does, small: every alias gets a first
connection (LOGIN, SELECT INBOX, IDLE), sqlited releases the idle aliases'
databases (db_release_seconds, here 1 s), then a second connection per
alias logs in, selects and idles too. Session 4 read the memory that
follows (sqlited at ~262 MB for ~10 s after the last IDLE) as Argon2id runs
still going; session 5 found none (bench/README.md, "Trailing Argon2id runs
in the memory harness"): the repeated logins take the fast path, and what
stays resident until the next release is the databases they reopened.
This test pins both with STATS, which now says it directly:

- unlocks_kdf (Argon2id runs started) grows by one per first login and not
  at all for the repeated logins of released aliases, whose count is in
  unlocks_without_kdf;
- alias_reopens counts the released databases those logins reopened, and
  aliases_released shows them released again afterwards;
- a wrong password for an open, released alias still runs Argon2id (no
  fast path for it) and fails.

Real imaplib clients over the plain port (loopback, so LOGIN is allowed);
IDLE is sent by hand (imaplib has no IDLE before Python 3.14). Binaries from
SEALMAIL_BIN_DIR (default build/bin); skipped when not built. Passwords
never appear in assertion messages.
"""
import imaplib
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import rpcclient  # noqa: E402
from imap_server import ImapServer, wait_for  # noqa: E402

DOMAIN = "relogin.example"
N = 5


def address(i):
    return f"idle{i}@{DOMAIN}"


def password(i):
    return f"relogin password {i} of the test"


def idle_client(srv, i):
    """An imaplib connection of alias i: LOGIN, SELECT INBOX, then IDLE."""
    c = srv.connect(tls=False)
    c.login(address(i), password(i))
    typ, _ = c.select("INBOX")
    if typ != "OK":
        raise AssertionError(f"SELECT of alias {i}: {typ}")
    c.send(b"idle1 IDLE\r\n")
    line = c.readline()
    if not line.startswith(b"+"):
        raise AssertionError(f"IDLE of alias {i}: {line[:80]!r}")
    return c


def close_idle(c):
    try:
        c.send(b"DONE\r\n")
        c.shutdown()
    except OSError:
        pass


class ReloginReleased(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = ImapServer(config={"db_release_seconds": "1"}).with_aliases(
            [(address(i), password(i)) for i in range(N)])

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop_checked()

    def stats(self):
        with self.srv.rpc() as c:
            return rpcclient.stats(c.call(rpcclient.OP_STATS))

    def all_released(self):
        st = self.stats()
        return st["aliases_open"] == N and st["aliases_released"] == N

    def delta(self, before, after, name):
        return after[name] - before[name]

    def test_repeated_logins_of_released_aliases_run_no_argon2id(self):
        conns = []
        try:
            s0 = self.stats()
            conns += [idle_client(self.srv, i) for i in range(N)]
            s1 = self.stats()
            # First logins: one Argon2id run each (none joined: one at a time).
            self.assertEqual(self.delta(s0, s1, "unlocks_kdf"), N)
            self.assertEqual(self.delta(s0, s1, "unlocks_without_kdf"), 0)
            self.assertTrue(wait_for(self.all_released, 30),
                            "the idle aliases' databases were not released")

            s2 = self.stats()
            conns += [idle_client(self.srv, i) for i in range(N)]
            s3 = self.stats()
            # Repeated logins of released aliases: the fast path, every one.
            self.assertEqual(self.delta(s2, s3, "unlocks_kdf"), 0)
            self.assertEqual(self.delta(s2, s3, "unlocks_without_kdf"), N)
            self.assertEqual(self.delta(s2, s3, "unlocks_joined"), 0)
            # ... which reopened the released databases (LOGIN's quota sync,
            # SELECT): the memory the harness saw, until the next release.
            self.assertGreaterEqual(self.delta(s2, s3, "alias_reopens"), N)
            self.assertTrue(wait_for(self.all_released, 30),
                            "the reopened databases were not released again")
            s4 = self.stats()
            # Nothing ran Argon2id while every connection sat in IDLE.
            self.assertEqual(self.delta(s3, s4, "unlocks_kdf"), 0)
            self.assertEqual(s4["unlocks_running"] + s4["unlocks_waiting"], 0)
            self.assertEqual(s4["sessions"], N)

            # A wrong password for an open, released alias: Argon2id, no
            # session, and the fast path is not taken.
            c = self.srv.connect(tls=False)
            with self.assertRaises(imaplib.IMAP4.error):
                c.login(address(0), password(0) + " but wrong")
            c.shutdown()
            s5 = self.stats()
            self.assertEqual(self.delta(s4, s5, "unlocks_kdf"), 1)
            self.assertEqual(self.delta(s4, s5, "unlocks_without_kdf"), 0)
        finally:
            for c in conns:
                close_idle(c)


if __name__ == "__main__":
    unittest.main()
