"""Backup and restore end to end: a real redis-server, sqlited and the CLI.

Covered: aliases with messages (APPEND over RPC) and mail spooled while
locked; `sealmail backup` with sqlited stopped; `snapshots`; restore into a
fresh data dir with a copy of the secrets; sqlited started there unlocks
with the same password; every message byte-identical with the same
UIDVALIDITY and UIDs; wrong backup key and a missing snapshot refused with a
clear message and a non-zero exit; a whole restore refused while sqlited
runs.

Online (sqlited running, BACKUP_PREPARE): a backup taken while 100 APPENDs
run on four connections holds every message acknowledged before it began,
byte-identical under the same UID, after a restore into a fresh dir.
`restore --alias` while sqlited runs: the alias gets exactly the
snapshot's messages, UIDs and flags back, its open sessions end, it opens
with its password, and the other alias is untouched.
"""
import os
import shutil
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import rpcclient  # noqa: E402
import sqlited_ops as ops  # noqa: E402
import test_admin  # noqa: E402

SEALMAIL = test_admin.SEALMAIL

PASSWORD = "correct horse battery"


class Backup(test_admin.Admin):
    def run_cli(self, *args, conf=None):
        return subprocess.run([SEALMAIL, *args, "--config", conf or self.conf],
                              capture_output=True, text=True, timeout=120)

    def connect(self):
        secret = rpcclient.read_secret(os.path.join(self.data, "secrets", "rpc_secret"))
        return rpcclient.connect_unix(self.socket, secret)

    def mailbox_state(self, alias):
        with self.connect() as c:
            s = ops.unlock(c, alias, PASSWORD.encode())
            st = ops.status(c, s, "INBOX")
            msgs = {m["uid"]: ops.fetch_body(c, s, "INBOX", m["uid"])
                    for m in ops.fetch_meta(c, s, "INBOX")}
            return st[ops.T_UIDVALIDITY], msgs

    def test_backup_restore_fresh_dir(self):
        r = self.run_cli("domain", "add", "example.org")
        self.assertEqual(r.returncode, 0, r.stderr)
        aliases = ["zqxcanary@example.org", "bob@example.org"]
        for a in aliases:
            r = subprocess.run([SEALMAIL, "alias", "add", a, "--password-stdin",
                                "--config", self.conf], input=PASSWORD + "\n",
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
        with self.connect() as c:
            for a in aliases:
                s = ops.unlock(c, a, PASSWORD.encode())
                for i in range(20):
                    body = (f"Subject: zqxsubject {i}\r\n\r\nzqxbody {a} {i}\r\n"
                            + "x" * (i * 7000)).encode()
                    ops.append(c, s, "INBOX", body)
        before = {a: self.mailbox_state(a) for a in aliases}

        # A whole restore needs sqlited stopped, and says so.
        r = self.run_cli("restore")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("sqlited is running", r.stderr)

        self.assertEqual(self.stop_sqlited(), 0)
        r = self.run_cli("backup")
        self.assertEqual(r.returncode, 0, r.stderr)
        first_id = r.stdout.split("snapshot ", 1)[1].split(":", 1)[0]
        r = self.run_cli("backup")       # incremental: nothing new
        self.assertEqual(r.returncode, 0, r.stderr)
        second_id = r.stdout.split("snapshot ", 1)[1].split(":", 1)[0]
        self.assertIn(" 0 objects uploaded", r.stdout)
        r = self.run_cli("snapshots")
        self.assertEqual(r.returncode, 0, r.stderr)
        listed = [line.split()[0] for line in r.stdout.strip().splitlines()]
        # Retention keeps the newest snapshot of each day (backup_keep_daily):
        # a second backup the same UTC day replaces the first.
        self.assertIn(second_id, listed)
        if first_id[:8] == second_id[:8]:
            self.assertEqual(listed, [second_id])
        else:
            self.assertEqual(sorted(listed), sorted([first_id, second_id]))

        # No canary in any stored byte.
        for root, _, files in os.walk(os.path.join(self.data, "backups")):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    blob = f.read()
                for canary in (b"zqxcanary", b"zqxsubject", b"zqxbody"):
                    self.assertNotIn(canary, blob, name)

        # A fresh data dir with a copy of the secrets and the same target.
        fresh = os.path.join(self.tmp, "fresh")
        os.makedirs(os.path.join(fresh, "secrets"), mode=0o700)
        for s in ("rpc_secret", "backup_key"):
            shutil.copy2(os.path.join(self.data, "secrets", s),
                         os.path.join(fresh, "secrets", s))
        shutil.copytree(os.path.join(self.data, "tls"), os.path.join(fresh, "tls"))
        os.chmod(fresh, 0o700)
        fconf = os.path.join(fresh, "sealmail.conf")
        with open(self.conf) as f:
            text = f.read()
        text = text.replace(f"data_dir = {self.data}", f"data_dir = {fresh}")
        target = os.path.join(self.data, "backups")
        with open(fconf, "w") as f:
            f.write(text + f"backup_target = {target}\n")

        # Wrong key: refused, nothing written.
        wrong = os.path.join(self.tmp, "wrong_key")
        with open(wrong, "w") as f:
            f.write("ab" * 32 + "\n")
        os.chmod(wrong, 0o600)
        wtext = "\n".join(f"backup_key_file = {wrong}" if line.startswith("backup_key_file")
                           else line for line in text.splitlines())
        with open(fconf + ".wrong", "w") as f:
            f.write(wtext + f"\nbackup_target = {target}\n")
        r = self.run_cli("restore", conf=fconf + ".wrong")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("the backup key does not open this snapshot", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(fresh, "mailboxes")))
        r = self.run_cli("restore", "--snapshot", "20000101-000000", conf=fconf)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no snapshot", r.stderr)

        r = self.run_cli("restore", conf=fconf)
        self.assertEqual(r.returncode, 0, r.stderr)

        # sqlited on the restored dir: same password, same mail.
        self.use_dir(fconf, fresh)
        for a in aliases:
            self.assertEqual(self.mailbox_state(a), before[a], a)

    def add_aliases(self, aliases):
        r = self.run_cli("domain", "add", "example.org")
        self.assertEqual(r.returncode, 0, r.stderr)
        for a in aliases:
            r = subprocess.run([SEALMAIL, "alias", "add", a, "--password-stdin",
                                "--config", self.conf], input=PASSWORD + "\n",
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)

    def fresh_dir(self):
        """A fresh data dir with a copy of the secrets; its config path."""
        fresh = os.path.join(self.tmp, "fresh")
        os.makedirs(os.path.join(fresh, "secrets"), mode=0o700)
        for s in ("rpc_secret", "backup_key"):
            shutil.copy2(os.path.join(self.data, "secrets", s),
                         os.path.join(fresh, "secrets", s))
        shutil.copytree(os.path.join(self.data, "tls"), os.path.join(fresh, "tls"))
        os.chmod(fresh, 0o700)
        fconf = os.path.join(fresh, "sealmail.conf")
        with open(self.conf) as f:
            text = f.read()
        text = text.replace(f"data_dir = {self.data}", f"data_dir = {fresh}")
        with open(fconf, "w") as f:
            f.write(text + f"backup_target = {os.path.join(self.data, 'backups')}\n")
        return fconf, fresh

    def use_dir(self, conf, data):
        self.conf, self.data = conf, data
        self.socket = os.path.join(data, "sqlited.sock")
        self.start_sqlited()

    def meta(self, alias):
        with self.connect() as c:
            s = ops.unlock(c, alias, PASSWORD.encode())
            return ops.fetch_meta(c, s, "INBOX")

    def test_online_backup_during_appends(self):
        self.add_aliases(["alice@example.org", "bob@example.org"])
        acked = {}          # uid -> body, with the time it was acknowledged
        lock = threading.Lock()
        errors = []

        def appender(n, seed):
            try:
                with self.connect() as c:
                    s = ops.unlock(c, "alice@example.org", PASSWORD.encode())
                    for i in range(n):
                        body = (f"Subject: online {seed} {i}\r\n\r\n"
                                + f"{seed}-{i} " * (200 + 50 * i)).encode()
                        uid, _ = ops.append(c, s, "INBOX", body)
                        with lock:
                            acked[uid] = (body, time.monotonic())
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=appender, args=(25, k)) for k in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        with lock:
            began = time.monotonic()
            before = {uid: b for uid, (b, _) in acked.items()}
        r = self.run_cli("backup")
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(acked), 100)
        self.assertGreater(len(before), 0)
        self.assertLess(len(before), 100, "the backup did not overlap the APPENDs")
        # The staging copy is gone.
        self.assertEqual([n for n in os.listdir(os.path.join(self.data, "tmp"))
                          if n.startswith("backup-")], [])
        live = self.mailbox_state("alice@example.org")
        bob = self.mailbox_state("bob@example.org")

        self.assertEqual(self.stop_sqlited(), 0)
        fconf, fresh = self.fresh_dir()
        r = self.run_cli("restore", conf=fconf)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.use_dir(fconf, fresh)
        uidvalidity, msgs = self.mailbox_state("alice@example.org")
        self.assertEqual(uidvalidity, live[0])
        for uid, body in before.items():
            self.assertEqual(msgs.get(uid), body, uid)
        # Whatever else it holds is a whole, acknowledged message.
        for uid, body in msgs.items():
            self.assertEqual(body, acked[uid][0], uid)
        self.assertGreaterEqual(began, min(t for _, t in acked.values()))
        self.assertEqual(self.mailbox_state("bob@example.org"), bob)

    def test_restore_one_alias_online(self):
        self.add_aliases(["alice@example.org", "bob@example.org"])
        with self.connect() as c:
            for a in ("alice@example.org", "bob@example.org"):
                s = ops.unlock(c, a, PASSWORD.encode())
                for i in range(5):
                    ops.append(c, s, "INBOX", f"Subject: {a} {i}\r\n\r\nold\r\n".encode())
                ops.store(c, s, "INBOX", 2, 0, flags=1)
        snap_alice = (self.mailbox_state("alice@example.org"), self.meta("alice@example.org"))
        r = self.run_cli("backup")
        self.assertEqual(r.returncode, 0, r.stderr)

        # Change both after the backup; keep a session of alice open.
        c = self.connect()
        try:
            s = ops.unlock(c, "alice@example.org", PASSWORD.encode())
            for i in range(3):
                ops.append(c, s, "INBOX", f"Subject: new {i}\r\n\r\nnew\r\n".encode())
            ops.store(c, s, "INBOX", 1, 0, flags=1)
            ops.store(c, s, "INBOX", 2, 0, flags=0)
            with self.connect() as c2:
                sb = ops.unlock(c2, "bob@example.org", PASSWORD.encode())
                ops.append(c2, sb, "INBOX", b"Subject: bob new\r\n\r\nnew\r\n")
            bob = (self.mailbox_state("bob@example.org"), self.meta("bob@example.org"))
            self.assertNotEqual(self.meta("alice@example.org"), snap_alice[1])

            r = self.run_cli("restore", "--alias", "alice@example.org")
            self.assertEqual(r.returncode, 0, r.stderr)
            # The session open across the restore has ended.
            with self.assertRaises(Exception):
                ops.status(c, s, "INBOX")
        finally:
            c.close()
        self.assertEqual(self.mailbox_state("alice@example.org"), snap_alice[0])
        self.assertEqual(self.meta("alice@example.org"), snap_alice[1])
        self.assertEqual((self.mailbox_state("bob@example.org"),
                          self.meta("bob@example.org")), bob)
        # An alias the snapshot does not hold: refused, nothing changed.
        r = self.run_cli("restore", "--alias", "nobody@example.org")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no mailbox alias", r.stderr)


    def test_scheduled_backup_and_tmp_cleanup(self):
        """sqlited runs the scheduled job (test hook: N seconds after start)
        and removes staging copies a killed CLI left, at start."""
        self.add_aliases(["alice@example.org"])
        with self.connect() as c:
            s = ops.unlock(c, "alice@example.org", PASSWORD.encode())
            for i in range(3):
                ops.append(c, s, "INBOX", f"Subject: sched {i}\r\n\r\nbody\r\n".encode())
        state = self.mailbox_state("alice@example.org")
        self.assertEqual(self.stop_sqlited(), 0)

        # Left by a killed CLI / sqlited: a dead pid, sqlited's own hex name.
        tmp = os.path.join(self.data, "tmp")
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = [f"backup-{dead.pid}", "backup-0123456789abcdef", f"restore-{dead.pid}"]
        live = f"restore-{os.getpid()}"     # a process that still runs
        for n in stale + [live]:
            os.makedirs(os.path.join(tmp, n, "mailboxes"))
            with open(os.path.join(tmp, n, "mailboxes", "x.db"), "w") as f:
                f.write("x")

        os.environ["SEALMAIL_BACKUP_SCHEDULE_TEST_SECONDS"] = "1"
        try:
            self.start_sqlited()
        finally:
            del os.environ["SEALMAIL_BACKUP_SCHEDULE_TEST_SECONDS"]
        left = sorted(n for n in os.listdir(tmp) if n.startswith(("backup-", "restore-")))
        self.assertEqual(left, [live])
        shutil.rmtree(os.path.join(tmp, live))

        snaps = os.path.join(self.data, "backups", "snapshots")
        self.assertTrue(test_admin.wait_for(
            lambda: "scheduled backup: snapshot" in self.read_log(), timeout=60),
            self.read_log())
        manifests = os.listdir(snaps)
        self.assertEqual(len(manifests), 1)
        self.assertIn(f"snapshot {manifests[0].split('.')[0]}: ", self.read_log())
        # The staging copy is gone.
        self.assertEqual([n for n in os.listdir(tmp) if n.startswith("backup-")], [])
        # The scheduled snapshot restores (into a fresh data dir, before
        # the next backup of the same day replaces it under retention).
        fconf, fresh = self.fresh_dir()
        r = self.run_cli("restore", "--snapshot", manifests[0].split(".")[0], conf=fconf)
        self.assertEqual(r.returncode, 0, r.stderr)
        # One job at a time: it has ended, so the CLI's backup runs.
        r = self.run_cli("backup")
        self.assertEqual(r.returncode, 0, r.stderr)

        self.assertEqual(self.stop_sqlited(), 0)
        self.use_dir(fconf, fresh)
        self.assertEqual(self.mailbox_state("alice@example.org"), state)

# Only this file's test: not the inherited ones of test_admin.Admin.
for _name in dir(test_admin.Admin):
    if _name.startswith("test_"):
        setattr(Backup, _name, None)

if __name__ == "__main__":
    unittest.main()
