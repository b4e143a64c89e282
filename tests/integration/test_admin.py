"""Integration tests of the admin commands: `sealmail domain|alias|app-password|status`.

A real redis-server (on a unix socket in a temporary directory) and a real
sqlited (`sealmail init` of a temporary data directory, every TCP port
turned off, the cheapest Argon2id cost), then the CLI end to end. Passwords
are compared, never printed: assertion messages are fixed strings wherever
a password could end up in them.
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("SEALMAIL_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
BIN_DIR = os.environ.get("SEALMAIL_BIN_DIR", os.path.join(ROOT, "build", "bin"))
SEALMAIL = os.path.join(BIN_DIR, "sealmail")
SQLITED = os.path.join(BIN_DIR, "sqlited")
GENERATED = re.compile(r"^[A-Za-z0-9]{24}$")


def wait_for(pred, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


class Admin(unittest.TestCase):
    def setUp(self):
        for exe in (SEALMAIL, SQLITED):
            self.assertTrue(os.access(exe, os.X_OK), f"no executable {exe}")
        if shutil.which("redis-server") is None:
            self.skipTest("redis-server is not installed")
        self._tmp = tempfile.TemporaryDirectory(prefix="smadm-")
        self.tmp = self._tmp.name
        self.data = os.path.join(self.tmp, "d")
        self.conf = os.path.join(self.data, "sealmail.conf")
        self.procs = []
        self.secrets = []   # every password seen: checked against the log
        r = subprocess.run([SEALMAIL, "init", "--config", self.conf, "--data-dir", self.data],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, "init failed: " + r.stderr)
        self.redis_sock = os.path.join(self.tmp, "redis.sock")
        self.rewrite_conf()
        self.start_redis()
        self.start_sqlited()

    def tearDown(self):
        try:
            self.stop_all()
            self.check_log_has_no_secret()
        finally:
            self._tmp.cleanup()

    # ---- processes ----

    def rewrite_conf(self):
        with open(self.conf) as f:
            lines = f.read().splitlines()
        out, seen = [], set()
        for line in lines:
            key = line.split("=", 1)[0].strip() if "=" in line and not line.startswith("#") else None
            if key is not None and key.endswith("_port"):
                line = f"{key} = 0"          # unix socket only: no port clashes
            elif key == "redis_url":
                line = f"redis_url = unix://{self.redis_sock}"
            elif key == "argon2_opslimit":
                line = "argon2_opslimit = 1"
            elif key == "argon2_memlimit_mib":
                line = "argon2_memlimit_mib = 1"
            if key is not None:
                seen.add(key)
            out.append(line)
        for key, value in (("argon2_opslimit", "1"), ("argon2_memlimit_mib", "1")):
            if key not in seen:
                out.append(f"{key} = {value}")
        with open(self.conf, "w") as f:
            f.write("\n".join(out) + "\n")
        self.socket = os.path.join(self.data, "sqlited.sock")

    def spawn(self, args, log):
        out = open(log, "wb")
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.procs.append(p)
        return p

    def start_redis(self):
        self.redis = self.spawn(["redis-server", "--port", "0", "--unixsocket", self.redis_sock,
                                 "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                                 "--dir", self.tmp],
                                os.path.join(self.tmp, "redis.log"))
        self.assertTrue(wait_for(lambda: os.path.exists(self.redis_sock)),
                        "redis-server did not start")

    def start_sqlited(self):
        self.log = os.path.join(self.tmp, "sqlited.log")
        self.sqlited = self.spawn([SQLITED, "--config", self.conf], self.log)
        ok = wait_for(lambda: os.path.exists(self.socket) or self.sqlited.poll() is not None)
        self.assertTrue(ok and self.sqlited.poll() is None,
                        "sqlited did not start: " + self.read_log())

    def stop_sqlited(self):
        if self.sqlited.poll() is None:
            self.sqlited.send_signal(signal.SIGTERM)
            try:
                self.sqlited.wait(20)
            except subprocess.TimeoutExpired:
                self.sqlited.kill()
                self.sqlited.wait()
                self.fail("sqlited did not stop on SIGTERM")
        return self.sqlited.returncode

    def stop_all(self):
        for p in self.procs:  # never leave a stray process behind
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def read_log(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def check_log_has_no_secret(self):
        log = self.read_log()
        for s in self.secrets:
            self.assertFalse(s in log, "a password appears in sqlited's log")

    # ---- the CLI ----

    def cli(self, *args, stdin=None):
        return subprocess.run([SEALMAIL, *args, "--config", self.conf], input=stdin,
                              capture_output=True, text=True, timeout=60)

    def ok(self, *args, stdin=None):
        r = self.cli(*args, stdin=stdin)
        self.assertEqual(r.returncode, 0, f"sealmail {' '.join(args)} failed: {r.stderr}")
        self.assertEqual(r.stderr, "", "unexpected standard error output")
        return r

    def fails(self, *args, stdin=None, expect=None):
        r = self.cli(*args, stdin=stdin)
        self.assertNotEqual(r.returncode, 0, f"sealmail {' '.join(args)} succeeded")
        self.assertTrue(r.stderr.startswith("sealmail: "), "error is not a sealmail: sentence")
        if expect is not None:
            self.assertIn(expect, r.stderr)
        return r

    def last_line_secret(self, r):
        """The password on the last line; it appears nowhere else."""
        lines = r.stdout.splitlines()
        self.assertGreaterEqual(len(lines), 2)
        pw = lines[-1]
        self.assertTrue(GENERATED.match(pw), "last line is not a generated password")
        self.assertEqual(r.stdout.count(pw), 1, "the password appears more than once")
        self.assertFalse(pw in r.stderr, "the password appears on standard error")
        self.secrets.append(pw)
        return pw

    def add_domain(self, name="example.org"):
        r = self.ok("domain", "add", name)
        self.assertIn(f"domain {name} added", r.stdout)

    # ---- tests ----

    def test_domains(self):
        self.add_domain()
        self.add_domain("Other.Example")
        self.fails("domain", "add", "example.org", expect="already served")
        self.fails("domain", "add", "not_a domain", expect="not a valid domain")
        r = self.ok("domain", "list")
        self.assertEqual(r.stdout.splitlines(), ["example.org", "other.example"])
        self.ok("domain", "remove", "other.example")
        self.fails("domain", "remove", "other.example", expect="is not served")
        self.assertEqual(self.ok("domain", "list").stdout.splitlines(), ["example.org"])
        # a domain with aliases stays
        self.ok("alias", "add", "fw@example.org", "--forward", "x@remote.net", "--no-mailbox")
        self.fails("domain", "remove", "example.org", expect="still has aliases")

    def test_alias_add_prints_password_once_on_last_line(self):
        self.add_domain()
        r = self.ok("alias", "add", "alice@example.org")
        pw = self.last_line_secret(r)
        self.assertIn("alice@example.org added (mailbox)", r.stdout)
        # the password opens the mailbox: app-password add needs it
        r2 = self.ok("app-password", "add", "alice@example.org", stdin=pw + "\n")
        self.last_line_secret(r2)
        # a chosen password, a forward, both, a catch-all, a quota
        r = self.ok("alias", "add", "bob@example.org", "--password-stdin", "--quota", "1000000",
                    stdin="bob's password\n")
        self.assertEqual(r.stdout.splitlines()[-1], "alias bob@example.org added (mailbox)")
        self.secrets.append("bob's password")
        r = self.ok("alias", "add", "fw@example.org", "--forward", "a@remote.net",
                    "--forward", "b@remote.net", "--no-mailbox")
        self.assertEqual(r.stdout.splitlines(), ["alias fw@example.org added (forward)"])
        r = self.ok("alias", "add", "both@example.org", "--forward", "c@remote.net")
        self.last_line_secret(r)
        r = self.ok("alias", "add", "@example.org")
        self.last_line_secret(r)

        lines = self.ok("alias", "list", "example.org").stdout.splitlines()
        rows = {l.split("\t")[0]: l.split("\t")[1:] for l in lines}
        self.assertEqual(sorted(rows), ["*@example.org", "alice@example.org", "bob@example.org",
                                        "both@example.org", "fw@example.org"])
        self.assertEqual(rows["fw@example.org"], ["forward", "-> a@remote.net,b@remote.net",
                                                  "no quota"])
        self.assertEqual(rows["both@example.org"][0], "mailbox+forward")
        self.assertEqual(rows["bob@example.org"], ["mailbox", "-", "quota 1000000"])
        self.assertEqual(len(self.ok("alias", "list").stdout.splitlines()), 5)

    def test_alias_errors(self):
        self.add_domain()
        self.ok("alias", "add", "alice@example.org", "--password-stdin", stdin="alice password\n")
        self.secrets.append("alice password")
        self.fails("alias", "add", "Alice@Example.org", expect="already exists")
        r = self.fails("alias", "add", "bob@unknown.example", expect="not served")
        self.assertIn("sealmail domain add unknown.example", r.stderr)
        self.fails("alias", "add", "bad%hack@example.org", expect="invalid alias")
        self.fails("alias", "add", "carol@example.org", "--password-stdin", stdin="short\n",
                   expect="at least 8")
        self.fails("alias", "add", "dan@example.org", "--no-mailbox", expect="--forward")
        self.fails("alias", "add", "eve@example.org", "--password-stdin", stdin="",
                   expect="no password")
        self.fails("alias", "list", "unknown.example", expect="not served")
        self.fails("alias", "remove", "nobody@example.org", expect="no alias")
        r = self.cli("alias", "frobnicate", "x")
        self.assertEqual(r.returncode, 2)
        r = self.cli("domain", "add")
        self.assertEqual(r.returncode, 2)

    def test_alias_remove_deletes_the_data(self):
        self.add_domain()
        self.ok("alias", "add", "alice@example.org", "--password-stdin", stdin="alice password\n")
        self.secrets.append("alice password")
        dbs = os.listdir(os.path.join(self.data, "mailboxes"))
        self.assertEqual(len([d for d in dbs if d.endswith(".db")]), 1)
        r = self.ok("alias", "remove", "alice@example.org")
        self.assertIn("removed with all its mail", r.stdout)
        dbs = os.listdir(os.path.join(self.data, "mailboxes"))
        self.assertEqual([d for d in dbs if d.endswith(".db")], [])
        self.assertEqual(self.ok("alias", "list").stdout, "")
        self.ok("domain", "remove", "example.org")
        h = subprocess.run([SEALMAIL, "help", "alias"], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(h.returncode, 0)
        self.assertIn("ALL ITS MAIL", h.stdout)

    def test_passwords(self):
        self.add_domain()
        pw = self.last_line_secret(self.ok("alias", "add", "alice@example.org"))
        # app password: slot 2, printed last
        r = self.ok("app-password", "add", "alice@example.org", "--label", "phone",
                    stdin=pw + "\n")
        app = self.last_line_secret(r)
        self.assertIn("as slot 2", r.stdout)
        self.fails("app-password", "add", "alice@example.org", stdin="wrong password\n",
                   expect="password is wrong")
        # passwd: current and new on stdin
        self.fails("alias", "passwd", "alice@example.org", stdin="wrong password\nnew password 1\n",
                   expect="current password is wrong")
        self.fails("alias", "passwd", "nobody@example.org", stdin=pw + "\nnew password 1\n",
                   expect="current password is wrong")
        self.fails("alias", "passwd", "alice@example.org", stdin=pw + "\nshort\n",
                   expect="at least 8")
        r = self.ok("alias", "passwd", "alice@example.org", stdin=pw + "\nnew password 1\n")
        self.assertEqual(r.stdout, "password of alice@example.org changed\n")
        self.secrets.append("new password 1")
        self.fails("app-password", "add", "alice@example.org", stdin=pw + "\n",
                   expect="password is wrong")
        # no new password given: one is generated and printed last
        r = self.ok("alias", "passwd", "alice@example.org", stdin="new password 1\n")
        pw2 = self.last_line_secret(r)
        # the app password still works; revoke it (slot 1 never)
        self.fails("app-password", "revoke", "alice@example.org", "1", stdin=pw2 + "\n",
                   expect="main password")
        self.fails("app-password", "revoke", "alice@example.org", "7", stdin=app + "\n",
                   expect="no key slot 7")
        r = self.ok("app-password", "revoke", "alice@example.org", "2", stdin=pw2 + "\n")
        self.assertIn("slot 2 of alice@example.org revoked", r.stdout)
        self.fails("app-password", "add", "alice@example.org", stdin=app + "\n",
                   expect="password is wrong")
        self.ok("app-password", "add", "alice@example.org", stdin=pw2 + "\n")

    def test_status(self):
        r = self.ok("status")
        self.assertIn("running", r.stdout)
        self.assertTrue(len(r.stdout.splitlines()) > 2, "status printed no counters")

    def test_sqlited_down(self):
        self.add_domain()
        self.assertEqual(self.stop_sqlited(), 0, "sqlited did not exit cleanly")
        for args in (("domain", "list"), ("alias", "add", "x@example.org"), ("status",)):
            r = self.fails(*args, expect="sqlited is not running")
            self.assertIn(f"sealmail up --config {self.conf}", r.stderr)
        # a stale socket file: still a clear sentence
        open(self.socket, "w").close()
        self.fails("domain", "list", expect="sqlited is not running")
        # back up: the domain is still there
        os.unlink(self.socket)
        self.start_sqlited()
        self.assertEqual(self.ok("domain", "list").stdout, "example.org\n")

    def test_wrong_secret(self):
        with open(os.path.join(self.data, "secrets", "rpc_secret"), "w") as f:
            f.write("ab" * 32 + "\n")
        self.fails("domain", "list", expect="refused the RPC secret")


if __name__ == "__main__":
    unittest.main()
