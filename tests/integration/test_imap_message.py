"""Integration tests of the IMAP message commands: STORE, COPY, MOVE,
EXPUNGE, SEARCH (every key, ESEARCH, SEARCHRES), SORT and THREAD
(frontends/imap/imap_cmd_message.c), against a real sqlited and
sealmail-imapd (imap_server.py).

A corpus of 50 messages with known properties (senders, recipients,
subjects with Re:/Fwd:/[blob] decorations, Date headers in several zones,
sizes, words, flags and keywords) is delivered through sqlited as the MX
would; every SEARCH key and SORT order is checked against an independent
evaluation in Python of the same criteria over the same messages (parsed
with the email package), never against numbers written in the test.
Sequence-number answers, untagged EXPUNGE numbering, and the rule that a
FETCH/STORE/SEARCH by sequence number never reports an EXPUNGE (RFC 3501
7.4.1) are checked line by line on raw sockets.
"""
import datetime
import email
import email.utils
import functools
import imaplib
import os
import re
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from imap_server import ImapServer, wait_for  # noqa: E402

PW = "message-test-password"
N = 50
NAMES = ["Alice Able", "Bob Baker", "", "Dora Dent", "Eve Evans"]
BASES = ["alpha plan", "bravo report", "charlie notes", "delta budget", "echo review"]
PREFIXES = ["", "Re: ", "Fwd: ", "RE: Re: ", "[list] ", "Fw: "]
ZONES = [0, -8 * 60, 5 * 60 + 30, 60]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
          "Dec"]
NO_DATE = {13, 37}


def imap_date(d):
    return "%d-%s-%04d" % (d.day, MONTHS[d.month - 1], d.year)


def make_message(i):
    name = NAMES[i % 5]
    addr = "user%d@ex%d.org" % (i % 7, i % 3)
    h = ["From: " + ('"%s" <%s>' % (name, addr) if name else addr),
         "To: " + ("Rcpt Team <rcpt%d@example.org>" % (i % 4) if i % 2 else
                   "rcpt%d@example.org" % (i % 4))]
    if i % 3 == 0:
        h.append("Cc: cc%d@example.net" % (i % 2))
    if i % 10 == 0:
        h.append("Bcc: hidden@example.com")
    subject = PREFIXES[i % 6] + BASES[(i * 3) % 5] + (" (fwd)" if i % 9 == 0 else "")
    h.append("Subject: " + subject)
    if i not in NO_DATE:
        tz = datetime.timezone(datetime.timedelta(minutes=ZONES[i % 4]))
        d = datetime.datetime(2021, 3, 1, tzinfo=tz) + datetime.timedelta(
            days=2 * i, hours=(7 * i) % 24)
        h.append("Date: " + email.utils.format_datetime(d))
    h.append("Message-ID: <m%d@corpus.test>" % i)
    h.append("X-Mailer: mailer%d" % (i % 3))
    h.append("X-Idx: %d" % i)
    body = "Hello word%d.\r\n" % (i % 7)
    if i % 6 == 1:
        body += "A needle in the haystack.\r\n"
    body += "padding " * (i * 5) + "\r\n"
    return ("\r\n".join(h) + "\r\n\r\n" + body).encode()


def flags_of(i):
    f = set()
    if i % 2:
        f.add("\\Seen")
    if i % 3 == 0:
        f.add("\\Flagged")
    if i % 5 == 0:
        f.add("\\Answered")
    if i % 7 == 0:
        f.add("\\Deleted")
    if i % 11 == 0:
        f.add("\\Draft")
    if i % 4 == 0:
        f.add("$Work")
    return f


def base_subject(s):
    """RFC 5256 section 2.1 for undecorated ASCII subjects."""
    s = re.sub(r"\s+", " ", s).strip()
    while True:
        while True:
            t = re.sub(r"\s*\(fwd\)\s*$", "", s, flags=re.I)
            if t == s:
                break
            s = t
        while True:
            prev = s
            s = re.sub(r"^(re|fwd?)\s*(\[[^\[\]]*\]\s*)?:\s*", "", s, flags=re.I)
            m = re.match(r"^\[[^\[\]]*\]\s*(.+)$", s)
            if m:
                s = m.group(1)
            if s == prev:
                break
        m = re.match(r"^\[fwd:\s*(.*)\]$", s, flags=re.I)
        if m:
            s = m.group(1).strip()
            continue
        return s


class Msg:
    def __init__(self, i, raw):
        self.i = i
        self.raw = raw
        self.em = email.message_from_bytes(raw)
        self.flags = flags_of(i)
        self.size = len(raw)
        self.uid = None
        self.internal = None
        hdr, _, body = raw.partition(b"\r\n\r\n")
        self.header = hdr.decode()
        self.body = body.decode()
        d = self.em.get("Date")
        self.sent_tuple = email.utils.parsedate_tz(d) if d else None

    def h(self, name):
        return self.em.get(name, "")

    def has(self, name, text):
        v = self.em.get(name)
        return v is not None and text.lower() in " ".join(v.split()).lower()

    def sent_day(self):
        t = self.sent_tuple
        return datetime.date(t[0], t[1], t[2]) if t else None

    def sent_epoch(self):
        return email.utils.mktime_tz(self.sent_tuple) if self.sent_tuple else None

    def first_addr(self, name):
        v = self.em.get(name)
        if not v:
            return ("", "")
        return email.utils.getaddresses([v])[0]


