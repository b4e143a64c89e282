"""The outbound queue of sqlited: DELIVER to forwarding aliases.

A real redis-server and $SEALMAIL_BIN_DIR/sqlited (test_sqlited.Base), aliases
made with the `sealmail` CLI, DELIVER with SENDER over the RPC (rpcclient.py).
Checks: QUEUED n and no DELIVERED for a forward, both for a mailbox+forward
alias; one sealed file per delivery in data_dir/outbound/ that does not hold
the body in the clear and that `sealmail queue show` decrypts to the exact
body; the SRS0 sender (and, when postsrsd from Debian is installed, that
postsrsd given our srs_secret reverses it to the original sender); the null
sender kept null; a retry with the same IDEMPOTENCY_KEY queues once; the
outbound_queued counter; the queue keys made at first use with mode 0600;
kill -9 right after an answered DELIVER: the entry survives and counts.
"""
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import rpcclient  # noqa: E402
import test_sqlited as ts  # noqa: E402
from rpcclient import get, get_all  # noqa: E402

OP_DELIVER = 64
T_SIZE, T_IDEMPOTENCY_KEY, T_ADDRESS, T_DELIVERED, T_QUEUED, T_SENDER = 35, 53, 80, 86, 87, 94
EINVAL = 1
SRS0 = re.compile(r"^SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=orig\.example=alice@example\.org$")


@unittest.skipUnless(shutil.which("redis-server") and os.path.exists(ts.SQLITED),
                     "needs redis-server and a built sqlited")
