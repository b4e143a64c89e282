"""FETCH and UID FETCH of sealmail-imapd (frontends/imap/imap_cmd_fetch.c), with
Python's imaplib against real daemons (imap_server.py).

The messages: every message of Python's own email test data (Debian's
libpython3.11-testsuite, /usr/lib/python3.11/test/test_email/data; the tests
that need it are skipped when it is not installed) plus hand-written ones
(multipart/alternative with quoted-printable and base64 text, a nested
message/rfc822 with a binary base64 attachment, raw 8-bit UTF-8 headers, a
malformed multipart, an unknown transfer encoding). What the server answers
is compared with what Python's email package says about the same bytes:
sizes, header fields, the decoded bytes of every base64/QP part (BINARY),
the body structure of multiparts; BODY[] must give back every message byte
for byte.

Also: partial fetches at the boundaries, HEADER.FIELDS(.NOT), \\Seen set by
BODY[] and not by BODY.PEEK[], CHANGEDSINCE and VANISHED (EARLIER) after an
expunge made by another sqlited session, the BAD answers, a 30 MB message
fetched by a slow reader while imapd's memory stays far below 30 MB, and
1,000 messages fetched with UID FETCH 1:* (FLAGS BODY.PEEK[HEADER]).
"""
import email
import email.policy
import hashlib
import os
import quopri
import re
import socket
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from imap_server import ImapServer  # noqa: E402
import rpcclient  # noqa: E402
import sqlited_ops  # noqa: E402

PY_DATA = "/usr/lib/python3.11/test/test_email/data"
ADDR, PW = "fetch@example.org", "fetch password 1"


# ---- hand-written messages ----

ALTERNATIVE = (
    b"From: Ann Example <ann@example.org>\r\n"
    b"To: Bob <bob@example.net>, carol@example.net\r\n"
    b"Subject: Alternative parts\r\n"
    b"Date: Tue, 3 Mar 2020 10:00:00 +0000\r\n"
    b"Message-ID: <alt-1@example.org>\r\n"
    b"X-Folded: first line\r\n"
    b"\tsecond line\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/alternative; boundary=\"b1\"\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Caf=C3=A9 au lait,   tr=C3=A8s   bien.=20\r\n"
    b"A soft=\r\nbreak and trailing spaces   \r\n"
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"PGh0bWw+PGJvZHk+PHA+Q2Fmw6kgYXUgbGFpdDwvcD48L2JvZHk+PC9odG1sPg==\r\n"
    b"--b1--\r\n"
    b"epilogue\r\n")


def nested_message():
    blob = bytes(range(256)) * 40 + b"\x00\x00end"
    import base64
    b64 = base64.encodebytes(blob).replace(b"\n", b"\r\n")
    inner = (b"From: Inner <inner@example.org>\r\n"
             b"Subject: The inner message\r\n"
             b"Content-Type: multipart/mixed; boundary=\"in\"\r\n"
             b"\r\n"
             b"--in\r\n"
             b"Content-Type: text/plain\r\n"
             b"\r\n"
             b"inner text\r\n"
             b"--in\r\n"
             b"Content-Type: application/octet-stream; name=\"blob.bin\"\r\n"
             b"Content-Transfer-Encoding: base64\r\n"
             b"Content-Disposition: attachment; filename=\"blob.bin\"\r\n"
             b"\r\n" + b64 +
             b"--in--\r\n")
    return (b"From: Outer <outer@example.org>\r\n"
            b"To: fetch@example.org\r\n"
            b"Subject: Forwarded\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"out\"\r\n"
            b"\r\n"
            b"--out\r\n"
            b"Content-Type: text/plain; charset=us-ascii\r\n"
            b"\r\n"
            b"See the attached message.\r\n"
            b"--out\r\n"
            b"Content-Type: message/rfc822\r\n"
            b"\r\n" + inner +
            b"--out\r\n"
            b"Content-Type: text/plain; charset=iso-8859-1\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n"
            b"\r\n"
            b"R=E9sum=E9 =3D ok\r\n"
            b"--out--\r\n"), blob


EIGHTBIT = ("From: Zoë Ünïcode <zoe@example.org>\r\n"
            "Subject: Grüße aus Köln — 8-bit header\r\n"
            "To: fetch@example.org\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n"
            "\r\n"
            "Ünïcödé body\r\n").encode()

MALFORMED = (b"From: broken@example.org\r\n"
             b"Subject: Malformed multipart\r\n"
             b"Content-Type: multipart/mixed; boundary=\"never\"\r\n"
             b"Content-Transfer-Encoding: base64\r\n"
             b"\r\n"
             b"--nope\r\n"
             b"no boundary ever matches\r\n"
             b"trailing line without end")

HTML_ONLY = (b"From: h@example.org\r\n"
             b"Subject: html only\r\n"
             b"Content-Type: text/html; charset=iso-8859-1\r\n"
             b"Content-Transfer-Encoding: quoted-printable\r\n"
             b"\r\n"
             b"<html><head><style>p {color: red}</style></head>\r\n"
             b"<body><p>Caf=E9&nbsp;&amp;\r\n   <b>cr=E8me</b></p><!-- hidden --></body></html>\r\n")


