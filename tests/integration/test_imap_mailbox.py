"""Integration tests of the IMAP mailbox commands (imap_cmd_mailbox.c, imap_cmd_list.c,
imap_cmd_append.c): SELECT/EXAMINE (CONDSTORE, QRESYNC), CREATE (USE), DELETE, RENAME,
SUBSCRIBE/UNSUBSCRIBE, LIST/LSUB (LIST-EXTENDED, SPECIAL-USE, LIST-STATUS), STATUS,
APPEND (MULTIAPPEND, LITERAL+, BINARY literal8, APPENDLIMIT, streaming), UNSELECT,
CLOSE, CHECK, GETQUOTA/GETQUOTAROOT, mailbox names in modified UTF-7 and UTF-8.

ImapServer (imap_server.py) starts redis-server, sqlited and sealmail-imapd on free
loopback ports; imaplib where it can, a raw socket (RawImap) where imaplib hides what
is tested (MULTIAPPEND, literal kinds, QRESYNC, ENABLE). Skipped when the daemon is
not built.
"""
import imaplib
import os
import re
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from imap_server import ImapServer, wait_for  # noqa: E402

ALICE, ALICE_PW = "alice@example.org", "alice's mailbox password"
CAROL, CAROL_PW = "carol@example.org", "carol's quota password"


def message(i, body=b""):
    return (b"From: sender@remote.example\r\nTo: alice@example.org\r\n"
            b"Subject: append %d\r\nMessage-ID: <a%d@remote.example>\r\n\r\n"
            b"Body of %d.\r\n" % (i, i, i)) + body


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tagged(lines, tag):
    return lines[-1][len(tag) + 1:]


class MailboxTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Under ASan freed memory waits in a quarantine (256 MB by default):
        # a small one keeps the RSS of the 20 MB APPEND a measure of what
        # imapd holds rather than of every chunk that passed through.
        saved = os.environ.get("ASAN_OPTIONS")
        os.environ["ASAN_OPTIONS"] = ((saved + ":") if saved else "") + \
            "quarantine_size_mb=2:thread_local_quarantine_size_kb=64"
        try:
            cls.srv = ImapServer(config={"max_message_bytes": str(32 * 1024 * 1024)})
        finally:
            if saved is None:
                del os.environ["ASAN_OPTIONS"]
            else:
                os.environ["ASAN_OPTIONS"] = saved
        cls.srv.add_alias(ALICE, ALICE_PW)
        cls.srv.add_alias(CAROL, CAROL_PW)
        cls.tagn = 0

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def setUp(self):
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            try:
                if isinstance(c, imaplib.IMAP4):
                    c.logout()
                else:
                    c.close()
            except Exception:
                pass

    # ---- helpers ----

    def login(self, who=ALICE, pw=ALICE_PW):
        c = self.srv.login(who, pw)
        self.clients.append(c)
        return c

    def raw(self, who=ALICE, pw=ALICE_PW, enable=None):
        r = self.srv.raw()
        self.clients.append(r)
        out = r.cmd(b"L", b'LOGIN "%s" "%s"' % (who.encode(), pw.encode()))
        self.assertIn(b"L OK", out[-1])
        if enable:
            out = r.cmd(b"E", b"ENABLE " + enable.encode())
            self.assertIn(b"E OK", out[-1])
        return r

    def tag(self):
        MailboxTest.tagn += 1
        return b"t%d" % MailboxTest.tagn

    def rcmd(self, r, command):
        t = self.tag()
        return r.cmd(t, command), t

    def append_raw(self, r, mailbox, data, extra=b"", kind=b""):
        """APPEND with a literal of the given kind: b"" sync, b"+" LITERAL+,
        b"~" literal8 (sync)."""
        t = self.tag()
        pre = b"~" if kind == b"~" else b""
        plus = b"+" if kind == b"+" else b""
        r.send(t + b" APPEND " + mailbox + b" " + extra + pre +
               b"{%d%s}\r\n" % (len(data), plus))
        if kind != b"+":
            cont = r.line()
            self.assertTrue(cont.startswith(b"+"), cont)
        r.send(data + b"\r\n")
        return r.until_tagged(t), t

    def assert_unselected(self, c):
        """CHECK (selected state only) is refused: asked on the wire, since
        imaplib tracks the state itself."""
        t = c._new_tag()
        c.send(t + b" CHECK\r\n")
        while True:
            line = c.readline()
            if line.startswith(t):
                break
        self.assertNotIn(b" OK", line)

    def bad_or_no(self, c, *args):
        try:
            return c._simple_command(*args)[0]
        except imaplib.IMAP4.error as e:
            return "BAD" if " BAD " in str(e) else "ERR"

    def status(self, c, mailbox, items):
        typ, data = c.status(mailbox, "(" + items + ")")
        self.assertEqual(typ, "OK", data)
        nums = re.findall(rb"([A-Z]+) (\d+)", data[0].split(b"(", 1)[1])
        return {k.decode(): int(v) for k, v in nums}

    def list_names(self, c, *args):
        typ, data = c.list(*args)
        self.assertEqual(typ, "OK", data)
        out = {}
        for d in data:
            if d is None:
                continue
            m = re.match(rb'\(([^)]*)\) "/" (.*)$', d)
            self.assertIsNotNone(m, d)
            name = m.group(2)
            if name.startswith(b'"'):
                name = name[1:-1]
            out[name.decode()] = m.group(1).decode().split()
        return out

    # ---- SELECT / EXAMINE ----

    def test_select_and_examine(self):
        self.srv.deliver(ALICE, message(900))
        c = self.login()
        n = self.status(c, "INBOX", "MESSAGES UIDNEXT UIDVALIDITY")
        typ, data = c.select("INBOX")
        self.assertEqual(typ, "OK")
        self.assertEqual(int(data[0]), n["MESSAGES"])
        r = c.untagged_responses
        self.assertEqual(int(r["UIDVALIDITY"][0]), n["UIDVALIDITY"])
        self.assertEqual(int(r["UIDNEXT"][0]), n["UIDNEXT"])
        self.assertIn(b"\\*", r["PERMANENTFLAGS"][0])
        self.assertIn(b"\\Seen", r["FLAGS"][0])
        self.assertEqual(r["RECENT"], [b"0"])         # IMAP4rev1: 0 RECENT
        self.assertTrue(int(r["HIGHESTMODSEQ"][0]) > 0)
        self.assertIn("READ-WRITE", r)
        typ, _ = c.select("INBOX", readonly=True)
        self.assertEqual(typ, "OK")
        self.assertIn("READ-ONLY", c.untagged_responses)
        self.assertEqual(c.untagged_responses["PERMANENTFLAGS"][-1], b"()")
        # A failed SELECT leaves the session unselected.
        typ, data = c.select("No/Such/Box")
        self.assertEqual(typ, "NO")
        self.assertIn(b"NONEXISTENT", data[0])
        self.assert_unselected(c)
        # "inbox" in any case is INBOX.
        self.assertEqual(c.select("iNbOx")[0], "OK")
        self.assertEqual(c.check()[0], "OK")
        self.assertEqual(c.unselect()[0], "OK")
        self.assert_unselected(c)

    def test_select_sequence_map(self):
        """SELECT's sequence map (sqlited's MAILBOX_VIEW: UID ranges and
        flag runs) matches the mailbox: gaps left by EXPUNGE, the first
        unseen message, the keywords in FLAGS, sequence numbers."""
        c = self.login()
        self.assertEqual(c.create("Map")[0], "OK")
        for i in range(12):
            self.assertEqual(c.append("Map", None, None, message(300 + i))[0], "OK")
        c.select("Map")
        self.assertEqual(c.uid("STORE", "1:4", "+FLAGS.SILENT", r"(\Seen)")[0], "OK")
        self.assertEqual(c.uid("STORE", "5,9", "+FLAGS.SILENT", r"(\Deleted)")[0], "OK")
        self.assertEqual(c.uid("STORE", "7", "+FLAGS.SILENT", r"(\Seen $Mapped)")[0], "OK")
        self.assertEqual(c.expunge()[0], "OK")
        self.assertEqual(c.uid("STORE", "6", "+FLAGS.SILENT", r"(\Seen)")[0], "OK")
        c.unselect()
        typ, data = c.select("Map")
        self.assertEqual(typ, "OK")
        self.assertEqual(int(data[0]), 10)                  # 12 - UIDs 5 and 9
        r = c.untagged_responses
        # UIDs 1-4, 6, 7 are \Seen: the first unseen is UID 8, sequence 7.
        self.assertEqual(r["UNSEEN"], [b"7"])
        self.assertIn(b"$Mapped", r["FLAGS"][0])
        self.assertIn(b"$Mapped", r["PERMANENTFLAGS"][0])
        self.assertEqual(int(r["UIDNEXT"][0]), 13)
        typ, data = c.fetch("1:*", "(UID FLAGS)")
        self.assertEqual(typ, "OK")
        got = [(int(d.split()[0]), int(re.search(rb"UID (\d+)", d).group(1)),
                b"\\Seen" in re.search(rb"FLAGS \(([^)]*)\)", d).group(1)) for d in data]
        want = [(seq + 1, uid, uid in (1, 2, 3, 4, 6, 7))
                for seq, uid in enumerate([1, 2, 3, 4, 6, 7, 8, 10, 11, 12])]
        self.assertEqual(got, want)
        # Every message seen: no UNSEEN; an empty mailbox: 0 EXISTS.
        self.assertEqual(c.store("1:*", "+FLAGS.SILENT", r"(\Seen)")[0], "OK")
        c.unselect()
        typ, data = c.select("Map")
        self.assertNotIn("UNSEEN", c.untagged_responses)
        self.assertEqual(c.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")[0], "OK")
        self.assertEqual(c.expunge()[0], "OK")
        c.unselect()
        typ, data = c.select("Map")
        self.assertEqual((typ, int(data[0])), ("OK", 0))
        self.assertEqual(int(c.untagged_responses["UIDNEXT"][0]), 13)

    def test_select_scattered_flags_model(self):
        """SELECT of a mailbox with scattered flags and UID gaps (many flag
        runs and UID ranges in MAILBOX_VIEW), after changes made by another
        session each time (sqlited patches its cached view) and after
        SELECTs of smaller and bigger mailboxes in the same session (the
        imapd reuses its arrays): EXISTS, UNSEEN, UIDNEXT, FETCH (UID
        FLAGS) and SEARCH agree with a model of the mailbox."""
        import random
        rnd = random.Random(8)
        names = [r"\Seen", r"\Answered", r"\Flagged", r"\Draft"]
        a, b = self.login(), self.login()
        self.assertEqual(a.create("Scat")[0], "OK")
        self.assertEqual(a.create("ScatSmall")[0], "OK")
        self.assertEqual(a.append("ScatSmall", None, None, message(1))[0], "OK")
        model, uidnext = {}, 1

        def add(conn, k, seen=False):
            nonlocal uidnext
            for _ in range(k):
                fl = {f for f in names if rnd.random() < 0.3}
                if seen:
                    fl.add(r"\Seen")
                typ, _ = conn.append("Scat", "(%s)" % " ".join(sorted(fl)), None,
                                     message(uidnext))
                self.assertEqual(typ, "OK")
                model[uidnext] = fl
                uidnext += 1

        def change(conn):
            """Random flags on and off, a few expunged, a few appended."""
            conn.select("Scat")
            uids = sorted(model)
            for f in names:
                for op in ("+FLAGS.SILENT", "-FLAGS.SILENT"):
                    # \Seen is taken off the newer half only: the first
                    # unseen message stays far from the first.
                    pool = uids[len(uids) // 2:] if op[0] == "-" and f == r"\Seen" else uids
                    pick = rnd.sample(pool, max(1, len(uids) // 15))
                    self.assertEqual(conn.uid("STORE", ",".join(map(str, pick)), op,
                                              "(%s)" % f)[0], "OK")
                    for u in pick:
                        (model[u].add if op[0] == "+" else model[u].discard)(f)
            gone = rnd.sample(uids, max(1, len(uids) // 20))
            self.assertEqual(conn.uid("STORE", ",".join(map(str, gone)), "+FLAGS.SILENT",
                                      r"(\Deleted)")[0], "OK")
            self.assertEqual(conn.expunge()[0], "OK")
            for u in gone:
                del model[u]
            conn.unselect()
            add(conn, 3)

        def check(command="SELECT"):
            typ, data = a.select("Scat", readonly=command == "EXAMINE")
            self.assertEqual(typ, "OK")
            r = a.untagged_responses
            uids = sorted(model)
            self.assertEqual(int(r["EXISTS"][-1]), len(uids))
            self.assertEqual(int(r["UIDNEXT"][-1]), uidnext)
            unseen = [i + 1 for i, u in enumerate(uids) if r"\Seen" not in model[u]]
            self.assertEqual(r.get("UNSEEN", [None])[-1],
                             str(unseen[0]).encode() if unseen else None)
            typ, data = a.fetch("1:*", "(UID FLAGS)")
            self.assertEqual(typ, "OK")
            got = []
            for d in data:
                seq = int(d.split()[0])
                uid = int(re.search(rb"UID (\d+)", d).group(1))
                fl = set(re.search(rb"FLAGS \(([^)]*)\)", d).group(1).decode().split())
                got.append((seq, uid, fl))
            self.assertEqual(got, [(i + 1, u, model[u]) for i, u in enumerate(uids)])
            for key, flag in (("UNSEEN", r"\Seen"), ("ANSWERED", r"\Answered"),
                              ("FLAGGED", r"\Flagged"), ("UNDRAFT", r"\Draft")):
                typ, data = a.search(None, key)
                want = [i + 1 for i, u in enumerate(uids)
                        if (flag in model[u]) != (key.startswith("UN"))]
                self.assertEqual([int(x) for x in data[0].split()], want, key)
            typ, data = a.uid("SEARCH", "SEEN")
            self.assertEqual([int(x) for x in data[0].split()],
                             [u for u in uids if r"\Seen" in model[u]])
            a.untagged_responses.clear()

        add(a, 120, seen=True)
        add(a, 120)
        check()
        check()                          # the same state: cached
        for rnd_round in range(3):
            change(b)
            check("EXAMINE" if rnd_round == 1 else "SELECT")
            a.select("ScatSmall")        # a smaller view, then the big one
            self.assertEqual(int(a.untagged_responses["EXISTS"][-1]), 1)
            a.untagged_responses.clear()
        check()
        # Not selectable, or absent: NO, and the session is left unselected.
        self.assertEqual(a.create("ScatParent/Child")[0], "OK")
        self.assertEqual(a.select("ScatParent")[0], "OK")
        self.assertEqual(a.delete("ScatParent")[0], "OK")
        typ, data = a.select("ScatParent")
        self.assertEqual(typ, "NO")
        self.assertIn(b"NONEXISTENT", data[0])
        self.assertEqual(a.select("ScatNowhere")[0], "NO")
        self.assert_unselected(a)
        check()
        # New sessions' first SELECTs write into the arrays that views of
        # ended sessions left (the imapd's spare pairs, of other sizes).
        for _ in range(2):
            a.logout()
            a = self.login()
            self.assertEqual(a.select("ScatSmall")[0], "OK")
            a.logout()
            a = self.login()
            check()

    def test_select_rev2_and_closed(self):
        r = self.raw(enable="IMAP4rev2 QRESYNC")
        out, t = self.rcmd(r, b"SELECT INBOX")
        self.assertIn(b"OK [READ-WRITE]", out[-1])
        self.assertFalse([x for x in out if x.endswith(b"RECENT")], out)
        self.assertFalse([x for x in out if b"[UNSEEN" in x], out)
        out, t = self.rcmd(r, b"EXAMINE Drafts")
        self.assertIn(b"* OK [CLOSED]", out[0])
        self.assertIn(b"OK [READ-ONLY]", out[-1])
        # CONDSTORE as a SELECT parameter.
        out, t = self.rcmd(r, b"SELECT INBOX (CONDSTORE)")
        self.assertTrue([x for x in out if b"[HIGHESTMODSEQ " in x], out)
        out, t = self.rcmd(r, b"SELECT INBOX (BOGUS)")
        self.assertIn(t + b" BAD", out[-1])

    def test_qresync_vanished_earlier(self):
        c = self.login()
        self.assertEqual(c.create("Qr")[0], "OK")
        for i in range(5):
            self.assertEqual(c.append("Qr", None, None, message(100 + i))[0], "OK")
        r = self.raw(enable="QRESYNC")
        out, t = self.rcmd(r, b"SELECT Qr")
        uv = int(re.search(rb"UIDVALIDITY (\d+)", b"\n".join(out)).group(1))
        ms = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"\n".join(out)).group(1))
        out, t = self.rcmd(r, b"UID FETCH 1:* (UID)")
        uids = sorted(int(u) for u in re.findall(rb"UID (\d+)", b"\n".join(out[:-1])))
        self.assertEqual(len(uids), 5)
        out, t = self.rcmd(r, b"UNSELECT")
        # Another session expunges two and flags one.
        c.select("Qr")
        c.uid("STORE", "%d,%d" % (uids[1], uids[3]), "+FLAGS", "(\\Deleted)")
        c.expunge()
        c.uid("STORE", str(uids[4]), "+FLAGS", "(\\Flagged)")
        out, t = self.rcmd(r, b"SELECT Qr (QRESYNC (%d %d))" % (uv, ms))
        self.assertIn(b"OK [READ-WRITE]", out[-1])
        van = [x for x in out if x.startswith(b"* VANISHED (EARLIER)")]
        self.assertEqual(van, [b"* VANISHED (EARLIER) %d,%d" % (uids[1], uids[3])])
        fetches = [x for x in out if b" FETCH " in x]
        self.assertTrue(any(b"UID %d " % uids[4] in f and b"\\Flagged" in f and
                            b"MODSEQ" in f for f in fetches), fetches)
        self.assertLess(out.index(van[0]), out.index(fetches[0]))
        # Known UIDs narrow VANISHED.
        out, t = self.rcmd(r, b"SELECT Qr (QRESYNC (%d %d %d:%d))" %
                           (uv, ms, uids[0], uids[2]))
        self.assertIn(b"* OK [CLOSED]", out[0])
        van = [x for x in out if x.startswith(b"* VANISHED")]
        self.assertEqual(van, [b"* VANISHED (EARLIER) %d" % uids[1]])
        # Another UIDVALIDITY: no VANISHED.
        out, t = self.rcmd(r, b"SELECT Qr (QRESYNC (%d %d))" % (uv + 1, ms))
        self.assertFalse([x for x in out if b"VANISHED" in x])
        # QRESYNC without ENABLE QRESYNC is BAD.
        r2 = self.raw()
        out, t = self.rcmd(r2, b"SELECT Qr (QRESYNC (%d %d))" % (uv, ms))
        self.assertIn(t + b" BAD", out[-1])

    def test_close_expunges_silently(self):
        c = self.login()
        c.create("Cl")
        for i in range(3):
            c.append("Cl", None, None, message(200 + i))
        r = self.raw(enable="QRESYNC")
        self.rcmd(r, b"SELECT Cl")
        self.rcmd(r, b"STORE 1:2 +FLAGS (\\Deleted)")
        out, t = self.rcmd(r, b"CLOSE")
        self.assertIn(t + b" OK", out[-1])
        self.assertFalse([x for x in out if b"EXPUNGE" in x or b"VANISHED" in x], out)
        self.assertEqual(self.status(c, "Cl", "MESSAGES")["MESSAGES"], 1)
        # CLOSE after EXAMINE expunges nothing.
        self.rcmd(r, b"SELECT Cl")
        self.rcmd(r, b"STORE 1 +FLAGS (\\Deleted)")
        self.rcmd(r, b"EXAMINE Cl")
        out, t = self.rcmd(r, b"CLOSE")
        self.assertIn(t + b" OK", out[-1])
        self.assertEqual(self.status(c, "Cl", "MESSAGES")["MESSAGES"], 1)

    # ---- CREATE DELETE RENAME SUBSCRIBE ----

    def test_create_delete_rename(self):
        c = self.login()
        self.assertEqual(c.create("Projects/2024/")[0], "OK")
        names = self.list_names(c, '""', "Projects*")
        self.assertIn("\\HasChildren", names["Projects"])
        self.assertIn("\\HasNoChildren", names["Projects/2024"])
        typ, data = c.create("Projects/2024")
        self.assertEqual(typ, "NO")
        self.assertIn(b"ALREADYEXISTS", data[0])
        self.assertEqual(c.create("INBOX")[0], "NO")
        self.assertEqual(c.rename("Projects", "Work")[0], "OK")
        names = self.list_names(c, '""', "*")
        self.assertIn("Work/2024", names)
        self.assertNotIn("Projects", names)
        self.assertEqual(c.delete("Work/2024")[0], "OK")
        self.assertEqual(c.delete("Work")[0], "OK")
        self.assertNotIn("Work", self.list_names(c, '""', "*"))
        typ, data = c.delete("Work")
        self.assertEqual(typ, "NO")
        self.assertEqual(c.delete("INBOX")[0], "NO")
        # The selected mailbox renamed keeps working.
        c.create("Sel")
        c.append("Sel", None, None, message(300))
        c.select("Sel")
        self.assertEqual(c.rename("Sel", "Sel2")[0], "OK")
        typ, data = c.fetch("1", "(UID)")
        self.assertEqual(typ, "OK")
        # Deleting the selected mailbox unselects it.
        self.assertEqual(c.delete("Sel2")[0], "OK")
        self.assert_unselected(c)

    def test_create_special_use(self):
        r = self.raw()
        out, t = self.rcmd(r, b'CREATE "My Drafts" (USE (\\Drafts))')
        self.assertIn(t + b" OK", out[-1])
        out, t = self.rcmd(r, b'LIST "" "My Drafts"')
        self.assertIn(b"\\Drafts", out[0])
        out, t = self.rcmd(r, b'CREATE Odd (USE (\\Bogus))')
        self.assertIn(b"NO [USEATTR]", out[-1])
        out, t = self.rcmd(r, b'CREATE Odd2 (FOO)')
        self.assertIn(t + b" BAD", out[-1])

    def test_subscribe_lsub(self):
        c = self.login()
        c.create("Sub/A")
        c.create("Sub/B")
        self.assertEqual(c.subscribe("Sub/A")[0], "OK")
        typ, data = c.lsub('""', "Sub/*")
        self.assertEqual(typ, "OK")
        self.assertEqual(len([d for d in data if d]), 1)
        self.assertIn(b"Sub/A", data[0])
        r = self.raw()
        out, t = self.rcmd(r, b'LIST (SUBSCRIBED) "" "Sub/*"')
        lines = out[:-1]
        self.assertEqual(len(lines), 1)
        self.assertIn(b"\\Subscribed", lines[0])
        # RECURSIVEMATCH: the unsubscribed parent with a subscribed child.
        out, t = self.rcmd(r, b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
        sub = [x for x in out if b'"Sub"' in x]
        self.assertEqual(len(sub), 1, out)
        self.assertIn(b'("CHILDINFO" ("SUBSCRIBED"))', sub[0])
        out, t = self.rcmd(r, b'LIST (RECURSIVEMATCH) "" "%"')
        self.assertIn(t + b" BAD", out[-1])
        out, t = self.rcmd(r, b'LIST "" "Sub/*" RETURN (SUBSCRIBED)')
        a = [x for x in out if b"Sub/A" in x][0]
        b = [x for x in out if b"Sub/B" in x][0]
        self.assertIn(b"\\Subscribed", a)
        self.assertNotIn(b"\\Subscribed", b)
        self.assertEqual(c.unsubscribe("Sub/A")[0], "OK")
        typ, data = c.lsub('""', "Sub/*")
        self.assertEqual([d for d in data if d], [])

    # ---- LIST ----

    def test_list_patterns_and_options(self):
        c = self.login()
        c.create("Tree/Leaf/Deep")
        r = self.raw()
        out, t = self.rcmd(r, b'LIST "" ""')
        self.assertEqual(out[0], b'* LIST (\\Noselect) "/" ""')
        out, t = self.rcmd(r, b'LIST "" "Tree/%"')
        self.assertEqual([x for x in out if x.startswith(b"* LIST")],
                         [b'* LIST (\\HasChildren) "/" "Tree/Leaf"'])
        out, t = self.rcmd(r, b'LIST "Tree/" "*"')
        got = [x for x in out if x.startswith(b"* LIST")]
        self.assertEqual(len(got), 2, got)
        out, t = self.rcmd(r, b'LIST "" ("INBOX" "Sent" "Tree")')
        got = [x for x in out if x.startswith(b"* LIST")]
        self.assertEqual(len(got), 3, got)
        self.assertTrue(any(b"\\Sent" in x for x in got))
        out, t = self.rcmd(r, b'LIST (SPECIAL-USE) "" "*" RETURN (SPECIAL-USE)')
        got = [x for x in out if x.startswith(b"* LIST")]
        self.assertTrue(got)
        for x in got:
            self.assertTrue(re.search(rb"\\(Drafts|Sent|Trash|Junk|Archive|All|Flagged)",
                                      x), x)
        self.assertFalse([x for x in got if b'"INBOX"' in x])
        # LIST-STATUS: a STATUS line after each selectable mailbox.
        out, t = self.rcmd(r, b'LIST "" "INBOX" RETURN (CHILDREN STATUS (MESSAGES UNSEEN SIZE))')
        self.assertTrue(out[0].startswith(b'* LIST'))
        self.assertTrue(re.match(rb'\* STATUS "INBOX" \(MESSAGES \d+ UNSEEN \d+ SIZE \d+\)',
                                 out[1]), out)
        out, t = self.rcmd(r, b'LIST "" "*" RETURN (BOGUS)')
        self.assertIn(t + b" BAD", out[-1])
        out, t = self.rcmd(r, b'LIST (REMOTE) "" "INBOX"')
        self.assertEqual(len(out), 2)

    def test_names_mutf7_and_utf8(self):
        c = self.login()
        self.assertEqual(c.create("Entw&APw-rfe")[0], "OK")
        self.assertIn("Entw&APw-rfe", self.list_names(c, '""', "Entw*"))
        # Invalid modified UTF-7 and forbidden names are refused.
        for bad in ('"&Jjo"', '"&AGE-"', '"a//b"', '"/lead"', '"star*"', '"pc%"',
                    '"&"'):
            typ = self.bad_or_no(c, "CREATE", bad)
            self.assertNotEqual(typ, "OK", bad)
        r = self.raw(enable="UTF8=ACCEPT")
        out, t = self.rcmd(r, b'LIST "" "Entw*"')
        self.assertIn('"Entw\u00fcrfe"'.encode(), out[0])
        out, t = self.rcmd(r, 'CREATE "Caf\u00e9/\u65e5\u672c"'.encode())
        self.assertIn(t + b" OK", out[-1])
        # mUTF-7 is still understood under UTF8=ACCEPT.
        out, t = self.rcmd(r, b'STATUS "Entw&APw-rfe" (MESSAGES)')
        self.assertIn(t + b" OK", out[-1])
        names = self.list_names(c, '""', "Caf*")
        self.assertIn("Caf&AOk-/&ZeVnLA-", names)
        self.assertEqual(c.select('"Caf&AOk-/&ZeVnLA-"')[0], "OK")

    # ---- STATUS ----

    def test_status(self):
        c = self.login()
        c.create("St")
        c.append("St", "(\\Seen)", None, message(1))
        c.append("St", "(\\Deleted)", None, message(2))
        st = self.status(c, "St", "MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN DELETED "
                                  "SIZE HIGHESTMODSEQ APPENDLIMIT")
        self.assertEqual(st["MESSAGES"], 2)
        self.assertEqual(st["RECENT"], 0)
        self.assertEqual(st["UNSEEN"], 1)
        self.assertEqual(st["DELETED"], 1)
        self.assertEqual(st["SIZE"], len(message(1)) + len(message(2)))
        self.assertEqual(st["APPENDLIMIT"], 32 * 1024 * 1024)
        self.assertTrue(st["UIDNEXT"] >= 3 and st["HIGHESTMODSEQ"] > 0)
        typ, data = c.status("Nope", "(MESSAGES)")
        self.assertEqual(typ, "NO")
        self.assertIn(b"NONEXISTENT", data[0])
        self.assertEqual(self.bad_or_no(c, "STATUS", "St", "(BOGUS)"), "BAD")

    # ---- MAILBOXID (RFC 8474) ----

    MAILBOXID_RE = re.compile(rb"MAILBOXID \(([A-Za-z0-9_-]{1,255})\)")

    def mailboxid_of(self, lines):
        """The one MAILBOXID in the response lines (asserts there is one)."""
        ids = [m.group(1) for x in lines for m in self.MAILBOXID_RE.finditer(x)]
        self.assertEqual(len(ids), 1, lines)
        return ids[0]

    def created_id(self, r, name):
        out, t = self.rcmd(r, b"CREATE " + name)
        self.assertTrue(out[-1].startswith(t + b" OK [MAILBOXID ("), out)
        return self.mailboxid_of(out[-1:])

    def status_id(self, r, name):
        out, t = self.rcmd(r, b"STATUS " + name + b" (MESSAGES MAILBOXID UIDNEXT)")
        self.assertIn(t + b" OK", out[-1])
        self.assertTrue(re.match(rb"\* STATUS \S+ \(MESSAGES \d+ MAILBOXID \(\S+\) "
                                 rb"UIDNEXT \d+\)$", out[0]), out)
        return self.mailboxid_of(out[:1])

    def select_id(self, r, name, command=b"SELECT "):
        out, t = self.rcmd(r, command + name)
        self.assertIn(t + b" OK", out[-1])
        ok = [x for x in out if x.startswith(b"* OK [MAILBOXID (")]
        self.assertEqual(len(ok), 1, out)
        return self.mailboxid_of(ok)

    def test_mailboxid(self):
        r = self.raw()
        out, t = self.rcmd(r, b"CAPABILITY")
        self.assertIn(b" OBJECTID", out[0])
        a = self.created_id(r, b"Mid")
        self.assertEqual(self.select_id(r, b"Mid"), a)
        self.assertEqual(self.select_id(r, b"Mid", b"EXAMINE "), a)
        self.assertEqual(self.status_id(r, b"Mid"), a)
        b = self.created_id(r, b"Mid2")
        self.assertNotEqual(a, b)
        inbox = self.status_id(r, b"INBOX")
        self.assertNotIn(inbox, (a, b))
        self.assertEqual(self.select_id(r, b"INBOX"), inbox)
        # RENAME keeps the id, also of a child renamed with its parent.
        child = self.created_id(r, b"Mid/Child")
        out, t = self.rcmd(r, b"RENAME Mid Mid-renamed")
        self.assertIn(t + b" OK", out[-1])
        self.assertEqual(self.status_id(r, b"Mid-renamed"), a)
        self.assertEqual(self.status_id(r, b"Mid-renamed/Child"), child)
        self.assertEqual(self.select_id(r, b"Mid-renamed"), a)
        # DELETE + CREATE of the same name: a new id, never an old one.
        seen = {a, b, inbox, child}
        for name in (b"Mid2", b"Mid2"):
            out, t = self.rcmd(r, b"DELETE " + name)
            self.assertIn(t + b" OK", out[-1])
            again = self.created_id(r, name)
            self.assertNotIn(again, seen)
            seen.add(again)
            self.assertEqual(self.status_id(r, name), again)
        # LIST-STATUS gives the same ids as STATUS.
        out, t = self.rcmd(r, b'LIST "" "*" RETURN (STATUS (MAILBOXID))')
        self.assertIn(t + b" OK", out[-1])
        listed = {}
        for x in out:
            m = re.match(rb'\* STATUS "?([^" ]+)"? \(MAILBOXID \(([^)]+)\)\)$', x)
            if m:
                listed[m.group(1)] = m.group(2)
        self.assertEqual(listed[b"INBOX"], inbox)
        self.assertEqual(listed[b"Mid-renamed"], a)
        self.assertEqual(listed[b"Mid-renamed/Child"], child)
        self.assertEqual(listed[b"Mid2"], again)
        self.assertEqual(len(set(listed.values())), len(listed), listed)

    def test_mailboxid_rename_inbox(self):
        """RENAME INBOX moves its messages (and its row) to the new name: that
        mailbox keeps INBOX's id, the new empty INBOX gets one never seen."""
        who, pw = "erin@example.org", "erin's renamed inbox password"
        self.srv.add_alias(who, pw)
        r = self.raw(who=who, pw=pw)
        old = self.status_id(r, b"INBOX")
        out, t = self.rcmd(r, b"RENAME INBOX OldInbox")
        self.assertIn(t + b" OK", out[-1])
        self.assertEqual(self.status_id(r, b"OldInbox"), old)
        new = self.status_id(r, b"INBOX")
        self.assertNotEqual(new, old)
        self.assertEqual(self.select_id(r, b"INBOX"), new)

    # ---- APPEND ----

    def test_append_byte_for_byte(self):
        c = self.login()
        c.create("Ap")
        raw = message(7, b"line with trailing spaces   \r\n\tand a tab\r\n" +
                      "UTF-8 \u00e9t\u00e9\r\n".encode())
        typ, data = c.append("Ap", "(\\Flagged $Work)", '"17-Jul-1996 02:44:25 -0700"', raw)
        self.assertEqual(typ, "OK")
        m = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[0])
        self.assertIsNotNone(m, data)
        uid = int(m.group(2))
        c.select("Ap")
        typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[] FLAGS INTERNALDATE)")
        self.assertEqual(typ, "OK")
        self.assertEqual(data[0][1], raw)
        self.assertIn(b"\\Flagged", data[0][0])
        self.assertIn(b"$Work", data[0][0])
        self.assertIn(b'INTERNALDATE "17-Jul-1996 09:44:25 +0000"', data[0][0])
        # \Recent cannot be set; a bad date is refused.
        with self.assertRaisesRegex(imaplib.IMAP4.error, "BAD"):
            c.append("Ap", "(\\Recent)", None, raw)
        with self.assertRaisesRegex(imaplib.IMAP4.error, "BAD"):
            c.append("Ap", None, '"32-Jul-1996 02:44:25 -0700"', raw)

    def test_append_trycreate(self):
        c = self.login()
        typ, data = c.append("Missing/Box", None, None, message(1))
        self.assertEqual(typ, "NO")
        self.assertIn(b"TRYCREATE", data[0])

    def test_multiappend_literal_plus_literal8(self):
        c = self.login()
        c.create("Multi")
        before = self.status(c, "Multi", "MESSAGES")["MESSAGES"]
        r = self.raw()
        t = self.tag()
        msgs = [message(10 + i) for i in range(3)]
        r.send(t + b" APPEND Multi (\\Seen) {%d}\r\n" % len(msgs[0]))
        self.assertTrue(r.line().startswith(b"+"))
        r.send(msgs[0] + b' "01-Feb-2020 10:00:00 +0000" {%d}\r\n' % len(msgs[1]))
        self.assertTrue(r.line().startswith(b"+"))
        r.send(msgs[1] + b" {%d+}\r\n" % len(msgs[2]) + msgs[2] + b"\r\n")
        out = r.until_tagged(t)
        m = re.search(rb"OK \[APPENDUID \d+ (\S+)\]", out[-1])
        self.assertIsNotNone(m, out)
        uids = []
        for part in m.group(1).split(b","):
            lo, _, hi = part.partition(b":")
            uids += list(range(int(lo), int(hi or lo) + 1))
        self.assertEqual(len(uids), 3)
        self.assertEqual(self.status(c, "Multi", "MESSAGES")["MESSAGES"], before + 3)
        c.select("Multi")
        for uid, raw in zip(uids, msgs):
            typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[])")
            self.assertEqual(data[0][1], raw)
        # LITERAL+ alone.
        out, t = self.append_raw(r, b"Multi", message(20), kind=b"+")
        self.assertIn(b"OK [APPENDUID", out[-1])
        # literal8 with NUL bytes: stored as given.
        data = message(21, b"\x00\x01\x02binary\x00\r\n")
        out, t = self.append_raw(r, b"Multi", data, kind=b"~")
        m = re.search(rb"OK \[APPENDUID \d+ (\d+)\]", out[-1])
        self.assertIsNotNone(m, out)
        c.noop()
        typ, fd = c.uid("FETCH", m.group(1).decode(), "(RFC822.SIZE)")
        self.assertIn(b"RFC822.SIZE %d" % len(data), fd[0])
        # A NUL in a plain literal is refused.
        t = self.tag()
        r.send(t + b" APPEND Multi {4+}\r\na\x00b\n\r\n")
        out = r.until_tagged(t)
        self.assertNotIn(t + b" OK", out[-1])

    def test_append_over_appendlimit_refused(self):
        with ImapServer(config={"max_message_bytes": "10000"}) as srv:
            srv.add_alias(ALICE, ALICE_PW)
            r = srv.raw()
            r.cmd(b"L", b'LOGIN "%s" "%s"' % (ALICE.encode(), ALICE_PW.encode()))
            out = r.cmd(b"S", b"STATUS INBOX (MESSAGES APPENDLIMIT)")
            self.assertIn(b"APPENDLIMIT 10000", out[0])
            n0 = int(re.search(rb"MESSAGES (\d+)", out[0]).group(1))
            r.send(b"A1 APPEND INBOX {20000}\r\n")
            line = r.line()
            self.assertTrue(line.startswith(b"A1 "), line)   # no "+" continuation
            self.assertNotIn(b"A1 OK", line)
            self.last_toobig = line
            out = r.cmd(b"S2", b"STATUS INBOX (MESSAGES)")
            self.assertIn(b"MESSAGES %d" % n0, out[0])
            out = r.cmd(b"A2", b"APPEND INBOX {%d+}\r\n" % len(message(1)) + message(1))
            self.assertIn(b"A2 OK", out[-1])

    def test_append_over_appendlimit_says_toobig(self):
        # RFC 7889: NO [TOOBIG], for a single APPEND and for the second
        # message of a MULTIAPPEND (whose first message is taken back).
        self.test_append_over_appendlimit_refused()
        self.assertIn(b"NO [TOOBIG]", self.last_toobig)
        with ImapServer(config={"max_message_bytes": "10000"}) as srv:
            srv.add_alias(ALICE, ALICE_PW)
            r = srv.raw()
            r.cmd(b"L", b'LOGIN "%s" "%s"' % (ALICE.encode(), ALICE_PW.encode()))
            n0 = int(re.search(rb"MESSAGES (\d+)",
                               r.cmd(b"S", b"STATUS INBOX (MESSAGES)")[0]).group(1))
            first = message(1)
            r.send(b"M1 APPEND INBOX {%d}\r\n" % len(first))
            self.assertTrue(r.line().startswith(b"+"))
            r.send(first + b" {20000}\r\n")
            out = r.until_tagged(b"M1")
            self.assertIn(b"M1 NO [TOOBIG]", out[-1])
            out = r.cmd(b"S2", b"STATUS INBOX (MESSAGES)")
            self.assertIn(b"MESSAGES %d" % n0, out[0])

    def test_append_20mb_streams(self):
        c = self.login()
        c.create("Big")
        pid = self.srv.imapd_pid(0)
        base = rss_kib(pid)
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(pid))
                time.sleep(0.02)

        th = threading.Thread(target=sample)
        th.start()
        try:
            line = b"x" * 998 + b"\r\n"
            body = message(30) + line * (20 * 1024 * 1024 // len(line))
            r = self.raw()
            t = self.tag()
            r.send(t + b" APPEND Big {%d}\r\n" % len(body))
            self.assertTrue(r.line().startswith(b"+"))
            for i in range(0, len(body), 1 << 16):
                r.send(body[i:i + (1 << 16)])
            r.send(b"\r\n")
            out = r.until_tagged(t)
        finally:
            stop.set()
            th.join()
        self.assertIn(b"OK [APPENDUID", out[-1])
        grown = peak[0] - base
        sys.stderr.write("\n20 MB APPEND: imapd RSS %d KiB -> peak %d KiB (+%d KiB)\n"
                         % (base, peak[0], grown))
        # ASan's shadow memory and its (small) quarantine add a few MiB.
        asan = "asan" in os.environ.get("SEALMAIL_BIN_DIR", "").lower()
        self.assertLess(grown, (12 if asan else 8) * 1024)
        self.assertEqual(self.status(c, "Big", "SIZE")["SIZE"], len(body))

    def test_concurrent_sessions(self):
        a = self.login()
        b = self.login()
        a.create("Conc")
        a.select("Conc")
        n = int(a.untagged_responses["EXISTS"][-1])
        self.assertEqual(b.append("Conc", None, None, message(40))[0], "OK")

        def sees_exists():
            a.noop()
            ex = a.untagged_responses.get("EXISTS") or [b"0"]
            return int(ex[-1]) == n + 1
        self.assertTrue(wait_for(sees_exists, 10))
        # The appending session's own selected mailbox gets EXISTS too.
        b.select("Conc")
        typ, data = b.append("Conc", None, None, message(41))
        self.assertEqual(int(b.untagged_responses["EXISTS"][-1]), n + 2)

    # ---- QUOTA ----

    def test_quota(self):
        c = self.login()
        typ, data = c.getquotaroot("INBOX")
        self.assertEqual(typ, "OK")
        self.assertEqual(data[0], [b'"INBOX" ""'])
        self.assertEqual(data[1], [b'"" ()'])       # no limit: no resource
        self.assertEqual(c.getquota('""')[0], "OK")
        self.assertEqual(c.getquota("other")[0], "NO")
        self.assertEqual(c.getquotaroot("Nope")[0], "NO")

    def test_quota_limit(self):
        # The directory's --quota reaches the mailbox store at login
        # (sqlited's UNLOCK), so GETQUOTAROOT shows it and APPEND meets it.
        self.srv.secrets.append("quota user pw 12345")
        self.srv.cli("alias", "add", "dave@example.org", "--quota", "1048576",
                     "--password-stdin", stdin="quota user pw 12345\n")
        d = self.login("dave@example.org", "quota user pw 12345")
        d.append("INBOX", None, None, b"x" * 3000)
        typ, data = d.getquotaroot("INBOX")
        m = re.match(rb'"" \(STORAGE (\d+) 1024\)', data[1][0])
        self.assertIsNotNone(m, data)
        self.assertGreaterEqual(int(m.group(1)), 3)
        typ, data = d.append("INBOX", None, None, b"y" * 1100000)
        self.assertEqual(typ, "NO")
        self.assertIn(b"OVERQUOTA", data[0])

    def test_zz_no_sanitizer_report(self):
        """Runs last: no sanitizer report in any daemon's log (ASan build)."""
        log = self.srv.log_text()
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, log)


if __name__ == "__main__":
    unittest.main()