def ascii_upper(s):
    return s.upper()


def sort_key(m, key):
    if key == "ARRIVAL":
        return m.internal
    if key == "DATE":
        e = m.sent_epoch()
        return e if e is not None else m.internal
    if key == "SIZE":
        return m.size
    if key == "SUBJECT":
        return ascii_upper(base_subject(m.h("Subject")))
    if key in ("FROM", "TO", "CC"):
        return ascii_upper(m.first_addr(key.capitalize())[1].split("@")[0])
    if key in ("DISPLAYFROM", "DISPLAYTO"):
        name, addr = m.first_addr("From" if key == "DISPLAYFROM" else "To")
        return ascii_upper(name or addr)
    raise ValueError(key)


def expected_sort(msgs, criteria):
    """criteria: [(key, reverse)]; ties by the next key, finally UID."""
    def cmp(a, b):
        for key, rev in criteria:
            x, y = sort_key(a, key), sort_key(b, key)
            if x != y:
                r = -1 if x < y else 1
                return -r if rev else r
        return -1 if a.uid < b.uid else (a.uid > b.uid)
    return [m.uid for m in sorted(msgs, key=functools.cmp_to_key(cmp))]


def parse_set(s):
    out = []
    for part in s.split(","):
        if ":" in part:
            a, b = part.split(":")
            a, b = int(a), int(b)
            out.extend(range(min(a, b), max(a, b) + 1))
        else:
            out.append(int(part))
    return out


class Raw:
    """A RawImap with tags, logged in and (optionally) with a mailbox selected."""

    def __init__(self, srv, addr, mailbox="INBOX", examine=False, port=None):
        self.r = srv.raw(port=port)
        self.n = 0
        tagged = self.run('LOGIN "%s" "%s"' % (addr, PW))[-1]
        assert b" OK " in tagged, tagged
        if mailbox:
            self.lines = self.run(("EXAMINE " if examine else "SELECT ") + mailbox)
            assert b" OK " in self.lines[-1], self.lines

    def run(self, command):
        self.n += 1
        tag = ("t%d" % self.n).encode()
        return self.r.cmd(tag, command.encode() if isinstance(command, str) else command)

    def ok(self, command):
        lines = self.run(command)
        assert lines[-1].split(b" ")[1] == b"OK", (command, lines)
        return lines[:-1], lines[-1]

    def close(self):
        self.r.close()


def untagged(lines, word):
    return [ln for ln in lines if ln.startswith(b"* ") and word in ln]


def search_numbers(lines, word=b"SEARCH"):
    for ln in lines:
        if ln.startswith(b"* " + word):
            rest = re.sub(rb"\(MODSEQ \d+\)", b"", ln[len(word) + 2:])
            return [int(x) for x in rest.split()]
    raise AssertionError("no * %s in %r" % (word, lines))


def esearch(lines):
    ln = [x for x in lines if x.startswith(b"* ESEARCH")]
    if not ln:
        return None
    toks = ln[0].decode().split()
    out = {"uid": "UID" in toks}
    i = 4 if toks[2] == "(TAG" else 2
    while i < len(toks):
        if toks[i] == "UID":
            i += 1
            continue
        out[toks[i]] = toks[i + 1]
        i += 2
    return out