class TestForwardQueue(ts.Base):
    def setUp(self):
        super().setUp()
        self.start_redis()
        self.sqlited, _ = self.start_sqlited()
        self.outbound = os.path.join(self.data, "outbound")
        self.ok("domain", "add", "example.org")
        self.ok("alias", "add", "fw@example.org", "--forward", "a@remote.net",
                "--forward", "b@remote.net", "--no-mailbox")
        self.ok("alias", "add", "both@example.org", "--forward", "c@remote.net")

    def cli(self, *args):
        return subprocess.run([ts.SEALMAIL, *args, "--config", self.conf],
                              capture_output=True, text=True, timeout=60)

    def ok(self, *args):
        r = self.cli(*args)
        self.assertEqual(r.returncode, 0, f"sealmail {' '.join(args)} failed: {r.stderr}")
        return r

    def conn(self):
        return rpcclient.connect_unix(self.sock, self.secret, "mx@localhost")

    def deliver(self, c, address, body, sender=None, key=None):
        f = [(T_ADDRESS, address), (T_SIZE, len(body))]
        if sender is not None:
            f.append((T_SENDER, sender))
        if key is not None:
            f.append((T_IDEMPOTENCY_KEY, key))
        r = c.call(OP_DELIVER, f, body=body)
        return get_all(r, T_DELIVERED), get(r, T_QUEUED)

    def entries(self):
        if not os.path.isdir(self.outbound):
            return []
        return sorted(n for n in os.listdir(self.outbound) if n.endswith(".msg"))

    def queue_list(self):
        """{id: (sender, [targets], size, recipient)} from `sealmail queue list`."""
        out = self.ok("queue", "list").stdout.splitlines()
        self.assertRegex(out[-1], r"^\d+ queued$")
        rows = {}
        for ln in out[:-1]:
            m = re.match(r"^([0-9a-f]{32})  from <(.*?)>  to (.*?)  (\d+) bytes  for <(.*?)>", ln)
            self.assertIsNotNone(m, ln)
            rows[m.group(1)] = (m.group(2), re.findall(r"<([^>]*)>", m.group(3)),
                                int(m.group(4)), m.group(5))
        self.assertEqual(int(out[-1].split()[0]), len(rows))
        return rows

    def stat_value(self, c, op, name):
        return rpcclient.stats(c.call(op))[name]

    def test_forward_is_queued_sealed_with_srs(self):
        body = b"Subject: fwd\r\n\r\nMARKER-7f3a9c forward me\r\n" + os.urandom(2000).hex().encode()
        # no key made before the first forward
        self.assertFalse(os.path.exists(os.path.join(self.data, "secrets", "outbound_key")))
        with self.conn() as c:
            self.assertEqual(self.stat_value(c, rpcclient.OP_STATS, "outbound_queued"), 0)
            delivered, queued = self.deliver(c, "fw@example.org", body,
                                             sender="alice@orig.example", key=b"q1-fw")
            self.assertEqual(delivered, [])
            self.assertEqual(queued, 2)
            files = self.entries()
            self.assertEqual(len(files), 1)
            with open(os.path.join(self.outbound, files[0]), "rb") as f:
                raw = f.read()
            self.assertTrue(raw.startswith(b"SMSPOOL1"))
            self.assertNotIn(b"MARKER-7f3a9c", raw)
            self.assertNotIn(b"alice@orig.example", raw)
            self.assertNotIn(b"remote.net", raw)
            for name in ("outbound_key", "srs_secret"):
                st = os.stat(os.path.join(self.data, "secrets", name))
                self.assertEqual(stat.S_IMODE(st.st_mode), 0o600, name)
            # the operator's view, decrypted with the queue key
            rows = self.queue_list()
            qid = files[0][:-4]
            sender, targets, size, rcpt = rows[qid]
            self.assertRegex(sender, SRS0)
            self.assertEqual(targets, ["a@remote.net", "b@remote.net"])
            self.assertEqual(size, len(body))
            self.assertEqual(rcpt, "fw@example.org")
            shown = subprocess.run([ts.SEALMAIL, "queue", "show", qid, "--config", self.conf],
                                   capture_output=True, timeout=60)
            self.assertEqual(shown.returncode, 0, shown.stderr)
            self.assertTrue(shown.stdout.endswith(b"\n\n" + body))
            self.assertEqual(self.stat_value(c, rpcclient.OP_STATS, "outbound_queued"), 1)
            self.assertEqual(self.stat_value(c, rpcclient.OP_SERVER_STATUS, "outbound_queued"), 1)

            # a retry with the same key: answered alike, queued once
            delivered, queued = self.deliver(c, "fw@example.org", body,
                                             sender="alice@orig.example", key=b"q1-fw")
            self.assertEqual((delivered, queued), ([], 2))
            self.assertEqual(self.entries(), files)
            self.assertEqual(self.stat_value(c, rpcclient.OP_STATS, "outbound_queued"), 1)

            # the null sender stays null; no key: a new entry
            delivered, queued = self.deliver(c, "fw@example.org", b"bounce\r\n", sender="")
            self.assertEqual(queued, 2)
            rows = self.queue_list()
            self.assertEqual(len(rows), 2)
            self.assertIn("", [r[0] for r in rows.values()])
            self.assertEqual(self.stat_value(c, rpcclient.OP_STATS, "outbound_queued"), 2)

            # a sender with a control character is refused, nothing queued
            with self.assertRaises(rpcclient.RpcError) as cm:
                self.deliver(c, "fw@example.org", b"x\r\n", sender="a\r\nb@orig.example")
            self.assertEqual(cm.exception.code, EINVAL)
            self.assertEqual(len(self.entries()), 2)
        self.check_postsrsd_reverses(sender)

    def check_postsrsd_reverses(self, srs_address):
        """postsrsd (libsrs2's scheme) given our secret file must undo our SRS0."""
        if shutil.which("postsrsd") is None:
            self.skipTest("postsrsd (Debian) not installed: cross-check skipped")
        fwd_port, rev_port = ts.free_port(), ts.free_port()
        p = subprocess.Popen(["postsrsd", "-s" + os.path.join(self.data, "secrets", "srs_secret"),
                              "-dexample.org", f"-f{fwd_port}", f"-r{rev_port}", "-l127.0.0.1",
                              "-unobody", "-4"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        deadline, answer = time.monotonic() + 10, None
        while answer is None and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", rev_port), timeout=5) as s:
                    s.sendall(f"get {srs_address}\n".encode())
                    answer = s.recv(4096).decode().strip()
            except OSError:
                time.sleep(0.1)
        self.assertEqual(answer, "200 alice@orig.example")

    def test_mailbox_and_forward(self):
        with self.conn() as c:
            delivered, queued = self.deliver(c, "both@example.org", b"Subject: b\r\n\r\nboth\r\n",
                                             sender="bob@orig.example", key=b"q2-both")
            self.assertEqual(delivered, [b"both@example.org"])
            self.assertEqual(queued, 1)
            rows = self.queue_list()
            self.assertEqual(len(rows), 1)
            (sender, targets, _, rcpt), = rows.values()
            self.assertTrue(sender.startswith("SRS0=") and
                            sender.endswith("=orig.example=bob@example.org"), sender)
            self.assertEqual((targets, rcpt), (["c@remote.net"], "both@example.org"))
            spool = os.path.join(self.data, "spool")
            n_spool = sum(len([f for f in fs if f.endswith(".msg")])
                          for _, _, fs in os.walk(spool))
            self.assertEqual(n_spool, 1)
            # retry: neither copy is stored again
            self.assertEqual(self.deliver(c, "both@example.org", b"Subject: b\r\n\r\nboth\r\n",
                                          sender="bob@orig.example", key=b"q2-both"),
                             ([b"both@example.org"], 1))
            self.assertEqual(len(self.entries()), 1)
            self.assertEqual(sum(len([f for f in fs if f.endswith(".msg")])
                                 for _, _, fs in os.walk(spool)), 1)

    def test_kill9_after_answer_keeps_entry(self):
        body = b"Subject: k\r\n\r\nsurvive\r\n"
        with self.conn() as c:
            _, queued = self.deliver(c, "fw@example.org", body, sender="carol@orig.example")
            self.assertEqual(queued, 2)
            os.kill(self.sqlited.pid, signal.SIGKILL)
        self.sqlited.wait(timeout=10)
        self.assertEqual(len(self.entries()), 1)
        self.sqlited, _ = self.start_sqlited()
        rows = self.queue_list()
        self.assertEqual([r[2] for r in rows.values()], [len(body)])
        with self.conn() as c:
            self.assertEqual(self.stat_value(c, rpcclient.OP_STATS, "outbound_queued"), 1)


if __name__ == "__main__":
    unittest.main()
