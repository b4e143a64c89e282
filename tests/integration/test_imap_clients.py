"""Interoperability of sealmail-imapd with real third-party clients, the e2e flow
across processes, and many concurrent sessions on one mailbox.

ImapServer (imap_server.py) starts redis-server, sqlited and sealmail-imapd on
free loopback ports; every client talks implicit TLS to 127.0.0.1 with the
installation's self-signed certificate.

- MbsyncTest: mbsync (Debian isync) against a 1,000-message mailbox of varied
  realistic MIME (plain, UTF-8 quoted-printable, multipart/alternative, base64
  attachments up to ~200 KB), loaded with APPEND on 4 connections. Run 1 syncs
  it down (every message byte-identical once mbsync's CRLF -> LF conversion for
  Maildir and the X-TUID: header line it adds are undone, matched by Message-ID); flags are then changed in the Maildir (100 \\Seen, 50 \\Flagged,
  20 of them both) and 200 messages deleted (100 with the T flag, 100 files
  removed); run 2 pushes that (Expunge Both), and the server must hold exactly
  the 800 others with exactly the expected flags; a STORE and an APPEND on the
  server come down with run 3, after which every local file's flags equal the
  server's. The wall time of each run is written to stderr (a figure, not an
  assertion).
- CurlTest: curl's imaps:// lists the folders (INBOX and the special-use ones,
  as LIST says), fetches a message by UID and by a custom UID FETCH
  byte for byte, and APPENDs one (-T) that imaplib reads back identical.
- FetchmailTest: fetchmail over IMAP with TLS hands every unseen message to an
  MDA (a shell writing one file each), keeps or deletes them as told.
- CrossProcessTest: two imapd processes on one sqlited. An APPEND through one
  (which must succeed) reaches an IDLE on the other within 1 s, then its flag
  change and its expunge do too, and the other process FETCHes the message
  byte-identical; messages delivered (sqlited DELIVER) after the alias's last
  session ended appear exactly once at the next logins, made on both processes
  at once. (test_imap_core.py covers IDLE hearing a DELIVER, and a delivery to an
  alias that never logged in.)
- ConcurrencyTest: 20 imaplib sessions on one mailbox (10 on each of two imapd
  processes) doing APPEND, UID STORE,
  UID FETCH, STORE/UID EXPUNGE/EXPUNGE and NOOP for ~20 s; every command must be
  OK, every body fetched identical, no flag update lost (each session owns a
  keyword it sets and clears on shared messages); afterwards each session's view
  (after NOOP) equals a fresh SELECT's, which equals the expected state, and no
  daemon log has a sanitizer report. A slow reader's FETCH while another
  session expunges: of 40 one-chunk messages, and of one 6 MiB message (24
  chunks, kept by its content pin until the stream ends: byte-exact, the
  connection survives, and the content is deleted afterwards; the same through
  FETCH_BODIES; and when the reader disconnects mid-literal instead).
- ReleaseTest: sqlited with db_release_seconds 1 releases the alias's database
  while a stalled stream's message is expunged: the stream reads on through the
  reopened store, byte-exact.

A client missing from the machine skips its test class. Passwords never appear
in assertion messages; client configuration files live in a 0700 temp dir.
"""
import base64
import hashlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from imap_server import ImapServer, wait_for  # noqa: E402

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")
FLAG_LETTERS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen",
                "T": "\\Deleted"}


# ---- messages ----

