"""The whole path of issue 5: swaks -> sealmail-mx -> sqlited's spool -> IMAP.

One installation (mx_server.MxServer(imap=True): redis, sqlited, sealmail-mx
and sealmail-imapd on the same sqlited) with db_idle_seconds 0, so a mailbox
is locked as soon as nobody is logged in:

- swaks sends a message (its DATA from a file: headers, a body with a
  leading-dot line, trailing blanks, a tab, an empty line) to an alias while
  nobody is logged in: swaks sees 250, and data_dir/spool/<alias id>/ holds
  exactly one sealed entry whose bytes contain neither the body nor the
  subject;
- at the next IMAP login (imaplib, TLS, the alias's password) the message is
  in INBOX exactly once, the spool entry is gone, the Received header names
  the MX's hostname, the client and "for <rcpt>", Authentication-Results
  starts with the authserv-id and has spf=, dkim= and dmarc= results, and
  the body is byte for byte what swaks sent (dot-unstuffed);
- a second login (after logout, locked again) still sees it once.
"""
import email.parser
import email.policy
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from mx_server import MxServer  # noqa: E402

ALIAS = "dana@example.org"
PW = "dana's imap password"
SUBJECT = "whole path 7f3c9a"
BODY = (b"First line of the whole-path body 7f3c9a\r\n"
        b".a line that starts with a dot\r\n"
        b"..two dots\r\n"
        b"trailing blanks   \r\n"
        b"\ta tab first\r\n"
        b"\r\n"
        b"after an empty line, " + b"x" * 900 + b"\r\n"
        b"last line\r\n")
HEADERS = (b"From: Bob <bob@example.net>\r\nTo: " + ALIAS.encode() + b"\r\n"
           b"Subject: " + SUBJECT.encode() + b"\r\n"
           b"Message-ID: <whole-path-1@example.net>\r\n"
           b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n")


def alias_id(srv, address):
    """The alias's id in directory.db (the name of its spool directory)."""
    db = sqlite3.connect("file:" + os.path.join(srv.data_dir, "directory.db") + "?mode=ro",
                         uri=True, timeout=10)
    try:
        row = db.execute("SELECT id FROM alias WHERE address = ?", (address,)).fetchone()
    finally:
        db.close()
    assert row is not None, address
    return row[0]


def spool_entries(srv, aid):
    d = os.path.join(srv.data_dir, "spool", aid)
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, f) for f in os.listdir(d) if not f.startswith("."))


class MxToImapTest(unittest.TestCase):
    def test_swaks_to_spool_to_imap(self):
        swaks = shutil.which("swaks")
        if swaks is None:
            self.skipTest("swaks is not installed")
        with MxServer(imap=True, config={"db_idle_seconds": 0}) as srv:
            srv.add_alias(ALIAS, PW)
            aid = alias_id(srv, ALIAS)
            self.assertEqual(spool_entries(srv, aid), [])
            with tempfile.NamedTemporaryFile(suffix=".eml") as f:
                # swaks ends DATA with CRLF "." CRLF after the file's last
                # byte: the file leaves out the final CRLF (swaks dot-stuffs).
                f.write(HEADERS + b"\r\n" + BODY[:-2])
                f.flush()
                r = subprocess.run([swaks, "--server", "127.0.0.1",
                                    "--port", str(srv.mx_port), "--helo", "client.test",
                                    "--from", "bob@example.net", "--to", ALIAS,
                                    "--data", "@" + f.name],
                                   capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("<-  250 2.0.0 Ok: queued as", r.stdout)

            # Locked mailbox: one sealed spool entry, not readable as mail.
            entries = spool_entries(srv, aid)
            self.assertEqual(len(entries), 1, entries)
            with open(entries[0], "rb") as e:
                sealed = e.read()
            self.assertGreater(len(sealed), len(BODY))
            for clear in (b"whole-path body", b"7f3c9a", b"x" * 64, b"Received:"):
                self.assertNotIn(clear, sealed)

            raw = self.fetch_inbox(srv)
            self.assertEqual(len(raw), 1)
            self.assertEqual(spool_entries(srv, aid), [])   # drained at the login
            self.check_message(raw[0])
            # Locked again after the logout; the next login still sees it once.
            self.assertEqual(self.fetch_inbox(srv), raw)
            srv.stop()
            self.assertEqual(srv.sanitizer_reports(), [])
            self.assertNotIn(PW, srv.log_text())

    def fetch_inbox(self, srv):
        """Every message of INBOX over IMAP (a fresh login), as bytes."""
        c = srv.login(ALIAS, PW)
        try:
            typ, data = c.select("INBOX", readonly=True)
            self.assertEqual(typ, "OK")
            typ, data = c.uid("SEARCH", None, "ALL")
            self.assertEqual(typ, "OK")
            out = []
            for uid in data[0].split():
                typ, resp = c.uid("FETCH", uid, "(BODY.PEEK[])")
                self.assertEqual(typ, "OK")
                out.extend(part[1] for part in resp if isinstance(part, tuple))
            return out
        finally:
            c.logout()

    def check_message(self, raw):
        head, sep, body = raw.partition(b"\r\n\r\n")
        self.assertEqual(sep, b"\r\n\r\n")
        self.assertEqual(body, BODY)                   # byte for byte
        self.assertTrue(head.endswith(HEADERS.rstrip(b"\r\n")), head)
        msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
            head + b"\r\n\r\n")
        self.assertEqual(msg["Subject"], SUBJECT)
        received = msg.get_all("Received")
        self.assertEqual(len(received), 1, received)
        rec = " ".join(received[0].split())            # unfolded
        m = re.fullmatch(r"from (\S+) \(\[([0-9.]+)\]\) by (\S+) \(Sealmail\) with "
                         r"(E?SMTPS?A?) id (\S+) for <([^>]+)>; (.+)", rec)
        self.assertIsNotNone(m, rec)
        self.assertEqual(m.group(1), "client.test")
        self.assertEqual(m.group(2), "127.0.0.1")
        self.assertEqual(m.group(3), "mx.test")        # the MX's hostname
        self.assertEqual(m.group(4), "ESMTP")
        self.assertEqual(m.group(6), ALIAS)
        self.assertIsNotNone(email.utils.parsedate_tz(m.group(7)), m.group(7))
        ar = msg.get_all("Authentication-Results")
        self.assertEqual(len(ar), 1, ar)
        ar = " ".join(ar[0].split())
        authserv, _, results = ar.partition(";")
        self.assertEqual(authserv.strip(), "mx.test")
        methods = {}
        for res in results.split(";"):
            mm = re.match(r"\s*(spf|dkim|dmarc)=([a-z]+)\b", res)
            if mm:
                methods[mm.group(1)] = mm.group(2)
        self.assertEqual(set(methods), {"spf", "dkim", "dmarc"}, ar)
        self.assertIn(methods["spf"], ("pass", "fail", "softfail", "neutral", "none",
                                       "temperror", "permerror"))
        self.assertEqual(methods["dkim"], "none")      # the message is not signed
        # The properties name what was checked (RFC 8601 2.3).
        self.assertRegex(ar, r"spf=[a-z]+ smtp\.mailfrom=(bob@)?example\.net;")
        self.assertRegex(ar, r"dmarc=[a-z]+ header\.from=example\.net\b")
        # Received first (the MX's trace), then Authentication-Results.
        self.assertLess(head.index(b"Received:"), head.index(b"Authentication-Results:"))


if __name__ == "__main__":
    unittest.main()