def big_base64():
    """An attachment over the in-memory decoding bound (two passes)."""
    import base64
    blob = bytes((i * 7 + (i >> 9)) & 0xff for i in range(3 * 1024 * 1024 + 5))
    b64 = base64.encodebytes(blob).replace(b"\n", b"\r\n")
    return (b"From: big@example.org\r\n"
            b"Subject: big attachment\r\n"
            b"Content-Type: multipart/mixed; boundary=zz\r\n"
            b"\r\n"
            b"--zz\r\n"
            b"Content-Type: text/plain\r\n"
            b"\r\n"
            b"see attachment\r\n"
            b"--zz\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"\r\n" + b64 + b"--zz--\r\n"), blob


UNKNOWN_CTE = (b"From: u@example.org\r\n"
               b"Subject: uuencoded\r\n"
               b"Content-Type: application/octet-stream\r\n"
               b"Content-Transfer-Encoding: x-uuencode\r\n"
               b"\r\n"
               b"begin 644 f\r\n#86)C\r\n`\r\nend\r\n")


# ---- reading FETCH responses ----

def stream_of(data):
    """imaplib's FETCH data back to the server's byte stream (without the
    '* ' and 'FETCH ' it removed): 'n (items)\\r\\n' per message."""
    out = b""
    for d in data:
        if isinstance(d, tuple):
            out += d[0] + b"\r\n" + d[1]
        elif d is not None:
            out += d + b"\r\n"
    return out


class Tok:
    def __init__(self, b):
        self.b, self.i = b, 0

    def peek(self):
        return self.b[self.i:self.i + 1]

    def expect(self, s):
        assert self.b[self.i:self.i + len(s)] == s, (self.b[self.i:self.i + 40], s)
        self.i += len(s)

    def value(self):
        c = self.peek()
        if c == b"(":
            self.i += 1
            items = []
            while self.peek() != b")":
                if self.peek() == b" ":
                    self.i += 1
                    continue
                items.append(self.value())
            self.i += 1
            return items
        if c == b'"':
            self.i += 1
            out = bytearray()
            while self.b[self.i:self.i + 1] != b'"':
                if self.b[self.i:self.i + 1] == b"\\":
                    self.i += 1
                out += self.b[self.i:self.i + 1]
                self.i += 1
            self.i += 1
            return bytes(out)
        if c in (b"{", b"~"):
            m = re.compile(rb"~?\{(\d+)\}\r\n").match(self.b, self.i)
            n = int(m.group(1))
            self.i = m.end() + n
            return self.b[m.end():self.i]
        # An atom; "[...]" may hold spaces and parentheses.
        start, depth = self.i, 0
        while self.i < len(self.b):
            ch = self.b[self.i:self.i + 1]
            if ch == b"[":
                depth += 1
            elif ch == b"]":
                depth -= 1
            elif depth == 0 and ch in (b" ", b")", b"\r"):
                break
            self.i += 1
        a = self.b[start:self.i]
        return None if a.upper() == b"NIL" else a


def parse_fetch(data):
    """[(seq, {NAME: value})] in order; names upper-cased, as sent."""
    t, out = Tok(stream_of(data)), []
    while t.i < len(t.b):
        seq = int(t.value())
        t.expect(b" ")
        items = t.value()
        t.expect(b"\r\n")
        d = {}
        for k in range(0, len(items), 2):
            d[items[k].decode().upper()] = items[k + 1]
        out.append((seq, d))
    return out


def header_end(raw):
    """Bytes of the header block including its blank line."""
    i, n = 0, len(raw)
    while i < n:
        j = raw.find(b"\n", i)
        if j < 0:
            return n
        line = raw[i:j + 1]
        if line in (b"\n", b"\r\n"):
            return j + 1
        i = j + 1
    return n


def imap_parts(msg, prefix=""):
    """(section, part) of every leaf part, IMAP numbering (RFC 3501 6.4.5)."""
    if msg.is_multipart() and msg.get_content_maintype() == "multipart":
        for i, p in enumerate(msg.get_payload(), 1):
            sec = f"{prefix}{i}"
            if p.get_content_type() == "message/rfc822":
                yield sec, p
                inner = p.get_payload(0)
                if inner.is_multipart():
                    yield from imap_parts(inner, sec + ".")
                else:
                    yield sec + ".1", inner
            elif p.is_multipart():
                yield from imap_parts(p, sec + ".")
            else:
                yield sec, p
    else:
        yield (prefix + "1"), msg


def same_shape(bs, msg):
    """True if a BODYSTRUCTURE has the tree Python's parser sees."""
    if msg.get_content_maintype() == "multipart":
        n = 0
        while n < len(bs) and isinstance(bs[n], list):
            n += 1
        kids = msg.get_payload()
        if n == 0 or n != len(kids) or not isinstance(bs[n], bytes) or \
                bs[n].decode().lower() != msg.get_content_subtype():
            return False
        return all(same_shape(bs[i], k) for i, k in enumerate(kids))
    if not isinstance(bs[0], bytes) or \
            bs[0].decode().lower() != msg.get_content_maintype() or \
            bs[1].decode().lower() != msg.get_content_subtype():
        return False
    if msg.get_content_type() == "message/rfc822":
        return same_shape(bs[8], msg.get_payload(0))
    return True


# Test messages on which two MIME parsers may rightly disagree, and why.
# Python's view of these is not the reference for the structure.
DIVERGENT = {
    # Nested multiparts that reuse their parent's boundary: ambiguous.
    "msg_15.txt": "nested multipart with the same boundary",
    "msg_39.txt": "nested multiparts with the same boundary",
    # Adjacent delimiters: RFC 2046 makes empty parts of them, which the
    # engine keeps and Python drops.
    "msg_37.txt": "empty parts between adjacent delimiters",
    # boundary*= in RFC 2231 form: the engine does not decode it (an engine
    # gap reported with this test), so it sees one part.
    "msg_33.txt": "RFC 2231-encoded boundary parameter",
    "malformed": "no delimiter matches the boundary",
}


def assert_clean_log(tc, srv):
    """No sanitizer report in any daemon's log (the ASan build)."""
    log = srv.log_text()
    for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        tc.assertNotIn(bad, log)


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class FetchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.corpus = []              # (name, raw)
        if os.path.isdir(PY_DATA):
            for name in sorted(os.listdir(PY_DATA)):
                if name.startswith("msg_") and name.endswith(".txt"):
                    with open(os.path.join(PY_DATA, name), "rb") as f:
                        cls.corpus.append((name, f.read()))
        cls.nested, cls.blob = nested_message()
        cls.big, cls.big_blob = big_base64()
        for name, raw in (("alternative", ALTERNATIVE), ("nested", cls.nested),
                          ("html_only", HTML_ONLY), ("big_b64", cls.big),
                          ("eightbit", EIGHTBIT), ("malformed", MALFORMED),
                          ("unknown_cte", UNKNOWN_CTE)):
            cls.corpus.append((name, raw))

        def fill(srv):
            for _, raw in cls.corpus:
                srv.deliver(ADDR, raw)
            # The spool is drained into INBOX in no particular order: find
            # each message's sequence number by its bytes.
            c = srv.login(ADDR, PW)
            c.select("INBOX")
            typ, data = c.fetch("1:*", "BODY.PEEK[]")
            c.logout()
            stored = [(seq, d["BODY[]"]) for seq, d in parse_fetch(data)]
            cls.stored = stored
            cls.seqs = {}
            taken = set()
            for name, raw in cls.corpus:
                for seq, body in stored:
                    if body == raw and seq not in taken:
                        cls.seqs[name] = seq
                        taken.add(seq)
                        break
        cls.srv = ImapServer(config={"max_message_bytes": str(64 * 1024 * 1024)}
                             ).with_aliases([(ADDR, PW)], then=fill)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        assert_clean_log(unittest.TestCase(), cls.srv)

    def setUp(self):
        self.c = self.srv.login(ADDR, PW)
        typ, data = self.c.select("INBOX")
        self.assertEqual(typ, "OK")
        self.n = int(data[0])

    def tearDown(self):
        try:
            self.c.logout()
        except Exception:
            pass

    def seq_of(self, name):
        return self.seqs[name]

    def in_order(self):
        """(seq, name, raw) in sequence order."""
        return sorted((self.seqs[n], n, r) for n, r in self.corpus)

    def raw_of(self, name):
        return dict(self.corpus)[name]

    def fetch(self, seqs, items, uid=False):
        if uid:
            typ, data = self.c.uid("FETCH", seqs, items)
        else:
            typ, data = self.c.fetch(seqs, items)
        self.assertEqual(typ, "OK", data)
        return parse_fetch(data)

    def fetch1(self, seq, items):
        """The items of one message (responses for it merged: a flag
        change may also be reported by the session's own update)."""
        r = self.fetch(str(seq), items)
        self.assertTrue(r)
        d = {}
        for n, items_ in r:
            self.assertEqual(n, seq)
            d.update(items_)
        return d

    # ---- whole messages ----

    def test_body_byte_for_byte(self):
        self.assertEqual(self.n, len(self.corpus))
        # Every delivered message is stored exactly once, byte for byte.
        self.assertEqual(sorted(self.seqs.values()), list(range(1, self.n + 1)))
        got = self.fetch("1:*", "(RFC822.SIZE BODY.PEEK[])")
        self.assertEqual([seq for seq, _ in got], list(range(1, self.n + 1)))
        for seq, name, raw in self.in_order():
            with self.subTest(name=name):
                d = got[seq - 1][1]
                self.assertEqual(d["BODY[]"], raw)
                self.assertEqual(int(d["RFC822.SIZE"]), len(raw))

    def test_header_and_text(self):
        for seq, name, raw in self.in_order():
            with self.subTest(name=name):
                d = self.fetch1(seq, "(BODY.PEEK[HEADER] BODY.PEEK[TEXT] RFC822.HEADER)")
                h = header_end(raw)
                self.assertEqual(d["BODY[HEADER]"], raw[:h])
                self.assertEqual(d["RFC822.HEADER"], raw[:h])
                self.assertEqual(d["BODY[TEXT]"], raw[h:])

    def test_header_fields(self):
        names = ["From", "SUBJECT", "x-folded", "Content-Type", "Nope"]
        for seq, name, raw in self.in_order():
            with self.subTest(name=name):
                d = self.fetch1(seq, "(BODY.PEEK[HEADER.FIELDS (%s)] "
                                "BODY.PEEK[HEADER.FIELDS.NOT (%s)])"
                                % (" ".join(names), " ".join(names)))
                orig = email.message_from_bytes(raw[:header_end(raw)])
                got = d["BODY[HEADER.FIELDS (%s)]" % " ".join(names).upper()]
                self.assertTrue(got.endswith(b"\n\r\n") or got == b"\r\n", got[-10:])
                sel = email.message_from_bytes(got)
                lower = [n.lower() for n in names]
                self.assertEqual(sorted(k.lower() for k in sel.keys()),
                                 sorted(k.lower() for k in orig.keys()
                                        if k.lower() in lower))
                for n in names:
                    self.assertEqual(sel.get_all(n), orig.get_all(n))
                got_not = d["BODY[HEADER.FIELDS.NOT (%s)]" % " ".join(names).upper()]
                rest = email.message_from_bytes(got_not)
                self.assertEqual([k for k in rest.keys()],
                                 [k for k in orig.keys() if k.lower() not in lower])

    def test_header_fields_folded_exact(self):
        seq = self.seq_of("alternative")
        d = self.fetch1(seq, "BODY.PEEK[HEADER.FIELDS (X-FOLDED to)]")
        self.assertEqual(d["BODY[HEADER.FIELDS (X-FOLDED TO)]"],
                         b"To: Bob <bob@example.net>, carol@example.net\r\n"
                         b"X-Folded: first line\r\n\tsecond line\r\n\r\n")

    # ---- structure ----

    def assert_structure(self, bs, msg, where):
        if msg.get_content_maintype() == "multipart":
            self.assertIsInstance(bs[0], list, where)
            children = [x for x in bs if isinstance(x, list)
                        and x and (isinstance(x[0], list) or isinstance(x[0], bytes))]
            kids = msg.get_payload()
            n = 0
            while n < len(bs) and isinstance(bs[n], list):
                n += 1
            self.assertEqual(n, len(kids), where)
            self.assertEqual(bs[n].decode().lower(), msg.get_content_subtype(), where)
            for i, k in enumerate(kids):
                self.assert_structure(bs[i], k, f"{where}.{i + 1}")
            del children
        else:
            self.assertEqual(bs[0].decode().lower(), msg.get_content_maintype(), where)
            self.assertEqual(bs[1].decode().lower(), msg.get_content_subtype(), where)
            if msg.get_content_type() == "message/rfc822":
                self.assert_structure(bs[8], msg.get_payload(0), where + "(msg)")

    def test_bodystructure_shapes(self):
        for name in ("alternative", "nested") + tuple(
                n for n, r in self.corpus if n.startswith("msg_")):
            raw = self.raw_of(name)
            msg = email.message_from_bytes(raw)
            if name in DIVERGENT or msg.defects or any(p.defects for p in msg.walk()):
                continue     # Python's own view of a broken message differs
            with self.subTest(name=name):
                d = self.fetch1(self.seq_of(name), "(BODY BODYSTRUCTURE)")
                self.assert_structure(d["BODYSTRUCTURE"], msg, name)
                self.assert_structure(d["BODY"], msg, name)

    def test_bodystructure_multipart_details(self):
        d = self.fetch1(self.seq_of("alternative"), "BODYSTRUCTURE")
        bs = d["BODYSTRUCTURE"]
        plain, html = bs[0], bs[1]
        self.assertEqual(bs[2].upper(), b"ALTERNATIVE")
        self.assertEqual([x.upper() for x in bs[3]], [b"BOUNDARY", b"b1".upper()])
        self.assertEqual(plain[0].upper(), b"TEXT")
        self.assertEqual(plain[1].upper(), b"PLAIN")
        self.assertEqual([x.lower() for x in plain[2]], [b"charset", b"utf-8"])
        self.assertEqual(plain[5].upper(), b"QUOTED-PRINTABLE")
        self.assertEqual(html[5].upper(), b"BASE64")
        raw = ALTERNATIVE
        body = raw.split(b"--b1\r\n")[1].split(b"\r\n\r\n", 1)[1]
        body = body[:-2]   # the CRLF before the delimiter belongs to it
        self.assertEqual(int(plain[6]), len(body))

    def test_envelope(self):
        d = self.fetch1(self.seq_of("alternative"), "(ENVELOPE INTERNALDATE)")
        env = d["ENVELOPE"]
        self.assertEqual(env[0], b"Tue, 3 Mar 2020 10:00:00 +0000")
        self.assertEqual(env[1], b"Alternative parts")
        self.assertEqual(env[2], [[b"Ann Example", None, b"ann", b"example.org"]])
        self.assertEqual([a[2] for a in env[5]], [b"bob", b"carol"])
        self.assertEqual(env[9], b"<alt-1@example.org>")
        self.assertRegex(d["INTERNALDATE"].decode(),
                         r"^[ \d]\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}$")

    def test_macros(self):
        seq = self.seq_of("alternative")
        all_ = self.fetch1(seq, "ALL")
        self.assertEqual(set(all_), {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"})
        fast = self.fetch1(seq, "FAST")
        self.assertEqual(set(fast), {"FLAGS", "INTERNALDATE", "RFC822.SIZE"})
        full = self.fetch1(seq, "FULL")
        self.assertEqual(set(full), {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE",
                                     "BODY"})

    # ---- parts ----

    def test_parts_and_mime(self):
        raw = self.nested
        seq = self.seq_of("nested")
        d = self.fetch1(seq, "(BODY.PEEK[1] BODY.PEEK[2.HEADER] BODY.PEEK[2.1] "
                        "BODY.PEEK[2.2.MIME] BODY.PEEK[3.TEXT] BODY.PEEK[9])")
        self.assertEqual(d["BODY[1]"], b"See the attached message.")
        self.assertTrue(d["BODY[2.HEADER]"].startswith(b"From: Inner <inner@example.org>\r\n"))
        self.assertTrue(d["BODY[2.HEADER]"].endswith(b"\r\n\r\n"))
        self.assertEqual(d["BODY[2.1]"], b"inner text")
        self.assertTrue(d["BODY[2.2.MIME]"].startswith(b"Content-Type: application/"))
        self.assertTrue(d["BODY[2.2.MIME]"].endswith(b"\r\n\r\n"))
        self.assertIn(d["BODY[2.2.MIME]"], raw)
        self.assertEqual(d["BODY[3.TEXT]"], b"")      # not a message/rfc822 part
        self.assertEqual(d["BODY[9]"], b"")           # no such part

    def test_binary_matches_python(self):
        checked = 0
        for seq, name, raw in self.in_order():
            if name == "unknown_cte" or name in DIVERGENT:
                continue
            msg = email.message_from_bytes(raw)
            bs = self.fetch1(seq, "BODYSTRUCTURE")["BODYSTRUCTURE"]
            if not same_shape(bs, msg):
                continue     # the parsers disagree: nothing to compare
            for sec, part in imap_parts(msg):
                if part.is_multipart() or part.get_content_type() == "message/rfc822":
                    continue
                cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
                if cte not in ("base64", "quoted-printable"):
                    continue
                want = part.get_payload(decode=True)
                if cte == "quoted-printable":
                    # RFC 2045 6.7 (3): white space at the end of an encoded
                    # line is deleted by the decoder (Python keeps it).
                    enc = part.get_payload().encode("ascii", "surrogateescape")
                    want = quopri.decodestring(
                        re.sub(rb"[ \t]+(\r?\n|$)", rb"\1", enc))
                with self.subTest(name=name, section=sec):
                    d = self.fetch1(seq, f"(BINARY.PEEK[{sec}] BINARY.SIZE[{sec}])")
                    self.assertEqual(d[f"BINARY[{sec}]"], want)
                    self.assertEqual(int(d[f"BINARY.SIZE[{sec}]"]), len(want))
                    checked += 1
        self.assertGreater(checked, 5)

    def test_binary_nested_attachment(self):
        seq = self.seq_of("nested")
        d = self.fetch1(seq, "(BINARY.PEEK[2.2] BINARY.SIZE[2.2] BINARY.PEEK[3] "
                        "BINARY.PEEK[2.2]<250.20>)")
        self.assertEqual(d["BINARY[2.2]"], self.blob)
        self.assertEqual(int(d["BINARY.SIZE[2.2]"]), len(self.blob))
        # The CRLF before a boundary belongs to the boundary.
        self.assertEqual(d["BINARY[3]"], "Résumé = ok".encode("latin-1"))
        self.assertEqual(d["BINARY[2.2]<250>"], self.blob[250:270])

    def test_binary_large_two_passes(self):
        seq = self.seq_of("big_b64")
        n = len(self.big_blob)
        d = self.fetch1(seq, "(BINARY.SIZE[2] BINARY.PEEK[2] BINARY.PEEK[2]<%d.100> "
                        "BINARY.PEEK[2]<%d.100>)" % (n - 7, n + 1))
        self.assertEqual(int(d["BINARY.SIZE[2]"]), n)
        self.assertEqual(hashlib.sha256(d["BINARY[2]"]).hexdigest(),
                         hashlib.sha256(self.big_blob).hexdigest())
        self.assertEqual(d["BINARY[2]<%d>" % (n - 7)], self.big_blob[-7:])
        self.assertEqual(d["BINARY[2]<%d>" % (n + 1)], b"")
        self.assertNotIn(b"\\Seen", self.flags_of(seq))

    def test_binary_unknown_cte(self):
        seq = self.seq_of("unknown_cte")
        typ, data = self.c.fetch(str(seq), "BINARY.PEEK[1]")
        self.assertEqual(typ, "NO")
        self.assertIn(b"UNKNOWN-CTE", data[0])
        # BODY[] of the same message is fine.
        d = self.fetch1(seq, "BODY.PEEK[1]")
        self.assertTrue(d["BODY[1]"].startswith(b"begin 644"))

    # ---- partial ----

    def test_partial_boundaries(self):
        seq = self.seq_of("alternative")
        raw = ALTERNATIVE
        n = len(raw)
        cases = [(0, 10), (0, n), (0, n + 100), (n - 5, 100), (n - 1, 1), (n, 10),
                 (n + 50, 10), (17, 1)]
        for off, ln in cases:
            with self.subTest(off=off, ln=ln):
                d = self.fetch1(seq, f"BODY.PEEK[]<{off}.{ln}>")
                self.assertEqual(d[f"BODY[]<{off}>"], raw[off:off + ln])
        h = header_end(raw)
        d = self.fetch1(seq, f"(BODY.PEEK[HEADER]<{h - 4}.100> BODY.PEEK[TEXT]<0.8> "
                        "BODY.PEEK[HEADER.FIELDS (Subject)]<3.5>)")
        self.assertEqual(d[f"BODY[HEADER]<{h - 4}>"], raw[h - 4:h])
        self.assertEqual(d["BODY[TEXT]<0>"], raw[h:h + 8])
        self.assertEqual(d["BODY[HEADER.FIELDS (SUBJECT)]<3>"],
                         b"Subject: Alternative parts\r\n\r\n"[3:8])

    # ---- flags ----

    def flags_of(self, seq):
        return self.fetch1(seq, "FLAGS")["FLAGS"]

    def test_seen(self):
        seq = self.seq_of("eightbit")
        self.assertNotIn(b"\\Seen", self.flags_of(seq))
        d = self.fetch1(seq, "BODY.PEEK[]")
        self.assertNotIn("FLAGS", d)
        self.assertNotIn(b"\\Seen", self.flags_of(seq))
        d = self.fetch1(seq, "BINARY.SIZE[1]")
        self.assertNotIn(b"\\Seen", self.flags_of(seq))
        self.fetch1(seq, "MODSEQ")            # enables CONDSTORE
        d = self.fetch1(seq, "BODY[TEXT]")
        self.assertIn("FLAGS", d)             # the change is reported
        self.assertIn("MODSEQ", d)            # with its MODSEQ (CONDSTORE)
        self.assertIn(b"\\Seen", d["FLAGS"])
        self.assertIn(b"\\Seen", self.flags_of(seq))
        # EXAMINE: read-only, nothing is set.
        seq2 = self.seq_of("malformed")
        self.c.select("INBOX", readonly=True)       # EXAMINE
        self.fetch1(seq2, "RFC822")
        self.c.select("INBOX")
        self.assertNotIn(b"\\Seen", self.flags_of(seq2))

    # ---- other attributes ----

    def test_ids_dates_preview(self):
        seq = self.seq_of("alternative")
        d = self.fetch1(seq, "(UID MODSEQ SAVEDATE EMAILID THREADID PREVIEW)")
        self.assertRegex(d["EMAILID"][0].decode(), r"^M[0-9]+$")
        self.assertTrue(d["THREADID"] is None or
                        re.match(r"^T[0-9]+$", d["THREADID"][0].decode()))
        self.assertTrue(d["SAVEDATE"] is None or
                        re.match(rb"^[ \d]\d-[A-Z][a-z]{2}-\d{4} ", d["SAVEDATE"]))
        self.assertGreater(int(d["MODSEQ"][0]), 0)
        msg = email.message_from_bytes(ALTERNATIVE, policy=email.policy.default)
        text = msg.get_body(("plain",)).get_content()
        self.assertEqual(d["PREVIEW"].decode(), " ".join(text.split())[:256])
        # The same EMAILID every time; another message has another.
        d2 = self.fetch1(seq, "EMAILID")
        self.assertEqual(d2["EMAILID"], d["EMAILID"])
        d3 = self.fetch1(self.seq_of("nested"), "(EMAILID PREVIEW (LAZY))")
        self.assertNotEqual(d3["EMAILID"], d["EMAILID"])
        self.assertEqual(d3["PREVIEW"], b"See the attached message.")
        # 8-bit text/plain, decoded as UTF-8.
        d4 = self.fetch1(self.seq_of("eightbit"), "PREVIEW")
        self.assertEqual(d4["PREVIEW"].decode(), "Ünïcödé body")
        # HTML only: tags, comments, style and entities dropped, latin-1
        # converted.
        d5 = self.fetch1(self.seq_of("html_only"), "PREVIEW")
        self.assertEqual(d5["PREVIEW"].decode(), "Café & crème")

    def test_uid_fetch_has_uid(self):
        r = self.fetch("1:*", "FLAGS", uid=True)
        self.assertEqual(len(r), len(self.corpus))
        for _, d in r:
            self.assertIn("UID", d)
        uids = [int(d["UID"]) for _, d in r]
        self.assertEqual(uids, sorted(uids))
        # A UID set with holes and a range past the end.
        r = self.fetch("%d,%d:%d" % (uids[0], uids[2], uids[-1] + 100), "UID", uid=True)
        self.assertEqual([int(d["UID"]) for _, d in r], [uids[0]] + uids[2:])

    # ---- errors ----

    def assert_bad(self, *args):
        # A good command between two bad ones (too many in a row close).
        self.assertEqual(self.c.noop()[0], "OK")
        try:
            typ, data = self.c._simple_command(*args)
        except self.c.error as e:
            self.assertIn("BAD", str(e))
            return
        self.fail(f"{args}: {typ} {data}")

    def test_bad(self):
        for items in ("FOO", "BODY[FOO]", "BODY[1.MIME.TEXT]", "BODY[]<1>",
                      "BODY[]<0.0>", "BINARY[TEXT]", "(FLAGS", "BINARY.SIZE[1]<0.1>"):
            with self.subTest(items=items):
                self.assert_bad("FETCH", "1", items)
        for seqset in ("0", "a", "1:0", ""):
            with self.subTest(seqset=seqset):
                self.assert_bad("FETCH", seqset or '""', "FLAGS")
        # VANISHED: UID FETCH only (and QRESYNC enabled).
        self.assert_bad("FETCH", "1", "FLAGS", "(CHANGEDSINCE 1 VANISHED)")
        # The session is still usable.
        self.assertEqual(self.fetch1(1, "UID")["UID"].isdigit(), True)


class FetchChangesTest(unittest.TestCase):
    """CHANGEDSINCE and VANISHED (EARLIER), with an expunge and a flag change
    made through another sqlited session (as another client would)."""

    def test_changedsince_vanished(self):
        with ImapServer() as srv:
            srv.add_alias(ADDR, PW)
            for i in range(6):
                srv.deliver(ADDR, b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i))
            c = srv.login(ADDR, PW)
            try:
                typ, _ = c._simple_command("ENABLE", "QRESYNC")
                if typ != "OK":
                    self.skipTest("ENABLE QRESYNC is not available yet")
                c.select("INBOX")
                r = parse_fetch(c.uid("FETCH", "1:*", "(MODSEQ)")[1])
                uids = [int(d["UID"]) for _, d in r]
                m0 = max(int(d["MODSEQ"][0]) for _, d in r)
                with srv.rpc("imap@localhost") as rc:
                    sess = sqlited_ops.unlock(rc, ADDR.encode(), PW.encode())
                    for u in (uids[1], uids[3]):
                        sqlited_ops.store(rc, sess, b"INBOX", u, 1,
                                          flags=sqlited_ops.F_DELETED)
                    gone = sqlited_ops.expunge(rc, sess, b"INBOX", [uids[1], uids[3]])
                    self.assertEqual(gone, [uids[1], uids[3]])
                    sqlited_ops.store(rc, sess, b"INBOX", uids[4], 1,
                                      flags=sqlited_ops.F_FLAGGED,
                                      keywords=[b"$Label1", b"Work"])
                typ, data = c.uid("FETCH", "1:*", "(FLAGS) (CHANGEDSINCE %d VANISHED)" % m0)
                self.assertEqual(typ, "OK")
                got = parse_fetch(data)
                # The changed message only (the session's own update after
                # the command may report it once more).
                self.assertEqual({int(d["UID"]) for _, d in got}, {uids[4]})
                self.assertEqual(sorted(got[0][1]["FLAGS"]),
                                 sorted([b"\\Flagged", b"$Label1", b"Work"]))
                self.assertIn("MODSEQ", got[0][1])
                van = c.untagged_responses.pop("VANISHED", [])
                self.assertEqual(van[0], b"(EARLIER) %d,%d" % (uids[1], uids[3]))
                # Without VANISHED: only the changed message, no VANISHED.
                typ, data = c.uid("FETCH", "1:*", "(FLAGS) (CHANGEDSINCE %d)" % m0)
                self.assertEqual({int(d["UID"]) for _, d in parse_fetch(data)}, {uids[4]})
                self.assertNotIn("VANISHED", c.untagged_responses)
            finally:
                c.logout()
        assert_clean_log(self, srv)

    def test_appended_byte_for_byte(self):
        raws = [EIGHTBIT, ALTERNATIVE,
                b"Subject: bare LF\nX: y\n\nline\nlast line without end",
                b"Subject: empty body\r\n\r\n"]
        with ImapServer() as srv:
            srv.add_alias(ADDR, PW)
            c = srv.login(ADDR, PW)
            try:
                for raw in raws:
                    typ, data = c.append("INBOX", None, None, raw)
                    if typ != "OK":
                        self.skipTest("APPEND is not available: %r" % data)
                # imaplib sends bare LFs as CRLF: that is what was appended.
                raws = [re.sub(rb"\r?\n", b"\r\n", r) for r in raws]
                c.select("INBOX")
                got = parse_fetch(c.fetch("1:*", "(RFC822.SIZE BODY.PEEK[] BINARY.PEEK[])")[1])
                self.assertEqual([d["BODY[]"] for _, d in got], raws)
                self.assertEqual([d["BINARY[]"] for _, d in got], raws)
                self.assertEqual([int(d["RFC822.SIZE"]) for _, d in got],
                                 [len(r) for r in raws])
            finally:
                c.logout()
        assert_clean_log(self, srv)

    def test_expunged_elsewhere_seq_fetch(self):
        """FETCH by sequence number while another session expunged a
        message: no EXPUNGE during the FETCH (RFC 3501 7.4.1), the gone
        message is left out, the numbers stay; NOOP then reports it."""
        with ImapServer() as srv:
            srv.add_alias(ADDR, PW)
            for i in range(4):
                srv.deliver(ADDR, b"Subject: e%d\r\n\r\nbody %d\r\n" % (i, i))
            c = srv.login(ADDR, PW)
            try:
                c.select("INBOX")
                r = parse_fetch(c.fetch("1:*", "(UID BODY.PEEK[TEXT])")[1])
                uids = [int(d["UID"]) for _, d in r]
                bodies = {int(d["UID"]): d["BODY[TEXT]"] for _, d in r}
                with srv.rpc("imap@localhost") as rc:
                    sess = sqlited_ops.unlock(rc, ADDR.encode(), PW.encode())
                    sqlited_ops.store(rc, sess, b"INBOX", uids[1], 1,
                                      flags=sqlited_ops.F_DELETED)
                    sqlited_ops.expunge(rc, sess, b"INBOX", [uids[1]])
                typ, data = c.fetch("1:*", "(UID BODY.PEEK[TEXT])")
                self.assertEqual(typ, "OK")
                self.assertNotIn("EXPUNGE", c.untagged_responses)
                got = parse_fetch(data)
                self.assertEqual([(n, int(d["UID"])) for n, d in got],
                                 [(1, uids[0]), (3, uids[2]), (4, uids[3])])
                self.assertEqual(got[1][1]["BODY[TEXT]"], bodies[uids[2]])
                c.noop()
                self.assertEqual(c.untagged_responses.pop("EXPUNGE", None), [b"2"])
                got = parse_fetch(c.fetch("1:*", "UID")[1])
                self.assertEqual([int(d["UID"]) for _, d in got],
                                 [uids[0], uids[2], uids[3]])
            finally:
                c.logout()
        assert_clean_log(self, srv)


class FetchLargeTest(unittest.TestCase):
    def test_30mb_slow_reader_bounded_memory(self):
        size = 30 * 1024 * 1024
        line = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                b"0123456789\r\n")
        body = line * (size // len(line) + 1)
        raw = b"Subject: big\r\nFrom: big@example.org\r\n\r\n" + body
        digest = hashlib.sha256(raw).hexdigest()
        # Under ASan freed memory waits in a quarantine (256 MB by default)
        # before reuse, which would count every chunk that passed through:
        # a small one keeps RSS a measure of what imapd holds.
        saved = os.environ.get("ASAN_OPTIONS")
        os.environ["ASAN_OPTIONS"] = ((saved + ":") if saved else "") + \
            "quarantine_size_mb=2:thread_local_quarantine_size_kb=64"
        try:
            srv = ImapServer(config={"max_message_bytes": str(64 * 1024 * 1024)})
        finally:
            if saved is None:
                del os.environ["ASAN_OPTIONS"]
            else:
                os.environ["ASAN_OPTIONS"] = saved
        with srv:
            srv.add_alias(ADDR, PW)
            srv.deliver(ADDR, raw)
            del body
            pid = srv.imapd_pid()
            r = srv.raw()
            try:
                r.cmd(b"a", b"LOGIN " + ADDR.encode() + b' "' + PW.encode() + b'"')
                r.cmd(b"b", b"SELECT INBOX")
                base = rss_kib(pid)
                r.send(b"c FETCH 1 (BODY.PEEK[])\r\n")
                first = r.line()
                m = re.search(rb"\{(\d+)\}$", first)
                self.assertIsNotNone(m, first)
                n = int(m.group(1))
                self.assertEqual(n, len(raw))
                h = hashlib.sha256()
                got, peak = 0, base
                # Read slowly at first: the server must wait, not buffer.
                while got < n:
                    want = min(n - got, 256 * 1024)
                    if r.buf:
                        chunk = r.buf[:want]
                        r.buf = r.buf[len(chunk):]
                    else:
                        chunk = r.s.recv(want)
                        if not chunk:
                            raise EOFError
                    h.update(chunk)
                    got += len(chunk)
                    if got < 4 * 1024 * 1024:
                        time.sleep(0.02)
                    peak = max(peak, rss_kib(pid))
                self.assertEqual(h.hexdigest(), digest)
                tail = r.until_tagged(b"c")
                self.assertEqual(tail[0], b")")
                self.assertTrue(tail[-1].startswith(b"c OK"), tail)
                grew = peak - base
                print(f"\n30 MB FETCH: imapd RSS {base} KiB -> peak {peak} KiB "
                      f"(+{grew} KiB)", file=sys.stderr)
                self.assertLess(grew, 10 * 1024)
            finally:
                r.close()
            # A client that goes away in the middle of the literal: the
            # stream is cancelled and imapd goes on serving others.
            r = srv.raw()
            try:
                r.cmd(b"a", b"LOGIN " + ADDR.encode() + b' "' + PW.encode() + b'"')
                r.cmd(b"b", b"SELECT INBOX")
                r.send(b"c FETCH 1 (BODY[])\r\n")
                self.assertTrue(re.search(rb"\{\d+\}$", r.line()))
                r.s.recv(512 * 1024)
            finally:
                r.close()
            c = srv.login(ADDR, PW)
            try:
                c.select("INBOX")
                typ, data = c.fetch("1", "(RFC822.SIZE BODY.PEEK[]<0.7>)")
                self.assertEqual(typ, "OK")
                d = parse_fetch(data)[0][1]
                self.assertEqual(int(d["RFC822.SIZE"]), len(raw))
                self.assertEqual(d["BODY[]<0>"], raw[:7])
            finally:
                c.logout()
        assert_clean_log(self, srv)


def sqlited_requests(srv):
    """sqlited's count of requests so far (STATS; this call included)."""
    with srv.rpc() as rc:
        return rpcclient.stats(rc.call(rpcclient.OP_STATS))["requests"]


def padded_header(i, size):
    """A header of about size bytes: one folded X-Pad field."""
    h = b"From: p%d@example.org\r\nSubject: padded %04d\r\nX-Pad: start" % (i, i)
    line = bytes(97 + (i + k) % 26 for k in range(70))
    while len(h) < size:
        h += b"\r\n " + line
    return h + b"\r\n\r\n"


class FetchManyTest(unittest.TestCase):
    def test_1000_headers(self):
        count = 1000
        # FETCH_META is asked for 4,096 messages at a time; a test hook
        # makes that 300 here, so that the command crosses chunks.
        srv = ImapServer(fetch_chunk=300)
        with srv:
            srv.add_alias(ADDR, PW)
            with srv.rpc("imap@localhost") as rc:
                sess = sqlited_ops.unlock(rc, ADDR.encode(), PW.encode())
                for i in range(count):
                    sqlited_ops.append(rc, sess, b"INBOX",
                                       b"From: s%d@example.org\r\nSubject: message %d\r\n"
                                       b"Message-ID: <%d@example.org>\r\n\r\nbody %d\r\n"
                                       % (i, i, i, i))
            c = srv.login(ADDR, PW)
            try:
                c.select("INBOX")
                before = sqlited_requests(srv)
                t0 = time.monotonic()
                typ, data = c.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER])")
                dt = time.monotonic() - t0
                self.assertEqual(typ, "OK")
                # The headers came with FETCH_META (4 chunks of 300), not
                # with one FETCH_BODY per message.
                self.assertLessEqual(sqlited_requests(srv) - before, 4 + 2)
                got = parse_fetch(data)
                self.assertEqual(len(got), count)
                for i, (seq, d) in enumerate(got):
                    self.assertEqual(seq, i + 1)
                    self.assertEqual(d["BODY[HEADER]"],
                                     b"From: s%d@example.org\r\nSubject: message %d\r\n"
                                     b"Message-ID: <%d@example.org>\r\n\r\n" % (i, i, i))
                    self.assertEqual(d["FLAGS"], [])
                print(f"\nUID FETCH 1:* (FLAGS BODY.PEEK[HEADER]) of {count}: "
                      f"{dt * 1000:.0f} ms", file=sys.stderr)
                # Across chunks: a set with holes, and \Seen set on all.
                typ, data = c.fetch("2:999", "(UID BODY[TEXT])")
                got = parse_fetch(data)
                by_seq = {}
                for seq, d in got:
                    by_seq.setdefault(seq, {}).update(d)
                self.assertEqual(sorted(by_seq), list(range(2, 1000)))
                for seq, d in by_seq.items():
                    self.assertEqual(d["BODY[TEXT]"], b"body %d\r\n" % (seq - 1))
                    self.assertIn(b"\\Seen", d["FLAGS"])
                got = parse_fetch(c.fetch("1:*", "FLAGS")[1])
                seen = [seq for seq, d in got if b"\\Seen" in d["FLAGS"]]
                self.assertEqual(seen, list(range(2, 1000)))
            finally:
                c.logout()
        assert_clean_log(self, srv)

    def test_left_out_blobs_fall_back(self):
        """Blobs sqlited leaves out of FETCH_META (docs/rpc.md: a MIME
        structure above 256 KiB; headers past 16 MiB in one answer) are
        fetched with FETCH_BODY for those messages only: same answers."""
        parts = b"".join(b"--b\r\nContent-Type: text/plain; name=\"a-rather-long-"
                         b"attachment-file-name-%04d.txt\"\r\n\r\nx\r\n" % i
                         for i in range(4000))
        many = (b"Subject: 4000 parts\r\nContent-Type: multipart/mixed; boundary=b"
                b"\r\n\r\n" + parts + b"--b--\r\n")
        headers = [b"Subject: small\r\n\r\n", many.split(b"\r\n\r\n")[0] + b"\r\n\r\n"]
        headers += [padded_header(i, 250 * 1024) for i in range(70)]
        with ImapServer() as srv:
            srv.add_alias(ADDR, PW)
            with srv.rpc("imap@localhost") as rc:
                sess = sqlited_ops.unlock(rc, ADDR.encode(), PW.encode())
                sqlited_ops.append(rc, sess, b"INBOX", headers[0] + b"body\r\n")
                sqlited_ops.append(rc, sess, b"INBOX", many)
                for h in headers[2:]:
                    sqlited_ops.append(rc, sess, b"INBOX", h + b"body\r\n")
            c = srv.login(ADDR, PW)
            try:
                c.select("INBOX")
                before = sqlited_requests(srv)
                typ, data = c.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER])")
                self.assertEqual(typ, "OK")
                spent = sqlited_requests(srv) - before - 1
                got = parse_fetch(data)
                self.assertEqual([seq for seq, _ in got], list(range(1, 73)))
                for (seq, d), h in zip(got, headers):
                    self.assertEqual(d["BODY[HEADER]"], h, seq)
                # One FETCH_META, then FETCH_BODY for the headers past the
                # 16 MiB budget (about 5 of 70), not for the others.
                self.assertGreaterEqual(spent, 1 + 3)
                self.assertLessEqual(spent, 1 + 10)

                # The 4,000-part structure (~330 KiB encoded) is left out:
                # one FETCH_BODY for it, none for message 1.
                before = sqlited_requests(srv)
                typ, data = c.fetch("1:2", "(BODYSTRUCTURE BODY.PEEK[HEADER])")
                self.assertEqual(typ, "OK")
                self.assertEqual(sqlited_requests(srv) - before - 1, 2)
                got = parse_fetch(data)
                self.assertEqual(got[0][1]["BODY[HEADER]"], headers[0])
                self.assertEqual(got[1][1]["BODY[HEADER]"], headers[1])
                bs = got[1][1]["BODYSTRUCTURE"]
                first = next(i for i, x in enumerate(bs) if not isinstance(x, list))
                self.assertEqual(first, 4000)      # the parts, then the subtype
                self.assertEqual(bs[4000].upper(), b"MIXED")
            finally:
                c.logout()
        assert_clean_log(self, srv)


if __name__ == "__main__":
    unittest.main()
