"""`sealmail backup --target s3://...` end to end against s3rver.

s3rver (installed by s3rver.sh with npm) stands in for S3. It checks the
access key id but not SigV4 signatures, so, when botocore is importable,
the CLI talks to it through a proxy in this file that recomputes every
request's signature with botocore and answers 403 SignatureDoesNotMatch to
a wrong one: a canonicalisation bug (query order, key encoding, signed
headers) fails here as it would against AWS.

Covered: a backup to S3; an incremental second run uploads only the
changed objects (counted with `aws s3 ls --recursive`); restore from S3
into a fresh data dir (same mail); retention (the default keeps the newest
snapshot of a day: each run prunes the older one of today and its objects); no plaintext canary in any
stored object (all downloaded with `aws s3 cp --recursive`); the secret
key never in the log.
"""
import http.client
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import test_admin  # noqa: E402
import test_backup  # noqa: E402
import sqlited_ops as ops  # noqa: E402

SEALMAIL = test_backup.SEALMAIL
PASSWORD = test_backup.PASSWORD
BUCKET = "sealmail-bk"
# s3rver knows the access key S3RVER; it does not check the secret (the
# proxy does), so the secret is a canary that must never reach the log.
ACCESS, SECRET = "S3RVER", "zqxs3secret-9f8e7d6c5b4a"

try:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError:  # pragma: no cover
    S3SigV4Auth = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SigV4Proxy(http.server.ThreadingHTTPServer):
    """Checks each request's SigV4 signature, then forwards it to s3rver."""
    daemon_threads = True

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.checked = 0
        self.mismatches = []
        super().__init__(("127.0.0.1", 0), ProxyHandler)


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def verify(self, body):
        auth = self.headers.get("Authorization", "")
        if "Signature=" not in auth:
            return True
        signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
        headers = {k: v for k, v in self.headers.items() if k.lower() in signed}
        url = f"http://{self.headers['Host']}{self.path}"
        req = AWSRequest(method=self.command, url=url, data=body, headers=headers)
        amzdate = self.headers.get("x-amz-date")
        signer = S3SigV4Auth(Credentials(ACCESS, SECRET), "s3", "us-east-1")
        req.context["timestamp"] = amzdate
        creq = signer.canonical_request(req)
        want = signer.signature(signer.string_to_sign(req, creq), req)
        self.server.checked += 1
        if want != auth.split("Signature=")[1].strip():
            self.server.mismatches.append(f"{self.command} {self.path}:\n{creq}")
            return False
        return True

    def relay(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if S3SigV4Auth is not None and not self.verify(body):
            msg = b"<Error><Code>SignatureDoesNotMatch</Code></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        up = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("expect", "connection")}
        up.request(self.command, self.path, body=body, headers=headers)
        r = up.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", r.getheader("Content-Length", "0"))
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        up.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = relay



class BackupS3(test_admin.Admin):
    # The helpers of test_backup.Backup, without its (local target) tests.
    run_cli = test_backup.Backup.run_cli
    connect = test_backup.Backup.connect
    mailbox_state = test_backup.Backup.mailbox_state
    add_aliases = test_backup.Backup.add_aliases
    fresh_dir = test_backup.Backup.fresh_dir
    use_dir = test_backup.Backup.use_dir

    def setUp(self):
        if shutil.which("node") is None or shutil.which("npm") is None:
            self.skipTest("node and npm are needed for s3rver")
        if shutil.which("aws") is None:
            self.skipTest("awscli is not installed (self-hosting/deps.sh --test)")
        super().setUp()
        self.s3dir = tempfile.mkdtemp(prefix="s3rver-")
        self.s3port = free_port()
        self.s3log = open(os.path.join(self.tmp, "s3rver.log"), "wb")
        self.s3 = subprocess.Popen(
            ["bash", os.path.join(HERE, "s3rver.sh"), "run", str(self.s3port),
             self.s3dir, BUCKET], stdout=self.s3log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120   # the first run installs s3rver
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.s3port), 0.5).close()
                break
            except OSError:
                if self.s3.poll() is not None or time.monotonic() > deadline:
                    self.fail("s3rver did not start: see s3rver.log")
                time.sleep(0.1)
        self.proxy = SigV4Proxy(self.s3port)
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.proxy.server_address[1]}"
        for name, value in (("s3_access", ACCESS), ("s3_secret", SECRET)):
            path = os.path.join(self.data, "secrets", name)
            with open(path, "w") as f:
                f.write(value + "\n")
            os.chmod(path, 0o600)
        self.secrets.append(SECRET)
        self.s3conf(self.conf, self.data)

    def tearDown(self):
        try:
            self.proxy.shutdown()
            self.proxy.server_close()
            self.s3.terminate()
            self.s3.wait(timeout=10)
            self.s3log.close()
            shutil.rmtree(self.s3dir, ignore_errors=True)
        finally:
            super().tearDown()

    def s3conf(self, conf, data):
        with open(conf) as f:
            lines = [ln for ln in f.read().splitlines()
                     if not ln.startswith(("s3_", "backup_target", "backup_keep"))]
        lines += [f"s3_endpoint = {self.endpoint}",
                  "s3_region = us-east-1",
                  f"s3_access_key_file = {os.path.join(self.data, 'secrets', 's3_access')}",
                  f"s3_secret_key_file = {os.path.join(self.data, 'secrets', 's3_secret')}",
                  f"backup_target = s3://{BUCKET}/host1"]
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def aws(self, *args):
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET,
                   AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        r = subprocess.run(["aws", "--endpoint-url", f"http://127.0.0.1:{self.s3port}",
                            "s3", *args], capture_output=True, text=True, env=env,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def bucket_objects(self):
        out = self.aws("ls", "--recursive", f"s3://{BUCKET}/")
        return sorted(line.split()[-1] for line in out.splitlines() if line.strip())

    def test_s3_backup_incremental_restore_prune(self):
        aliases = ["zqxcanary@example.org", "bob@example.org"]
        self.add_aliases(aliases)
        with self.connect() as c:
            for a in aliases:
                s = ops.unlock(c, a, PASSWORD.encode())
                for i in range(15):
                    ops.append(c, s, "INBOX", (f"Subject: zqxsubject {i}\r\n\r\nzqxbody {a}"
                                               f" {i}\r\n" + "y" * (i * 9000)).encode())
        before = {a: self.mailbox_state(a) for a in aliases}
        self.assertEqual(self.stop_sqlited(), 0)

        r = self.run_cli("backup")
        self.assertEqual(r.returncode, 0, r.stderr)
        first = self.bucket_objects()
        self.assertTrue(first)
        self.assertTrue(all(k.startswith("host1/") for k in first), first)

        r = self.run_cli("backup")       # nothing changed: nothing uploaded but a manifest
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(" 0 objects uploaded", r.stdout)

        # One alias gets one more message: only its objects are new.
        time.sleep(1.1)   # snapshot ids have a one-second resolution
        self.start_sqlited()
        with self.connect() as c:
            s = ops.unlock(c, "bob@example.org", PASSWORD.encode())
            ops.append(c, s, "INBOX", b"Subject: late zqxsubject\r\n\r\nzqxbody late\r\n")
        before["bob@example.org"] = self.mailbox_state("bob@example.org")
        self.assertEqual(self.stop_sqlited(), 0)
        r = self.run_cli("backup")
        self.assertEqual(r.returncode, 0, r.stderr)
        third = self.bucket_objects()
        new = set(third) - set(first)
        uploaded = int(r.stdout.split(" objects uploaded")[0].split()[-1])
        self.assertGreater(uploaded, 0, r.stdout)
        self.assertLess(uploaded, len(first), r.stdout)
        self.assertLessEqual(len(new), uploaded + 1, (sorted(new), r.stdout))
        # Retention (default keep_daily = 7: the newest snapshot of each
        # day): each run pruned the older snapshot of today, and the
        # objects only it used.
        self.assertIn("pruned 1 snapshots", r.stdout)
        r = self.run_cli("snapshots")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout.strip().splitlines()), 1, r.stdout)
        self.assertLessEqual(len(third), len(first) + uploaded)

        # No plaintext canary in any stored byte.
        dl = os.path.join(self.tmp, "bucket")
        self.aws("cp", "--recursive", "--quiet", f"s3://{BUCKET}/", dl)
        n = 0
        for root, _, files in os.walk(dl):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    blob = f.read()
                n += 1
                for canary in (b"zqxcanary", b"zqxsubject", b"zqxbody", SECRET.encode()):
                    self.assertNotIn(canary, blob, name)
        self.assertEqual(n, len(third))

        # Restore from S3 into a fresh data dir: the same mail.
        fconf, fresh = self.fresh_dir()
        for s in ("s3_access", "s3_secret"):
            shutil.copy2(os.path.join(self.data, "secrets", s), os.path.join(fresh, "secrets", s))
        self.s3conf(fconf, fresh)
        r = self.run_cli("restore", conf=fconf)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.use_dir(fconf, fresh)
        for a in aliases:
            self.assertEqual(self.mailbox_state(a), before[a], a)
        self.assertEqual(self.stop_sqlited(), 0)

        if S3SigV4Auth is not None:
            self.assertEqual(self.proxy.mismatches, [])
            self.assertGreater(self.proxy.checked, len(third))

    def test_wrong_access_key(self):
        with open(os.path.join(self.data, "secrets", "s3_access"), "w") as f:
            f.write("NOT-THE-KEY\n")
        self.assertEqual(self.stop_sqlited(), 0)
        r = self.run_cli("backup")
        self.assertNotEqual(r.returncode, 0)
        self.assertNotIn(SECRET, r.stderr + r.stdout)


# Admin's own tests are not run again here.
for _name in [n for n in dir(test_admin.Admin) if n.startswith("test_")]:
    setattr(BackupS3, _name, None)


if __name__ == "__main__":
    unittest.main()
