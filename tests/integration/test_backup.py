"""Backup and restore end to end: a real redis-server, sqlited and the CLI.

Covered: aliases with messages (APPEND over RPC) and mail spooled while
locked; `sealmail backup` (sqlited stopped: the online path through sqlited
is not built yet, and the CLI refuses while sqlited runs); `snapshots`;
restore into a fresh data dir with a copy of the secrets; sqlited started
there unlocks with the same password; every message byte-identical with the
same UIDVALIDITY and UIDs; wrong backup key and a missing snapshot refused
with a clear message and a non-zero exit.
"""
import os
import shutil
import subprocess
import sys
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

        # While sqlited runs, this build refuses clearly.
        r = self.run_cli("backup")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("sqlited is running", r.stderr)

        self.assertEqual(self.stop_sqlited(), 0)
        r = self.run_cli("backup")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.run_cli("backup")       # incremental: nothing new
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(" 0 objects uploaded", r.stdout)
        r = self.run_cli("snapshots")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout.strip().splitlines()), 2)

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
        self.conf, self.data = fconf, fresh
        self.socket = os.path.join(fresh, "sqlited.sock")
        self.start_sqlited()
        for a in aliases:
            self.assertEqual(self.mailbox_state(a), before[a], a)


# Only this file's test: not the inherited ones of test_admin.Admin.
for _name in dir(test_admin.Admin):
    if _name.startswith("test_"):
        setattr(Backup, _name, None)

if __name__ == "__main__":
    unittest.main()