class CorpusTest(unittest.TestCase):
    """SEARCH keys, ESEARCH, SEARCHRES, SORT on the 50-message corpus."""

    @classmethod
    def setUpClass(cls):
        cls.srv = ImapServer()
        cls.addr = "corpus@example.org"
        cls.srv.add_alias(cls.addr, PW)
        cls.msgs = {}
        for i in range(1, N + 1):
            raw = make_message(i)
            cls.msgs[i] = Msg(i, raw)
            cls.srv.deliver(cls.addr, raw)
        c = cls.srv.login(cls.addr, PW)
        cls.c = c
        wait_for(lambda: int(c.select("INBOX")[1][0]) == N)
        cls.map_uids()
        # Flags and keywords through UID STORE (silent: STORE's own
        # reporting is tested elsewhere).
        for m in cls.msgs.values():
            if m.flags:
                typ, _ = c.uid("STORE", str(m.uid), "+FLAGS.SILENT",
                               "(%s)" % " ".join(sorted(m.flags)))
                assert typ == "OK"
        cls.by_uid = {m.uid: m for m in cls.msgs.values()}
        cls.uids = sorted(cls.by_uid)
        cls.r = Raw(cls.srv, cls.addr)

    @classmethod
    def tearDownClass(cls):
        for x in (cls.c,):
            try:
                x.logout()
            except Exception:
                pass
        cls.r.close()
        cls.srv.stop()

    @classmethod
    def map_uids(cls):
        typ, data = cls.c.uid("FETCH", "1:*",
                              "(RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (X-Idx)])")
        assert typ == "OK"
        for item in data:
            if not isinstance(item, tuple):
                continue
            meta, hdr = item
            idx = int(re.search(rb"X-Idx: (\d+)", hdr).group(1))
            m = cls.msgs[idx]
            m.uid = int(re.search(rb"UID (\d+)", meta).group(1))
            assert int(re.search(rb"RFC822.SIZE (\d+)", meta).group(1)) == m.size
            m.internal = int(time.mktime(imaplib.Internaldate2tuple(meta)))
        assert all(m.uid for m in cls.msgs.values())

    def expect(self, criteria, pred):
        want = sorted(m.uid for m in self.msgs.values() if pred(m))
        lines, _ = self.r.ok("UID SEARCH " + criteria)
        self.assertEqual(sorted(search_numbers(lines)), want, criteria)
        # The sequence-number form: numbers of the same messages.
        lines, _ = self.r.ok("SEARCH " + criteria)
        self.assertEqual(search_numbers(lines),
                         [self.uids.index(u) + 1 for u in want], criteria)
        return want

    def test_flag_keys(self):
        for key, flag in [("ANSWERED", "\\Answered"), ("DELETED", "\\Deleted"),
                          ("DRAFT", "\\Draft"), ("FLAGGED", "\\Flagged"),
                          ("SEEN", "\\Seen")]:
            self.assertTrue(self.expect(key, lambda m, f=flag: f in m.flags))
            self.assertTrue(self.expect("UN" + key, lambda m, f=flag: f not in m.flags))
        self.expect("KEYWORD $Work", lambda m: "$Work" in m.flags)
        self.expect("UNKEYWORD $work", lambda m: "$Work" not in m.flags)
        self.expect("KEYWORD $Nobody", lambda m: False)
        self.expect("ALL", lambda m: True)
        self.expect("OLD", lambda m: True)
        self.expect("NEW", lambda m: False)
        self.expect("RECENT", lambda m: False)

    def test_header_keys(self):
        self.expect("FROM user3", lambda m: m.has("From", "user3"))
        self.expect('FROM "bob baker"', lambda m: m.has("From", "bob baker"))
        self.expect("FROM EX2.ORG", lambda m: m.has("From", "ex2.org"))
        self.expect("TO rcpt2", lambda m: m.has("To", "rcpt2"))
        self.expect('TO "Rcpt Team"', lambda m: m.has("To", "rcpt team"))
        self.expect("CC cc1", lambda m: m.has("Cc", "cc1"))
        self.expect("BCC hidden", lambda m: m.has("Bcc", "hidden"))
        self.expect("SUBJECT bravo", lambda m: m.has("Subject", "bravo"))
        self.expect('SUBJECT "re: re:"', lambda m: m.has("Subject", "re: re:"))
        self.expect("HEADER X-Mailer mailer2", lambda m: m.has("X-Mailer", "mailer2"))
        self.expect('HEADER Cc ""', lambda m: m.em.get("Cc") is not None)
        self.expect('HEADER X-Absent ""', lambda m: False)

    def test_text_keys(self):
        self.expect("BODY word3", lambda m: "word3" in m.body)
        self.expect("BODY needle", lambda m: "needle" in m.body)
        self.expect('BODY "needle in the haystack"',
                    lambda m: "needle in the haystack" in m.body.lower())
        self.expect("TEXT user4", lambda m: "user4" in m.raw.decode().lower())
        self.expect("TEXT needle", lambda m: "needle" in m.raw.decode().lower())

    def test_size_keys(self):
        sizes = sorted(m.size for m in self.msgs.values())
        mid = sizes[len(sizes) // 2]
        self.expect("LARGER %d" % mid, lambda m: m.size > mid)
        self.expect("SMALLER %d" % mid, lambda m: m.size < mid)
        self.expect("LARGER %d SMALLER %d" % (sizes[10], sizes[20]),
                    lambda m: sizes[10] < m.size < sizes[20])

    def test_date_keys(self):
        days = sorted({m.sent_day() for m in self.msgs.values() if m.sent_day()})
        d = days[len(days) // 2]
        self.expect("SENTON " + imap_date(d), lambda m: m.sent_day() == d)
        self.expect("SENTBEFORE " + imap_date(d),
                    lambda m: m.sent_day() is not None and m.sent_day() < d)
        self.expect("SENTSINCE " + imap_date(d),
                    lambda m: m.sent_day() is not None and m.sent_day() >= d)
        # Internal and save dates: every message arrived today (local).
        days = {datetime.date.fromtimestamp(m.internal) for m in self.msgs.values()}
        today = max(days)
        tomorrow = today + datetime.timedelta(days=1)
        for prefix in ("", "SAVED"):
            self.expect(prefix + "ON " + imap_date(today),
                        lambda m: datetime.date.fromtimestamp(m.internal) == today)
            self.expect(prefix + "SINCE " + imap_date(tomorrow), lambda m: False)
            self.expect(prefix + "BEFORE " + imap_date(tomorrow), lambda m: True)
            self.expect(prefix + 'SINCE "' + imap_date(today) + '"',
                        lambda m: datetime.date.fromtimestamp(m.internal) >= today)
        self.expect("SAVEDATESUPPORTED", lambda m: True)
        age = int(time.time()) - min(m.internal for m in self.msgs.values()) + 3600
        self.expect("YOUNGER %d" % age, lambda m: True)
        self.expect("OLDER %d" % age, lambda m: False)

    def test_sets_and_logic(self):
        u = self.uids
        self.expect("UID %d:%d" % (u[3], u[9]), lambda m: u[3] <= m.uid <= u[9])
        self.expect("UID %d,%d:*" % (u[0], u[-2]),
                    lambda m: m.uid in (u[0], u[-2], u[-1]))
        self.expect("2:4,*", lambda m: m.uid in (u[1], u[2], u[3], u[-1]))
        self.expect("NOT SEEN", lambda m: "\\Seen" not in m.flags)
        self.expect("OR FLAGGED DRAFT",
                    lambda m: "\\Flagged" in m.flags or "\\Draft" in m.flags)
        self.expect("OR (SEEN FLAGGED) NOT (OR ANSWERED FROM user1)",
                    lambda m: ("\\Seen" in m.flags and "\\Flagged" in m.flags) or
                    not ("\\Answered" in m.flags or m.has("From", "user1")))
        self.expect("NOT NOT NOT NOT DELETED", lambda m: "\\Deleted" in m.flags)
        self.expect("1:10 UNSEEN SUBJECT alpha",
                    lambda m: m.uid in u[:10] and "\\Seen" not in m.flags and
                    m.has("Subject", "alpha"))
        self.expect("CHARSET UTF-8 SEEN", lambda m: "\\Seen" in m.flags)
        self.expect("CHARSET US-ASCII SEEN", lambda m: "\\Seen" in m.flags)

    def test_refusals(self):
        lines = self.r.run("SEARCH CHARSET ISO-8859-15 ALL")
        self.assertIn(b" NO [BADCHARSET (UTF-8 US-ASCII)] ", lines[-1])
        for bad in ("SEARCH FOO", "SEARCH", "SEARCH OR SEEN", "SEARCH LARGER x",
                    "SEARCH BEFORE 32-Jan-2020", "SEARCH UID 0", "SEARCH 0",
                    "SEARCH RETURN (BOGUS) ALL", "SEARCH HEADER A:B x"):
            self.assertEqual(self.r.run(bad)[-1].split(b" ")[1], b"BAD", bad)
        deep = "SEEN"
        for d in range(2, 18):
            deep = ("NOT (%s)" if d % 2 == 0 else "OR DELETED %s") % deep
        tagged = self.r.run("SEARCH " + deep)[-1]
        self.assertIn(b" NO ", tagged)
        self.assertIn(b"[LIMIT]", tagged)
        # One level less is fine.
        self.r.ok("SEARCH " + deep[len("OR DELETED "):])

    def test_modseq_and_objectid(self):
        lines, _ = self.r.ok("UID SEARCH MODSEQ 1")
        m0 = int(re.search(rb"\(MODSEQ (\d+)\)", untagged(lines, b"SEARCH")[0]).group(1))
        # Three messages the STORE really changes (the spool is drained in
        # no fixed order, so which UID holds an \Answered message varies).
        touched = [u for u in self.uids[5:]
                   if "\\Answered" not in self.by_uid[u].flags][:3]
        self.r.ok("UID STORE %s +FLAGS.SILENT (\\Answered)" %
                  ",".join(map(str, touched)))
        for u in touched:
            self.by_uid[u].flags.add("\\Answered")
        lines, _ = self.r.ok("UID SEARCH MODSEQ %d" % (m0 + 1))
        self.assertEqual(search_numbers(lines), touched)
        m1 = int(re.search(rb"\(MODSEQ (\d+)\)", untagged(lines, b"SEARCH")[0]).group(1))
        self.assertGreater(m1, m0)
        lines, _ = self.r.ok('UID SEARCH MODSEQ "/flags/\\\\answered" all %d' % (m0 + 1))
        self.assertEqual(search_numbers(lines), touched)
        lines, _ = self.r.ok("UID SEARCH RETURN (COUNT) MODSEQ %d" % (m0 + 1))
        e = esearch(lines)
        self.assertEqual(int(e["COUNT"]), 3)
        self.assertEqual(int(e["MODSEQ"]), m1)
        # No match: no MODSEQ in the answer.
        lines, _ = self.r.ok("UID SEARCH MODSEQ %d" % (m1 + 1000))
        self.assertEqual(lines, [b"* SEARCH"])

        typ, data = self.c.uid("FETCH", "1:*", "(EMAILID THREADID)")
        ids = {}
        for ln in data:
            if b"EMAILID" not in ln:
                continue             # an unsolicited FLAGS update
            u = int(re.search(rb"UID (\d+)", ln).group(1))
            ids[u] = (re.search(rb"EMAILID \(([^)\s]+)\)", ln).group(1).decode(),
                      re.search(rb"THREADID \(([^)\s]+)\)|THREADID NIL", ln).group(1))
        u = self.uids[17]
        self.expect("EMAILID " + ids[u][0], lambda m: ids[m.uid][0] == ids[u][0])
        if ids[u][1] is not None:
            t = ids[u][1].decode()
            self.expect("THREADID " + t, lambda m: ids[m.uid][1] == ids[u][1])
        self.expect("EMAILID Zforeign-1", lambda m: False)

    def test_esearch_and_searchres(self):
        want = [m.uid for m in sorted(self.by_uid.values(), key=lambda m: m.uid)
                if "\\Flagged" in m.flags]
        lines, _ = self.r.ok("UID SEARCH RETURN (MIN MAX COUNT ALL) FLAGGED")
        e = esearch(lines)
        self.assertTrue(e["uid"])
        self.assertEqual(int(e["MIN"]), want[0])
        self.assertEqual(int(e["MAX"]), want[-1])
        self.assertEqual(int(e["COUNT"]), len(want))
        self.assertEqual(parse_set(e["ALL"]), want)
        self.assertIn(b'(TAG "t', lines[0])
        seqs = [self.uids.index(u) + 1 for u in want]
        lines, _ = self.r.ok("SEARCH RETURN () FLAGGED")
        e = esearch(lines)
        self.assertFalse(e["uid"])
        self.assertEqual(parse_set(e["ALL"]), seqs)
        self.assertNotIn("COUNT", e)
        # ALL is compact: consecutive numbers become ranges.
        lines, _ = self.r.ok("SEARCH RETURN (ALL) 1:5,9")
        self.assertEqual(esearch(lines)["ALL"], "1:5,9")
        # No match: COUNT 0 only.
        lines, _ = self.r.ok("SEARCH RETURN (MIN MAX ALL COUNT) KEYWORD $None")
        self.assertEqual(esearch(lines), {"uid": False, "COUNT": "0"})

        # SAVE alone: no ESEARCH; "$" then names the result everywhere.
        lines, _ = self.r.ok("UID SEARCH RETURN (SAVE) FLAGGED")
        self.assertEqual(untagged(lines, b"ESEARCH"), [])
        lines, _ = self.r.ok("UID SEARCH $")
        self.assertEqual(search_numbers(lines), want)
        lines, _ = self.r.ok("SEARCH $ SEEN")
        self.assertEqual(search_numbers(lines),
                         [self.uids.index(u) + 1 for u in want
                          if "\\Seen" in self.by_uid[u].flags])
        lines, _ = self.r.ok("UID FETCH $ (FLAGS)")
        fetched = [int(re.search(rb"UID (\d+)", ln).group(1))
                   for ln in untagged(lines, b"FETCH")]
        self.assertEqual(sorted(fetched), want)
        # SAVE with MIN MAX keeps those two only.
        lines, _ = self.r.ok("UID SEARCH RETURN (SAVE MIN MAX) FLAGGED")
        e = esearch(lines)
        self.assertEqual((int(e["MIN"]), int(e["MAX"])), (want[0], want[-1]))
        lines, _ = self.r.ok("UID SEARCH $")
        self.assertEqual(search_numbers(lines), [want[0], want[-1]])
        # A failed SEARCH with SAVE empties "$".
        lines = self.r.run("UID SEARCH RETURN (SAVE) CHARSET KOI8-R ALL")
        self.assertIn(b" NO ", lines[-1])
        lines, _ = self.r.ok("UID SEARCH $")
        self.assertEqual(search_numbers(lines), [])

    def test_esearch_under_imap4rev2(self):
        r = Raw(self.srv, self.addr, mailbox=None)
        try:
            r.ok("ENABLE IMAP4rev2")
            r.ok("EXAMINE INBOX")
            lines, _ = r.ok("SEARCH DRAFT")
            want = [self.uids.index(m.uid) + 1 for m in self.msgs.values()
                    if "\\Draft" in m.flags]
            self.assertEqual(untagged(lines, b"* SEARCH"), [])
            self.assertEqual(parse_set(esearch(lines)["ALL"]), sorted(want))
        finally:
            r.close()

    def test_sort(self):
        msgs = list(self.by_uid.values())
        keys = ["ARRIVAL", "DATE", "SIZE", "SUBJECT", "FROM", "TO", "CC",
                "DISPLAYFROM", "DISPLAYTO"]
        for key in keys:
            for rev in (False, True):
                crit = ("REVERSE " if rev else "") + key
                lines, _ = self.r.ok("UID SORT (%s) UTF-8 ALL" % crit)
                self.assertEqual(search_numbers(lines, b"SORT"),
                                 expected_sort(msgs, [(key, rev)]), crit)
        crit = [("SUBJECT", False), ("DATE", True)]
        lines, _ = self.r.ok("UID SORT (SUBJECT REVERSE DATE) UTF-8 ALL")
        self.assertEqual(search_numbers(lines, b"SORT"), expected_sort(msgs, crit))
        # A program, and sequence numbers.
        sub = [m for m in msgs if "\\Seen" in m.flags]
        lines, _ = self.r.ok("SORT (SIZE) US-ASCII SEEN")
        self.assertEqual(search_numbers(lines, b"SORT"),
                         [self.uids.index(u) + 1 for u in
                          expected_sort(sub, [("SIZE", False)])])
        # ESORT.
        order = expected_sort(msgs, [("FROM", False)])
        lines, _ = self.r.ok("UID SORT RETURN (MIN MAX COUNT ALL) (FROM) UTF-8 ALL")
        e = esearch(lines)
        self.assertEqual(int(e["MIN"]), order[0])
        self.assertEqual(int(e["MAX"]), order[-1])
        self.assertEqual(parse_set(e["ALL"]), order)
        self.assertEqual(int(e["COUNT"]), N)
        for bad in ("SORT () UTF-8 ALL", "SORT (REVERSE) UTF-8 ALL",
                    "SORT (FOO) UTF-8 ALL", "SORT (DATE)"):
            self.assertEqual(self.r.run(bad)[-1].split(b" ")[1], b"BAD", bad)
        self.assertIn(b"BADCHARSET", self.r.run("SORT (DATE) KOI8-R ALL")[-1])


THREAD_MSGS = [
    # (idx, subject, references, day)
    (1, "Topic A", None, 1),
    (2, "Re: Topic A", "<t1@x>", 2),
    (3, "Re: Topic A", "<t1@x> <t2@x>", 3),
    (4, "Re: Topic A", "<t1@x>", 4),
    (5, "Topic B", None, 5),
    (6, "Re: Orphan", "<missing@x>", 6),
    (7, "Re: Orphan", "<missing@x>", 7),
    (8, "Topic B", None, 8),
]


def thread_message(idx, subject, refs, day):
    h = ["From: t%d@example.org" % idx, "To: tina@example.org",
         "Subject: " + subject,
         "Date: %s" % email.utils.format_datetime(
             datetime.datetime(2022, 5, day, 12, 0, tzinfo=datetime.timezone.utc)),
         "Message-ID: <t%d@x>" % idx, "X-Idx: %d" % idx]
    if refs:
        h.append("References: " + refs)
        h.append("In-Reply-To: " + refs.split()[-1])
    return ("\r\n".join(h) + "\r\n\r\nthread body %d\r\n" % idx).encode()


class ThreadTest(unittest.TestCase):
    def test_thread(self):
        with ImapServer() as srv:
            addr = "tina@example.org"
            srv.add_alias(addr, PW)
            for t in THREAD_MSGS:
                srv.deliver(addr, thread_message(*t))
            c = srv.login(addr, PW)
            wait_for(lambda: int(c.select("INBOX")[1][0]) == len(THREAD_MSGS))
            typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (X-Idx)])")
            u = {}
            for item in data:
                if isinstance(item, tuple):
                    idx = int(re.search(rb"X-Idx: (\d+)", item[1]).group(1))
                    u[idx] = int(re.search(rb"UID (\d+)", item[0]).group(1))
            uids = sorted(u.values())
            seq = {i: uids.index(x) + 1 for i, x in u.items()}
            r = Raw(srv, addr)
            for m, tag in ((u, "UID "), (seq, "")):
                want = "(%d (%d %d)(%d))((%d)(%d))((%d)(%d))" % (
                    m[1], m[2], m[3], m[4], m[5], m[8], m[6], m[7])
                lines, _ = r.ok(tag + "THREAD REFERENCES UTF-8 ALL")
                self.assertEqual(untagged(lines, b"THREAD"), [b"* THREAD " + want.encode()])
                want = "(%d (%d)(%d)(%d))(%d %d)(%d %d)" % (
                    m[1], m[2], m[3], m[4], m[5], m[8], m[6], m[7])
                lines, _ = r.ok(tag + "THREAD ORDEREDSUBJECT UTF-8 ALL")
                self.assertEqual(untagged(lines, b"THREAD"), [b"* THREAD " + want.encode()])
            # A program: only the Topic A replies (the root is not matched:
            # its replies hang from a dummy, written as a nested list).
            lines, _ = r.ok("UID THREAD REFERENCES UTF-8 SUBJECT \"Re: Topic A\"")
            self.assertEqual(untagged(lines, b"THREAD"),
                             [b"* THREAD ((%d %d)(%d))" % (u[2], u[3], u[4])])
            lines, _ = r.ok("THREAD REFERENCES UTF-8 KEYWORD $None")
            self.assertEqual(untagged(lines, b"THREAD"), [b"* THREAD"])
            self.assertEqual(r.run("THREAD FOO UTF-8 ALL")[-1].split(b" ")[1], b"BAD")
            r.close()
            c.logout()


