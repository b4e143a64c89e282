"""Integration tests of the `sealmail` command: init, up, errors.

Runs the real binary from $SEALMAIL_BIN_DIR (default: build/bin) in
temporary directories, with a real redis-server. Secrets are compared, never
printed: assertion messages here are fixed strings wherever a secret could
end up in them.
"""
import os
import re
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("SEALMAIL_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
BIN_DIR = os.environ.get("SEALMAIL_BIN_DIR", os.path.join(ROOT, "build", "bin"))
SEALMAIL = os.path.join(BIN_DIR, "sealmail")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def run(*args, timeout=60):
    return subprocess.run([SEALMAIL, *args], capture_output=True, text=True, timeout=timeout)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def read(path):
    with open(path) as f:
        return f.read()


def openssl(*args, stdin=None):
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True,
                          text=True, timeout=30)


def pid_alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children_of(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def redis_children(pid):
    """The redis-server processes among pid's children."""
    out = []
    for k in children_of(pid):
        try:
            with open(f"/proc/{k}/comm") as f:
                if f.read().startswith("redis-server") and pid_alive(k):
                    out.append(k)
        except FileNotFoundError:
            pass
    return out


class Base(unittest.TestCase):
    def setUp(self):
        self.assertTrue(os.access(SEALMAIL, os.X_OK), f"no executable {SEALMAIL}")
        self._tmp = tempfile.TemporaryDirectory(prefix="smcli-")
        self.tmp = self._tmp.name
        self.procs = []

    def tearDown(self):
        for p, reader in self.procs:  # never leave a stray process behind
            if p.poll() is None:
                p.kill()
            p.wait()
            reader.join(10)
            p.stdout.close()
            p.stderr.close()
        self._tmp.cleanup()

    def init(self, sub="d", data_dir=True):
        data = os.path.join(self.tmp, sub)
        conf = os.path.join(data, "sealmail.conf")
        args = ["init", "--config", conf] + (["--data-dir", data] if data_dir else [])
        r = run(*args)
        # stdout holds the backup key: never let it reach the test output
        self.assertEqual(r.returncode, 0, "init failed: " + r.stderr)
        return data, conf, r


class TestInit(Base):
    def test_creates_everything(self):
        data, conf, r = self.init()
        self.assertEqual(mode(data), 0o700)
        self.assertTrue(os.path.isfile(conf))
        text = read(conf)
        for line in ("sqlited_port = 3456", "imaps_port = 993", "imaps_alt_port = 2993", "imap_port = 0",
                     "pop3s_port = 995", "pop3_port = 2995", "mx_port = 2525",
                     "smtps_port = 465", "submission_port = 587", "caldav_port = 5000",
                     "carddav_port = 6000", "api_port = 4000", "web_port = 443",
                     "listen_address = 127.0.0.1", f"data_dir = {data}"):
            self.assertIn(line + "\n", text)

        secrets = {}
        for name in ("rpc_secret", "backup_key"):
            path = os.path.join(data, "secrets", name)
            self.assertEqual(mode(path), 0o600, name)
            value = read(path).strip()
            self.assertTrue(HEX64.match(value), f"{name} is not 64 hex characters")
            secrets[name] = value
        self.assertNotEqual(secrets["rpc_secret"], secrets["backup_key"])
        # the backup key is shown once, the RPC secret never
        self.assertTrue(secrets["backup_key"] in r.stdout, "backup key was not shown")
        self.assertFalse(secrets["rpc_secret"] in r.stdout + r.stderr, "RPC secret was printed")

        cert = os.path.join(data, "tls", "cert.pem")
        key = os.path.join(data, "tls", "key.pem")
        self.assertEqual(mode(key), 0o600)
        x = openssl("x509", "-in", cert, "-noout", "-text")
        self.assertEqual(x.returncode, 0, x.stderr)
        self.assertIn("Version: 3", x.stdout)
        self.assertIn("DNS:localhost", x.stdout)
        self.assertIn("IP Address:127.0.0.1", x.stdout)
        self.assertIn("prime256v1", x.stdout)
        host = re.search(r"^hostname = (\S+)$", text, re.M).group(1)
        self.assertIn(f"DNS:{host}", x.stdout)
        # about ten years
        end = openssl("x509", "-in", cert, "-noout", "-enddate").stdout.strip().split("=", 1)[1]
        years = (time.mktime(time.strptime(end, "%b %d %H:%M:%S %Y GMT")) - time.time()) / (365.25 * 86400)
        self.assertGreater(years, 9.9)
        self.assertLess(years, 10.1)
        # the key belongs to the certificate
        pub_cert = openssl("x509", "-in", cert, "-noout", "-pubkey")
        pub_key = openssl("pkey", "-in", key, "-pubout")
        self.assertEqual(pub_cert.returncode, 0)
        self.assertEqual(pub_key.returncode, 0)
        self.assertEqual(pub_cert.stdout, pub_key.stdout)

    def test_idempotent(self):
        data, conf, _ = self.init()
        files = [os.path.join(data, p) for p in
                 ("sealmail.conf", "secrets/rpc_secret", "secrets/backup_key",
                  "tls/cert.pem", "tls/key.pem")]
        before = [read(f) for f in files]
        _, _, r2 = self.init()
        after = [read(f) for f in files]
        self.assertTrue(before == after, "a second init changed a file")
        backup = read(os.path.join(data, "secrets", "backup_key")).strip()
        self.assertFalse(backup in r2.stdout, "the backup key was shown a second time")

    def test_two_installations_differ(self):
        d1, _, _ = self.init("one")
        d2, _, _ = self.init("two")
        for name in ("secrets/rpc_secret", "secrets/backup_key", "tls/key.pem"):
            self.assertTrue(read(os.path.join(d1, name)) != read(os.path.join(d2, name)),
                            f"{name} is the same in two installations")

    def test_config_data_dir_default_is_its_directory(self):
        data, conf, _ = self.init("x", data_dir=False)
        self.assertIn(f"data_dir = {data}\n", read(conf))
        self.assertEqual(mode(data), 0o700)

    def test_conflicting_data_dir(self):
        _, conf, _ = self.init()
        r = run("init", "--config", conf, "--data-dir", os.path.join(self.tmp, "elsewhere"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("differs", r.stderr)

    def test_refuses_half_a_key_pair(self):
        data, conf, _ = self.init()
        os.unlink(os.path.join(data, "tls", "cert.pem"))
        r = run("init", "--config", conf)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("key.pem exists", r.stderr)

    def test_corrupt_secret_is_an_error(self):
        data, conf, _ = self.init()
        with open(os.path.join(data, "secrets", "rpc_secret"), "w") as f:
            f.write("not hex\n")
        r = run("init", "--config", conf)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("rpc_secret", r.stderr)


class TestErrors(Base):
    def write_conf(self, body):
        conf = os.path.join(self.tmp, "bad.conf")
        with open(conf, "w") as f:
            f.write(body)
        return conf

    def test_unknown_key(self):
        conf = self.write_conf("imaps_port = 993\n# c\nimap_prot = 2993\n")
        for cmd in ("init", "up"):
            r = run(cmd, "--config", conf)
            self.assertNotIn(r.returncode, (0, 2), cmd)
            self.assertIn(f"{conf}:3:", r.stderr)
            self.assertIn("imap_prot", r.stderr)

    def test_bad_port(self):
        conf = self.write_conf("mx_port = 2525\nimaps_port = 70000\n")
        for cmd in ("init", "up"):
            r = run(cmd, "--config", conf)
            self.assertNotIn(r.returncode, (0, 2), cmd)
            self.assertIn(f"{conf}:2:", r.stderr)
            self.assertIn("70000", r.stderr)

    def test_usage(self):
        self.assertEqual(run("frobnicate").returncode, 2)
        self.assertEqual(run().returncode, 2)
        self.assertEqual(run("init").returncode, 2)          # no --config
        self.assertEqual(run("up", "--bogus").returncode, 2)
        self.assertEqual(run("up", "--config", "x", "extra").returncode, 2)
        r = run("help")
        self.assertEqual(r.returncode, 0)
        for name in ("init", "up", "version"):
            self.assertIn(f"sealmail {name}", r.stdout)
        r = run("version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^sealmail \d+\.\d+")

    def test_up_without_init(self):
        conf = self.write_conf(f"data_dir = {self.tmp}/nothing\n")
        r = run("up", "--config", conf)
        self.assertEqual(r.returncode, 1)
        self.assertIn("sealmail init", r.stderr)


class TestUp(Base):
    def start(self, conf):
        """Starts `sealmail up`; returns (process, output up to its "ready" line)."""
        p = subprocess.Popen([SEALMAIL, "up", "--config", conf], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        lines = []
        ready = threading.Event()

        def reader():
            for line in p.stdout:
                lines.append(line)
                if "ready" in line:
                    ready.set()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        self.procs.append((p, thread))
        if ready.wait(30):
            return p, "".join(lines)
        p.kill()
        p.wait()
        thread.join(10)
        self.fail("up did not become ready:\n" + "".join(lines) + p.stderr.read())

    def test_up_redis_and_clean_stop(self):
        data, conf, _ = self.init()
        p, out = self.start(conf)
        sock = os.path.join(data, "redis.sock")
        self.assertRegex(out, r"(?m)^redis\s+unix:" + re.escape(sock))
        # services that later issues build are started; until then, listed as missing
        for name, exe, ports in (("sqlited", "sqlited", "port 3456"),
                                 ("imapd", "sealmail-imapd", "ports 993, 2993")):
            if not os.access(os.path.join(BIN_DIR, exe), os.X_OK):
                self.assertRegex(out, rf"(?m)^{name}\s+not built yet \({ports}\)")
        self.assertEqual(stat.S_IFMT(os.stat(sock).st_mode), stat.S_IFSOCK)

        ping = subprocess.run(["redis-cli", "-s", sock, "ping"], capture_output=True,
                              text=True, timeout=10)
        self.assertEqual(ping.stdout.strip(), "PONG")
        # redis has no TCP port: only the 0700 data directory leads to it
        cfg = subprocess.run(["redis-cli", "-s", sock, "config", "get", "port"],
                             capture_output=True, text=True, timeout=10)
        self.assertEqual(cfg.stdout.split(), ["port", "0"])
        kids = redis_children(p.pid)
        self.assertEqual(len(kids), 1, "expected exactly one redis-server child")

        # a second `up` on the same data directory refuses to start
        r = run("up", "--config", conf, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("already running", r.stderr)

        t0 = time.time()
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(timeout=15), 0)
        self.assertLess(time.time() - t0, 10)
        for _ in range(50):
            if not pid_alive(kids[0]):
                break
            time.sleep(0.1)
        self.assertFalse(pid_alive(kids[0]), "redis-server outlived sealmail up")
        self.assertTrue(os.path.isdir(os.path.join(data, "redis")))

    def test_restarts_a_dead_redis(self):
        data, conf, _ = self.init()
        p, _ = self.start(conf)
        sock = os.path.join(data, "redis.sock")
        first = redis_children(p.pid)
        self.assertEqual(len(first), 1)
        os.kill(first[0], signal.SIGKILL)
        new = []
        for _ in range(100):  # the first restart comes after 1 s
            time.sleep(0.1)
            new = [k for k in redis_children(p.pid) if k != first[0]]
            if new:
                break
        self.assertEqual(len(new), 1, "redis-server was not restarted")
        pong = ""
        for _ in range(50):
            pong = subprocess.run(["redis-cli", "-s", sock, "ping"], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
            if pong == "PONG":
                break
            time.sleep(0.1)
        self.assertEqual(pong, "PONG")
        p.send_signal(signal.SIGINT)
        self.assertEqual(p.wait(timeout=15), 0)
        self.assertFalse(pid_alive(new[0]))

    def test_services_off_and_external_redis(self):
        conf = os.path.join(self.tmp, "off.conf")
        data = os.path.join(self.tmp, "off")
        with open(conf, "w") as f:
            f.write(f"data_dir = {data}\nredis_url = redis://:hunter2@127.0.0.1:1/0\n")
        r = run("init", "--config", conf)
        self.assertEqual(r.returncode, 0, r.stderr)
        p, out = self.start(conf)
        self.assertRegex(out, r"(?m)^imapd\s+off")
        self.assertIn("external redis://127.0.0.1:1/0", out)
        self.assertNotIn("hunter2", out)
        self.assertEqual(children_of(p.pid), [])
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(timeout=15), 0)

    def test_sigterm_while_a_port_is_held_without_accepting(self):
        """A service port held by another process that never accepts: its
        SYNs are dropped once its backlog is full, so a blocking readiness
        connect() would wait ~2 minutes with SIGTERM queued behind it."""
        pop3d = os.path.join(BIN_DIR, "sealmail-pop3d")
        if not os.access(pop3d, os.X_OK):
            self.skipTest("sealmail-pop3d is not built")
        data, conf, _ = self.init()
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen(0)
        queued = socket.create_connection(held.getsockname(), timeout=5)  # backlog full
        port = held.getsockname()[1]
        lines = []
        for line in read(conf).splitlines():
            key = line.split("=", 1)[0].strip() if "=" in line and not line.startswith("#") else None
            if key == "pop3s_port":
                line = f"pop3s_port = {port}"
            elif key is not None and key.endswith("_port"):
                line = f"{key} = 0"
            elif key == "listen_address":
                line = "listen_address = 127.0.0.1"
            lines.append(line)
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        p = subprocess.Popen([SEALMAIL, "up", "--config", conf], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        out = []
        reader = threading.Thread(target=lambda: out.extend(p.stdout), daemon=True)
        reader.start()
        try:
            # pop3d fails to listen and exits; `up` probes the port meanwhile
            for _ in range(100):
                if any("address already in use" in ln for ln in out):
                    break
                time.sleep(0.05)
            time.sleep(1)
            p.send_signal(signal.SIGTERM)
            try:
                rc = p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.fail("sealmail up did not stop on SIGTERM:\n" + "".join(out))
            self.assertIn(rc, (0, 1), "".join(out))
            self.assertFalse(any(pid_alive(k) for k in children_of(p.pid)))
        finally:
            if p.poll() is None:   # never leave a stray process behind
                p.kill()
            p.wait()
            reader.join(10)
            p.stdout.close()
            queued.close()
            held.close()


if __name__ == "__main__":
    unittest.main()
