"""Integration tests of the real `sqlited` process.

A real redis-server on a unix socket in a temp dir, the real
$SEALMAIL_BIN_DIR/sqlited with a configuration written by `sealmail init`
(ports moved to random free loopback ports), spoken to with the Python
protocol client in rpcclient.py. Every process started here is stopped.
"""
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import rpcclient  # noqa: E402

ROOT = os.environ.get("SEALMAIL_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
BIN_DIR = os.environ.get("SEALMAIL_BIN_DIR", os.path.join(ROOT, "build", "bin"))
SEALMAIL = os.path.join(BIN_DIR, "sealmail")
SQLITED = os.path.join(BIN_DIR, "sqlited")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_key(conf, key, value):
    with open(conf) as f:
        text = f.read()
    text, n = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text)
    if n == 0:
        text += f"\n{key} = {value}\n"
    with open(conf, "w") as f:
        f.write(text)


class Base(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="sm-sqlited-")
        self.tmp = self._tmp.name
        self.procs = []
        self.data = os.path.join(self.tmp, "d")
        self.conf = os.path.join(self.data, "sealmail.conf")
        r = subprocess.run([SEALMAIL, "init", "--config", self.conf, "--data-dir", self.data],
                           capture_output=True, text=True, timeout=60)
        # stdout shows the backup key once: never print it
        self.assertEqual(r.returncode, 0, "sealmail init failed: " + r.stderr)
        self.port = free_port()
        set_key(self.conf, "sqlited_port", self.port)
        set_key(self.conf, "listen_address", "127.0.0.1")
        self.redis_sock = os.path.join(self.tmp, "redis.sock")
        set_key(self.conf, "redis_url", "unix:" + self.redis_sock)
        self.secret = rpcclient.read_secret(os.path.join(self.data, "secrets", "rpc_secret"))
        self.sock = os.path.join(self.data, "sqlited.sock")

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            for s in (p.stdout, p.stderr):
                if s:
                    s.close()
        self._tmp.cleanup()

    def start_redis(self):
        p = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", self.redis_sock,
                              "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                              "--dir", self.tmp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.path.exists(self.redis_sock):
                r = subprocess.run(["redis-cli", "-s", self.redis_sock, "ping"],
                                   capture_output=True, text=True, timeout=5)
                if r.stdout.strip() == "PONG":
                    return p
            time.sleep(0.05)
        self.fail("redis-server did not start")

    def start_sqlited(self, expect_lines=2):
        p = subprocess.Popen([SQLITED, "--config", self.conf], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        # raw reads: a buffered readline would hide the second line from select
        buf, fd = b"", p.stdout.fileno()
        deadline = time.monotonic() + 15
        while buf.count(b"\n") < expect_lines and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
        lines = buf.decode().splitlines()
        if len(lines) < expect_lines:
            p.kill()
            self.fail("sqlited did not print its listeners: " + p.stderr.read())
        return p, lines

    def stop(self, p):
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=15)
        return rc, time.monotonic() - t0


@unittest.skipUnless(shutil.which("redis-server") and os.path.exists(SQLITED),
                     "needs redis-server and a built sqlited")