class MutationTest(unittest.TestCase):
    """STORE, COPY, MOVE, EXPUNGE and concurrent sessions (fresh mailbox each)."""

    def setUp(self):
        self.srv = ImapServer()
        self.addr = "carol@example.org"
        self.srv.add_alias(self.addr, PW)
        for i in range(1, 11):
            self.srv.deliver(self.addr, ("Subject: m%d\r\nX-Idx: %d\r\n\r\nbody %d\r\n"
                                         % (i, i, i)).encode())
        c = self.srv.login(self.addr, PW)
        wait_for(lambda: int(c.select("INBOX")[1][0]) == 10)
        c.logout()
        self.a = Raw(self.srv, self.addr)
        self.uids = self.uid_list(self.a)

    def tearDown(self):
        self.a.close()
        self.srv.stop()

    def uid_list(self, r):
        lines, _ = r.ok("UID SEARCH ALL")
        return search_numbers(lines)

    def flags(self, r, seq):
        lines, _ = r.ok("FETCH %s (FLAGS)" % seq)
        return untagged(lines, b"FETCH")

    def test_store_forms(self):
        a = self.a
        lines, _ = a.ok("STORE 1 +FLAGS (\\Seen)")
        self.assertEqual(lines, [b"* 1 FETCH (FLAGS (\\Seen))"])
        lines, _ = a.ok("STORE 1:2 FLAGS.SILENT (\\Flagged $Work)")
        self.assertEqual(untagged(lines, b"FETCH"), [])
        self.assertEqual(self.flags(a, "1:2"), [b"* 1 FETCH (FLAGS (\\Flagged $Work))",
                                                b"* 2 FETCH (FLAGS (\\Flagged $Work))"])
        lines, _ = a.ok("STORE 2 -FLAGS $Work \\Flagged")
        self.assertEqual(lines, [b"* 2 FETCH (FLAGS ())"])
        lines, _ = a.ok("UID STORE %d +FLAGS (\\Answered)" % self.uids[2])
        self.assertEqual(lines, [b"* 3 FETCH (FLAGS (\\Answered) UID %d)" % self.uids[2]])
        # Already so: nothing changes, nothing reported.
        lines, _ = a.ok("STORE 3 +FLAGS (\\Answered)")
        self.assertEqual(untagged(lines, b"FETCH"), [])
        for bad in ("STORE 1 +FLAGS (\\Recent)", "STORE 1 +FLAGS (\\Bogus)",
                    "STORE 1 FOO (\\Seen)", "STORE 1 +FLAGS", "STORE x +FLAGS \\Seen",
                    "STORE 1 (FOO 1) +FLAGS \\Seen"):
            self.assertEqual(a.run(bad)[-1].split(b" ")[1], b"BAD", bad)
        # Past the end: nothing to do.
        a.ok("STORE 99 +FLAGS (\\Seen)")
        ro = Raw(self.srv, self.addr, examine=True)
        for cmd in ("STORE 1 +FLAGS (\\Seen)", "EXPUNGE", "UID EXPUNGE 1",
                    "MOVE 1 Trash"):
            self.assertEqual(ro.run(cmd)[-1].split(b" ")[1], b"NO", cmd)
        ro.ok("COPY 1 Trash")
        ro.close()

    def test_store_unchangedsince(self):
        a = self.a
        a.ok("STORE 5 +FLAGS (\\Seen)")
        lines, _ = a.ok("FETCH 4:5 (MODSEQ)")
        ms = [int(re.search(rb"MODSEQ \((\d+)\)", ln).group(1))
              for ln in untagged(lines, b"FETCH")]
        self.assertLess(ms[0], ms[1])
        lines, tagged = a.ok("STORE 4:5 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)" % ms[0])
        self.assertIn(b"[MODIFIED 5]", tagged)
        fetch = untagged(lines, b"FETCH")
        self.assertEqual(len(fetch), 1)
        self.assertTrue(fetch[0].startswith(b"* 4 FETCH (FLAGS (\\Flagged) MODSEQ ("))
        lines, tagged = a.ok("UID STORE %d (UNCHANGEDSINCE 0) +FLAGS (\\Seen)" % self.uids[0])
        self.assertIn(b"[MODIFIED %d]" % self.uids[0], tagged)
        # .SILENT under CONDSTORE still tells the new MODSEQ (RFC 7162 3.1.3).
        lines, _ = a.ok("STORE 6 (UNCHANGEDSINCE 999999999) +FLAGS.SILENT (\\Seen)")
        self.assertEqual(len(lines), 1)
        self.assertRegex(lines[0], rb"^\* 6 FETCH \(MODSEQ \(\d+\)\)$")

    def test_copy_move(self):
        a = self.a
        lines, tagged = a.ok("COPY 2:3 Trash")
        m = re.search(rb"\[COPYUID (\d+) (\S+) (\S+)\]", tagged)
        self.assertIsNotNone(m, tagged)
        self.assertEqual(parse_set(m.group(2).decode()), self.uids[1:3])
        self.assertEqual(len(parse_set(m.group(3).decode())), 2)
        self.assertEqual(a.run("COPY 1 NoSuchBox")[-1],
                         b"t%d NO [TRYCREATE] No such mailbox" % a.n)
        # MOVE 2,4,5: COPYUID first, then the expunges renumbered as they go.
        lines, tagged = a.ok("MOVE 2,4:5 Archive")
        self.assertRegex(lines[0], rb"^\* OK \[COPYUID \d+ %d,%d:%d \d+:\d+\]" % (
            self.uids[1], self.uids[3], self.uids[4]))
        self.assertEqual(lines[1:], [b"* 2 EXPUNGE", b"* 3 EXPUNGE", b"* 3 EXPUNGE"])
        left = [u for i, u in enumerate(self.uids) if i not in (1, 3, 4)]
        self.assertEqual(self.uid_list(a), left)
        lines, tagged = a.ok("UID MOVE %d Archive" % left[-1])
        self.assertEqual(lines[1:], [b"* %d EXPUNGE" % len(left)])
        a.ok("SELECT Archive")
        self.assertEqual(len(self.uid_list(a)), 4)
        a.ok("SELECT Trash")
        self.assertEqual(len(self.uid_list(a)), 2)

    def test_expunge(self):
        a = self.a
        a.ok("STORE 2,3,7 +FLAGS.SILENT (\\Deleted)")
        lines, _ = a.ok("EXPUNGE")
        self.assertEqual(lines, [b"* 2 EXPUNGE", b"* 2 EXPUNGE", b"* 5 EXPUNGE"])
        left = [u for i, u in enumerate(self.uids) if i not in (1, 2, 6)]
        self.assertEqual(self.uid_list(a), left)
        # UID EXPUNGE of a subset: only those.
        a.ok("STORE 1:3 +FLAGS.SILENT (\\Deleted)")
        lines, _ = a.ok("UID EXPUNGE %d" % left[1])
        self.assertEqual(lines, [b"* 2 EXPUNGE"])
        self.assertEqual(self.uid_list(a), [left[0]] + left[2:])
        lines, _ = a.ok("UID EXPUNGE %d" % left[1])
        self.assertEqual(lines, [])
        # QRESYNC: VANISHED instead.
        a.ok("ENABLE QRESYNC")
        lines, _ = a.ok("UID EXPUNGE %d:%d" % (left[0], left[2]))
        self.assertEqual(lines, [b"* VANISHED %d,%d" % (left[0], left[2])])

    def noop_until(self, r, word, timeout=10):
        got = []
        end = time.time() + timeout
        while time.time() < end:
            lines, _ = r.ok("NOOP")
            got += untagged(lines, word)
            if got:
                return got
            time.sleep(0.2)
        return got

    def test_own_changes_not_repeated(self):
        # Another mailbox changed first (MODSEQs come from one counter per
        # alias, so the STORE's is not the view's + 1): this session's own
        # STORE and FETCH BODY[] \Seen are told once, not again by the next
        # sync; another session's change in between still is.
        c = self.srv.login(self.addr, PW)
        c.create("Other")
        c.append("Other", None, None, b"Subject: other\r\n\r\nx\r\n")
        c.logout()
        a = self.a
        a.ok("NOOP")
        lines, _ = a.ok("STORE 1 +FLAGS (\\Flagged)")
        self.assertEqual(lines, [b"* 1 FETCH (FLAGS (\\Flagged))"])
        lines, _ = a.ok("FETCH 2 BODY[]")
        self.assertEqual(len(untagged(lines, b"FETCH")), 1)
        self.assertIn(b"\\Seen", lines[0])
        time.sleep(1.0)          # our own events arrive, the view is dirty
        for _ in range(2):
            lines, _ = a.ok("NOOP")
            self.assertEqual(untagged(lines, b"FETCH"), [])
        b = Raw(self.srv, self.addr)
        try:
            b.ok("STORE 3 +FLAGS (\\Answered)")
            lines, _ = a.ok("STORE 4 +FLAGS (\\Draft)")
            got = [ln for ln in untagged(lines, b"FETCH") if ln.startswith(b"* 3 ")]
            end = time.time() + 10
            while not got and time.time() < end:
                lines, _ = a.ok("NOOP")
                got = [ln for ln in untagged(lines, b"FETCH") if ln.startswith(b"* 3 ")]
                time.sleep(0.2)
            self.assertEqual(got, [b"* 3 FETCH (UID %d FLAGS (\\Answered))" % self.uids[2]])
        finally:
            b.close()

    def test_concurrent_sessions(self):
        a = self.a
        b = Raw(self.srv, self.addr)
        try:
            # A STORE in one is a FETCH FLAGS in the other.
            a.ok("STORE 3 +FLAGS (\\Flagged)")
            got = self.noop_until(b, b"FETCH")
            self.assertEqual(got, [b"* 3 FETCH (UID %d FLAGS (\\Flagged))" % self.uids[2]])
            # An EXPUNGE in one is not reported to the other during FETCH,
            # STORE, SEARCH by sequence number, but is on NOOP.
            a.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
            self.assertEqual(a.ok("EXPUNGE")[0], [b"* 2 EXPUNGE"])
            time.sleep(1.0)
            for cmd in ("FETCH 1:* (FLAGS)", "STORE 9 +FLAGS (\\Seen)", "SEARCH ALL",
                        "SORT (SIZE) UTF-8 ALL", "THREAD REFERENCES UTF-8 ALL"):
                lines, _ = b.ok(cmd)
                self.assertEqual(untagged(lines, b"EXPUNGE"), [], cmd)
            # Message 2 keeps its number until the EXPUNGE is told, but
            # it is gone: it matches nothing.
            lines, _ = b.ok("SEARCH ALL")
            self.assertEqual(search_numbers(lines), [1] + list(range(3, 11)))
            got = self.noop_until(b, b"EXPUNGE")
            self.assertEqual(got, [b"* 2 EXPUNGE"])
            lines, _ = b.ok("SEARCH ALL")
            self.assertEqual(search_numbers(lines), list(range(1, 10)))
            # A second imapd process sees a change through Redis too.
            tls_port, _ = self.srv.start_imapd()
            c = Raw(self.srv, self.addr, port=tls_port)
            c.ok("STORE 1 +FLAGS (\\Draft)")
            c.close()
            got = self.noop_until(b, b"FETCH")
            self.assertEqual(got, [b"* 1 FETCH (UID %d FLAGS (\\Draft))" % self.uids[0]])
        finally:
            b.close()


if __name__ == "__main__":
    unittest.main()
