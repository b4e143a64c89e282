"""A SELECT after a change made on another connection shows the change.

sqlited answers MAILBOX_VIEW (the one request of a SELECT) on its loop thread,
without the thread pool, when the alias's cached view is known to be current
(sqlite-server/srv_ops_view.c, "Answered on the loop"). The rule this checks:
an APPEND, STORE or EXPUNGE answered to any client before a SELECT is sent is
in that SELECT. One connection (the reader) SELECTs INBOX twice after every
change the other (the writer, on the same imapd or on a second imapd process)
makes, many rounds; EXISTS, UIDNEXT, FLAGS, [UNSEEN n] and every message's
flags (FETCH 1:* (UID FLAGS)) must be those of a model of the mailbox kept by
the test.

A re-SELECT of an unchanged mailbox keeps the session's arrays (the imapd
sends the row of the view it holds, VIEW_HELD, and sqlited answers
VIEW_UNCHANGED: docs/rpc.md); sqlited's STATS counts those answers
(views_unchanged). The second SELECT of each check must be one, the first
after a change never; [UNSEEN n] and EXISTS show what a kept view holds.
test_own_changes does the same with the changes made by the reader itself.

ImapServer (imap_server.py) starts redis-server, sqlited and sealmail-imapd on
free loopback ports; Python's imaplib talks to it. Skipped when not built.
"""
import imaplib
import os
import random
import re
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import rpcclient  # noqa: E402
from imap_server import ImapServer  # noqa: E402

ALICE, ALICE_PW = "alice@example.org", "alice's select password"
ROUNDS = int(os.environ.get("SELECT_LOOP_ROUNDS", "60"))
SYSTEM = {b"\\Flagged", b"\\Deleted", b"\\Seen", b"\\Answered", b"\\Draft"}
FETCH_RE = re.compile(rb"\d+ \(UID (\d+) FLAGS \(([^)]*)\)\)")


def message(i):
    return (b"From: w@remote.example\r\nTo: alice@example.org\r\n"
            b"Subject: select %d\r\n\r\nBody %d.\r\n" % (i, i))


class SelectAfterChangeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        def second_imapd(srv):
            cls.second = srv.start_imapd()     # the writer's other imapd

        cls.srv = ImapServer().with_aliases([(ALICE, ALICE_PW)], then=second_imapd)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def tearDown(self):
        self.assertEqual(self.srv.sanitizer_reports(), [])

    def login(self, port=None):
        c = self.srv.login(ALICE, ALICE_PW, port=port)
        self.addCleanup(c.shutdown)
        return c

    # ---- the reader's view and the model ----

    def select(self, c, model=None, what=""):
        """SELECT INBOX: (EXISTS, UIDNEXT, FLAGS as a set); with a model,
        [UNSEEN n] must be its first message without \\Seen."""
        typ, dat = c.select("INBOX")
        self.assertEqual(typ, "OK", dat)
        exists = int(dat[0])
        uidnext = int(c.untagged_responses["UIDNEXT"][-1])
        flags = set(c.untagged_responses["FLAGS"][-1].strip(b"()").split())
        if model is not None:
            unseen = [i + 1 for i, u in enumerate(sorted(model))
                      if b"\\Seen" not in model[u]][:1]
            got = [int(x) for x in c.untagged_responses.get("UNSEEN", [])]
            self.assertEqual(got, unseen, f"{what}: UNSEEN")
        return exists, uidnext, flags

    def views_unchanged(self):
        """sqlited's count of MAILBOX_VIEWs answered VIEW_UNCHANGED."""
        with self.srv.rpc() as c:
            return rpcclient.stats(c.call(rpcclient.OP_STATS))["views_unchanged"]

    def fetch_flags(self, c, exists):
        """{uid: set of flags} of every message (\\Recent left out)."""
        if exists == 0:
            return {}
        typ, dat = c.fetch("1:*", "(UID FLAGS)")
        self.assertEqual(typ, "OK", dat)
        out = {}
        for line in dat:
            m = FETCH_RE.match(line if isinstance(line, bytes) else line[0])
            self.assertIsNotNone(m, line)
            out[int(m.group(1))] = set(m.group(2).split()) - {b"\\Recent"}
        return out

    def check(self, reader, model, uidnext, what, changed=True):
        for attempt in range(2):    # the second SELECT: the loop's answer
            before = self.views_unchanged()
            exists, got_next, flags = self.select(reader, model, what)
            kept = self.views_unchanged() - before
            # The first after a change is a whole view; the second keeps it.
            if attempt == 1 or changed:
                self.assertEqual(kept, attempt, f"{what}: kept ({attempt})")
            self.assertEqual(exists, len(model), f"{what}: EXISTS ({attempt})")
            self.assertEqual(got_next, uidnext, f"{what}: UIDNEXT ({attempt})")
            # FLAGS: the system flags and the keywords of the messages there.
            self.assertEqual({f for f in flags if not f.startswith(b"\\")},
                             set().union(*model.values()) - SYSTEM,
                             f"{what}: FLAGS ({attempt})")
        self.assertEqual(self.fetch_flags(reader, exists), model, what)
        # A SELECT after the FETCH: the same state again.
        exists, got_next, _ = self.select(reader, model, what)
        self.assertEqual((exists, got_next), (len(model), uidnext), what)

    # ---- the rounds ----

    def rounds(self, writer_port):
        rnd = random.Random(8)
        reader = self.login()
        writer = self.login(port=writer_port)
        # Where the writer is: the model starts from what is there.
        typ, dat = writer.select("INBOX")
        self.assertEqual(typ, "OK")
        model = self.fetch_flags(writer, int(dat[0]))
        uidnext = int(writer.untagged_responses["UIDNEXT"][-1])
        for i in range(5):
            self.assertEqual(writer.append("INBOX", None, None, message(i))[0],
                             "OK")
            model[uidnext] = set()
            uidnext += 1
        self.check(reader, model, uidnext, "start")
        for r in range(ROUNDS):
            kind = rnd.choice(["append", "flag", "unflag", "keyword", "expunge",
                               "seen", "unseen"])
            uids = sorted(model)
            old = {u: set(f) for u, f in model.items()}
            if kind == "append" or not uids:
                typ, _ = writer.append("INBOX", None, None, message(r))
                model[uidnext] = set()
                uidnext += 1
                kind = "append"
            elif kind in ("flag", "unflag", "seen", "unseen"):
                uid = rnd.choice(uids)
                flag = b"\\Flagged" if kind in ("flag", "unflag") else b"\\Seen"
                typ, _ = writer.uid("STORE", str(uid),
                                    "+FLAGS.SILENT" if kind in ("flag", "seen")
                                    else "-FLAGS.SILENT", "(%s)" % flag.decode())
                if kind in ("flag", "seen"):
                    model[uid].add(flag)
                else:
                    model[uid].discard(flag)
            elif kind == "keyword":
                uid, kw = rnd.choice(uids), "$k%d" % r
                typ, _ = writer.uid("STORE", str(uid), "+FLAGS.SILENT", "(%s)" % kw)
                model[uid].add(kw.encode())
            else:
                uid = rnd.choice(uids)
                typ, _ = writer.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
                self.assertEqual(typ, "OK")
                typ, _ = writer.expunge()
                del model[uid]
            self.assertEqual(typ, "OK", f"round {r} {kind}")
            # The writer's command is answered: the reader's SELECT is sent
            # after it and must show it.
            self.check(reader, model, uidnext, f"round {r} {kind}",
                       changed=model != old)

    def test_writer_on_the_same_imapd(self):
        self.rounds(None)

    def test_writer_on_another_imapd(self):
        self.rounds(self.second[0])

    def test_own_changes(self):
        """The reader's own STORE, APPEND and EXPUNGE, then a re-SELECT: the
        view it changed is never kept as it was built."""
        rnd = random.Random(9)
        reader = self.login()
        typ, dat = reader.select("INBOX")
        self.assertEqual(typ, "OK")
        model = self.fetch_flags(reader, int(dat[0]))
        uidnext = int(reader.untagged_responses["UIDNEXT"][-1])
        for i in range(4):
            self.assertEqual(reader.append("INBOX", None, None, message(i))[0], "OK")
            model[uidnext] = set()
            uidnext += 1
        self.check(reader, model, uidnext, "own start")
        for r in range(max(ROUNDS // 2, 12)):
            kind = ("seen", "unseen", "append", "expunge")[r % 4]
            uid = rnd.choice(sorted(model))
            if kind == "append":
                typ, _ = reader.append("INBOX", None, None, message(r))
                model[uidnext] = set()
                uidnext += 1
            elif kind == "expunge":
                typ, _ = reader.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
                self.assertEqual(typ, "OK")
                typ, _ = reader.expunge()
                del model[uid]
            else:
                # The first message without \Seen moves: [UNSEEN n] shows
                # whether the re-SELECT used the flags from before.
                uid = next((u for u in sorted(model) if (b"\\Seen" in model[u]) == (kind == "unseen")), uid)
                typ, _ = reader.uid("STORE", str(uid),
                                    "+FLAGS.SILENT" if kind == "seen" else "-FLAGS.SILENT",
                                    "(\\Seen)")
                if kind == "seen":
                    model[uid].add(b"\\Seen")
                else:
                    model[uid].discard(b"\\Seen")
            self.assertEqual(typ, "OK", f"own round {r} {kind}")
            self.check(reader, model, uidnext, f"own round {r} {kind}")


if __name__ == "__main__":
    unittest.main()