def realistic_message(i, rnd, tag="mb"):
    """A message of one of several realistic MIME shapes; sizes from ~400 B to ~200 KB."""
    msgid = b"<%s-%d.%08x@sender.example>" % (tag.encode(), i, rnd.getrandbits(32))
    day = 1 + i % 28
    head = (b"Return-Path: <sender%d@sender.example>\r\n"
            b"Received: from mx.sender.example (mx.sender.example [192.0.2.%d])\r\n"
            b"\tby mx.example.org with ESMTPS id %08x; Mon, %d Jan 2024 10:%02d:00 +0000\r\n"
            b"From: Sender %d <sender%d@sender.example>\r\n"
            b"To: Alice <alice@example.org>\r\n"
            b"Date: Mon, %d Jan 2024 10:%02d:00 +0000\r\n"
            b"Message-ID: %s\r\n"
            % (i, i % 250 + 1, rnd.getrandbits(32), day, i % 60, i, i, day, i % 60, msgid))
    shape = i % 5
    words = b" ".join(rnd.choice([b"lorem", b"ipsum", b"dolor", b"sit", b"amet", b"mail",
                                  b"server", b"sync", b"client", b"flags"])
                      for _ in range(rnd.randint(20, 400)))
    text = b"\r\n".join(words[k:k + 72] for k in range(0, len(words), 72))
    if shape == 0:
        body = (b"Subject: plain message %d\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" % i) + text + b"\r\n"
    elif shape == 1:
        body = (b"Subject: =?UTF-8?Q?R=C3=A9union_n=C2=B0%d?=\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                b"Caf=C3=A9 cr=C3=A8me br=C3=BBl=C3=A9e =E2=82=AC%d\r\n" % (i, i)) + text + b"\r\n"
    elif shape == 2:
        b = b"alt-%d" % i
        body = (b"Subject: alternative %d\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: multipart/alternative; boundary=\"%s\"\r\n\r\n"
                b"--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n%s\r\n"
                b"--%s\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n"
                b"<html><body><p>%s</p></body></html>\r\n--%s--\r\n"
                % (i, b, b, text, b, text, b))
    else:
        big = 200 * 1024 if i % 100 == 3 else rnd.randint(512, 24 * 1024)
        blob = rnd.getrandbits(8 * big).to_bytes(big, "little")
        enc = base64.encodebytes(blob).replace(b"\n", b"\r\n")
        b = b"mixed-%d" % i
        body = (b"Subject: attachment %d\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n"
                b"This is a multi-part message in MIME format.\r\n"
                b"--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n%s\r\n"
                b"--%s\r\nContent-Type: application/octet-stream; name=\"file%d.bin\"\r\n"
                b"Content-Disposition: attachment; filename=\"file%d.bin\"\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n%s--%s--\r\n"
                % (i, b, b, text, b, i, i, enc, b))
    return msgid, head + body


def msgid_of(raw):
    m = re.search(rb"^Message-ID: (<[^>\r\n]*>)", raw, re.M | re.I)
    return m.group(1) if m else None


def sha(data):
    return hashlib.sha256(data).hexdigest()


def flags_of(meta):
    m = re.search(rb"FLAGS \(([^)]*)\)", meta)
    assert m is not None, meta
    return frozenset(f.decode() for f in m.group(1).split()) - {"\\Recent"}


def uid_of(meta):
    return int(re.search(rb"UID (\d+)", meta).group(1))


def fetch_records(data):
    """imaplib FETCH data with one literal per message -> [(meta bytes, literal)]."""
    recs = []
    for item in data:
        if isinstance(item, tuple):
            recs.append([item[0], item[1]])
        elif item and recs:
            recs[-1][0] += b" " + item
    return [(meta, lit) for meta, lit in recs]


def server_state(c, mailbox="INBOX"):
    """{uid: (flags, bytes)} of every message, read with one UID FETCH."""
    typ, _ = c.select(mailbox)
    assert typ == "OK"
    typ, data = c.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
    assert typ == "OK", data
    if data == [None]:
        return {}
    return {uid_of(meta): (flags_of(meta), lit) for meta, lit in fetch_records(data)}


def server_flags(c):
    """{uid: flags} of the selected mailbox."""
    typ, data = c.uid("FETCH", "1:*", "(UID FLAGS)")
    assert typ == "OK", data
    return {uid_of(d): flags_of(d) for d in data if d}


def read_literal_response(r, tag, first=None):
    """RawImap lines up to tag; a line ending in {n} is followed by its n bytes.
    Returns (tagged line, [(line announcing the literal, literal bytes)]).
    first: a line already read."""
    lits = []
    while True:
        line, first = (first, None) if first is not None else (r.line(), None)
        m = re.search(rb"\{(\d+)\}$", line)
        if m:
            n = int(m.group(1))
            while len(r.buf) < n:
                d = r.s.recv(65536)
                if not d:
                    raise EOFError("connection closed")
                r.buf += d
            lits.append((line, r.buf[:n]))
            r.buf = r.buf[n:]
        elif line.startswith(tag + b" "):
            return line, lits


def log_is_clean(test, srv):
    log = srv.log_text()
    for bad in SANITIZER_MARKS:
        test.assertNotIn(bad, log, "a daemon logged a sanitizer report")


class _Base(unittest.TestCase):
    ADDR, PW = "alice@example.org", "alice-interop-pw-1"
    CONFIG = None                    # sealmail.conf keys for ImapServer

    @classmethod
    def setUpClass(cls):
        cls.srv = ImapServer(config=cls.CONFIG)
        try:
            cls.srv.add_alias(cls.ADDR, cls.PW)
        except BaseException:
            cls.srv.stop()
            raise
        cls.tmp = tempfile.mkdtemp(prefix="smclients-")   # 0700

    @classmethod
    def tearDownClass(cls):
        found = cls.srv.secrets_in_log()
        cls.srv.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert not found, "a password appears in a log"

    def login(self, port=None):
        return self.srv.login(self.ADDR, self.PW, port=port)


# ---- mbsync ----

MBSYNCRC = """\
IMAPAccount sm
Host 127.0.0.1
Port {port}
User {user}
PassCmd "cat {pwfile}"
SSLType IMAPS
CertificateFile {cert}
SystemCertificates no

IMAPStore sm-far
Account sm

MaildirStore sm-near
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel sm
Far :sm-far:
Near :sm-near:
Patterns INBOX
Create Near
Sync All
Expunge Both
SyncState *
"""


@unittest.skipUnless(shutil.which("mbsync"), "mbsync (Debian isync) is not installed")
class MbsyncTest(_Base):
    N = 1000

    def mbsync(self, label):
        t0 = time.monotonic()
        r = subprocess.run(["mbsync", "-c", self.rc, "-a"], capture_output=True, text=True,
                           timeout=600, env=dict(os.environ, HOME=self.tmp))
        elapsed = time.monotonic() - t0
        sys.stderr.write(f"\nmbsync {label}: {elapsed:.2f} s wall\n")
        self.assertEqual(r.returncode, 0, f"mbsync {label} failed: {r.stdout[-1500:]}"
                                          f"{r.stderr[-1500:]}")
        return elapsed

    def local(self):
        """{msgid: (path, flag letters, bytes with CRLF restored)} of the Maildir INBOX."""
        out = {}
        for sub in ("new", "cur"):
            d = os.path.join(self.maildir, "INBOX", sub)
            for name in os.listdir(d):
                path = os.path.join(d, name)
                with open(path, "rb") as f:
                    raw = f.read()
                letters = name.split(":2,", 1)[1] if ":2," in name else ""
                crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                # mbsync adds its X-TUID: line at the end of the header.
                head, sep, body = crlf.partition(b"\r\n\r\n")
                head, n = re.subn(rb"\r\nX-TUID: [A-Za-z0-9+/]{12}$", b"", head)
                self.assertEqual(n, 1, name)
                crlf = head + sep + body
                mid = msgid_of(crlf)
                self.assertNotIn(mid, out, "a message is twice in the Maildir")
                out[mid] = (path, letters, crlf)
        return out

    def set_local_flags(self, path, letters):
        base = os.path.basename(path).split(":2,", 1)[0]
        new = os.path.join(self.maildir, "INBOX", "cur",
                           base + ":2," + "".join(sorted(set(letters))))
        os.rename(path, new)

    def test_mbsync_round_trip(self):
        srv = self.srv
        rnd = random.Random(4)
        self.maildir = os.path.join(self.tmp, "Mail")
        os.mkdir(self.maildir)
        pwfile = os.path.join(self.tmp, "pw")
        with open(pwfile, "w") as f:
            f.write(self.PW)
        self.rc = os.path.join(self.tmp, "mbsyncrc")
        with open(self.rc, "w") as f:
            f.write(MBSYNCRC.format(port=srv.imaps_port, user=self.ADDR, pwfile=pwfile,
                                    cert=srv.cert, maildir=self.maildir))

        # Load 1,000 messages: APPEND on 4 connections, some with flags (mbsync
        # must bring those down).
        msgs, initial = {}, {}
        for i in range(self.N):
            mid, raw = realistic_message(i, rnd)
            msgs[mid] = raw
            initial[mid] = ("\\Answered" if i % 37 == 0 else
                            "\\Seen" if 900 <= i < 910 else None)
        order = list(msgs)     # by index
        errors = []

        def load(k):
            lc = self.login()
            for mid in order[k::4]:
                f = initial[mid]
                typ, data = lc.append("INBOX", f"({f})" if f else None, None, msgs[mid])
                if typ != "OK":
                    errors.append((mid, typ, data))
            lc.logout()
        t0 = time.monotonic()
        loaders = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for t in loaders:
            t.start()
        for t in loaders:
            t.join()
        self.assertEqual(errors, [])
        initial = {mid: frozenset([f]) if f else frozenset() for mid, f in initial.items()}
        total = sum(len(m) for m in msgs.values())
        sys.stderr.write(f"\nloaded {self.N} messages, {total} bytes, through APPEND in "
                         f"{time.monotonic() - t0:.1f} s\n")
        c = self.login()

        # Run 1: everything comes down, byte-identical.
        self.mbsync("run 1 (1,000 messages down)")
        loc = self.local()
        self.assertEqual(set(loc), set(msgs))
        for mid, (path, letters, raw) in loc.items():
            self.assertEqual(sha(raw), sha(msgs[mid]), f"{mid} differs in the Maildir")
            self.assertEqual(frozenset(FLAG_LETTERS[x] for x in letters), initial[mid], mid)

        # Local changes: \Seen on 0..99, \Flagged on 80..129, T on 300..399,
        # files of 400..499 removed.
        expect = dict(initial)
        for k, mid in enumerate(order):
            path, letters, _ = loc[mid]
            add = ""
            if k < 100:
                add += "S"
            if 80 <= k < 130:
                add += "F"
            if 300 <= k < 400:
                add += "T"
            if 400 <= k < 500:
                os.unlink(path)
                del expect[mid]
                continue
            if add:
                self.set_local_flags(path, letters + add)
                expect[mid] = expect[mid] | {FLAG_LETTERS[x] for x in add}
            if "T" in add:
                del expect[mid]

        # Run 2: pushed up; the server holds exactly the 800 others, exactly flagged.
        self.mbsync("run 2 (150 flag changes, 200 deletions up)")
        state = server_state(c)
        got = {msgid_of(raw): (flags, raw) for flags, raw in state.values()}
        self.assertEqual(len(state), 800)
        self.assertEqual(set(got), set(expect))
        for mid, (flags, raw) in got.items():
            self.assertEqual(flags, expect[mid], mid)
            self.assertEqual(sha(raw), sha(msgs[mid]), mid)
        self.assertEqual(set(self.local()), set(expect))

        # Server-side changes: STORE on two messages, one new APPEND.
        uid_by_mid = {msgid_of(raw): uid for uid, (_, raw) in state.items()}
        flag_mid, unseen_mid = order[700], order[5]
        self.assertEqual(c.uid("STORE", str(uid_by_mid[flag_mid]), "+FLAGS",
                               "(\\Flagged \\Answered)")[0], "OK")
        self.assertEqual(c.uid("STORE", str(uid_by_mid[unseen_mid]), "-FLAGS",
                               "(\\Seen)")[0], "OK")
        new_mid, new_raw = realistic_message(self.N, rnd)
        self.assertEqual(c.append("INBOX", "(\\Seen)", None, new_raw)[0], "OK")
        msgs[new_mid] = new_raw

        # Run 3: they come down; every local file's flags equal the server's.
        self.mbsync("run 3 (2 STOREs and 1 APPEND down)")
        state = server_state(c)
        self.assertEqual(len(state), 801)
        loc = self.local()
        self.assertEqual(set(loc), {msgid_of(raw) for _, raw in state.values()})
        for uid, (flags, raw) in state.items():
            mid = msgid_of(raw)
            self.assertEqual(frozenset(FLAG_LETTERS[x] for x in loc[mid][1]), flags, mid)
            self.assertEqual(sha(loc[mid][2]), sha(msgs[mid]), mid)
        self.assertIn("\\Flagged", state[uid_by_mid[flag_mid]][0])
        self.assertNotIn("\\Seen", state[uid_by_mid[unseen_mid]][0])
        # Nothing changes with a fourth run.
        self.mbsync("run 4 (nothing to do)")
        self.assertEqual(server_state(c), state)
        c.logout()
        log_is_clean(self, srv)


# ---- curl ----

@unittest.skipUnless(shutil.which("curl"), "curl is not installed")
class CurlTest(_Base):
    def curl(self, url, *args):
        cfg = os.path.join(self.tmp, "curlrc")
        with open(cfg, "w") as f:
            f.write(f'user = "{self.ADDR}:{self.PW}"\n')
        r = subprocess.run(["curl", "-sS", "-k", "-K", cfg, *args,
                            f"imaps://127.0.0.1:{self.srv.imaps_port}{url}"],
                           capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, f"curl {url} {args}: {r.stderr[-500:]!r}")
        return r.stdout

    def test_list_fetch_append(self):
        rnd = random.Random(7)
        c = self.login()
        sent = {}
        for i in range(4):
            mid, raw = realistic_message(i, rnd, "curl")
            typ, data = c.append("INBOX", None, None, raw)
            self.assertEqual(typ, "OK")
            uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
            sent[uid] = raw

        # The folder list: what LIST says, INBOX and the special-use folders among it.
        out = self.curl("/")
        names = {}
        for line in out.split(b"\r\n"):
            m = re.match(rb'\* LIST \(([^)]*)\) "/" "?([^"]*)"?$', line)
            if m:
                names[m.group(2).decode()] = set(m.group(1).decode().split())
        typ, data = c.list()
        want = {re.search(rb'"([^"]*)"$', d).group(1).decode() for d in data}
        self.assertEqual(set(names), want)
        self.assertIn("INBOX", names)
        uses = set().union(*names.values())
        for use in ("\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive"):
            self.assertIn(use, uses)

        # Every message by UID, byte for byte; a custom command (curl writes only
        # the untagged lines of those, not the literals).
        for uid, raw in sent.items():
            self.assertEqual(sha(self.curl(f"/INBOX;UID={uid}")), sha(raw), uid)
        uid, raw = sorted(sent.items())[2]
        out = self.curl("/INBOX", "-X", f"UID FETCH {uid} (RFC822.SIZE BODY.PEEK[])")
        m = re.match(rb"\* (\d+) FETCH \(.*RFC822\.SIZE (\d+).*BODY\[\] \{(\d+)\}\r\n", out)
        self.assertIsNotNone(m, out[:200])
        self.assertEqual((int(m.group(1)), int(m.group(2)), int(m.group(3))),
                         (3, len(raw), len(raw)))
        # A header section, as curl's URL syntax asks it.
        head = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        self.assertEqual(self.curl(f"/INBOX;UID={uid};SECTION=HEADER"), head)

        # APPEND with curl -T; imaplib reads it back identical.
        mid, raw = realistic_message(9, rnd, "curl")
        path = os.path.join(self.tmp, "upload.eml")
        with open(path, "wb") as f:
            f.write(raw)
        self.curl("/INBOX", "-T", path)
        c.select("INBOX")
        typ, data = c.uid("SEARCH", "HEADER", "Message-ID", mid.decode())
        self.assertEqual(typ, "OK")
        uids = data[0].split()
        self.assertEqual(len(uids), 1)
        typ, data = c.uid("FETCH", uids[0].decode(), "(BODY.PEEK[])")
        self.assertEqual(sha(fetch_records(data)[0][1]), sha(raw))
        c.logout()
        log_is_clean(self, self.srv)


# ---- fetchmail ----

FETCHMAILRC = """\
set no syslog
poll 127.0.0.1 service {port} protocol IMAP
  user "{user}" password "{pw}" is "{user}" here
  ssl no sslcertck
  mda "/bin/sh -c 'cat > {out}/msg.$$'"
  folder INBOX
  no rewrite
  {keep}
"""


@unittest.skipUnless(shutil.which("fetchmail"), "fetchmail is not installed")
class FetchmailTest(_Base):
    def fetchmail(self, keep, fetchall=False):
        out = os.path.join(self.tmp, "out")
        shutil.rmtree(out, ignore_errors=True)
        os.mkdir(out)
        rc = os.path.join(self.tmp, "fetchmailrc")
        with open(rc, "w") as f:
            f.write(FETCHMAILRC.format(port=self.srv.imaps_port, user=self.ADDR, pw=self.PW,
                                       out=out, keep=("keep" if keep else "no keep") +
                                       (" fetchall" if fetchall else "")))
        os.chmod(rc, 0o600)
        r = subprocess.run(["fetchmail", "-f", rc, "--nodetach", "--idfile",
                            os.path.join(self.tmp, "fetchids"), "--pidfile",
                            os.path.join(self.tmp, "fetchmail.pid")],
                           capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, HOME=self.tmp, FETCHMAILHOME=self.tmp))
        # 0: mail fetched, 1: no mail; anything else is an error.
        self.assertIn(r.returncode, (0, 1), f"fetchmail failed: {r.stdout[-1500:]}"
                                            f"{r.stderr[-1500:]}")
        got = {}
        for name in os.listdir(out):
            with open(os.path.join(out, name), "rb") as f:
                data = f.read()
            got[msgid_of(data)] = data
        return got

    def test_fetchmail_imaps(self):
        rnd = random.Random(9)
        c = self.login()
        msgs = {}
        for i in range(6):
            mid, raw = realistic_message(i, rnd, "fm")
            self.assertEqual(c.append("INBOX", "(\\Seen)" if i == 5 else None, None,
                                      raw)[0], "OK")
            msgs[mid] = raw
        seen_mid = list(msgs)[5]

        def same(got, mid):
            # fetchmail adds its Received: header (after Return-Path) and hands LF
            # line ends to the MDA; without them the bytes are the stored ones.
            own, n = re.subn(rb"Received: from 127\.0\.0\.1 [^\n]*\n(?:[ \t][^\n]*\n)*",
                             b"", got[mid], count=1)
            self.assertEqual(n, 1, mid)
            self.assertEqual(sha(own), sha(msgs[mid].replace(b"\r\n", b"\n")), mid)

        # Run 1, keep: the five unseen ones; they stay, now \Seen.
        got = self.fetchmail(keep=True)
        self.assertEqual(set(got), set(msgs) - {seen_mid})
        for mid in got:
            same(got, mid)
        state = server_state(c)
        self.assertEqual(len(state), 6)
        self.assertTrue(all("\\Seen" in f for f, _ in state.values()))
        # Run 2, fetch all and delete: all six; the mailbox is then empty.
        got = self.fetchmail(keep=False, fetchall=True)
        self.assertEqual(set(got), set(msgs))
        for mid in got:
            same(got, mid)
        self.assertEqual(server_state(c), {})
        # Run 3: nothing left.
        self.assertEqual(self.fetchmail(keep=False), {})
        c.logout()
        log_is_clean(self, self.srv)