class TestSqlited(Base):
    def test_listeners_ping_stats_and_clean_stop(self):
        self.start_redis()
        p, lines = self.start_sqlited()
        self.assertTrue(any(f"tcp 127.0.0.1:{self.port}" in ln for ln in lines), lines)
        self.assertTrue(any(f"unix {self.sock}" in ln for ln in lines), lines)
        self.assertEqual(os.stat(self.sock).st_mode & 0o777, 0o600)

        with rpcclient.connect_unix(self.sock, self.secret, "cli@localhost") as u, \
                rpcclient.connect_tcp("127.0.0.1", self.port, self.secret) as t:
            self.assertEqual(rpcclient.get(u.call(rpcclient.OP_PING, [(rpcclient.T_ECHO, b"unix")]),
                                           rpcclient.T_ECHO), b"unix")
            self.assertEqual(rpcclient.get(t.call(rpcclient.OP_PING, [(rpcclient.T_ECHO, b"tcp")]),
                                           rpcclient.T_ECHO), b"tcp")
            self.assertEqual(t.call(rpcclient.OP_PING), [])
            st = rpcclient.stats(t.call(rpcclient.OP_STATS))
            self.assertGreaterEqual(st["connections"], 2)
            self.assertGreaterEqual(st["requests"], 3)
            self.assertIn("sessions", st)
            # Redis comes up asynchronously: poll SERVER_STATUS a little
            deadline = time.monotonic() + 5
            while True:
                status = rpcclient.stats(u.call(rpcclient.OP_SERVER_STATUS))
                if status["redis_connected"] == 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            self.assertEqual(status["redis_connected"], 1)
            self.assertIn("listener:unix " + self.sock + " (0600)", status)
            # an admin opcode from a frontend over TCP is refused
            with self.assertRaises(rpcclient.RpcError) as cm:
                t.call(rpcclient.OP_SERVER_STATUS)
            self.assertEqual(cm.exception.code, 14)
            # an unknown opcode is an error for that request only
            with self.assertRaises(rpcclient.RpcError) as cm:
                t.call(4000)
            self.assertEqual(cm.exception.code, 102)
            self.assertEqual(rpcclient.get(t.call(rpcclient.OP_PING, [(rpcclient.T_ECHO, b"x")]),
                                           rpcclient.T_ECHO), b"x")

        rc, took = self.stop(p)
        self.assertEqual(rc, 0, p.stderr.read())
        self.assertLess(took, 10)
        self.assertFalse(os.path.exists(self.sock), "socket file left behind")

    def test_cli_over_tls(self):
        # sqlited_tls = always: TLS on loopback TCP too; no unix socket, so
        # the CLI must go over TCP (sqlited_host) and trust sqlited_ca,
        # which defaults to the self-signed tls_cert of `sealmail init`.
        set_key(self.conf, "sqlited_tls", "always")
        set_key(self.conf, "sqlited_socket", "")
        set_key(self.conf, "sqlited_host", "127.0.0.1")
        self.start_redis()
        p, lines = self.start_sqlited(expect_lines=1)
        self.assertIn("TLS always", lines[0])

        def cli(*args, conf=None):
            return subprocess.run([SEALMAIL, *args, "--config", conf or self.conf],
                                  capture_output=True, text=True, timeout=60)

        r = cli("status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"127.0.0.1 port {self.port} (TLS)", r.stdout)
        r = cli("domain", "add", "tls.example")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = cli("domain", "list")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("tls.example", r.stdout)
        # by name: the self-signed certificate carries DNS:localhost
        set_key(self.conf, "sqlited_host", "localhost")
        r = cli("domain", "list")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("tls.example", r.stdout)
        set_key(self.conf, "sqlited_host", "127.0.0.1")

        # a plaintext client on the TCP port gets nothing and is closed
        with self.assertRaises((rpcclient.Closed, OSError)):
            rpcclient.connect_tcp("127.0.0.1", self.port, self.secret)

        # trusting another installation's certificate: refused, said so
        other = os.path.join(self.tmp, "other")
        r = subprocess.run([SEALMAIL, "init", "--config", os.path.join(other, "sealmail.conf"),
                            "--data-dir", other], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        set_key(self.conf, "sqlited_ca", os.path.join(other, "tls", "cert.pem"))
        r = cli("domain", "list")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("does not verify", r.stderr)
        self.assertNotIn("tls.example", r.stdout)

        rc, _ = self.stop(p)
        self.assertEqual(rc, 0, p.stderr.read())

    def test_wrong_secret_is_refused(self):
        self.start_redis()
        p, _ = self.start_sqlited()
        wrong = bytes(b ^ 1 for b in self.secret)
        with self.assertRaises(rpcclient.RpcError) as cm:
            rpcclient.connect_tcp("127.0.0.1", self.port, wrong)
        self.assertEqual(cm.exception.code, 115)
        rc, _ = self.stop(p)
        self.assertEqual(rc, 0)

    def test_runs_without_redis(self):
        # No redis-server: sqlited serves, throttles locally, reports it.
        p, _ = self.start_sqlited()
        with rpcclient.connect_unix(self.sock, self.secret) as u:
            self.assertEqual(rpcclient.get(u.call(rpcclient.OP_PING, [(rpcclient.T_ECHO, b"a")]),
                                           rpcclient.T_ECHO), b"a")
            status = rpcclient.stats(u.call(rpcclient.OP_SERVER_STATUS))
            self.assertEqual(status["redis_connected"], 0)
        rc, took = self.stop(p)
        self.assertEqual(rc, 0)
        self.assertLess(took, 10)

    def test_stop_with_an_idle_connection_open(self):
        self.start_redis()
        p, _ = self.start_sqlited()
        c = rpcclient.connect_tcp("127.0.0.1", self.port, self.secret)
        rc, took = self.stop(p)
        self.assertEqual(rc, 0)
        self.assertLess(took, 10)
        # the server closed our connection on its way out
        with self.assertRaises((rpcclient.Closed, ConnectionError)):
            c.call(rpcclient.OP_PING)
        c.close()

    def test_stale_socket_file_is_replaced(self):
        s = socket.socket(socket.AF_UNIX)
        s.bind(self.sock)
        s.close()           # a socket file nobody listens on, as after a crash
        p, _ = self.start_sqlited()
        with rpcclient.connect_unix(self.sock, self.secret) as u:
            u.call(rpcclient.OP_PING)
        self.assertEqual(self.stop(p)[0], 0)


@unittest.skipUnless(os.path.exists(SQLITED), "needs a built sqlited")
class TestStartupErrors(Base):
    def test_missing_secret(self):
        os.unlink(os.path.join(self.data, "secrets", "rpc_secret"))
        r = subprocess.run([SQLITED, "--config", self.conf], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("RPC secret", r.stderr)

    def test_bad_config(self):
        with open(self.conf, "a") as f:
            f.write("no_such_key = 1\n")
        r = subprocess.run([SQLITED, "--config", self.conf], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no_such_key", r.stderr)

    def test_usage(self):
        r = subprocess.run([SQLITED], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("--config", r.stderr)


if __name__ == "__main__":
    unittest.main()