# ---- two processes ----

class CrossProcessTest(_Base):
    def raw_login(self, port):
        r = self.srv.raw(port=port)
        lines = r.cmd(b"l", b'LOGIN "%s" "%s"' % (self.ADDR.encode(), self.PW.encode()))
        self.assertTrue(lines[-1].startswith(b"l OK"), "login refused")
        return r

    def idle_hears(self, r, action, expect):
        """IDLE on r, run action(); an untagged line matching expect must come within
        1 s (FETCH lines may come before it). Returns the lines read."""
        r.send(b"i IDLE\r\n")
        self.assertEqual(r.line(), b"+ idling")
        t0 = time.monotonic()
        action()
        r.s.settimeout(5)
        lines = [r.line()]
        while not re.search(expect, lines[-1]):
            self.assertRegex(lines[-1], rb"^\* \d+ FETCH ")
            lines.append(r.line())
        elapsed = time.monotonic() - t0
        self.assertLess(elapsed, 1.0, f"IDLE heard it after {elapsed:.2f} s")
        r.send(b"DONE\r\n")
        self.assertEqual(r.until_tagged(b"i"), [b"i OK Idle completed."])
        return lines

    def test_append_on_one_process_idle_on_the_other(self):
        ports = self.srv.start_imapd()
        other = self.raw_login(ports[0])
        c = self.login()
        c.create("Xproc")
        c.select("Xproc")
        n = int([ln for ln in other.cmd(b"s", b"SELECT Xproc")
                 if ln.endswith(b" EXISTS")][0].split()[1])
        self.assertEqual(n, 0)
        mid, raw = realistic_message(3, random.Random(3), "xp")
        box = {}

        def append():
            typ, data = c.append("Xproc", None, None, raw)
            self.assertEqual(typ, "OK", data)
            box["uid"] = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
        self.idle_hears(other, append, rb"^\* 1 EXISTS$")
        uid = box["uid"]
        other.send(b"f UID FETCH %d (BODY.PEEK[])\r\n" % uid)
        tagged, lits = read_literal_response(other, b"f")
        self.assertTrue(tagged.startswith(b"f OK"), tagged)
        self.assertEqual(len(lits), 1)
        self.assertEqual(sha(lits[0][1]), sha(raw))

        self.idle_hears(other, lambda: self.assertEqual(
            c.uid("STORE", str(uid), "+FLAGS", "(\\Flagged)")[0], "OK"),
            rb"^\* 1 FETCH \(.*FLAGS \(\\Flagged\)")

        def expunge():
            self.assertEqual(c.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")[0], "OK")
            self.assertEqual(c.expunge()[0], "OK")
        self.idle_hears(other, expunge, rb"^\* 1 EXPUNGE$")
        self.assertIn(b"MESSAGES 0", other.cmd(b"t", b"STATUS Xproc (MESSAGES)")[0])
        c.logout()
        other.close()

    def test_delivery_after_the_last_logout_appears_once(self):
        addr, pw = "erin@example.org", "erin-interop-pw-2"
        self.srv.add_alias(addr, pw)
        ports = self.srv.start_imapd()
        rnd = random.Random(11)
        # The alias has been used: one message, then everybody logs out.
        first_mid, first = realistic_message(0, rnd, "lk")
        c = self.srv.login(addr, pw)
        self.assertEqual(c.append("INBOX", None, None, first)[0], "OK")
        c.logout()
        time.sleep(0.3)
        msgs = {first_mid: first}
        for i in range(1, 4):
            mid, raw = realistic_message(i, rnd, "lk")
            self.assertEqual(self.srv.deliver(addr, raw), [addr.encode()])
            msgs[mid] = raw

        # Next logins: on both processes at once.
        results, errors = {}, []

        def session(name, port):
            try:
                s = self.srv.login(addr, pw, port=port)
                results[name] = server_state(s)
                s.logout()
            except Exception as e:      # noqa: BLE001 (reported below)
                errors.append(f"{name}: {e!r}")
        threads = [threading.Thread(target=session, args=(k, p))
                   for k, p in (("a", self.srv.imaps_port), ("b", ports[0]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        for name, state in results.items():
            got = [msgid_of(raw) for _, raw in state.values()]
            self.assertEqual(sorted(got), sorted(msgs), f"session {name}")
            for _, raw in state.values():
                self.assertEqual(sha(raw), sha(msgs[msgid_of(raw)]))
        self.assertEqual(results["a"], results["b"])
        # And still once at the login after.
        c = self.srv.login(addr, pw, port=ports[0])
        self.assertEqual(len(server_state(c)), 4)
        c.logout()
        log_is_clean(self, self.srv)


# ---- concurrency ----

class _MidStreamExpunge:
    """A body stream whose messages are expunged between its pieces."""

    def _expunge_mid_stream(self, mailbox, n, stall=0.0):
        """n messages of 6 MiB fetched by a slow reader while another session
        expunges them (then stall seconds more of no work for the alias)."""
        rnd = random.Random(23 + n)
        c = self.login()
        c.create(mailbox)
        raws = []
        for i in range(n):
            blob = rnd.getrandbits(8 * 4608 * 1024).to_bytes(4608 * 1024, "little")
            raws.append(b"Subject: huge %d\r\nMessage-ID: <huge%d.%d@example.org>\r\n\r\n"
                        % (i, n, i) + base64.encodebytes(blob).replace(b"\n", b"\r\n"))
            self.assertGreater(len(raws[-1]), 6 * 1024 * 1024)

        def append(data):
            typ, resp = c.append(mailbox, None, None, data)
            self.assertEqual(typ, "OK")
            return int(re.search(rb"APPENDUID \d+ (\d+)", resp[0]).group(1))

        def emailid(uid):
            typ, data = c.uid("FETCH", str(uid), "(EMAILID)")
            self.assertEqual(typ, "OK", data)
            return re.search(rb"EMAILID \((M\d+)\)", data[0]).group(1)

        uids = [append(raw) for raw in raws]
        by_uid = dict(zip(uids, raws))
        # A later content (not a dedup of another test's): max(id) stays.
        append(b"Subject: after %s\r\n\r\nso that the huge ones' ids are not the last\r\n"
               % mailbox.encode())
        c.select(mailbox)
        old_ids = [emailid(uid) for uid in uids]
        uidset = ",".join(map(str, uids))
        r = self.srv.raw()
        # A small receive buffer: the server stalls early in the literal.
        r.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        self.assertTrue(r.cmd(b"l", b'LOGIN "%s" "%s"' % (self.ADDR.encode(),
                                                         self.PW.encode()))[-1]
                        .startswith(b"l OK"), "login refused")
        self.assertTrue(r.cmd(b"s", b"SELECT %s" % mailbox.encode())[-1]
                        .startswith(b"s OK"))
        r.send(b"f UID FETCH %s (BODY.PEEK[])\r\n" % uidset.encode())
        line = r.line()
        self.assertRegex(line, rb"\{%d\}$" % len(raws[0]))
        while len(r.buf) < 64 * 1024:        # the literal has begun
            r.buf += r.s.recv(65536)
        time.sleep(0.5)                      # and stalls on the full buffers
        self.assertEqual(c.uid("STORE", uidset, "+FLAGS.SILENT", "(\\Deleted)")[0], "OK")
        self.assertEqual(c.expunge()[0], "OK")
        time.sleep(stall)
        try:
            tagged, lits = read_literal_response(r, b"f", first=line)
        except EOFError:
            self.fail("the connection closed in the middle of the FETCH")
        self.assertTrue(tagged.startswith(b"f OK"), tagged)
        self.assertGreater(len(lits), 0)
        for meta, lit in lits:
            uid = uid_of(meta)
            self.assertEqual(sha(lit), sha(by_uid[uid]),
                             f"UID {uid}: {len(lit)} bytes instead of {len(by_uid[uid])}")
        self.assertEqual(uid_of(lits[0][0]), uids[0])
        self.assertTrue(r.cmd(b"n", b"NOOP")[-1].startswith(b"n OK"),
                        "the connection did not survive")
        r.close()
        # The streams' end deleted the contents: no dedup onto the old rows.
        for raw, old_id in zip(raws, old_ids):
            new_uid = append(raw)
            c.select(mailbox)
            self.assertNotEqual(emailid(new_uid), old_id)
        c.logout()


class ConcurrencyTest(_MidStreamExpunge, _Base):
    SESSIONS, SECONDS, SHARED = 20, 20.0, 30

    def test_twenty_sessions_mixed_load(self):
        rnd0 = random.Random(20)
        c = self.login()
        c.create("Conc")
        bodies, expect = {}, {}       # uid -> bytes, uid -> expected flags
        lock = threading.Lock()
        shared = []
        for i in range(self.SHARED):
            mid, raw = realistic_message(i, rnd0, "cs")
            typ, data = c.append("Conc", None, None, raw)
            self.assertEqual(typ, "OK")
            uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
            bodies[uid], expect[uid] = raw, frozenset()
            shared.append(uid)
        # Half the sessions on a second imapd process (also: imapd allows 20
        # connections per client address, and everything here is 127.0.0.1).
        second = self.srv.start_imapd()[0]
        sessions = []
        for k in range(self.SESSIONS):
            s = self.login(port=second if k % 2 else None)
            self.assertEqual(s.select("Conc")[0], "OK")
            sessions.append(s)
        failures, counts = [], {}
        kw_state = {}                  # (session, shared uid) -> its keyword is set
        deadline = time.monotonic() + self.SECONDS

        def check(k, what, typ, data):
            if typ != "OK":
                failures.append(f"session {k}: {what} -> {typ} {data!r:.200}")
            return typ == "OK"

        def worker(k):
            s, rnd = sessions[k], random.Random(1000 + k)
            kw = f"$k{k}"
            own = {}                   # uid -> flags I set
            try:
                while time.monotonic() < deadline:
                    op = rnd.choice("AAASSSKFFFEXN")
                    counts[op] = counts.get(op, 0) + 1
                    if op == "A":
                        mid, raw = realistic_message(rnd.randrange(10**6), rnd, f"w{k}")
                        typ, data = s.append("Conc", None, None, raw)
                        if check(k, "APPEND", typ, data):
                            uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
                            with lock:
                                if uid in bodies:
                                    failures.append(f"session {k}: APPENDUID {uid} twice")
                                bodies[uid] = raw
                            own[uid] = frozenset()
                    elif op == "S" and own:
                        uid = rnd.choice(list(own))
                        flag = rnd.choice(["\\Seen", "\\Flagged", "\\Answered", "$Work"])
                        sign = rnd.choice("+-")
                        typ, data = s.uid("STORE", str(uid), sign + "FLAGS.SILENT",
                                          f"({flag})")
                        if check(k, "UID STORE", typ, data):
                            own[uid] = (own[uid] | {flag}) if sign == "+" else \
                                (own[uid] - {flag})
                    elif op == "K":
                        uid = rnd.choice(shared)
                        sign = rnd.choice("+-")
                        typ, data = s.uid("STORE", str(uid), sign + "FLAGS", f"({kw})")
                        if check(k, "UID STORE keyword", typ, data):
                            kw_state[(k, uid)] = sign == "+"
                    elif op == "F":
                        with lock:
                            uid = rnd.choice(list(bodies))
                            raw = bodies[uid]
                        typ, data = s.uid("FETCH", str(uid), "(BODY.PEEK[] FLAGS)")
                        if check(k, "UID FETCH", typ, data):
                            recs = [r for r in fetch_records(data)
                                    if re.search(rb"UID %d\b" % uid, r[0])]
                            # An expunged UID gives nothing; else the very bytes.
                            if recs and recs[0][1] != raw:
                                failures.append(f"session {k}: UID {uid} body differs: "
                                                f"{recs[0][0]!r:.200} "
                                                f"{msgid_of(recs[0][1])} != {msgid_of(raw)}"
                                                f" {len(recs[0][1])} {len(raw)} {len(recs)}")
                    elif op == "E" and len(own) > 3:
                        victims = rnd.sample(sorted(own), 2)
                        vset = ",".join(map(str, victims))
                        typ, data = s.uid("STORE", vset, "+FLAGS.SILENT", "(\\Deleted)")
                        if check(k, "STORE \\Deleted", typ, data):
                            for v in victims:
                                del own[v]
                            if rnd.random() < 0.5:
                                typ, data = s.uid("EXPUNGE", vset)
                                check(k, "UID EXPUNGE", typ, data)
                            else:
                                typ, data = s.expunge()
                                check(k, "EXPUNGE", typ, data)
                    else:
                        check(k, "NOOP", *s.noop())
            except Exception as e:     # noqa: BLE001 (a BAD raises in imaplib)
                failures.append(f"session {k}: {e!r:.300}")
            with lock:
                expect.update(own)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(self.SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.SECONDS + 120)
        self.assertFalse(any(t.is_alive() for t in threads), "a session hangs")
        sys.stderr.write(f"\n20 sessions, {self.SECONDS:.0f} s: operations {counts}\n")
        for (k, uid), on in kw_state.items():
            if on:
                expect[uid] = expect[uid] | {f"$k{k}"}

        # A fresh session sees exactly the expected state.
        fresh = self.login()
        self.assertEqual(fresh.select("Conc")[0], "OK")
        truth = server_flags(fresh)
        self.assertEqual(set(truth), set(expect), "the remaining UIDs differ")
        for uid in truth:
            self.assertEqual(truth[uid], expect[uid], f"UID {uid}: flags")
        typ, data = fresh.fetch("1:*", "(UID)")
        truth_seq = [uid_of(d) for d in data]

        # Every session's view agrees once NOOP told it everything.
        for k, s in enumerate(sessions):
            def agrees():
                s.noop()
                s.untagged_responses.clear()
                typ, data = s.fetch("1:*", "(UID FLAGS)")
                view = [(uid_of(d), flags_of(d)) for d in data if d]
                return view == [(u, truth[u]) for u in truth_seq]
            self.assertTrue(wait_for(agrees, 10), f"session {k}'s view differs")
            s.logout()
        fresh.logout()
        c.logout()
        self.assertIsNone(self.srv.imapd.poll(), "imapd died")
        self.assertIsNone(self.srv.sqlited.poll(), "sqlited died")
        log_is_clean(self, self.srv)
        self.assertEqual(failures, [])

    def test_expunge_while_a_fetch_streams(self):
        """Another session expunges every message while a slow reader's UID FETCH
        is under way: what the FETCH then gives is either skipped or the very
        bytes of the message, never an empty body in its place."""
        rnd = random.Random(21)
        c = self.login()
        c.create("Slow")
        sent = {}
        for i in range(40):
            blob = rnd.getrandbits(8 * 150 * 1024).to_bytes(150 * 1024, "little")
            raw = (b"Subject: slow %d\r\nMessage-ID: <slow%d@example.org>\r\n\r\n" % (i, i)
                   + base64.encodebytes(blob).replace(b"\n", b"\r\n"))
            typ, data = c.append("Slow", None, None, raw)
            self.assertEqual(typ, "OK")
            sent[int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))] = raw
        r = self.srv.raw()
        self.assertTrue(r.cmd(b"l", b'LOGIN "%s" "%s"' % (self.ADDR.encode(),
                                                         self.PW.encode()))[-1]
                        .startswith(b"l OK"), "login refused")
        self.assertTrue(r.cmd(b"s", b"SELECT Slow")[-1].startswith(b"s OK"))
        r.send(b"f UID FETCH 1:* (BODY.PEEK[])\r\n")
        time.sleep(1.0)             # the FETCH runs until its output is full
        c.select("Slow")
        self.assertEqual(c.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")[0], "OK")
        self.assertEqual(c.expunge()[0], "OK")
        tagged, lits = read_literal_response(r, b"f")
        self.assertRegex(tagged, rb"^f (OK|NO)")
        self.assertGreater(len(lits), 0)
        for line, lit in lits:
            uid = uid_of(line)
            self.assertEqual(sha(lit), sha(sent[uid]),
                             f"UID {uid}: {len(lit)} bytes instead of {len(sent[uid])} "
                             f"({len(lits)} of 40 answered)")
        r.close()
        c.logout()

    def test_expunge_while_a_multichunk_body_streams(self):
        """A 6 MiB message (24 chunks of 256 KiB; one UID: sqlited's FETCH_BODY) is
        expunged by another session after its literal has begun: the literal
        still comes whole and byte-exact, the connection goes on, and the content
        is gone afterwards (the same bytes appended again get a new EMAILID, not
        the old row)."""
        self._expunge_mid_stream("Huge1", 1)

    def test_expunge_while_multichunk_bodies_stream(self):
        """The same with two such messages in one UID FETCH (sqlited's
        FETCH_BODIES): the first, begun, comes whole; the second comes whole
        or is skipped; both contents are gone afterwards."""
        self._expunge_mid_stream("Huge2", 2)

    def test_client_gone_mid_stream_after_expunge(self):
        """The reader of a 6 MiB literal disconnects after another session
        expunged the message: the stream ends with its content pinned (the
        unpin is queued on the alias) and the content is deleted all the same;
        the daemons go on serving."""
        rnd = random.Random(31)
        c = self.login()
        c.create("Gone")
        blob = rnd.getrandbits(8 * 4608 * 1024).to_bytes(4608 * 1024, "little")
        raw = (b"Subject: gone\r\nMessage-ID: <gone@example.org>\r\n\r\n"
               + base64.encodebytes(blob).replace(b"\n", b"\r\n"))
        typ, resp = c.append("Gone", None, None, raw)
        self.assertEqual(typ, "OK")
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", resp[0]).group(1))
        typ, _ = c.append("Gone", None, None, b"Subject: after Gone\r\n\r\nlater id\r\n")
        self.assertEqual(typ, "OK")
        c.select("Gone")
        typ, data = c.uid("FETCH", str(uid), "(EMAILID)")
        old_id = re.search(rb"EMAILID \((M\d+)\)", data[0]).group(1)
        r = self.srv.raw()
        r.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        self.assertTrue(r.cmd(b"l", b'LOGIN "%s" "%s"' % (self.ADDR.encode(),
                                                         self.PW.encode()))[-1]
                        .startswith(b"l OK"), "login refused")
        self.assertTrue(r.cmd(b"s", b"SELECT Gone")[-1].startswith(b"s OK"))
        r.send(b"f UID FETCH %d (BODY.PEEK[])\r\n" % uid)
        self.assertRegex(r.line(), rb"\{%d\}$" % len(raw))
        time.sleep(0.5)
        self.assertEqual(c.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")[0], "OK")
        self.assertEqual(c.expunge()[0], "OK")
        r.close()                            # gone in the middle of the literal
        time.sleep(1.0)                      # the imapd sees it and cancels
        typ, resp = c.append("Gone", None, None, raw)
        self.assertEqual(typ, "OK")
        new_uid = int(re.search(rb"APPENDUID \d+ (\d+)", resp[0]).group(1))
        c.select("Gone")
        typ, data = c.uid("FETCH", str(new_uid), "(EMAILID BODY.PEEK[])")
        self.assertEqual(typ, "OK")
        self.assertNotEqual(re.search(rb"EMAILID \((M\d+)\)", data[0][0]).group(1),
                            old_id, "the expunged content outlived its stream")
        self.assertEqual(sha(data[0][1]), sha(raw))
        c.logout()


class ReleaseTest(_MidStreamExpunge, _Base):
    """sqlited releases an alias's database connection after 1 s without work
    (db_release_seconds): a stalled stream's next piece reads through the
    reopened store (eng_message_rebind), its pinned content kept by the
    reopen's orphan sweep."""

    CONFIG = {"db_release_seconds": "1"}

    def test_release_while_an_expunged_body_streams(self):
        self._expunge_mid_stream("Released", 1, stall=3.5)


if __name__ == "__main__":
    unittest.main()
